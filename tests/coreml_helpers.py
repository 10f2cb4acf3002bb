"""Small ONNX graphs for the Core ML tests, built with onnx.helper (no torch)."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

RNG = np.random.default_rng(0)


def init(name: str, arr) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(arr), name)


def w(*shape, scale=None) -> np.ndarray:
    fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]
    return (RNG.standard_normal(shape) * (scale or np.sqrt(2.0 / fan_in))).astype(np.float32)


def make_model(nodes, inits, in_shape, out_name="out", out_shape=None, opset=14, in_name="input") -> onnx.ModelProto:
    dims = ["N"] + list(in_shape[1:])
    g = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info(in_name, TensorProto.FLOAT, dims)],
                          [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, out_shape)], initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    m = onnx.shape_inference.infer_shapes(m)
    onnx.checker.check_model(m)
    return m


def tiny_convnet(classes: int = 10, channels: int = 3, size: int = 16) -> onnx.ModelProto:
    """conv-BN-relu -> depthwise s2 -> relu6 -> 1x1 -> hardswish -> GAP -> flatten -> gemm -> softmax.
    Same weights whatever ran before (the module RNG is reseeded)."""
    global RNG
    RNG = np.random.default_rng(0)
    n = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("BatchNormalization", ["c1", "g1", "be1", "m1", "v1"], ["bn1"], epsilon=1e-3, name="bn1"),
        helper.make_node("Relu", ["bn1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "wdw"], ["c2"], pads=[1, 1, 1, 1], strides=[2, 2], group=32, name="dw"),
        helper.make_node("Clip", ["c2", "zero", "six"], ["r2"], name="relu6"),
        helper.make_node("Conv", ["r2", "wpw", "bpw"], ["c3"], name="pw"),
        helper.make_node("HardSwish", ["c3"], ["h3"], name="hswish"),
        helper.make_node("GlobalAveragePool", ["h3"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "wfc", "bfc"], ["logits"], transB=1, name="fc"),
        helper.make_node("Softmax", ["logits"], ["out"], axis=-1, name="softmax"),
    ]
    inits = [init("w1", w(32, channels, 3, 3)), init("b1", w(32, scale=0.1)),
             init("g1", (1 + 0.1 * RNG.standard_normal(32)).astype(np.float32)), init("be1", w(32, scale=0.1)),
             init("m1", w(32, scale=0.1)), init("v1", (0.5 + RNG.random(32)).astype(np.float32)),
             init("wdw", w(32, 1, 3, 3)), init("zero", np.array(0, np.float32)), init("six", np.array(6, np.float32)),
             init("wpw", w(64, 32, 1, 1)), init("bpw", w(64, scale=0.1)),
             init("wfc", w(classes, 64, scale=0.3)), init("bfc", w(classes, scale=0.1))]
    return make_model(n, inits, (1, channels, size, size), out_shape=["N", classes])


def single_op(op_type: str, in_shape, inits=(), extra_inputs=(), out_shape=None, opset=14, **attrs) -> onnx.ModelProto:
    """input -> op(input, *extra_inputs) -> out."""
    node = helper.make_node(op_type, ["input", *extra_inputs], ["out"], name=f"{op_type.lower()}_0", **attrs)
    return make_model([node], list(inits), in_shape, out_shape=out_shape, opset=opset)


def ort_run(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    s = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return s.run(None, {s.get_inputs()[0].name: x})


def pixel_batch(pre: dict, n: int = 4, size: int = 16, seed: int = 5) -> np.ndarray:
    """Normalized NCHW inputs made from integer pixels (what the preprocessing produces), so an
    image-input package's inverse back to pixels is exact."""
    rng = np.random.default_rng(seed)
    pix = rng.integers(0, 256, size=(n, 3, size, size)).astype(np.float32)
    mean, std = np.array(pre["mean"]).reshape(1, 3, 1, 1), np.array(pre["std"]).reshape(1, 3, 1, 1)
    return ((pix * pre["scale"] - mean) / std).astype(np.float32)
