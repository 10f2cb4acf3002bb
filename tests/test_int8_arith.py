"""int8 arithmetic: exact-integer evaluation, pair-safe weights, per-figure arithmetic, host kinds.

Every test here passes on x86 hosts with and without VNNI (and on ARM): host kinds are forced
with EDGEINFER_HOST_INT8_KERNELS where the behaviour depends on them, and no test asserts what
this host's saturating kernels compute.
"""
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper
from onnx.reference import ReferenceEvaluator

from converters.calibrate import calibrate
from converters.clean import clean_model
from converters.exact_int import int_conv, integer_nodes, run_exact
from converters.quantize_onnx import quantize_int8
from converters.sensitivity import mixed_range_concats
from edgeinfer import Predictor, int8_arith
from edgeinfer.bundle import read_manifest
from edgeinfer.preprocess import PreprocessConfig, preprocess_image
from edgeinfer.profiles import all_profiles

from conftest import DIGITS, edgeinfer_cli


def _digits_inputs(folder: str, limit: int) -> np.ndarray:
    raw = onnx.load(DIGITS / "digits.onnx")
    cfg = PreprocessConfig.from_dict(json.loads({p.key: p.value for p in raw.metadata_props}["edgeinfer.preprocess"]))
    files = sorted((DIGITS / folder).rglob("*.png"))[:limit]
    return np.stack([preprocess_image(f, cfg, (32, 32))[0] for f in files]).astype(np.float32)


def _session(model: onnx.ModelProto, optimize: bool = True) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if not optimize:   # unfused QDQ: the ONNX spec's float semantics, no integer kernels at all
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _run(model, x, optimize=True) -> np.ndarray:
    s = _session(model, optimize)
    name = s.get_inputs()[0].name
    return np.concatenate([s.run(None, {name: x[i:i + 1]})[0] for i in range(len(x))])


@pytest.fixture(scope="module")
def digits_q():
    model = clean_model(onnx.load(DIGITS / "digits.onnx"))
    calib = calibrate(model, _digits_inputs("calib", 64), progress=False)
    held = _digits_inputs("heldout", 60)
    return model, calib, held


def _output_step(qmodel: onnx.ModelProto) -> float:
    """Scale of the QuantizeLinear that produces the graph output's last quantized value."""
    out = qmodel.graph.output[0].name
    inits = {t.name: numpy_helper.to_array(t) for t in qmodel.graph.initializer}
    q = next(n for n in qmodel.graph.node if n.op_type == "QuantizeLinear" and out in n.input[0])
    return float(inits[q.input[1]])


@pytest.mark.parametrize("group,stride,pad,dil", [(1, 1, 1, 1), (1, 2, 0, 1), (4, 1, 1, 2), (8, 2, 1, 1), (2, 1, 0, 1)])
def test_int_conv_is_exact(group, stride, pad, dil):
    rng = np.random.default_rng(group * 10 + stride)
    x = rng.integers(-128, 128, (1, 8, 11, 9)).astype(np.float64)
    w = rng.integers(-127, 128, (8, 8 // group, 3, 3)).astype(np.float64)
    attrs = {"group": group, "strides": [stride, stride], "pads": [pad] * 4, "dilations": [dil, dil]}
    got = int_conv(x, w, attrs)
    node = onnx.helper.make_node("Conv", ["x", "w"], ["y"], group=group, strides=[stride] * 2, pads=[pad] * 4,
                                 dilations=[dil] * 2)
    graph = onnx.helper.make_graph([node], "g", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.DOUBLE, None),
                                                 onnx.helper.make_tensor_value_info("w", onnx.TensorProto.DOUBLE, None)],
                                   [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.DOUBLE, None)])
    want = ReferenceEvaluator(onnx.helper.make_model(graph)).run(None, {"x": x, "w": w})[0]
    np.testing.assert_array_equal(got, want)
    assert np.all(got == np.round(got))


def test_exact_int_agrees_with_the_qdq_spec_semantics(digits_q):
    model, calib, held = digits_q
    q = quantize_int8(model, calib, activation_dtype="uint8")          # full 8-bit weights
    assert len(integer_nodes(q)) >= 10
    exact = run_exact(q, held)[0]
    spec = _run(q, held, optimize=False)
    step = _output_step(q)
    # the two differ only where a requantization lands on a rounding boundary
    assert np.abs(exact - spec).max() <= 3 * step
    assert (exact.argmax(1) == _run(model, held).argmax(1)).mean() >= 0.98


def test_pair_safe_weights_bound_every_adjacent_pair(digits_q):
    model, calib, _ = digits_q
    q = quantize_int8(model, calib, activation_dtype="uint8", pair_safe=True)
    inits = {t.name: numpy_helper.to_array(t) for t in q.graph.initializer}
    producers = {o: n for n in q.graph.node for o in n.output}
    checked = depthwise = 0
    for node in q.graph.node:
        if node.op_type not in ("Conv", "Gemm"):
            continue
        wq = inits[producers[node.input[1]].input[0]].astype(np.int32)
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        if node.op_type == "Conv" and group > 1 and wq.shape[1] == 1:
            depthwise += 1
            assert np.abs(wq).reshape(len(wq), -1).max(axis=1).min() == 127   # keeps full 8 bits
            continue
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        if wq.ndim == 4:
            rows = [wq.reshape(len(wq), -1), wq.transpose(0, 2, 3, 1).reshape(len(wq), -1)]   # both K orders
        else:
            rows = [wq if trans_b else wq.T]          # (outputs, K)
        for r in rows:
            r = np.pad(r, ((0, 0), (0, r.shape[1] % 2)))
            pair = r[:, 0::2] * 255 + r[:, 1::2] * 255      # the largest |sum| uint8 inputs can make
            assert np.abs(np.where(r[:, 0::2] * r[:, 1::2] >= 0, pair, 0)).max() <= 32767
        checked += 1
    assert checked >= 7 and depthwise >= 6


def test_pair_safe_model_computes_the_same_on_this_host_as_exact_int(digits_q):
    """Whatever this host's int8 kernels (VNNI or not), a pair-safe model cannot saturate them."""
    model, calib, held = digits_q
    q = quantize_int8(model, calib, activation_dtype="uint8", pair_safe=True)
    host, exact = _run(q, held), run_exact(q, held)[0]
    assert np.abs(host - exact).max() <= 3 * _output_step(q)
    assert (host.argmax(1) == exact.argmax(1)).all()


def test_host_kind_from_cpu_flags(monkeypatch):
    int8_arith._detect.cache_clear()
    monkeypatch.delenv(int8_arith.ENV_OVERRIDE, raising=False)
    monkeypatch.setattr(int8_arith.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(int8_arith, "_cpu_flags", lambda: {"avx2", "fma"})
    assert int8_arith.host_int8_kernels() == "x86-avx2" and int8_arith.saturates("x86-avx2")
    int8_arith._detect.cache_clear()
    monkeypatch.setattr(int8_arith, "_cpu_flags", lambda: {"avx2", "avx512_vnni"})
    assert int8_arith.host_int8_kernels() == "x86-vnni"
    int8_arith._detect.cache_clear()
    monkeypatch.setattr(int8_arith.platform, "machine", lambda: "aarch64")
    monkeypatch.setattr(int8_arith, "_cpu_flags", lambda: {"asimd", "asimddp"})
    assert int8_arith.host_int8_kernels() == "arm-dotprod"
    int8_arith._detect.cache_clear()
    monkeypatch.setenv(int8_arith.ENV_OVERRIDE, "arm-neon")
    assert int8_arith.host_int8_kernels() == "arm-neon"
    int8_arith._detect.cache_clear()


def test_every_profile_states_its_int8_kernels():
    kinds = {p.name: p.int8_kernels for p in all_profiles()}
    assert kinds["generic-x86-64"] == "x86-avx2" and kinds["raspberry-pi-4"] == "arm-neon"
    assert kinds["raspberry-pi-5"] == "arm-dotprod"
    assert all(p.data["recipe"].get("int8_kernels") in int8_arith.KERNELS for p in all_profiles())


@pytest.fixture(scope="module", params=["x86-avx2", "x86-vnni"])
def bundles_on_host_kind(request, tmp_path_factory):
    """The digits sample for an ARM and an x86 profile, converted on a host of the given kind."""
    out = tmp_path_factory.mktemp(f"host-{request.param}")
    mp = pytest.MonkeyPatch()
    mp.setenv(int8_arith.ENV_OVERRIDE, request.param)
    edgeinfer_cli("convert", DIGITS / "digits.onnx", "--profile", "raspberry-pi-4", "--profile", "generic-x86-64",
                  "--formats", "onnx", "--quant", "int8", "--calib", DIGITS / "calib", "-o", out, "--quiet", check=True)
    yield request.param, out
    mp.undo()


def test_verification_names_the_arithmetic_that_matches_the_target(bundles_on_host_kind):
    kind, out = bundles_on_host_kind
    pi = read_manifest(out / "digits-raspberry-pi-4")["artifacts"][0]
    x86 = read_manifest(out / "digits-generic-x86-64")["artifacts"][0]
    assert pi["details"]["pair_safe_weights"] is False and x86["details"]["pair_safe_weights"] is True
    assert x86["verification"]["arithmetic"] == f"host-ort-{kind}" and "host_check" not in x86["verification"]
    assert x86["verification"]["top1_agreement"] >= 0.95
    if kind == "x86-avx2":   # this host would saturate the Pi's full 8-bit weights: exact integers instead
        assert pi["verification"]["arithmetic"] == "exact-int"
        assert pi["verification"]["host_check"]["arithmetic"] == "host-ort-x86-avx2"
    else:
        assert pi["verification"]["arithmetic"] == "host-ort-x86-vnni" and "host_check" not in pi["verification"]
    if kind == "x86-avx2" or int8_arith._detect() == kind:   # figures are real only where the host is that kind
        assert pi["verification"]["top1_agreement"] >= 0.95 and pi["verification"]["cosine"] > 0.99


def test_run_warns_once_where_the_host_would_saturate(bundles_on_host_kind, monkeypatch):
    _, out = bundles_on_host_kind
    images = sorted((DIGITS / "images").glob("*.png"))[:3]
    monkeypatch.setenv(int8_arith.ENV_OVERRIDE, "x86-avx2")
    proc = edgeinfer_cli("run", out / "digits-raspberry-pi-4", *images, check=True)
    assert proc.stderr.count("saturates 16-bit pair sums") == 1
    assert "saturates" not in edgeinfer_cli("run", out / "digits-generic-x86-64", *images, check=True).stderr
    monkeypatch.setenv(int8_arith.ENV_OVERRIDE, "arm-neon")
    assert "saturates" not in edgeinfer_cli("run", out / "digits-raspberry-pi-4", *images, check=True).stderr
    pred = Predictor(out / "digits-raspberry-pi-4")
    assert pred.describe()["warnings"] == []


def test_mixed_range_concat_is_a_candidate():
    nodes = [onnx.helper.make_node("Concat", ["boxes", "scores"], ["cat"], name="cat", axis=1),
             onnx.helper.make_node("Concat", ["a", "b"], ["ab"], name="same", axis=1)]
    graph = onnx.helper.make_graph(nodes, "g", [], [])
    ranges = {"boxes": (0.0, 640.0), "scores": (0.0, 1.0), "a": (-3.0, 3.0), "b": (0.0, 6.0)}
    assert mixed_range_concats(onnx.helper.make_model(graph), ranges) == ["cat"]


def test_clean_names_every_node_uniquely():
    from converters.clean import name_nodes
    nodes = [onnx.helper.make_node("Relu", ["x"], ["a"]), onnx.helper.make_node("Relu", ["a"], ["b"], name="Relu_0"),
             onnx.helper.make_node("Relu", ["b"], ["c"], name="Relu_0"), onnx.helper.make_node("Relu", ["c"], ["d"])]
    model = onnx.helper.make_model(onnx.helper.make_graph(nodes, "g", [], []))
    name_nodes(model)
    names = [n.name for n in model.graph.node]
    assert len(set(names)) == 4 and names[1] == "Relu_0" and all(names)


def test_int8_artifact_passes_the_onnx_checker(digits_q):
    model, calib, _ = digits_q
    onnx.checker.check_model(quantize_int8(model, calib, activation_dtype="uint8", pair_safe=True))


@pytest.mark.parametrize("key", ["profile", "calibration", "source"])
def test_manifest_objects_of_the_wrong_type_are_one_line_errors(bundles_on_host_kind, tmp_path, key):
    """Found by the 1,000-input CLI fuzz: ``"profile": 1.5`` was an internal error in ``run``."""
    import shutil
    _, out = bundles_on_host_kind
    copy = tmp_path / "b"
    shutil.copytree(out / "digits-generic-x86-64", copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest[key] = 1.5
    (copy / "manifest.json").write_text(json.dumps(manifest))
    proc = edgeinfer_cli("run", copy, sorted((DIGITS / "images").glob("*.png"))[0])
    assert proc.returncode == 2 and f"'{key}' must be a JSON object" in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def _coarse_pair_safe(w: np.ndarray, orders: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The earlier recipe: each row's scale grown to its largest pair sum / 127 (every pair fits unchanged)."""
    from converters.quant_math import pair_sums
    reach = np.max([pair_sums(w[:, o]) for o in orders], axis=0)
    s = np.maximum(np.abs(w).max(axis=1), reach) / 127.0
    return np.round(w / s[:, None]), s


def test_pair_safe_rounding_fits_every_order_and_beats_a_coarser_scale():
    from converters.quant_math import pair_safe_per_channel
    rng = np.random.default_rng(3)
    w = rng.standard_t(3, (32, 8 * 3 * 3))              # heavy tails: some rows have two large neighbours
    orders = [np.arange(w.shape[1]), np.arange(w.shape[1]).reshape(8, 3, 3).transpose(1, 2, 0).ravel()]
    q, s = pair_safe_per_channel(w, orders)
    qi = q.astype(np.int32)
    for o in orders:
        r = qi[:, o]
        a, b = r[:, 0::2], r[:, 1::2]
        assert np.where(a * b > 0, np.abs(a) + np.abs(b), 0).max() <= 128
    err = ((qi * s[:, None] - w) ** 2).sum(axis=1)
    cq, cs = _coarse_pair_safe(w, orders)
    coarse = ((cq * cs[:, None] - w) ** 2).sum(axis=1)
    assert np.all(err <= coarse * (1 + 1e-4)) and err.sum() < 0.97 * coarse.sum()


def _conv_model(group: int) -> onnx.ModelProto:
    rng = np.random.default_rng(group)
    c, m = 8, 8 if group > 1 else 16
    w = numpy_helper.from_array(rng.standard_t(3, (m, c // group, 3, 3)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.normal(0, 0.1, m).astype(np.float32), "b")
    node = onnx.helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv", group=group, pads=[1] * 4)
    graph = onnx.helper.make_graph([node], "g", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, c, 12, 12])],
                                   [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, m, 12, 12])], [w, b])
    return onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 13)])


@pytest.mark.parametrize("group", [1, 8])
def test_bias_correction_removes_the_mean_shift_of_weight_rounding(group):
    """Measured with the ONNX spec's QDQ float semantics (unfused): no host kernel is involved."""
    model = _conv_model(group)
    rng = np.random.default_rng(7)
    x = (rng.random((24, 8, 12, 12)) * 2 + rng.random((1, 8, 1, 1)) * 3).astype(np.float32)  # channel means far from 0
    calib = calibrate(model, x, progress=False)
    want = _run(model, x)

    def shift(**kw):
        out = _run(quantize_int8(model, calib, pair_safe=group == 1, **kw), x, optimize=False)
        return np.abs((out - want)[:, :, 1:-1, 1:-1].mean(axis=(0, 2, 3))).mean()   # away from the padded border

    plain, corrected = shift(bias_correction=False), shift()
    assert corrected < 0.3 * plain


def test_saturation_warning_tolerates_a_malformed_manifest_entry():
    from edgeinfer.int8_arith import saturation_warning
    # details that are not an object count as none: full 8-bit weights are not claimed, so no warning
    assert saturation_warning({"format": "onnx", "precision": "int8", "details": 0.5, "file": "m.onnx"}) is None
    assert saturation_warning(0.5) is None
