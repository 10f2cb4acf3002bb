"""Nodes kept out of 8 bits: float everywhere, or 16-bit activations (A16W8) in ONNX for NPUs that run it."""
import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from edgeinfer.bundle import read_manifest
from edgeinfer.profiles import load_profile

from conftest import ROOT, edgeinfer_cli, region_asker

DET = ROOT / "samples" / "detector"


def _zero_point_types(model: onnx.ModelProto) -> dict[str, str]:
    """Activation tensor -> dtype of the QuantizeLinear that quantizes it."""
    inits = {t.name: t for t in model.graph.initializer}
    return {n.input[0]: str(numpy_helper.to_array(inits[n.input[2]]).dtype)
            for n in model.graph.node if n.op_type == "QuantizeLinear" and len(n.input) > 2 and n.input[2] in inits}


@pytest.fixture(scope="module")
def shapes_model():
    from converters.clean import clean_model
    return clean_model(onnx.load(str(DET / "shapes_det.onnx")))


@pytest.fixture(scope="module")
def shapes_calib(shapes_model):
    from converters.calibrate import calibrate
    x = np.random.default_rng(0).random((6, 3, 128, 128), dtype=np.float32)
    return calibrate(shapes_model, x, progress=False)


def test_int16_nodes_get_16bit_activations_and_exact_int_agrees(shapes_model, shapes_calib):
    from converters.exact_int import run_exact
    from converters.quantize_onnx import activation_tensors, quantize_int8
    from converters.sensitivity import run_outputs
    convs = [n.name for n in shapes_model.graph.node if n.op_type == "Conv"][1:3]
    q = quantize_int8(shapes_model, shapes_calib, activation_dtype="uint8", int16_nodes=convs)
    types = _zero_point_types(q)
    wide = activation_tensors(shapes_model, convs)
    assert wide and all(types.get(t) == "uint16" for t in wide if t in types), types
    assert sum(v == "uint8" for v in types.values()) > len(wide), "the rest stays 8-bit"
    plain = quantize_int8(shapes_model, shapes_calib, activation_dtype="uint8")
    assert "uint16" not in _zero_point_types(plain).values()
    x = shapes_calib.samples[:2]
    ort_out = np.concatenate([o[0] for o in run_outputs(q, x)])
    exact = run_exact(q, x)[0]
    ref = np.concatenate([o[0] for o in run_outputs(shapes_model, x)])
    # ONNX Runtime runs the 16-bit nodes in float, exact-int in integers: the same up to a rounding step
    assert np.abs(exact - ort_out).max() <= 0.05 * np.abs(ref).max()


def test_fallback_follows_profile_then_flag():
    from converters.pipeline import ConvertOptions, _emit_options, int8_fallback
    s24, pi = load_profile("galaxy-s24"), load_profile("raspberry-pi-4")
    opts = ConvertOptions(model="m.onnx", profiles=[], out_dir="o")
    assert int8_fallback("onnx", s24, opts) == "int16" and int8_fallback("tflite", s24, opts) == "float"
    assert int8_fallback("onnx", pi, opts) == "float"
    o = _emit_options("onnx", s24, opts, ["a"])
    assert o["int16_nodes"] == ["a"] and o["nodes_to_exclude"] == []
    assert _emit_options("tflite", s24, opts, ["a"])["nodes_to_exclude"] == ["a"]
    opts.int8_fallback = "float"
    assert _emit_options("onnx", s24, opts, ["a"])["nodes_to_exclude"] == ["a"]


def test_graph_tail_is_the_end_of_the_graph(shapes_model):
    from converters.quantize_onnx import graph_tail
    names = [n.name for n in shapes_model.graph.node]
    conv = next(n for n in names if n.endswith("Conv"))
    assert graph_tail(shapes_model, [conv, "/Concat"]) == ["/Concat"]
    assert graph_tail(shapes_model, [conv]) == []
    assert graph_tail(shapes_model, names[-8:]) == names[-8:]      # the decode tail, Concat last
    assert graph_tail(shapes_model, names[-8:-1]) == []             # without the Concat it feeds
    whole = graph_tail(shapes_model, names)                          # weighted ops and all above them stay
    assert conv not in whole and whole == [n.name for n in shapes_model.graph.node
                                           if n.name in whole and n.op_type not in ("Conv", "Gemm", "MatMul")]
    assert set(names[-8:]) <= set(whole)


def test_search_measures_variants_on_its_final_set(shapes_model, shapes_calib):
    from converters.quantize_onnx import quantize_int8
    from converters.sensitivity import cosine_agreement, run_outputs, sensitivity_search
    x = shapes_calib.samples[:4]
    convs = [n.name for n in shapes_model.graph.node if n.op_type == "Conv"]
    seen = []

    def wide(m, c, names):
        seen.append(list(names))
        return quantize_int8(m, c, int16_nodes=names, pair_safe=True)
    rep = sensitivity_search(shapes_model, x, x, cosine_agreement(run_outputs(shapes_model, x)), candidates=convs[:3],
                             budget=1, tolerance=0.0, calibration=shapes_calib, progress=False,
                             variants={"wide": wide, "same": lambda *_: None})
    assert rep.excluded and seen == [rep.excluded]
    assert 0.0 < rep.variants["wide"] <= 1.0 and rep.variants["same"] == rep.final_metric


def test_a16w8_profile_gives_interior_kept_nodes_16_bits_and_leaves_the_tail_float(tmp_path):
    conv = "/net/c3/c3.0/c3.0.0/Conv"
    edgeinfer_cli("convert", DET / "shapes_det.onnx", "--profile", "galaxy-s24", "--formats", "onnx",
                  "--quant", "int8", "--calib", DET / "calib", "--verify-data", DET / "val", "-o", tmp_path, "--quiet",
                  "--keep-float", f"{conv},/Concat", check=True)
    bundle = tmp_path / "shapes_det-galaxy-s24"
    m = read_manifest(bundle)
    art = next(a for a in m["artifacts"] if a["precision"] == "int8")
    assert any("A16W8" in n and conv in n for n in art["notes"]), art["notes"]
    assert any(n.startswith("kept in float: /Concat") for n in art["notes"]), art["notes"]
    q = onnx.load(str(bundle / art["file"]))
    types = _zero_point_types(q)
    node = next(n for n in q.graph.node if n.name == conv)
    assert types[node.output[0]] == "uint16"
    concat = next(n for n in q.graph.node if n.name == "/Concat")
    assert concat.output[0] not in types, "the graph's float tail is not quantized"
    assert art["verification"]["map50_agreement"] >= 0.97
    assert m["mixed_precision"]["int16_activations"] == {"formats": ["onnx"], "nodes": [conv], "float_tail": ["/Concat"]}


def test_keep_float_takes_patterns_and_refuses_one_that_matches_nothing(shapes_model):
    from converters.pipeline import _named_nodes
    from edgeinfer.errors import EdgeInferError
    got = _named_nodes(shapes_model, ["/net/c3/*", "/Concat"])
    assert got[-1] == "/Concat" and len(got) > 3 and all(n.startswith("/net/c3/") for n in got[:-1])
    with pytest.raises(EdgeInferError, match=r"/net/c9/\*"):
        _named_nodes(shapes_model, ["/net/c9/*"])


def test_prefix_regions_are_nested_and_all_hold_the_decode_tail(shapes_model):
    from converters.sensitivity import WEIGHTED_OPS, decode_tail
    from converters.wide_regions import prefix_regions
    regions = prefix_regions(shapes_model)
    order = sorted(regions)
    assert order[0] == 0.0 and order[-1] == 1.0
    tail = list(decode_tail(shapes_model))
    assert tail and regions[0.0] == tail
    for small, big in zip(order, order[1:]):
        assert set(regions[small]) < set(regions[big])
    ops = {n.name: n.op_type for n in shapes_model.graph.node}
    assert sum(ops[n] in WEIGHTED_OPS for n in regions[1.0]) == sum(t in WEIGHTED_OPS for t in ops.values())
    quarter = [n for n in regions[0.25] if n not in tail]   # a conv's activation comes with it: the next node is weighted
    assert ops[[n.name for n in shapes_model.graph.node][len(quarter)]] in WEIGHTED_OPS


@pytest.mark.parametrize("figures, chosen", [
    ({None: 0.80, 0.0: 0.82, 0.25: 0.85, 0.5: 0.95, 0.75: 0.96, 1.0: 0.96}, 0.5),
    ({None: 0.80, 0.0: 0.90, 0.25: 0.955, 0.5: 0.95, 0.75: 0.96, 1.0: 0.96}, 0.25),
    ({None: 0.80, 0.0: 0.955, 0.25: 0.955, 0.5: 0.956, 0.75: 0.96, 1.0: 0.96}, 0.0),
    ({None: 0.80, 0.0: 0.82, 0.25: 0.85, 0.5: 0.90, 0.75: 0.92, 1.0: 0.96}, 1.0),
    ({None: 0.955, 0.0: 0.9, 0.25: 0.9, 0.5: 0.9, 0.75: 0.9, 1.0: 0.96}, None),
])
def test_choose_region_takes_the_smallest_region_near_the_whole_graph(shapes_model, figures, chosen):
    from converters.wide_regions import choose_region, prefix_regions
    regions = prefix_regions(shapes_model)
    kept = ["/Concat"]                # in the decode tail, so every region holds it already
    quantize, asked = region_asker(shapes_model, regions, kept)
    x = np.zeros((1, 3, 128, 128), np.float32)
    choice = choose_region(shapes_model, x, kept, quantize, lambda _o: figures[asked[-1]], "m", progress=False,
                           record=lambda _o: -1.0 if asked[-1] is None else asked[-1])
    assert choice.fraction == chosen and len(asked) <= 5
    assert set(choice.nodes) == (set() if chosen is None else set(regions[chosen]) - set(kept))
    assert choice.recorded[None] == -1.0 and choice.to_dict()["chosen_fraction"] == chosen
    assert choice.to_dict()["recorded"]["kept_nodes_only"] == -1.0


def test_a16w8_profile_search_records_its_region_and_the_artifact_follows_it(tmp_path):
    edgeinfer_cli("convert", DET / "shapes_det.onnx", "--profile", "galaxy-s24", "--formats", "onnx",
                  "--quant", "int8", "--calib", DET / "calib", "--verify-data", DET / "val", "-o", tmp_path, "--quiet",
                  check=True)
    bundle = tmp_path / "shapes_det-galaxy-s24"
    wide = read_manifest(bundle)["mixed_precision"]["int16_activations"]
    region = wide["region"]
    assert region["metric"] == "map50_95_agreement" and "1.00" in region["prefixes"]
    assert 0.0 <= region["kept_nodes_only"] <= 1.0 and 0.0 <= wide["final"] <= 1.0
    assert region["nodes"] == 0 if region["chosen_fraction"] is None else region["nodes"] > 0
    art = next(a for a in read_manifest(bundle)["artifacts"] if a["precision"] == "int8")
    q = onnx.load(str(bundle / art["file"]))
    sixteen = {n.name for n in q.graph.node if n.op_type == "QuantizeLinear" and n.domain == "com.microsoft"}
    assert bool(sixteen) == bool(wide["nodes"])
