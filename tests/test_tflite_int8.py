"""Integer and reduced-precision TFLite artifacts: full int8 (shared calibration) vs ORT QDQ int8,
quantized model I/O, dynamic-range int8, fp16 weights, int4 weights."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from onnx import numpy_helper
from tflite_util import convert, ort_run, run_tflite

from converters.calibrate import calibrate
from converters.clean import clean_model
from converters.quantize_onnx import quantize_int8
from edgeinfer.backends import open_backend

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from model_zoo import build_mlp, build_tiny_cnn  # noqa: E402


@pytest.fixture(scope="module")
def cnn():
    model = clean_model(build_tiny_cnn(num_classes=10, channels=8, resolution=16, seed=3))
    rng = np.random.default_rng(0)
    calib_x = rng.uniform(-1, 1, (64, 3, 16, 16)).astype(np.float32)
    test_x = rng.uniform(-1, 1, (32, 3, 16, 16)).astype(np.float32)
    calib = calibrate(model, calib_x, progress=False)
    return model, calib, test_x, ort_run(model, {"input": test_x})[0]


def test_int8_close_to_onnxruntime_qdq_int8(cnn, tmp_path):
    model, calib, x, ref32 = cnn
    ref8 = ort_run(quantize_int8(model, calib), {"input": x})[0]
    art = convert(model, tmp_path, "int8", calib=calib)
    out = run_tflite(art.path, x)[0]
    assert art.io_dtype == "float32" and "QUANTIZE" in art.details["op_counts"]
    span = float(ref32.max() - ref32.min())
    # same scales on both sides: the two int8 engines agree far better than either agrees with fp32
    assert np.abs(out - ref8).max() <= 0.08 * span
    assert np.abs(out - ref8).mean() <= 0.02 * span
    assert (out.argmax(1) == ref8.argmax(1)).mean() >= 0.9
    cos = (out * ref32).sum(1) / np.linalg.norm(out, axis=1) / np.linalg.norm(ref32, axis=1)
    assert cos.min() > 0.98


@pytest.mark.parametrize("io_dtype", ["int8", "uint8"])
def test_quantized_model_io_is_handled_by_the_backend(cnn, tmp_path, io_dtype):
    model, calib, x, _ = cnn
    base = run_tflite(convert(model, tmp_path, "int8", calib=calib, name="f.tflite").path, x)[0]
    art = convert(model, tmp_path, "int8", calib=calib, name=f"{io_dtype}.tflite", io_dtype=io_dtype)
    be = open_backend("tflite", art.path)
    assert art.io_dtype == io_dtype and be._input["dtype"] == np.dtype(io_dtype)
    out = run_tflite(art.path, x)[0]
    out_step = float(be.interp.get_output_details()[0]["quantization"][0])
    assert np.abs(out - base).max() <= out_step + 1e-6     # same graph; input rounding is the only difference


def test_dynamic_range_and_fp16_stay_close_to_float(cnn, tmp_path):
    model, calib, x, ref32 = cnn
    span = float(ref32.max() - ref32.min())
    dyn = convert(model, tmp_path, "int8", calib=calib, name="dyn.tflite", int8_mode="dynamic")
    fp16 = convert(model, tmp_path, "fp16", name="fp16.tflite")
    assert "QUANTIZE" not in dyn.details["op_counts"] and dyn.details["op_versions"]["CONV_2D"] >= 5
    assert fp16.details["op_counts"]["DEQUANTIZE"] >= 1
    assert np.abs(run_tflite(dyn.path, x)[0] - ref32).max() <= 0.05 * span
    np.testing.assert_allclose(run_tflite(fp16.path, x)[0], ref32, atol=2e-3 * span, rtol=0)


def test_int4_fully_connected_weights(tmp_path):
    model = clean_model(build_mlp(hidden=64, layers=2, in_features=32, num_classes=10, seed=1))
    x = np.random.default_rng(0).uniform(-1, 1, (64, 32)).astype(np.float32)
    calib = calibrate(model, x, progress=False)
    i8 = convert(model, tmp_path, "int8", calib=calib, name="i8.tflite")
    i4 = convert(model, tmp_path, "int4", calib=calib, name="i4.tflite")
    assert i4.details["int4_ops"] == ["FULLY_CONNECTED"] and any("int4" in n for n in i4.notes)
    assert i4.details["int4_check"]["same_as_plan"]
    assert i4.path.stat().st_size < 0.65 * i8.path.stat().st_size
    from converters.int4 import PER_CHANNEL, plan_rtn
    ref4 = ort_run(plan_rtn(model, PER_CHANNEL).apply(model), {"input": x})[0]       # the int4-rounded network
    ref32 = ort_run(model, {"input": x})[0]
    out4 = run_tflite(i4.path, x)[0]
    span = float(ref32.max() - ref32.min())
    # the int4 artifact computes the int4-rounded network, up to int8 activation rounding (and rare
    # clipping: the activation ranges were calibrated on the float network)
    assert np.percentile(np.abs(out4 - ref4), 99) <= 0.03 * span
    assert np.abs(out4 - ref4).mean() < 0.1 * np.abs(out4 - ref32).mean()


def test_float_islands_dynamic_div_and_excluded_nodes(tmp_path):
    from tflite_util import calibration, op_cases
    model = op_cases()["div_dynamic"]
    x = np.random.default_rng(0).standard_normal((16, 1, 4, 8, 8)).astype(np.float32)
    calib = calibration(model, x[:, 0])
    art = convert(model, tmp_path, "int8", calib=calib)               # no int8 DIV kernel: float island
    assert art.details["op_counts"]["DIV"] == 1 and art.details["op_counts"]["DEQUANTIZE"] >= 2
    ref = ort_run(model, {"x": x[0]})[0]
    assert np.abs(run_tflite(art.path, x[0])[0] - ref).max() <= 0.05 * float(ref.max() - ref.min())


def test_nodes_to_exclude_stay_float(cnn, tmp_path):
    model, calib, x, ref32 = cnn
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    art = convert(model, tmp_path, "int8", calib=calib, nodes_to_exclude=[conv.name or conv.output[0]])
    assert art.details["float_nodes"] == [conv.name or conv.output[0]] and any("float" in n for n in art.notes)
    out = run_tflite(art.path, x)[0]
    assert (out.argmax(1) == ref32.argmax(1)).mean() >= 0.9


def test_int8_bias_correction_removes_the_mean_shift_of_weight_rounding(tmp_path):
    """Inputs with a large per-channel mean make weight rounding shift each output's mean; the
    emitter's bias correction (on by default) takes most of that shift out, as the ONNX recipe does."""
    from onnx import TensorProto, helper
    r = np.random.default_rng(3)
    w = r.normal(0, 0.05, (16, 32, 3, 3)).astype(np.float32)
    b = np.zeros(16, np.float32)
    g = helper.make_graph([helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv", pads=[1, 1, 1, 1])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 32, 12, 12])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 12, 12])],
                          [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    x = (r.normal(0, 0.3, (24, 32, 12, 12)) + 4.0).astype(np.float32)
    calib = calibrate(model, x[:16], progress=False)
    ref = np.concatenate([ort_run(model, {"x": s[None]})[0] for s in x[16:]])

    def mean_shift(**options) -> float:
        art = convert(model, tmp_path / str(len(options)), "int8", calib=calib, layout="NCHW", **options)
        out = np.concatenate([run_tflite(art.path, s[None])[0] for s in x[16:]])
        return float(np.abs((out - ref)[:, :, 1:-1, 1:-1].mean(axis=(0, 2, 3))).mean())   # padding aside
    assert mean_shift() < 0.5 * mean_shift(bias_correction=False)
