"""Each ONNX op handler + the numpy MIL evaluator, checked against ONNX Runtime on single ops.

The op goes through the real emitter (fp32 compute precision), is saved as .mlpackage, read
back from the spec and executed by the evaluator: what is checked is the file written.
"""
import numpy as np
import pytest
from onnx import helper

from coreml_helpers import init, make_model, ort_run, single_op, w

from converters.emitters.api import EmitRequest
from converters.emitters.coreml.emitter import emit
from converters.emitters.coreml.verify import run_mlpackage

S = (1, 4, 9, 9)
C = lambda *a: init("c", w(*a))  # noqa: E731

CASES = {
    "conv_pads": lambda: single_op("Conv", S, [init("W", w(6, 4, 3, 3)), init("B", w(6))], ["W", "B"], pads=[1, 0, 2, 1], strides=[2, 1]),
    "conv_grouped_dilated": lambda: single_op("Conv", S, [init("W", w(6, 2, 3, 3))], ["W"], group=2, dilations=[2, 2], pads=[2, 1, 2, 1]),
    "conv_depthwise_same_lower": lambda: single_op("Conv", S, [init("W", w(4, 1, 3, 3))], ["W"], group=4, strides=[2, 2], auto_pad="SAME_LOWER"),
    "conv_valid": lambda: single_op("Conv", S, [init("W", w(3, 4, 2, 2))], ["W"], auto_pad="VALID"),
    "gemm_transB_alpha_beta": lambda: single_op("Gemm", (1, 12), [init("W", w(5, 12)), init("B", w(5))], ["W", "B"], transB=1, alpha=0.5, beta=2.0),
    "gemm_plain": lambda: single_op("Gemm", (1, 12), [init("W", w(12, 5))], ["W"]),
    "matmul_const": lambda: single_op("MatMul", (1, 3, 12), [init("W", w(12, 7))], ["W"]),
    "relu": lambda: single_op("Relu", S),
    "clip_range": lambda: single_op("Clip", S, [init("lo", np.array(-0.5, np.float32)), init("hi", np.array(0.7, np.float32))], ["lo", "hi"]),
    "clip_min_only": lambda: single_op("Clip", S, [init("lo", np.array(0.0, np.float32))], ["lo"]),
    "sigmoid": lambda: single_op("Sigmoid", S),
    "hard_sigmoid": lambda: single_op("HardSigmoid", S, alpha=0.3, beta=0.4),
    "hard_swish": lambda: single_op("HardSwish", S),
    "add_bcast": lambda: single_op("Add", S, [init("c", w(4, 1, 1))], ["c"]),
    "sub": lambda: single_op("Sub", S, [init("c", w(1, 9))], ["c"]),
    "mul": lambda: single_op("Mul", S, [init("c", w(4, 9, 9))], ["c"]),
    "div": lambda: single_op("Div", S, [init("c", (1.5 + np.abs(w(4, 1, 1))).astype(np.float32))], ["c"]),
    "concat_self": lambda: single_op("Concat", S, extra_inputs=["input"], axis=1),
    "reshape_zero": lambda: single_op("Reshape", S, [init("s", np.array([0, -1, 9], np.int64))], ["s"]),
    "flatten": lambda: single_op("Flatten", S, axis=2),
    "transpose": lambda: single_op("Transpose", S, perm=[0, 2, 3, 1]),
    "global_avg_pool": lambda: single_op("GlobalAveragePool", S),
    "avg_pool_exclude_pad": lambda: single_op("AveragePool", S, kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
    "avg_pool_include_pad": lambda: single_op("AveragePool", S, kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], count_include_pad=1),
    "avg_pool_ceil": lambda: single_op("AveragePool", (1, 2, 8, 8), kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1),
    "max_pool": lambda: single_op("MaxPool", S, kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
    "max_pool_ceil": lambda: single_op("MaxPool", (1, 2, 8, 8), kernel_shape=[2, 2], strides=[3, 3], ceil_mode=1),
    "pad_constant": lambda: single_op("Pad", S, [init("p", np.array([0, 0, 1, 2, 0, 0, 3, 1], np.int64)), init("v", np.array(0.25, np.float32))], ["p", "v"]),
    "pad_reflect": lambda: single_op("Pad", S, [init("p", np.array([0, 0, 1, 2, 0, 0, 2, 1], np.int64))], ["p"], mode="reflect"),
    "pad_edge": lambda: single_op("Pad", S, [init("p", np.array([0, 0, 1, 2, 0, 0, 2, 1], np.int64))], ["p"], mode="edge"),
    "resize_nearest_x2": lambda: single_op("Resize", S, [init("s", np.array([1, 1, 2, 2], np.float32))], ["", "s"], mode="nearest"),
    "resize_nearest_asym_x3": lambda: single_op("Resize", S, [init("s", np.array([1, 1, 3, 2], np.float32))], ["", "s"], mode="nearest",
                                                coordinate_transformation_mode="asymmetric", nearest_mode="floor"),
    "resize_linear_half_pixel": lambda: single_op("Resize", S, [init("s", np.array([1, 1, 2, 2], np.float32))], ["", "s"], mode="linear"),
    "resize_linear_sizes_align": lambda: single_op("Resize", S, [init("z", np.array([1, 4, 5, 13], np.int64))], ["", "", "z"], mode="linear",
                                                   coordinate_transformation_mode="align_corners"),
    "softmax_axis1": lambda: single_op("Softmax", S, axis=1),
    "slice": lambda: single_op("Slice", S, [init("st", np.array([1, -7], np.int64)), init("en", np.array([3, 100], np.int64)),
                                            init("ax", np.array([1, 3], np.int64)), init("sp", np.array([1, 2], np.int64))], ["st", "en", "ax", "sp"]),
    "slice_negative_step": lambda: single_op("Slice", S, [init("st", np.array([-1], np.int64)), init("en", np.array([2], np.int64)),
                                                          init("ax", np.array([2], np.int64)), init("sp", np.array([-2], np.int64))], ["st", "en", "ax", "sp"]),
    "squeeze": lambda: single_op("Squeeze", (1, 4, 1, 9), [init("a", np.array([2], np.int64))], ["a"]),
    "unsqueeze": lambda: single_op("Unsqueeze", (1, 4, 9), [init("a", np.array([2, -1], np.int64))], ["a"]),
    "reduce_mean": lambda: single_op("ReduceMean", S, axes=[1, 3], keepdims=0),
    "gather_vec": lambda: single_op("Gather", S, [init("i", np.array([3, 0, -1], np.int64))], ["i"], axis=1),
    "gather_scalar": lambda: single_op("Gather", S, [init("i", np.array(2, np.int64))], ["i"], axis=2),
    "batch_norm": lambda: single_op("BatchNormalization", S, [init("g", w(4)), init("b", w(4)), init("m", w(4)),
                                                              init("v", (0.5 + np.abs(w(4))).astype(np.float32))], ["g", "b", "m", "v"], epsilon=1e-3),
}


def split_model():
    n = helper.make_node("Split", ["input", "sz"], ["a", "b"], axis=1, name="split_0")
    r = helper.make_node("Mul", ["a", "b"], ["out"], name="mul_0")   # uses both outputs (3 and 3 channels)
    return make_model([n, r], [init("sz", np.array([3, 3], np.int64))], (1, 6, 5, 5))


CASES["split"] = split_model


def silu_model():
    """x * Sigmoid(x): coremltools fuses it into one MIL ``silu`` (YOLOv8's activation)."""
    sig = helper.make_node("Sigmoid", ["input"], ["s"], name="sig_0")
    mul = helper.make_node("Mul", ["input", "s"], ["out"], name="mul_0")
    return make_model([sig, mul], [], (1, 4, 9, 9))


CASES["silu"] = silu_model


@pytest.mark.parametrize("case", sorted(CASES))
def test_op_matches_onnxruntime(case, tmp_path):
    model = CASES[case]()
    shp = [d.dim_value or 1 for d in model.graph.input[0].type.tensor_type.shape.dim]
    x = np.random.default_rng(7).standard_normal(shp).astype(np.float32)
    ref = ort_run(model, x)[0]
    art = emit(EmitRequest(model=model, precision="fp32", out_path=tmp_path / "m.mlpackage"))
    got = run_mlpackage(art.path, x)[0]
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)


def test_fp16_rounds_intermediates(tmp_path):
    """fp16 programs store intermediates in fp16: results differ from fp32 by fp16 rounding, not more."""
    model = CASES["conv_pads"]()
    x = np.random.default_rng(3).standard_normal((1, 4, 9, 9)).astype(np.float32)
    ref = ort_run(model, x)[0]
    art = emit(EmitRequest(model=model, precision="fp16", out_path=tmp_path / "m.mlpackage"))
    got = run_mlpackage(art.path, x)[0]
    err = np.abs(got - ref).max()
    assert 0 < err < 1e-2
