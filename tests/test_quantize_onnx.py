import numpy as np
import onnx
import onnxruntime as ort
import pytest
from numpy.testing import assert_allclose

from converters.calibrate import calibrate, collect_ranges
from converters.clean import clean_model, count_ops
from converters.quantize_onnx import gemm_to_matmul, quantize_int8, to_fp16
from edgeinfer.errors import EdgeInferError
from model_zoo import build_mlp, build_tiny_cnn


def _run(model, x):
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(None, {s.get_inputs()[0].name: x})[0]


@pytest.fixture(scope="module")
def cnn():
    return clean_model(build_tiny_cnn())


@pytest.fixture(scope="module")
def samples():
    return np.random.default_rng(0).standard_normal((16, 3, 16, 16)).astype(np.float32)


def test_clean_folds_batchnorm_and_keeps_outputs(samples):
    raw = build_tiny_cnn()
    cleaned = clean_model(raw)
    assert "BatchNormalization" in count_ops(raw) and "BatchNormalization" not in count_ops(cleaned)
    assert_allclose(_run(cleaned, samples), _run(raw, samples), rtol=1e-4, atol=1e-4)


def test_calibration_methods(cnn, samples):
    mm = collect_ranges(cnn, samples, "minmax", progress=False)
    pc = collect_ranges(cnn, samples, "percentile", progress=False)
    en = collect_ranges(cnn, samples, "entropy", progress=False)
    inp = cnn.graph.input[0].name
    assert mm[inp] == pytest.approx((float(samples.min()), float(samples.max())), rel=1e-6)
    assert set(mm) == set(pc) == set(en)
    # percentile/entropy clip outliers: never wider than the observed min/max
    for name in mm:
        assert pc[name][1] <= mm[name][1] + 1e-6 and en[name][1] <= mm[name][1] + 1e-6
    with pytest.raises(EdgeInferError, match="unknown calibration method"):
        collect_ranges(cnn, samples, "magic", progress=False)


def test_int8_uses_the_shared_ranges(cnn, samples):
    calib = calibrate(cnn, samples, progress=False)
    q = quantize_int8(cnn, calib, activation_dtype="uint8")
    inits = {t.name: t for t in q.graph.initializer}
    inp = cnn.graph.input[0].name
    qnode = next(n for n in q.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == inp)
    scale = float(onnx.numpy_helper.to_array(inits[qnode.input[1]]))
    lo, hi = calib.ranges[inp]
    assert scale == pytest.approx((hi - lo) / 255, rel=1e-5)
    out, ref = _run(q, samples), _run(cnn, samples)
    assert (out.argmax(1) == ref.argmax(1)).mean() >= 0.9
    assert np.corrcoef(out.ravel(), ref.ravel())[0, 1] > 0.99


def test_int8_needs_calibration(cnn):
    with pytest.raises(EdgeInferError, match="--calib"):
        quantize_int8(cnn, None)


def test_fp16_weights(cnn, samples):
    h = to_fp16(cnn)
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in h.graph.initializer)
    assert h.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert_allclose(_run(h, samples), _run(cnn, samples), atol=5e-2, rtol=5e-2)


def test_gemm_rewrite_is_exact():
    m = clean_model(build_mlp(hidden=64, layers=2, in_features=32, use_gemm=True))
    r = gemm_to_matmul(m)
    assert "Gemm" not in count_ops(r) and count_ops(r)["MatMul"] >= 2
    x = np.random.default_rng(1).standard_normal((4, 32)).astype(np.float32)
    assert_allclose(_run(r, x), _run(m, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", ["percentile", "entropy"])
def test_histogram_methods_take_any_sample_count(cnn, method):
    odd = np.random.default_rng(3).standard_normal((13, 3, 16, 16)).astype(np.float32)
    ranges = collect_ranges(cnn, odd, method, progress=False)
    assert all(lo <= hi for lo, hi in ranges.values())
