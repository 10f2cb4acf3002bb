"""Helpers shared by the tests/test_tflite_*.py files: tiny ONNX graphs, ORT references, ranges."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from converters.emitters.api import CalibrationResult, EmitRequest
from converters.emitters.tflite.emitter import emit
from edgeinfer.backends import BackendOptions, open_backend

OPSET = 17


def make_model(nodes, inputs, outputs, inits=(), opset=OPSET) -> onnx.ModelProto:
    """A checked, shape-inferred model. inputs/outputs: [(name, shape)], inits: {name: array}."""
    g = helper.make_graph(
        nodes, "t",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in dict(inits).items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return onnx.shape_inference.infer_shapes(m)


def ort_run(model: onnx.ModelProto, feeds: dict, outputs=None) -> list[np.ndarray]:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(outputs, feeds)


def ranges_from_ort(model: onnx.ModelProto, samples: np.ndarray) -> dict[str, tuple[float, float]]:
    """min/max of every float tensor of ``model`` on ``samples`` (NCHW batch), via ORT."""
    m = onnx.shape_inference.infer_shapes(model)
    names = [o for n in m.graph.node for o in n.output if o]
    inits = {i.name for i in m.graph.initializer}
    probe = onnx.ModelProto()
    probe.CopyFrom(m)
    known = {o.name for o in probe.graph.output}
    for n in names:
        if n not in known:
            probe.graph.output.append(helper.make_empty_tensor_value_info(n))
    inp = [i.name for i in m.graph.input if i.name not in inits][0]
    allnames = [o.name for o in probe.graph.output]
    lo = {n: np.inf for n in allnames + [inp]}
    hi = {n: -np.inf for n in allnames + [inp]}
    for s in samples:
        outs = ort_run(probe, {inp: s[None].astype(np.float32)}, allnames)
        for n, v in list(zip(allnames, outs)) + [(inp, s)]:
            if v.dtype == np.float32:
                lo[n], hi[n] = min(lo[n], float(v.min())), max(hi[n], float(v.max()))
    return {n: (lo[n], hi[n]) for n in lo if np.isfinite(lo[n])}


def calibration(model, samples) -> CalibrationResult:
    return CalibrationResult("minmax", ranges_from_ort(model, samples), samples, len(samples))


def convert(model, tmp_path: Path, precision="fp32", layout="NHWC", calib=None, name="m.tflite", **options):
    art = emit(EmitRequest(model=model, precision=precision, out_path=Path(tmp_path) / name,
                           calibration=calib, input_layout=layout, options=options))
    return art


def run_tflite(path, x_nchw: np.ndarray, options: BackendOptions | None = None) -> list[np.ndarray]:
    be = open_backend("tflite", path, options or BackendOptions(threads=1))
    x = x_nchw if be.input_layout == "NCHW" or x_nchw.ndim != 4 else x_nchw.transpose(0, 2, 3, 1)
    return be.run(np.ascontiguousarray(x))


def tiny_cnn(seed: int = 0, classes: int = 10, size: int = 16) -> onnx.ModelProto:
    """Conv-ReLU -> depthwise-Clip(0,6) -> 1x1 conv + residual add -> GAP -> Flatten -> Gemm."""
    r = np.random.default_rng(seed)
    w = lambda *s: (r.standard_normal(s) * (2.0 / np.prod(s[1:])) ** 0.5).astype(np.float32)  # noqa: E731
    inits = {
        "w1": w(8, 3, 3, 3), "b1": r.standard_normal(8).astype(np.float32) * 0.1,
        "w2": w(8, 1, 3, 3), "b2": r.standard_normal(8).astype(np.float32) * 0.1,
        "w3": w(8, 8, 1, 1), "b3": r.standard_normal(8).astype(np.float32) * 0.1,
        "fc": w(classes, 8), "fcb": r.standard_normal(classes).astype(np.float32) * 0.1,
        "lo": np.array(0.0, np.float32), "hi": np.array(6.0, np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], group=8),
        helper.make_node("Clip", ["c2", "lo", "hi"], ["r2"]),
        helper.make_node("Conv", ["r2", "w3", "b3"], ["c3"]),
        helper.make_node("Add", ["c3", "r1"], ["a3"]),
        helper.make_node("GlobalAveragePool", ["a3"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "fc", "fcb"], ["logits"], transB=1),
    ]
    return make_model(nodes, [("x", [1, 3, size, size])], [("logits", [1, classes])], inits)
