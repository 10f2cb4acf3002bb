"""ONNX precision recipes: fp16, int8 (static QDQ, per-channel weights); int4 lives in ``converters.int4``
(shared weight math) and ``converters.emitters.onnx_int4`` (storage).

All int8 activation scales come from the shared ``CalibrationResult`` (no second calibration).
"""
from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import QuantType
from onnxruntime.quantization.calibrate import CalibrationMethod, TensorData, TensorsData
from onnxruntime.quantization.qdq_quantizer import QDQQuantizer
from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

from edgeinfer.errors import EdgeInferError

from .emitters.api import CalibrationResult
from .quant_math import quantize_weights_per_channel

logging.getLogger("onnxruntime.quantization").setLevel(logging.WARNING)

ACTIVATION_TYPES = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}


def to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """fp16 weights and compute, float32 model I/O kept for the caller."""
    from onnxruntime.transformers.float16 import convert_float_to_float16
    return convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=False)


def tensors_range(calib: CalibrationResult) -> TensorsData:
    data = {name: TensorData(lowest=np.float32(lo), highest=np.float32(hi)) for name, (lo, hi) in calib.ranges.items()}
    return TensorsData(CalibrationMethod.MinMax, data)


def quantize_int8(model: onnx.ModelProto, calib: CalibrationResult, *, per_channel: bool = True,
                  nodes_to_exclude=(), activation_dtype: str = "int8") -> onnx.ModelProto:
    """Static QDQ int8: per-channel symmetric int8 weights, activations from the shared ranges."""
    if calib is None:
        raise EdgeInferError("int8 needs calibration data: pass --calib DIR (or --calib-synthetic to accept random inputs)")
    if activation_dtype not in ACTIVATION_TYPES:
        raise EdgeInferError(f"activation dtype {activation_dtype!r} is not one of int8, uint8")
    quantizer = QDQQuantizer(
        onnx.ModelProto.FromString(model.SerializeToString()),
        per_channel, False, QuantType.QInt8, ACTIVATION_TYPES[activation_dtype], tensors_range(calib),
        [], list(nodes_to_exclude), sorted(set(QLinearOpsRegistry) | set(QDQRegistry)),
        # biases stay float: the int32 copy plus its per-channel scales cost ~1% of the file and
        # ONNX Runtime's CPU kernels run as fast either way (measured by tools/bench_onnx.py)
        {"ActivationSymmetric": False, "WeightSymmetric": True, "QuantizeBias": False},
    )
    return quantizer.quantize_model()


def gemm_to_matmul(model: onnx.ModelProto) -> onnx.ModelProto:
    """Rewrite Gemm(A, B[, C]) with constant B into MatMul(+Add), so MatMulNBits can take it."""
    out = onnx.ModelProto.FromString(model.SerializeToString())
    inits = {t.name: t for t in out.graph.initializer}
    nodes = []
    for node in out.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if (node.op_type != "Gemm" or node.input[1] not in inits or attrs.get("transA", 0)
                or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0):
            nodes.append(node)
            continue
        w = numpy_helper.to_array(inits[node.input[1]])
        if attrs.get("transB", 0):
            w = w.T
        w_name = node.input[1] + "_matmul"
        out.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(w), w_name))
        has_bias = len(node.input) > 2 and node.input[2]
        mm_out = node.output[0] + "_matmul" if has_bias else node.output[0]
        nodes.append(helper.make_node("MatMul", [node.input[0], w_name], [mm_out], name=(node.name or mm_out) + "_matmul"))
        if has_bias:
            nodes.append(helper.make_node("Add", [mm_out, node.input[2]], [node.output[0]], name=(node.name or mm_out) + "_bias"))
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return _drop_unused(out)


def _drop_unused(model: onnx.ModelProto) -> onnx.ModelProto:
    used = {i for n in model.graph.node for i in n.input}
    keep = [t for t in model.graph.initializer if t.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
    return model
