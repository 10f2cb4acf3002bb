"""INT4: GPTQ rounding, one plan stored identically by every emitter, mixed 4/8 bits, the floor."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import DIGITS
from tflite_util import calibration, ort_run, tiny_cnn

from converters.clean import clean_model
from converters.emitters.api import EmitRequest
from converters.int4 import BLOCK32, PER_CHANNEL, build_plans, find_layers, plan_rtn
from converters.int4.gptq import dequantize, quantize_matrix
from converters.int4.mixed import search
from converters.int4.plan import Int4Plan
from converters.pipeline import ConvertOptions, convert
from edgeinfer.errors import EdgeInferError


def _correlated_inputs(k: int, n: int = 4096, seed: int = 0) -> np.ndarray:
    r = np.random.default_rng(seed)
    mix = r.standard_normal((k, k)) * np.linspace(2.0, 0.05, k)      # strongly unequal, correlated channels
    return r.standard_normal((n, k)) @ mix


def test_gptq_beats_round_to_nearest_on_the_layer_output():
    r = np.random.default_rng(1)
    w = r.standard_normal((64, 128)).astype(np.float32)
    x = _correlated_inputs(128)
    h = (x.T @ x / len(x))[None]
    q_rtn, s_rtn = quantize_matrix(w, None, 4, 32)
    q_gptq, s_gptq = quantize_matrix(w, h, 4, 32)
    assert q_gptq.min() >= -8 and q_gptq.max() <= 7 and s_gptq.shape == (64, 4)
    err = lambda q, s: np.linalg.norm(x @ (dequantize(q, s) - w).T)           # noqa: E731
    assert err(q_gptq, s_gptq) < 0.8 * err(q_rtn, s_rtn)


def test_per_tensor_and_8_bit_ranges():
    w = np.random.default_rng(2).standard_normal((10, 64)).astype(np.float32)
    q, s = quantize_matrix(w, None, 4, 64, per_tensor=True)
    assert np.unique(s).size == 1
    q8, s8 = quantize_matrix(w, None, 8, 64)
    assert q8.min() >= -127 and np.abs(dequantize(q8, s8) - w).max() < np.abs(dequantize(q, s) - w).max()


@pytest.fixture(scope="module")
def tiny():
    model = clean_model(tiny_cnn(seed=3, size=16))
    x = np.random.default_rng(0).uniform(-1, 1, (48, 3, 16, 16)).astype(np.float32)
    return model, x


def _cosine(ref, out) -> float:
    a, b = ref[0].ravel().astype(np.float64), out[0].ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_every_format_stores_the_plan_integers(tiny, tmp_path):
    from converters.emitters.coreml.emitter import emit as emit_coreml
    from converters.emitters.onnx_emitter import emit as emit_onnx
    from converters.emitters.tflite.emitter import emit as emit_tflite
    model, x = tiny
    plans = build_plans(model, [BLOCK32, PER_CHANNEL], x, target=0.0, agreement=lambda r, o: 1.0, progress=False)
    block, chan = plans["block32"], plans["channel"]
    assert block.method == "gptq" and set(block.layers) == {l.node for l in find_layers(model)[0]}
    onnx_art = emit_onnx(EmitRequest(model=model, precision="int4", out_path=tmp_path / "m.onnx", int4=block))
    cml = emit_coreml(EmitRequest(model=model, precision="int4", out_path=tmp_path / "m.mlpackage", int4=block,
                                  options={"coreml_target": "iOS18"}))
    tfl = emit_tflite(EmitRequest(model=model, precision="int4", out_path=tmp_path / "m.tflite", int4=chan,
                                  calibration=calibration(model, x[:16]), input_layout="NHWC"))
    checks = [a.details["int4_check"] for a in (onnx_art, cml, tfl)]
    assert all(c["same_as_plan"] and c["layers_checked"] == len(block.layers) for c in checks)
    assert checks[0]["plan_int_digest"] == checks[1]["plan_int_digest"] == block.int_digest()
    assert checks[2]["plan_int_digest"] == chan.int_digest() != block.int_digest()
    # the ONNX artifact computes exactly the plan's dequantized network
    ref = ort_run(block.apply(model), {"x": x[:1]})[0]
    from converters.verify import run_artifact
    np.testing.assert_allclose(run_artifact(onnx_art, x[:1])[0], ref, rtol=1e-4, atol=1e-4)


def test_a_plan_the_format_cannot_store_is_refused(tiny, tmp_path):
    from converters.emitters.tflite.emitter import emit as emit_tflite
    model, x = tiny
    with pytest.raises(EdgeInferError, match="granularity block32 cannot be stored in tflite"):
        emit_tflite(EmitRequest(model=model, precision="int4", out_path=tmp_path / "m.tflite", int4=plan_rtn(model, BLOCK32),
                                calibration=calibration(model, x[:16]), input_layout="NHWC"))
    assert not (tmp_path / "m.tflite").exists()


def test_one_per_channel_plan_is_stored_identically_by_every_format(tiny, tmp_path):
    """With TFLite among the formats the shared granularity is per channel, and ONNX and Core ML store
    those very integers too."""
    from converters.emitters.coreml.emitter import emit as emit_coreml
    from converters.emitters.onnx_emitter import emit as emit_onnx
    from converters.int4 import shared_granularity
    model, x = tiny
    assert shared_granularity(["onnx", "coreml"]) == BLOCK32
    assert shared_granularity(["coreml", "onnx", "tflite"]) == PER_CHANNEL
    chan = plan_rtn(model, PER_CHANNEL)
    onnx_art = emit_onnx(EmitRequest(model=model, precision="int4", out_path=tmp_path / "m.onnx", int4=chan))
    cml = emit_coreml(EmitRequest(model=model, precision="int4", out_path=tmp_path / "m.mlpackage", int4=chan,
                                  options={"coreml_target": "iOS18"}))
    for art in (onnx_art, cml):
        c = art.details["int4_check"]
        assert c["same_as_plan"] and c["plan_int_digest"] == chan.int_digest() and c["layers_checked"] == len(chan.layers)
    from converters.verify import run_artifact
    np.testing.assert_allclose(run_artifact(onnx_art, x[:1])[0], ort_run(chan.apply(model), {"x": x[:1]})[0],
                               rtol=1e-4, atol=1e-4)


def test_mixed_search_promotes_layers_until_the_target(tiny):
    model, x = tiny
    layers, skipped = find_layers(model)
    base = build_plans(model, [BLOCK32], x, target=0.0, agreement=_cosine, mixed_search=False, progress=False)["block32"]
    from converters.int4 import quantize_layer
    from converters.int4.layers import weight_of
    cands = {4: dict(base.layers), 8: {l.node: quantize_layer(l, weight_of(model, l), None, 8, BLOCK32) for l in layers}}
    from converters.verify import run_reference
    ref = run_reference(model, x)
    c4 = _cosine(ref, run_reference(base.apply(model), x))
    c8 = _cosine(ref, run_reference(Int4Plan(BLOCK32, cands[8]).apply(model), x))
    assert c8 > c4
    target = c4 + 0.5 * (c8 - c4)
    res = search(model, base, cands, x, target, _cosine, progress=False)
    assert res.met and res.agreement >= target and 0 < sum(b == 8 for b in res.bits.values()) <= len(layers)
    assert res.curve[0]["layers_8bit"] == 0 and len(res.sensitivity) == len(layers)
    sizes = {p["layers_8bit"]: p["weight_bytes"] for p in res.curve}
    assert sizes[len(layers)] > sizes[0]
    missed = search(model, base, cands, x, 1.01, _cosine, progress=False)
    assert not missed.met and all(b == 8 for b in missed.bits.values())


def test_impossible_target_names_the_best_mix(tiny):
    model, x = tiny
    with pytest.raises(EdgeInferError, match=r"best mix \(\d+ of \d+ layers at 8 bits"):
        build_plans(model, [BLOCK32], x, target=1.01, agreement=_cosine, progress=False)


def test_pipeline_int4_onnx_and_tflite_with_calibration(tmp_path):
    """--quant int4 --formats onnx,tflite --calib: calibration runs for int4 (TFLite needs activation
    ranges), both artifacts verified, per-layer bits and sizes in the manifest."""
    res = convert(ConvertOptions(model=DIGITS / "digits.onnx", profiles=["generic-x86-64"], out_dir=tmp_path,
                                 quant=["int4"], formats=["onnx", "tflite"], calib_dir=DIGITS / "calib",
                                 calib_limit=48, progress=False))
    arts = {a["format"]: a for a in res.manifests[0]["artifacts"]}
    assert set(arts) == {"onnx", "tflite"}
    for a in arts.values():
        d = a["details"]
        assert d["int4_check"]["same_as_plan"] and d["int4"]["method"] == "gptq"
        search = d["int4"]["search"]      # the default rule: aim 0.93 for all-int4, else the byte budget above 0.9
        assert search["target"] == 0.93 and search["floor"] == 0.9 and search["met"] and "halfway" in search["rule"]
        assert d["int4"]["weight_bytes"] <= search["size_budget_bytes"] or search["agreement_on_calibration"] >= 0.93
        assert all(layer["bits"] in (4, 8) and layer["bytes"] > 0 for layer in d["int4"]["layers"])
        assert a["verification"]["top1_agreement"] >= 0.9
    # one plan for both (TFLite's granularity), its mix scored with int8 activations like the TFLite file
    assert arts["onnx"]["details"]["int4"]["granularity"] == arts["tflite"]["details"]["int4"]["granularity"] == "channel"
    assert arts["onnx"]["details"]["int4"]["int_digest"] == arts["tflite"]["details"]["int4"]["int_digest"]
    assert arts["tflite"]["details"]["int4"]["search"]["activations"] == "int8 (simulated)"
    assert arts["onnx"]["size"] < 0.35 * res.manifests[0]["source"]["size"]


def test_int4_without_calibration_images_is_refused(tmp_path):
    with pytest.raises(EdgeInferError, match="int4 need calibration images"):
        convert(ConvertOptions(model=DIGITS / "digits.onnx", profiles=["generic-x86-64"], out_dir=tmp_path,
                               quant=["int4"], formats=["onnx"], progress=False))
    assert not any(Path(tmp_path).iterdir())


def test_onnx_storage_of_mixed_dense_layers_reads_back_exactly():
    """MatMul [K, N] and Gemm weights at 4 bits (MatMulNBits) and 8 bits (DequantizeLinear): the
    stored integers read back as the plan's and the artifact computes the plan's network."""
    from model_zoo import build_mlp

    from converters.emitters.onnx_int4 import read_integers, store_plan
    from converters.int4 import quantize_layer
    from converters.int4.layers import weight_of
    for use_gemm in (False, True):
        model = clean_model(build_mlp(hidden=64, layers=3, in_features=32, use_gemm=use_gemm, seed=4))
        layers, _ = find_layers(model)
        plan = Int4Plan(BLOCK32, {l.node: quantize_layer(l, weight_of(model, l), None, 8 if i % 2 else 4, BLOCK32)
                                  for i, l in enumerate(layers)})
        stored, counts = store_plan(model, plan)
        assert counts["matmul_nbits"] >= 1 and counts["dense_dq"] >= 1
        assert plan.compare(read_integers(stored))["same_as_plan"]
        x = np.random.default_rng(5).standard_normal((4, 32)).astype(np.float32)
        np.testing.assert_allclose(ort_run(stored, {"input": x})[0], ort_run(plan.apply(model), {"input": x})[0],
                                   rtol=1e-4, atol=1e-4)


def test_compare_allows_layers_kept_in_float():
    model = clean_model(tiny_cnn(seed=3, size=16))
    plan = plan_rtn(model, PER_CHANNEL)
    first = next(iter(plan.layers))
    stored = {n: (lq.bits, lq.q) for n, lq in plan.layers.items() if n != first}
    assert not plan.compare(stored)["same_as_plan"]
    check = plan.compare(stored, {first})
    assert check["same_as_plan"] and check["kept_float"] == [first]


def test_onnx_int4_converts_older_opsets_whose_ops_changed(tmp_path):
    """Opset 21 is needed for blocked DequantizeLinear; ReduceMean's ``axes`` attribute (an input since
    opset 18) must be converted, not left invalid (a transformer's mean pooling)."""
    from onnx import helper

    from converters.emitters.onnx_emitter import emit as emit_onnx
    from converters.verify import run_artifact
    from tflite_util import make_model
    w = np.random.default_rng(6).standard_normal((32, 16)).astype(np.float32)
    model = make_model([helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
                        helper.make_node("ReduceMean", ["h"], ["y"], axes=[1], keepdims=0, name="pool")],
                       [("x", [1, 8, 32])], [("y", [1, 16])], {"w": w})
    art = emit_onnx(EmitRequest(model=model, precision="int4", out_path=tmp_path / "m.onnx"))
    assert art.details["op_counts"].get("MatMulNBits") == 1 and art.details["int4_check"]["same_as_plan"]
    x = np.random.default_rng(7).standard_normal((1, 8, 32)).astype(np.float32)
    ref = ort_run(plan_rtn(model, BLOCK32).apply(model), {"x": x})[0]
    np.testing.assert_allclose(run_artifact(art, x)[0], ref, rtol=1e-4, atol=1e-4)


def test_onnx_int4_weights_are_packed_two_per_byte():
    """An int4 Conv weight costs half a byte per value in the file (not one varint per pair)."""
    from onnx import TensorProto

    from converters.emitters.onnx_int4 import read_integers, store_plan
    model = clean_model(tiny_cnn(seed=3, size=16))
    plan = plan_rtn(model, BLOCK32)
    stored, _ = store_plan(model, plan)
    int4 = [t for t in stored.graph.initializer if t.data_type == TensorProto.INT4]
    assert int4 and plan.compare(read_integers(stored))["same_as_plan"]
    for t in int4:
        assert len(t.SerializeToString()) <= int(np.prod(t.dims)) // 2 + 64


def test_simulated_int8_activations_track_the_tflite_artifact(tiny, tmp_path):
    """The search's int8-activation simulation (the plan's weights, int8 activations) is closer to what
    the TFLite file storing that plan computes than the float-activation graph is, and its output
    lies on the int8 grid."""
    from converters.emitters.tflite.emitter import emit as emit_tflite
    from converters.int4.actsim import int8_activations
    from converters.quant_math import qparams_from_range
    from converters.verify import run_artifact
    model, x = tiny
    calib = calibration(model, x)
    plan = plan_rtn(model, PER_CHANNEL, bits=8)
    weights = plan.apply(model)
    sim = int8_activations(weights, calib.ranges)
    out_name = model.graph.output[0].name
    assert out_name in {o.name for o in sim.graph.output}
    n_q = sum(n.op_type == "QuantizeLinear" for n in sim.graph.node)
    assert 0 < n_q < len(model.graph.node) + 1          # fused Conv->Relu/Clip outputs are not simulated
    tfl = emit_tflite(EmitRequest(model=model, precision="int4", out_path=tmp_path / "m.tflite", calibration=calib,
                                  input_layout="NHWC", int4=plan))
    xs = x[:16]
    f = np.concatenate([ort_run(weights, {"x": xs[i:i + 1]})[0] for i in range(len(xs))])
    from converters.int4.evaluate import WeightSession        # how the search runs it: float fake quantization
    s = WeightSession(model, lambda m: int8_activations(m, calib.ranges)).run(
        xs, {lq.layer.weight: lq.weight() for lq in plan.layers.values()})[0]
    import onnxruntime as ort                                  # = the graph with no ONNX Runtime rewrite at all
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    plain = ort.InferenceSession(sim.SerializeToString(), so, providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(s, np.concatenate([plain.run(None, {"x": xs[i:i + 1]})[0] for i in range(len(xs))]),
                               rtol=1e-5, atol=1e-6)
    t = run_artifact(tfl, xs)[0]
    assert np.abs(s - t).mean() < 0.5 * np.abs(f - t).mean()
    scale, zp = qparams_from_range(*calib.ranges[out_name], "int8")
    grid = s / scale + zp
    np.testing.assert_allclose(grid, np.round(grid), atol=1e-3)


def test_mix_by_size_fills_the_byte_budget(tiny):
    """--int4-size: as many layers at 8 bits as fit in the budget (the ranking's longest prefix), even
    when all-int4 already meets the target; the result still reports the target."""
    model, x = tiny
    base = build_plans(model, [BLOCK32], x, target=0.0, agreement=_cosine, mixed_search=False, progress=False)["block32"]
    all4 = base.weight_bytes()
    fp32 = sum(4 * lq.q.size for lq in base.layers.values())
    for size, expect in ((all4 / fp32, 0), (1.0, len(base.layers))):
        plan = build_plans(model, [BLOCK32], x, target=0.0, agreement=_cosine, progress=False, size=size)["block32"]
        assert plan.bits_summary()["8"] == expect and plan.weight_bytes() <= size * fp32
    mid = build_plans(model, [BLOCK32], x, target=0.0, agreement=_cosine, progress=False, size=0.6 * all4 / fp32 + 0.4 * 0.25)
    plan = mid["block32"]
    assert 0 < plan.bits_summary()["8"] < len(base.layers) and plan.search["size_budget"] is not None


def test_default_rule_keeps_all_int4_when_it_meets_the_target_else_fills_the_halfway_budget(tiny):
    model, x = tiny
    from converters.int4.mixed import default_budget
    kw = dict(agreement=_cosine, progress=False, trace={})
    easy = build_plans(model, [BLOCK32], x, target=0.0, fill_floor=0.0, **kw)["block32"]
    assert easy.bits_summary()["8"] == 0 and easy.search["met"]
    cands = kw["trace"]["block32"]["candidates"]
    budget = default_budget(cands)
    assert sum(lq.nbytes for lq in cands[4].values()) < budget < sum(lq.nbytes for lq in cands[8].values())
    filled = build_plans(model, [BLOCK32], x, target=1.01, fill_floor=0.0, **kw)["block32"]
    order = kw["trace"]["block32"]["mix"].order
    k = filled.bits_summary()["8"]
    assert 0 < k < len(order) and filled.weight_bytes() <= budget == filled.search["size_budget_bytes"]
    one_more = Int4Plan(BLOCK32, {n: cands[8 if i <= k else 4][n] for i, n in enumerate(order)})
    assert one_more.weight_bytes() > budget                     # the longest prefix that fits
    # a floor the budget cannot meet: the smallest longer prefix that does (all 8 bits meets cosine ~1)
    from converters.verify import run_reference
    ref = run_reference(model, x)
    a_fill = kw["trace"]["block32"]["mix"].agreement
    a_all8 = _cosine(ref, run_reference(Int4Plan(BLOCK32, cands[8]).apply(model), x))
    assert a_all8 > a_fill
    above = build_plans(model, [BLOCK32], x, target=1.01, fill_floor=(a_fill + a_all8) / 2, **kw)["block32"]
    assert above.bits_summary()["8"] > k and above.search["met"]


def test_plans_are_deterministic(tiny):
    """Same inputs, same plan: the statistics' window sampling is seeded and every search run is
    a fixed ONNX Runtime computation (one mix, one integer digest, run after run)."""
    model, x = tiny
    runs = [build_plans(model, [PER_CHANNEL], x, target=1.01, fill_floor=0.0, agreement=_cosine,
                        progress=False)["channel"] for _ in range(2)]
    assert runs[0].digest() == runs[1].digest()
    assert runs[0].search["curve"] == runs[1].search["curve"]
    assert [lq.bits for lq in runs[0].layers.values()] == [lq.bits for lq in runs[1].layers.values()]


def test_weight_session_matches_a_model_with_the_plan_applied(tiny):
    from converters.int4.evaluate import WeightSession
    from converters.verify import run_reference
    model, x = tiny
    plan = plan_rtn(model, BLOCK32)
    ev = WeightSession(model)
    np.testing.assert_allclose(ev.run(x)[0], run_reference(model, x)[0], rtol=1e-5, atol=1e-5)
    got = ev.run(x, {lq.layer.weight: lq.weight() for lq in plan.layers.values()})[0]
    np.testing.assert_allclose(got, run_reference(plan.apply(model), x)[0], rtol=1e-5, atol=1e-5)
    assert not np.allclose(got, ev.run(x)[0], rtol=1e-5, atol=1e-5)     # the fed weights are used


@pytest.mark.parametrize("c,k,stride,pads,groups,dil", [(4, 3, 1, [1, 1, 1, 1], 4, 1), (3, 3, 2, [0, 1, 1, 0], 1, 1),
                                                        (6, 3, 1, [2, 2, 2, 2], 2, 2), (5, 1, 1, [0, 0, 0, 0], 1, 1)])
def test_conv_windows_match_a_padded_im2col(c, k, stride, pads, groups, dil):
    """The statistics' unfolded conv windows (gathered at sampled positions, zeros outside the
    input) are the rows of a plain im2col of the padded input."""
    from converters.int4.hessian import _conv_rows
    from converters.int4.layers import Layer
    x = np.random.default_rng(0).standard_normal((2, c, 7, 6)).astype(np.float32)
    layer = Layer("n", "Conv", "w", (c, c // groups, k, k), "x", groups=groups, kernel=k * k)
    rows = _conv_rows(x, layer, {"strides": [stride] * 2, "dilations": [dil] * 2, "pads": pads}, 10 ** 6,
                      np.random.default_rng(0))
    xp = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    ext = (k - 1) * dil + 1
    want = [xp[b, :, i:i + ext:dil, j:j + ext:dil].reshape(groups, -1)
            for b in range(2) for i in range(0, xp.shape[2] - ext + 1, stride) for j in range(0, xp.shape[3] - ext + 1, stride)]
    np.testing.assert_array_equal(rows, np.stack(want))
