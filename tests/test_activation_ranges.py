"""Activation-aware int8 ranges (``converters.activation_ranges``): the low end of a tensor read only
by SiLU / HardSwish is raised, and that lowers the int8 error of the activation's output."""
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from converters.activation_ranges import SILU_TAIL_STEPS, tighten_ranges
from converters.calibrate import calibrate, collect_ranges
from converters.ort_session import cpu_session
from converters.quantize_onnx import quantize_int8


def _conv_act(act: str, extra_reader: bool = False) -> onnx.ModelProto:
    """x[1,4,8,8] -> 1x1 Conv (pre-activation spans about -45..20) -> act -> 1x1 Conv -> y."""
    rng = np.random.default_rng(0)
    w1 = (rng.normal(0, 1, (8, 4, 1, 1)) * 6).astype(np.float32)
    b1 = np.full(8, -6.0, np.float32)
    w2 = (rng.normal(0, 0.3, (4, 8, 1, 1))).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["pre"], name="conv1")]
    if act == "silu":
        nodes += [helper.make_node("Sigmoid", ["pre"], ["gate"], name="sig"),
                  helper.make_node("Mul", ["pre", "gate"], ["act"], name="mul")]
    elif act == "hardswish":
        nodes += [helper.make_node("HardSwish", ["pre"], ["act"], name="hs")]
    elif act == "x*hardsigmoid":
        nodes += [helper.make_node("HardSigmoid", ["pre"], ["gate"], name="hsig", alpha=1 / 6, beta=0.5),
                  helper.make_node("Mul", ["gate", "pre"], ["act"], name="mul")]
    feed = "act"
    if extra_reader:
        nodes += [helper.make_node("Add", ["act", "pre"], ["sum"], name="add")]
        feed = "sum"
    nodes += [helper.make_node("Conv", [feed, "w2"], ["y"], name="conv2")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 8, 8])],
                              [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(b1, "b1"),
                               numpy_helper.from_array(w2, "w2")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _samples(n=16):
    return np.random.default_rng(1).uniform(-2, 2, (n, 4, 8, 8)).astype(np.float32)


def test_silu_low_end_is_raised_within_its_error_bound():
    ranges = {"x": (-2.0, 2.0), "pre": (-60.0, 10.0), "act": (-0.28, 10.0), "y": (-5.0, 5.0)}
    out, counts = tighten_ranges(_conv_act("silu"), ranges)
    lo, hi = out["pre"]
    assert counts == {"silu": 1} and hi == 10.0 and -8.0 < lo < -2.0
    silu_at_lo = abs(lo / (1 + np.exp(-lo)))
    assert silu_at_lo <= SILU_TAIL_STEPS * (hi - lo) / 255 + 1e-6
    assert {k: v for k, v in out.items() if k != "pre"} == {k: v for k, v in ranges.items() if k != "pre"}


def test_hard_swish_forms_are_clipped_exactly_at_their_zero():
    ranges = {"pre": (-60.0, 10.0)}
    assert tighten_ranges(_conv_act("hardswish"), ranges)[0]["pre"] == (-3.0, 10.0)
    assert np.allclose(tighten_ranges(_conv_act("x*hardsigmoid"), ranges)[0]["pre"], (-3.0, 10.0))


def test_tensors_with_other_readers_or_no_negative_side_are_left_alone():
    ranges = {"pre": (-60.0, 10.0)}
    assert tighten_ranges(_conv_act("silu", extra_reader=True), ranges) == (ranges, {})
    assert tighten_ranges(_conv_act("silu"), {"pre": (0.5, 10.0)}) == ({"pre": (0.5, 10.0)}, {})
    assert tighten_ranges(_conv_act("silu"), {"pre": (-0.3, 10.0)})[1] == {}


def _int8_error(model, calib) -> float:
    """RMS of int8 - float of the activation's output as the next Conv reads it (after its own
    Quantize/Dequantize), over the calibration inputs (float fake quantization)."""
    q = quantize_int8(model, calib, activation_dtype="uint8", bias_correction=False)
    quantize = next(n for n in q.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "act")
    read = next(n for n in q.graph.node if n.op_type == "DequantizeLinear" and n.input[0] == quantize.output[0])
    q.graph.output.append(helper.make_tensor_value_info(read.output[0], TensorProto.FLOAT, None))
    probe = onnx.ModelProto.FromString(model.SerializeToString())
    probe.graph.output.append(helper.make_tensor_value_info("act", TensorProto.FLOAT, None))
    ref = cpu_session(probe).run(["act"], {"x": calib.samples})[0]
    got = cpu_session(q, fuse_qdq=False).run([read.output[0]], {"x": calib.samples})[0]
    return float(np.sqrt(np.mean((got - ref) ** 2)))


def test_calibrate_applies_it_and_int8_silu_error_drops():
    model = _conv_act("silu")
    calib = calibrate(model, _samples(), "minmax", progress=False)
    assert calib.tightened == {"silu": 1} and calib.ranges["pre"][0] > -10
    minmax = collect_ranges(model, calib.samples, "minmax", progress=False)
    assert minmax["pre"][0] < calib.ranges["pre"][0]
    raw = type(calib)(**{**calib.__dict__, "ranges": minmax, "tightened": {}})
    assert _int8_error(model, calib) < 0.85 * _int8_error(model, raw)


def test_uint16_tensors_get_16_bit_qdq_the_rest_8_bit():
    model = _conv_act("silu")
    calib = calibrate(model, _samples(), "minmax", progress=False)
    q = quantize_int8(model, calib, activation_dtype="uint8", bias_correction=False, uint16_tensors={"act"})
    zp = {i.name: i.data_type for i in q.graph.initializer}
    qnode = next(n for n in q.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "act")
    other = next(n for n in q.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "pre")
    assert zp[qnode.input[2]] == TensorProto.UINT16 and zp[other.input[2]] == TensorProto.UINT8
    assert cpu_session(q, fuse_qdq=False).run(["y"], {"x": calib.samples})[0].shape == (16, 4, 8, 8)


def test_top_quantiles_are_exact_over_all_samples():
    from converters.activation_ranges import top_quantiles
    model = _conv_act("silu")
    x = np.random.default_rng(2).normal(0, 1, (40, 4, 8, 8)).astype(np.float32)
    probe = onnx.ModelProto.FromString(model.SerializeToString())
    probe.graph.output.append(helper.make_tensor_value_info("act", TensorProto.FLOAT, None))
    act = cpu_session(probe).run(["act"], {"x": x})[0].ravel()   # 40 * 8 * 64 = 20480 values
    got = top_quantiles(model, x, ["act"], 1e-3)[0]["act"]
    assert got == np.sort(act)[::-1][20]          # 0.1 % of 20480 = 20 values above it
    assert np.mean(act > got) <= 1e-3 < np.mean(act >= got) + 1e-3


def _with_outliers(n=200, scale=40.0):
    """Samples whose SiLU output has 8 values (one pixel of the first sample) far above the other
    102,392: a top tail thinner than 0.01 %."""
    x = np.random.default_rng(3).uniform(-2, 2, (n, 4, 8, 8)).astype(np.float32)
    x[0, :, 0, 0] = scale
    return x


def test_a_thin_top_tail_of_a_silu_output_is_cut_and_nothing_else_moves():
    from converters.activation_ranges import TAIL_RATIO, clip_heavy_tails, silu_outputs
    model = _conv_act("silu")
    assert silu_outputs(model) == ["act"]
    x = _with_outliers()
    minmax = collect_ranges(model, x, "minmax", progress=False)
    out, changed = clip_heavy_tails(model, x, minmax)
    assert changed == 1
    assert out["act"][0] == minmax["act"][0] and 0 < out["act"][1] * TAIL_RATIO < minmax["act"][1]
    assert {k: v for k, v in out.items() if k != "act"} == {k: v for k, v in minmax.items() if k != "act"}
    # without the outliers the top is not a thin tail: nothing changes
    calm = x[1:]
    calm_ranges = collect_ranges(model, calm, "minmax", progress=False)
    assert clip_heavy_tails(model, calm, calm_ranges) == (calm_ranges, 0)


def test_with_tails_clipped_records_the_cut_and_the_common_values_lose_less_to_int8():
    from converters.calibrate import with_tails_clipped
    model = _conv_act("silu")
    x = _with_outliers()
    plain = calibrate(model, x, "minmax", progress=False)    # not a default: the search decides
    wide = collect_ranges(model, x, "minmax", progress=False)["act"]
    assert plain.tails_clipped == 0 and plain.ranges["act"] == wide
    calib = with_tails_clipped(model, plain, progress=False)
    assert calib.tails_clipped == 1 and calib.ranges["act"][1] < wide[1] / 2
    assert with_tails_clipped(model, calibrate(model, x[1:], "minmax", progress=False), progress=False).tails_clipped == 0
    probe = onnx.ModelProto.FromString(model.SerializeToString())
    probe.graph.output.append(helper.make_tensor_value_info("act", TensorProto.FLOAT, None))
    act = cpu_session(probe).run(["act"], {"x": x[1:]})[0]      # everything but the outlier pixel

    def rms_uint8(lo, hi):
        scale = (hi - min(lo, 0.0)) / 255
        zp = np.round(-min(lo, 0.0) / scale)
        q = (np.clip(np.round(act / scale) + zp, 0, 255) - zp) * scale
        return float(np.sqrt(np.mean((q - act) ** 2)))
    assert rms_uint8(*calib.ranges["act"]) < 0.3 * rms_uint8(*wide)


def _two_silus() -> onnx.ModelProto:
    """x -> Conv -> SiLU (act) -> Conv -> SiLU (act2) -> Conv -> y: two SiLU outputs in a row."""
    base = _conv_act("silu")
    rng = np.random.default_rng(4)
    w3 = rng.normal(0, 0.3, (4, 4, 1, 1)).astype(np.float32)
    g = base.graph
    g.node[-1].output[0] = "pre2"
    g.node.extend([helper.make_node("Sigmoid", ["pre2"], ["gate2"], name="sig2"),
                   helper.make_node("Mul", ["pre2", "gate2"], ["act2"], name="mul2"),
                   helper.make_node("Conv", ["act2", "w3"], ["y"], name="conv3")])
    g.initializer.append(numpy_helper.from_array(w3, "w3"))
    return base


def test_only_the_thin_tails_that_lose_most_to_8_bits_are_cut():
    from converters.activation_ranges import TAIL_FRACTION, clip_heavy_tails, silu_outputs, top_quantiles
    model = _two_silus()
    assert silu_outputs(model) == ["act", "act2"]
    x = _with_outliers()
    minmax = collect_ranges(model, x, "minmax", progress=False)
    _, sqnr = top_quantiles(model, x, ["act", "act2"], TAIL_FRACTION, ranges=minmax)
    both, n_both = clip_heavy_tails(model, x, minmax, most=2)
    assert n_both == 2 and all(both[t][1] < minmax[t][1] for t in ("act", "act2"))
    one, n_one = clip_heavy_tails(model, x, minmax, most=1)
    worst = min(sqnr, key=sqnr.get)
    assert n_one == 1 and one[worst] == both[worst]
    assert {k: v for k, v in one.items() if k != worst} == {k: v for k, v in minmax.items() if k != worst}
