"""Float regions: int8 detectors on CPU-only profiles keep the start of the graph in float, chosen by output SQNR."""
import numpy as np
import onnx
import pytest

from converters import float_regions
from edgeinfer.bundle import read_manifest
from edgeinfer.profiles import load_profile

from conftest import ROOT, edgeinfer_cli, region_asker

DET = ROOT / "samples" / "detector"


@pytest.fixture(scope="module")
def shapes_model():
    from converters.clean import clean_model
    return clean_model(onnx.load(str(DET / "shapes_det.onnx")))


def test_output_sqnr_is_signal_over_noise_in_db():
    from converters.float_regions import output_sqnr
    rng = np.random.default_rng(0)
    ref = [[rng.standard_normal((4, 50)).astype(np.float32)] for _ in range(3)]
    metric = output_sqnr(ref)
    noisy = [[r[0] + 0.01 * rng.standard_normal(r[0].shape).astype(np.float32)] for r in ref]
    assert metric(noisy) == pytest.approx(40.0, abs=1.0)
    assert metric(ref) > 200.0
    assert metric([[2 * r[0]] for r in ref]) == pytest.approx(0.0, abs=1e-6)
    two = [[r[0], 1e-3 * r[0]] for r in ref]           # the small output's noise decides
    noisy_small = [[r[0], 1e-3 * r[0] + 1e-4 * rng.standard_normal(r[0].shape).astype(np.float32)] for r in ref]
    assert output_sqnr(two)(noisy_small) == pytest.approx(20.0, abs=1.0)


def test_macs_share_grows_with_the_prefix(shapes_model):
    from converters.float_regions import macs_shares
    from converters.wide_regions import prefix_regions
    regions = prefix_regions(shapes_model, (0.0, 0.25, 0.5, 1.0))
    shares = list(macs_shares(shapes_model, {f: regions[f] for f in (0.0, 0.25, 0.5, 1.0)}).values())
    assert shares[0] == 0.0 and shares[-1] == pytest.approx(1.0)
    assert shares == sorted(shares) and 0.0 < shares[1] < shares[2] < 1.0


@pytest.mark.parametrize("figures, cap, chosen, met", [
    ({None: 30.0, 0.0: 31.0, 0.125: 38.0, 0.25: 40.5, 0.375: 41.0, 0.5: 42.0}, 1.0, 0.25, True),
    ({None: 30.0, 0.0: 40.0, 0.125: 41.0, 0.25: 42.0, 0.375: 43.0, 0.5: 44.0}, 1.0, 0.0, True),
    ({None: 41.0, 0.0: 20.0, 0.125: 20.0, 0.25: 20.0, 0.375: 20.0, 0.5: 20.0}, 1.0, None, True),
    ({None: 30.0, 0.0: 31.0, 0.125: 32.0, 0.25: 33.0, 0.375: 34.0, 0.5: 35.0}, 1.0, 0.5, False),
    ({None: 30.0, 0.0: 31.0, 0.125: 38.0, 0.25: 39.0, 0.375: 41.0, 0.5: 42.0}, 0.0, 0.0, False),
])
def test_choose_float_region_takes_the_smallest_prefix_that_reaches_the_target(shapes_model, figures, cap, chosen, met):
    from converters.float_regions import choose_float_region
    from converters.wide_regions import prefix_regions
    eighths = (0.0, 0.125, 0.25, 0.375, 0.5)
    regions = prefix_regions(shapes_model, eighths)
    kept = ["/Concat"]                 # in the decode tail, so every region holds it already
    quantize, asked = region_asker(shapes_model, regions, kept)
    x = np.zeros((1, 3, 128, 128), np.float32)
    choice = choose_float_region(shapes_model, x, kept, quantize, [], min_sqnr_db=40.0, max_macs=cap, fractions=eighths,
                                 metric=lambda _o: figures[asked[-1]], record=lambda _o: 0.5, progress=False)
    assert choice.fraction == chosen and choice.met is met
    assert len(asked) <= 5 and asked[0] is None
    assert set(choice.nodes) == (set() if chosen is None else set(regions[chosen]) - set(kept))
    d = choice.to_dict()
    assert d["chosen_fraction"] == chosen and d["recorded_map50_agreement"]["kept_nodes_only"] == 0.5
    assert all(choice.macs[f] <= cap + 1e-9 for f in choice.measured)


def test_neighbouring_fractions_that_name_the_same_prefix_are_measured_once(shapes_model):
    """Fine steps round to the same prefix on a model with few weighted nodes (the sample has ~20; the
    default steps are 1/16): each prefix is measured once, under its smallest fraction."""
    from converters.float_regions import FRACTIONS, choose_float_region, distinct_regions
    from converters.wide_regions import prefix_regions
    assert FRACTIONS == tuple(k / 16 for k in range(9))
    fine = tuple(k / 64 for k in range(33))
    regions = prefix_regions(shapes_model, fine)
    distinct = distinct_regions(regions)
    assert 1 < len(distinct) < len(regions) and list(distinct) == sorted(distinct)
    assert len({frozenset(v) for v in distinct.values()}) == len(distinct)
    assert all(any(set(regions[f]) == set(distinct[g]) and g <= f for g in distinct) for f in regions)
    kept = ["/Concat"]
    quantize, asked = region_asker(shapes_model, distinct, kept)
    choice = choose_float_region(shapes_model, np.zeros((1, 3, 128, 128), np.float32), kept, quantize, [],
                                 fractions=fine, metric=lambda _o: 0.0 if asked[-1] is None else 30.0 + 100.0 * asked[-1],
                                 progress=False)
    assert set(choice.measured) <= set(distinct) and choice.met
    assert choice.fraction == min(f for f in distinct if 30.0 + 100.0 * f >= float_regions.MIN_OUTPUT_SQNR_DB)


def test_emit_options_add_the_region_on_cpu_only_profiles_with_float_fallback():
    from converters.pipeline import ConvertOptions, _emit_options, cpu_only
    pi, s24, coral = load_profile("raspberry-pi-4"), load_profile("galaxy-s24"), load_profile("coral-edgetpu")
    assert cpu_only(pi) and not cpu_only(s24) and not cpu_only(coral)
    opts = ConvertOptions(model="m.onnx", profiles=[], out_dir="o")
    for fmt in ("onnx", "tflite"):
        assert _emit_options(fmt, pi, opts, ["a"], None, ["b", "a"])["nodes_to_exclude"] == ["a", "b"]
        assert _emit_options(fmt, coral, opts, ["a"], None, ["b"])["nodes_to_exclude"] == ["a"]
    assert _emit_options("tflite", s24, opts, ["a"], None, ["b"])["nodes_to_exclude"] == ["a"]


def _convert(tmp_path, profile, *extra):
    edgeinfer_cli("convert", DET / "shapes_det.onnx", "--profile", profile, "--formats", "onnx,tflite",
                  "--quant", "int8", "--calib", DET / "calib", "--verify-data", DET / "val", "-o", tmp_path, "--quiet",
                  *extra, check=True)
    return tmp_path / f"shapes_det-{profile}"


def test_cpu_profile_detector_records_its_float_region(tmp_path):
    m = read_manifest(_convert(tmp_path, "raspberry-pi-4"))
    region = m["mixed_precision"]["float_region"]
    target = float_regions.MIN_OUTPUT_SQNR_DB
    assert region["metric"] == "output_sqnr_db" and region["target_db"] == target and region["max_float_macs"] == 0.5
    assert region["chosen_macs_share"] <= 0.5
    names = region["node_names"]
    assert region["nodes"] == len(names) and (region["chosen_fraction"] is None) == (not names)
    assert region["met"] == (region["kept_nodes_only_db"] >= target or any(
        v >= target for v in region["prefixes_db"].values()))


def test_the_int8_artifacts_keep_the_chosen_region_in_float(tmp_path, monkeypatch):
    from converters.pipeline import ConvertOptions, convert
    monkeypatch.setattr(float_regions, "MIN_OUTPUT_SQNR_DB", 300.0)     # unreachable: the largest allowed prefix
    res = convert(ConvertOptions(model=DET / "shapes_det.onnx", profiles=["raspberry-pi-4"], out_dir=tmp_path,
                                 quant=["int8"], formats=["onnx", "tflite"], calib_dir=DET / "calib",
                                 verify_dir=DET / "val", task="detect", max_float_macs=0.3, progress=False))
    m = res.manifests[0]
    region = m["mixed_precision"]["float_region"]
    names = region["node_names"]
    assert names and region["met"] is False and region["chosen_fraction"] == 0.125 and region["chosen_macs_share"] <= 0.3
    assert any("below" in w and "float region" in w for w in m["warnings"]), m["warnings"]
    assert any(n.startswith("int8 float region") and "12.5%" in n for n in m["notes"]), m["notes"]
    bundle = res.bundles[0]
    onnx_art = next(a for a in m["artifacts"] if a["format"] == "onnx")
    q = onnx.load(str(bundle / onnx_art["file"]))
    dequantized = {n.output[0] for n in q.graph.node if n.op_type == "DequantizeLinear"}
    convs = [n for n in q.graph.node if n.name in set(names) and n.op_type == "Conv"]
    assert convs
    for node in convs:                # the prefix's convs read float activations and float weights
        assert not set(node.input) & dequantized, node.name
    tfl = next(a for a in m["artifacts"] if a["format"] == "tflite")
    assert any(f"{len(set(names) | set(m['mixed_precision']['kept_float']))} node(s) kept in float" in n
               for n in tfl["notes"]), tfl["notes"]


def test_float_region_is_off_with_zero_macs_and_on_npu_profiles(tmp_path):
    off = read_manifest(_convert(tmp_path / "off", "raspberry-pi-4", "--max-float-macs", "0"))
    assert "float_region" not in off["mixed_precision"]
    assert not any("float region" in n for n in off["notes"] + off["warnings"])
    npu = read_manifest(_convert(tmp_path / "npu", "coral-edgetpu"))
    assert "float_region" not in (npu["mixed_precision"] or {})


def test_summary_note_and_warning_say_what_stays_float():
    from converters.pipeline import float_region_missed, float_region_note
    region = {"nodes": 12, "chosen_fraction": 0.0, "chosen_macs_share": 0.0, "kept_nodes_only_db": 35.0,
              "prefixes_db": {"0.000": 40.5}, "target_db": 40.0, "met": True, "max_float_macs": 0.5}
    assert "the decode tail (12 nodes, 0% of the MACs)" in float_region_note({"float_region": region})
    assert float_region_missed({"float_region": region}) is None
    region.update(chosen_fraction=0.375, chosen_macs_share=0.34, prefixes_db={"0.375": 38.0}, met=False)
    note = float_region_note({"float_region": region})
    assert "first 37.5% of the weighted nodes" in note and "35.0 to 38.0 dB" in note and "--max-float-macs 0" in note
    assert "38.0 dB" in float_region_missed({"float_region": region})
    assert float_region_note({"float_region": dict(region, nodes=0)}) is None and float_region_note(None) is None
