"""One way for the converter to open an ONNX Runtime CPU session on an in-memory model."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper


def cpu_session(model: onnx.ModelProto, threads: int | None = None, fuse_qdq: bool = True) -> ort.InferenceSession:
    """A quiet CPU session; ``threads`` caps intra-op threads (None: ONNX Runtime's default).
    ``fuse_qdq=False`` keeps QuantizeLinear/DequantizeLinear pairs as float fake quantization: ONNX
    Runtime otherwise quantizes the float weights next to them itself (WeightBiasQuantization)
    and fuses everything into the host's int8 kernels (QLinearConv, QGemm)."""
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if not fuse_qdq:
        so.add_session_config_entry("session.disable_quant_qdq", "1")
    if threads:
        so.intra_op_num_threads = int(threads)
        so.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def tensor_probe(model: onnx.ModelProto, tensors: list[str]):
    """A function ``run(x) -> {tensor: array}`` giving the float ``tensors`` of ``model`` (exposed as
    extra outputs of a copy) for the input batch ``x``."""
    probe = onnx.ModelProto.FromString(model.SerializeToString())
    have = {o.name for o in probe.graph.output}
    probe.graph.output.extend(helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None)
                              for t in tensors if t not in have)
    sess = cpu_session(probe)
    name = sess.get_inputs()[0].name
    outs = [o.name for o in sess.get_outputs()]

    def run(x: np.ndarray) -> dict[str, np.ndarray]:
        return dict(zip(outs, sess.run(None, {name: x})))
    return run
