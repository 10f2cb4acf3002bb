import numpy as np
import onnx
import onnxruntime as ort
import pytest
from numpy.testing import assert_allclose

from converters.calibrate import calibrate, collect_ranges
from converters.clean import clean_model, count_ops
from converters.ort_session import cpu_session
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


def _reshape_slice_tail(opset: int) -> onnx.ModelProto:
    """Conv -> Reshape -> Slice -> Add, as a YOLOv8 export's box decode reads its DFL output."""
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((8, 3, 1, 1)).astype(np.float32), "w"),
             numpy_helper.from_array(np.zeros(8, np.float32), "b"),
             numpy_helper.from_array(np.array([1, 8, 64], np.int64), "shape"),
             *(numpy_helper.from_array(np.array([v], np.int64), n) for v, n in ((2, "st"), (4, "en"), (1, "ax"))),
             numpy_helper.from_array(np.full((1, 1, 64), 0.5, np.float32), "c")]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv"),
             helper.make_node("Reshape", ["y", "shape"], ["r"], name="reshape"),
             helper.make_node("Slice", ["r", "st", "en", "ax"], ["s"], name="slice"),
             helper.make_node("Add", ["c", "s"], ["out"], name="add")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 2, 64])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


@pytest.mark.parametrize("act", ["int8", "uint8"])
def test_int8_graph_of_an_opset22_export_loads_in_onnx_runtime(act):
    """ORT on x86 refused int8-activation QDQ graphs at opset 21+ whose quantized tensor passes a
    Slice kept in float (onnxruntime#25526; a real Ultralytics YOLOv8n export hit it): the int8
    graph is relabelled to opset 20 and loads, computing what the float-faked QDQ graph computes."""
    from converters.quantize_onnx import QDQ_OPSET, default_opset
    model = _reshape_slice_tail(22)
    x = np.random.default_rng(1).standard_normal((8, 3, 8, 8)).astype(np.float32)
    q = quantize_int8(model, calibrate(model, x, progress=False), activation_dtype=act, nodes_to_exclude=["slice", "add"],
                     pair_safe=True)
    assert default_opset(q) == QDQ_OPSET
    onnx.checker.check_model(q, full_check=True)
    got = _run(q, x[:1])
    assert got.shape == (1, 2, 64)
    step = max(float(onnx.numpy_helper.to_array(t)) for t in q.graph.initializer
               if t.name.endswith("_scale") and not t.dims)   # the activation scales
    faked = cpu_session(q, fuse_qdq=False).run(None, {"x": x[:1]})[0]
    assert np.abs(got - faked).max() <= 1.01 * step   # at most one rounding step apart
    assert np.abs(got - _run(model, x[:1])).max() < 0.05 * np.abs(_run(model, x[:1])).max()


def test_int8_graph_keeps_an_opset_the_ops_need():
    """A graph valid only at its own opset (int4 DequantizeLinear needs opset 21) is not relabelled."""
    from onnx import TensorProto, helper

    from converters.quantize_onnx import lower_qdq_opset
    w = helper.make_tensor("w", TensorProto.INT4, [4], [1, -2, 3, -4])
    s = helper.make_tensor("s", TensorProto.FLOAT, [], [0.5])
    g = helper.make_graph([helper.make_node("DequantizeLinear", ["w", "s"], ["y"])], "g", [],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])], [w, s])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])
    assert not lower_qdq_opset(model) and model.opset_import[0].version == 21


def _conv_between_quantized_ops() -> onnx.ModelProto:
    """x -> Conv a -> Relu -> Conv b -> Sigmoid. a's first channel is 100x larger than the others and
    b's weights on it 100x smaller: per-tensor int8 weights for b round those to zero."""
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(1)
    wa = rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.3
    wa[0] *= 100
    wb = rng.standard_normal((4, 8, 1, 1)).astype(np.float32)
    wb[:, 0] *= 1e-2
    nodes = [helper.make_node("Conv", ["x", "wa"], ["a"], name="a", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "wb"], ["b"], name="b"),
             helper.make_node("Sigmoid", ["b"], ["y"], name="sig")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("b", TensorProto.FLOAT, [1, 4, 8, 8]),
                               helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])],
                              [numpy_helper.from_array(wa, "wa"), numpy_helper.from_array(wb, "wb")])
    return clean_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def test_a_conv_kept_in_float_runs_in_float_under_onnx_runtime():
    model = _conv_between_quantized_ops()
    x = np.random.default_rng(2).standard_normal((16, 1, 3, 8, 8)).astype(np.float32)
    calib = calibrate(model, x.reshape(16, 3, 8, 8), progress=False)
    q = quantize_int8(model, calib, nodes_to_exclude=("b",), activation_dtype="uint8", bias_correction=False)
    b_node = next(n for n in q.graph.node if n.name == "b")
    producer = {o: n for n in q.graph.node for o in n.output}
    assert producer[b_node.input[0]].op_type == "Relu"   # reads a float Relu, not a DequantizeLinear
    ref = np.concatenate([_run(model, xi) for xi in x])
    got = np.concatenate([_run(q, xi) for xi in x])
    rel = np.abs(got - ref).mean() / np.abs(ref).mean()
    assert rel < 0.05, rel
