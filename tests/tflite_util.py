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


def _w(r, *shape):
    return (r.standard_normal(shape) * 0.5).astype(np.float32)


def op_cases() -> dict[str, onnx.ModelProto]:
    """Small single-op (or few-op) models covering every handler; input ``x`` [1,4,8,8] unless noted."""
    r = np.random.default_rng(0)
    X = [("x", [1, 4, 8, 8])]
    N = helper.make_node
    f32 = lambda *v: np.array(v, np.float32)  # noqa: E731
    i64 = lambda *v: np.array(v, np.int64)  # noqa: E731
    c = {}

    def add(name, nodes, out_shape, inits=None, inputs=X, opset=OPSET):
        c[name] = make_model(nodes, inputs, [("y", out_shape)], inits or {}, opset)

    add("conv_same", [N("Conv", ["x", "w", "b"], ["y"], pads=[1, 1, 1, 1])], [1, 6, 8, 8], {"w": _w(r, 6, 4, 3, 3), "b": _w(r, 6)})
    add("conv_stride2_pad", [N("Conv", ["x", "w", "b"], ["y"], pads=[1, 1, 1, 1], strides=[2, 2])], [1, 6, 4, 4],
        {"w": _w(r, 6, 4, 3, 3), "b": _w(r, 6)})
    add("conv_dilated", [N("Conv", ["x", "w"], ["y"], pads=[2, 2, 2, 2], dilations=[2, 2])], [1, 3, 8, 8], {"w": _w(r, 3, 4, 3, 3)})
    add("conv_autopad", [N("Conv", ["x", "w"], ["y"], auto_pad="SAME_UPPER", strides=[2, 2])], [1, 3, 4, 4], {"w": _w(r, 3, 4, 3, 3)})
    add("conv_depthwise", [N("Conv", ["x", "w", "b"], ["y"], pads=[1, 1, 1, 1], group=4)], [1, 4, 8, 8],
        {"w": _w(r, 4, 1, 3, 3), "b": _w(r, 4)})
    add("conv_depthwise_mult", [N("Conv", ["x", "w"], ["y"], group=4, strides=[2, 2])], [1, 8, 3, 3], {"w": _w(r, 8, 1, 3, 3)})
    add("conv_grouped", [N("Conv", ["x", "w", "b"], ["y"], group=2)], [1, 6, 8, 8], {"w": _w(r, 6, 2, 1, 1), "b": _w(r, 6)})
    add("conv_relu_fused", [N("Conv", ["x", "w"], ["c"]), N("Relu", ["c"], ["y"])], [1, 6, 8, 8], {"w": _w(r, 6, 4, 1, 1)})
    V = [("x", [1, 16])]
    add("gemm", [N("Gemm", ["x", "w", "b"], ["y"], alpha=0.5, beta=2.0)], [1, 8], {"w": _w(r, 16, 8), "b": _w(r, 8)}, V)
    add("gemm_transb", [N("Gemm", ["x", "w", "b"], ["y"], transB=1)], [1, 8], {"w": _w(r, 8, 16), "b": _w(r, 1, 8)}, V)
    add("matmul_fc", [N("MatMul", ["x", "w"], ["y"])], [1, 5, 8], {"w": _w(r, 16, 8)}, [("x", [1, 5, 16])])
    add("matmul_batch", [N("Transpose", ["x"], ["t"], perm=[0, 2, 1]), N("MatMul", ["x", "t"], ["y"])], [1, 5, 5],
        inputs=[("x", [1, 5, 16])])
    for op in ("Relu", "Sigmoid", "HardSwish"):
        add(op.lower(), [N(op, ["x"], ["y"])], [1, 4, 8, 8])
    add("hardsigmoid", [N("HardSigmoid", ["x"], ["y"], alpha=0.3, beta=0.4)], [1, 4, 8, 8])
    add("clip_relu6", [N("Clip", ["x", "lo", "hi"], ["y"])], [1, 4, 8, 8], {"lo": f32(0)[0], "hi": f32(6)[0]})
    add("clip_any", [N("Clip", ["x", "lo", "hi"], ["y"])], [1, 4, 8, 8], {"lo": f32(-0.5)[0], "hi": f32(0.7)[0]})
    add("add_broadcast", [N("Add", ["x", "k"], ["y"])], [1, 4, 8, 8], {"k": _w(r, 4, 1, 1)})
    add("sub_lastaxis", [N("Sub", ["k", "x"], ["y"])], [1, 4, 8, 8], {"k": _w(r, 8)})
    add("mul_scalar", [N("Mul", ["x", "k"], ["y"])], [1, 4, 8, 8], {"k": f32(1.7)})
    add("div_const", [N("Div", ["x", "k"], ["y"])], [1, 4, 8, 8], {"k": f32(1.5, 2.0, -3.0, 4.0).reshape(1, 4, 1, 1)})
    add("div_dynamic", [N("Sigmoid", ["x"], ["s"]), N("Add", ["s", "one"], ["d"]), N("Div", ["x", "d"], ["y"])], [1, 4, 8, 8],
        {"one": f32(1.0)})
    add("add_conv_residual_relu", [N("Conv", ["x", "w"], ["c"]), N("Add", ["c", "x"], ["a"]), N("Relu", ["a"], ["y"])],
        [1, 4, 8, 8], {"w": _w(r, 4, 4, 1, 1)})
    add("concat_channels", [N("Conv", ["x", "w"], ["c"]), N("Concat", ["c", "x"], ["y"], axis=1)], [1, 7, 8, 8],
        {"w": _w(r, 3, 4, 1, 1)})
    add("concat_const", [N("Concat", ["x", "k"], ["y"], axis=3)], [1, 4, 8, 10], {"k": _w(r, 1, 4, 8, 2)})
    add("flatten_after_conv", [N("Conv", ["x", "w"], ["c"]), N("Flatten", ["c"], ["y"])], [1, 216], {"w": _w(r, 6, 4, 3, 3)})
    add("reshape_after_conv", [N("Conv", ["x", "w"], ["c"]), N("Reshape", ["c", "s"], ["y"])], [1, 6, 64],
        {"w": _w(r, 6, 4, 1, 1), "s": i64(1, 6, 64)})
    add("transpose", [N("Transpose", ["x"], ["y"], perm=[0, 3, 1, 2])], [1, 8, 4, 8])
    add("global_avg_pool", [N("GlobalAveragePool", ["x"], ["y"])], [1, 4, 1, 1])
    add("avgpool_k2s2", [N("AveragePool", ["x"], ["y"], kernel_shape=[2, 2], strides=[2, 2])], [1, 4, 4, 4])
    add("avgpool_same_excl", [N("AveragePool", ["x"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1])], [1, 4, 8, 8])
    add("avgpool_incl_pad", [N("AveragePool", ["x"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2],
                               count_include_pad=1)], [1, 4, 4, 4])
    add("maxpool_pad", [N("MaxPool", ["x"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2])], [1, 4, 4, 4])
    add("maxpool_k2", [N("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], strides=[2, 2])], [1, 4, 4, 4])
    add("pad_constant", [N("Pad", ["x", "p"], ["y"])], [1, 4, 11, 9], {"p": i64(0, 0, 1, 0, 0, 0, 2, 1)})
    add("pad_value", [N("Pad", ["x", "p", "v"], ["y"])], [1, 4, 10, 10], {"p": i64(0, 0, 1, 1, 0, 0, 1, 1), "v": f32(1.5)[0]})
    add("pad_reflect", [N("Pad", ["x", "p"], ["y"], mode="reflect")], [1, 4, 10, 10], {"p": i64(0, 0, 1, 1, 0, 0, 1, 1)})
    for mode, ctm, nm, sz in [("nearest", "asymmetric", "floor", 16), ("nearest", "half_pixel", "round_prefer_floor", 16),
                              ("linear", "half_pixel", None, 16), ("linear", "align_corners", None, 16),
                              ("linear", "asymmetric", None, 16), ("linear", "half_pixel", None, 5),
                              ("nearest", "align_corners", "round_prefer_ceil", 12)]:
        kw = {"mode": mode, "coordinate_transformation_mode": ctm}
        if nm:
            kw["nearest_mode"] = nm
        add(f"resize_{mode}_{ctm}_{sz}", [N("Resize", ["x", "", "", "sizes"], ["y"], **kw)], [1, 4, sz, sz],
            {"sizes": i64(1, 4, sz, sz)})
    add("softmax_2d", [N("Softmax", ["x"], ["y"])], [1, 16], inputs=V)
    add("softmax_channels", [N("Softmax", ["x"], ["y"], axis=1)], [1, 4, 8, 8])
    add("softmax_width", [N("Softmax", ["x"], ["y"], axis=3)], [1, 4, 8, 8])
    add("slice_channels_step", [N("Slice", ["x", "st", "en", "ax", "sp"], ["y"])], [1, 2, 8, 3],
        {"st": i64(0, 1), "en": i64(4, 8), "ax": i64(1, 3), "sp": i64(2, 3)})
    add("slice_negative_step", [N("Slice", ["x", "st", "en", "ax", "sp"], ["y"])], [1, 4, 8, 8],
        {"st": i64(-1), "en": i64(-1000), "ax": i64(2), "sp": i64(-1)})
    add("split_equal", [N("Split", ["x"], ["y", "z"], axis=1, num_outputs=2)], [1, 2, 8, 8], opset=18)
    add("split_sizes", [N("Split", ["x", "s"], ["y", "z"], axis=2)], [1, 4, 3, 8], {"s": i64(3, 5)})
    add("squeeze_after_gap", [N("GlobalAveragePool", ["x"], ["g"]), N("Squeeze", ["g", "a"], ["y"])], [1, 4], {"a": i64(2, 3)})
    add("unsqueeze", [N("Unsqueeze", ["x", "a"], ["y"])], [1, 16, 1], {"a": i64(2)}, V)
    add("reducemean_hw", [N("ReduceMean", ["x"], ["y"], axes=[2, 3], keepdims=0)], [1, 4])
    add("reducemean_c_keep", [N("ReduceMean", ["x"], ["y"], axes=[1], keepdims=1)], [1, 1, 8, 8])
    add("gather_channel", [N("Gather", ["x", "i"], ["y"], axis=1)], [1, 3, 8, 8], {"i": i64(3, 0, 2)})
    add("gather_scalar", [N("Gather", ["x", "i"], ["y"], axis=2)], [1, 4, 8], {"i": np.array(-2, np.int64)})
    add("batchnorm_after_conv", [N("Conv", ["x", "w"], ["c"]), N("BatchNormalization", ["c", "g", "bb", "m", "v"], ["y"])],
        [1, 6, 6, 6], {"w": _w(r, 6, 4, 3, 3), "g": _w(r, 6), "bb": _w(r, 6), "m": _w(r, 6), "v": np.abs(_w(r, 6)) + 0.5})
    return c
