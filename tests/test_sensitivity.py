"""Sensitivity search on a tiny detector-like graph (64x64 input, 8x8 anchor grid): box branch
(0..64 px) and score branch (0..1) concatenated into one output [1, 4+2, 64], the case where naive
int8 destroys the scores."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from converters.quantize_onnx import quantize_int8
from converters.sensitivity import (cosine_agreement, detection_agreement, detector_keep_float, find_sensitive_nodes,
                                    head_groups, quantized_nodes, run_outputs, sensitivity_search)
from edgeinfer.preprocess import Transform
from converters.calibrate import calibrate
from edgeinfer.errors import EdgeInferError


def _tiny_head() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.2, (8, 3, 8, 8)).astype(np.float32), "w_stem"),
        numpy_helper.from_array(rng.normal(0, 0.3, (4, 8, 1, 1)).astype(np.float32), "w_box"),
        numpy_helper.from_array(rng.normal(0, 0.3, (2, 8, 1, 1)).astype(np.float32), "w_cls"),
        numpy_helper.from_array(np.array(64.0, np.float32), "box_scale"),
        numpy_helper.from_array(np.array([1, 0, -1], np.int64), "flat"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w_stem"], ["f"], name="stem", strides=[8, 8]),
        helper.make_node("Relu", ["f"], ["fr"], name="stem_relu"),
        helper.make_node("Conv", ["fr", "w_box"], ["b"], name="box_conv"),
        helper.make_node("Sigmoid", ["b"], ["bs"], name="box_sigmoid"),
        helper.make_node("Mul", ["bs", "box_scale"], ["bm"], name="box_pixels"),
        helper.make_node("Conv", ["fr", "w_cls"], ["c"], name="cls_conv"),
        helper.make_node("Sigmoid", ["c"], ["cs"], name="cls_sigmoid"),
        helper.make_node("Concat", ["bm", "cs"], ["cat"], name="head_concat", axis=1),
        helper.make_node("Reshape", ["cat", "flat"], ["y"], name="head_flatten"),
    ]
    graph = helper.make_graph(nodes, "tiny_head", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 64, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6, 64])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _score_agreement(reference):
    """Higher is better: minus the mean abs error of the score rows (the part int8 breaks)."""
    def metric(outputs):
        return -float(np.mean([np.abs(o[0][0, 4:] - r[0][0, 4:]).mean() for o, r in zip(outputs, reference)]))
    return metric


@pytest.fixture(scope="module")
def setup():
    model = _tiny_head()
    rng = np.random.default_rng(1)
    calib = rng.uniform(0, 1, (16, 3, 64, 64)).astype(np.float32)
    evals = rng.uniform(0, 1, (8, 3, 64, 64)).astype(np.float32)
    ref = run_outputs(model, evals)
    return model, calib, evals, ref, calibrate(model, calib, "minmax", progress=False)


def test_head_groups_split_tail_and_final_convs(setup):
    model = setup[0]
    tail, final = head_groups(model)
    assert set(tail) == {"box_sigmoid", "box_pixels", "cls_sigmoid", "head_concat", "head_flatten"}
    assert set(final) == {"box_conv", "cls_conv"}


def test_naive_int8_breaks_scores_and_search_repairs_them(setup):
    model, calib, evals, ref, cal = setup
    metric = _score_agreement(ref)
    naive = metric(run_outputs(quantize_int8(model, cal, pair_safe=True), evals))   # the search's recipe
    assert naive < -0.05                     # one shared scale for 0..64 boxes and 0..1 scores
    assert "head_concat" in quantized_nodes(quantize_int8(model, cal))
    rep = sensitivity_search(model, calib, evals, metric, tolerance=0.01, calibration=cal, progress=False)
    assert rep.naive_metric == pytest.approx(naive)
    assert rep.final_metric >= rep.float_metric - 0.01
    assert 0 < len(rep.excluded) <= 8
    # the exclusion it reports really holds the metric when applied by the pipeline's recipe
    fixed = metric(run_outputs(quantize_int8(model, cal, nodes_to_exclude=rep.excluded, pair_safe=True), evals))
    assert fixed == pytest.approx(rep.final_metric, abs=1e-6)
    assert "head_concat" in rep.excluded


def test_within_tolerance_returns_nothing(setup):
    model, calib, evals, ref, cal = setup
    assert find_sensitive_nodes(model, calib, evals, _score_agreement(ref), tolerance=10.0, calibration=cal,
                                progress=False) == []


def test_budget_limits_nodes_kept_in_float(setup):
    model, calib, evals, ref, cal = setup
    groups = head_groups(model)
    rep = sensitivity_search(model, calib, evals, _score_agreement(ref), candidates=groups, budget=2,
                             tolerance=0.0, calibration=cal, progress=False)
    ops = {n.name: n.op_type for n in model.graph.node}
    assert sum(ops[n] == "Conv" for n in rep.excluded) <= 2    # the budget counts weighted nodes only
    rep0 = sensitivity_search(model, calib, evals, _score_agreement(ref), candidates=groups, budget=0,
                              tolerance=0.0, calibration=cal, progress=False)
    assert all(ops[n] != "Conv" for n in rep0.excluded)     # the decode tail alone is free


def test_unknown_candidate_is_a_one_line_error(setup):
    model, calib, evals, ref, cal = setup
    with pytest.raises(EdgeInferError, match="not in the model: nope"):
        find_sensitive_nodes(model, calib, evals, _score_agreement(ref), candidates=["nope"], calibration=cal,
                             progress=False)


def test_cosine_agreement_is_one_for_identical_outputs(setup):
    _, _, evals, ref, _ = setup
    assert cosine_agreement(ref)(ref) == pytest.approx(1.0)
    noisy = [[o + np.float32(5.0) * np.random.default_rng(0).standard_normal(o.shape).astype(np.float32) for o in r]
             for r in ref]
    assert cosine_agreement(ref)(noisy) < 0.99


def test_detection_agreement_metric_finds_the_head_concat(setup):
    """The tiny head is in YOLOv8 export form [1, 4+2, 64]: the label-free detector metric the
    converter uses (runtime decode + NMS + mAP against fp32 detections) sees the damage too."""
    model, calib, evals, ref, cal = setup
    post = {"kind": "detect", "decoder": "yolov8", "score_threshold": 0.5, "iou_threshold": 0.45,
            "max_detections": 100}
    metric = detection_agreement(ref, post, Transform((64, 64)))
    assert metric(ref) == pytest.approx(1.0)
    rep = sensitivity_search(model, calib, evals, metric, tolerance=0.01, calibration=cal, progress=False)
    assert rep.naive_metric < 0.9
    assert rep.final_metric > rep.naive_metric + 0.1 and "head_concat" in rep.excluded


def test_detector_keep_float_is_the_one_call_for_the_pipeline(setup):
    model, calib, evals, ref, cal = setup
    post = {"kind": "detect", "decoder": "yolov8", "score_threshold": 0.5, "iou_threshold": 0.45,
            "max_detections": 100}
    big = np.random.default_rng(2).uniform(0, 1, (8, 3, 64, 64)).astype(np.float32)
    rep = detector_keep_float(model, cal, big, post, progress=False)
    assert rep.excluded[0] == "head_concat" and len(rep.excluded) <= 2 and rep.float_metric == pytest.approx(1.0)
    assert rep.final_metric > rep.naive_metric + 0.25
    # head_concat (an always-scanned candidate) met the target alone: no SQNR ranking run, 3 evaluations
    assert rep.ranking == [] and rep.evaluations == 3 and rep.scan == [("head_concat", pytest.approx(1.0))]


def test_ranking_run_only_when_the_always_scanned_candidates_fall_short(setup):
    """Target out of reach of the head groups (tolerance 0): the SQNR ranking run adds ranked nodes
    to the scan; past the time budget it is skipped and only the head groups are scanned."""
    model, calib, evals, ref, cal = setup
    groups = head_groups(model)
    rep = sensitivity_search(model, calib, evals, _score_agreement(ref), tolerance=0.0, calibration=cal,
                             progress=False)
    always = ["head_concat"] + [f"[{g[0]} .. {g[-1]}] ({len(g)} nodes)" for g in groups]  # mixed-range concat first
    assert rep.ranking and len(rep.scan) > len(always)
    assert [s for s, _ in rep.scan[:len(always)]] == always
    late = sensitivity_search(model, calib, evals, _score_agreement(ref), tolerance=0.0, calibration=cal,
                              progress=False, time_budget=0.0)
    assert late.ranking == [] and [s for s, _ in late.scan] == always and late.out_of_time


def test_a_missed_target_and_a_low_int8_figure_become_warnings():
    from converters.pipeline import search_missed
    from converters.verify import below_default_floor
    entry = {"metric": "map50_agreement on calibration images", "final": 0.9203, "target": 0.99, "met": False}
    assert "0.9203, below its target 0.9900" in search_missed(entry)
    assert search_missed(dict(entry, met=True)) is None and search_missed(None) is None
    rescued = dict(entry, int16_activations={"final": 0.995})      # an A16W8 region met it for that artifact
    assert "A16W8 ONNX artifact reached 0.9950" in search_missed(rescued) and "0.9203" in search_missed(rescued)
    assert "below the target 0.9900 that float reached" in search_missed(
        dict(entry, met=True, int16_activations={"final": 0.98}))
    low = below_default_floor({"map50_agreement": 0.663, "inputs": 13}, "detect", None)
    assert "map50_agreement" in low and "0.6630 on 13 held-out inputs, below 0.9" in low
    assert below_default_floor({"map50_agreement": 0.663}, "detect", 0.5) is None     # --min-agreement decides
    assert below_default_floor({"top1_agreement": 0.95}, "classify", None) is None


def test_verify_and_search_score_a_box_just_under_the_threshold_the_same_way():
    """A box the artifact scores 0.24 where fp32 said 0.26 (threshold 0.25) is found, ranked low:
    agreement stays high in the manifest's figure and in the search's metric (COCO convention)."""
    from converters.verify import detect_agreement
    post = {"kind": "detect", "decoder": "yolov8", "score_threshold": 0.25, "iou_threshold": 0.45,
            "max_detections": 100}

    def head(scores):   # [1, 4 + 1, 16]: boxes (cx, cy, w, h) in pixels, one class; two boxes scored
        out = np.zeros((1, 5, 16), np.float32)
        out[0, :2, :2] = [[10, 60], [10, 60]]
        out[0, 2:4] = 8.0
        out[0, 4, :2] = scores
        return out
    ref = [head([0.9, 0.26])]
    art = [head([0.9, 0.24])]
    verify_figure = detect_agreement(ref, art, postprocess=post, labels=None, input_hw=(80, 80))["map50_agreement"]
    search_figure = detection_agreement([ref], post, Transform((80, 80)))([art])
    assert verify_figure == pytest.approx(search_figure) and verify_figure > 0.99
    assert detect_agreement(ref, [head([0.9, 0.0])], postprocess=post, labels=None,
                            input_hw=(80, 80))["map50_agreement"] < 0.6


def test_thin_detector_verification_is_flagged():
    from converters.verify import MIN_VERIFY_BOXES, thin_verification
    few = {"inputs": 13, "ref_detections": 11.0, "map50_agreement": 1.0}
    assert "only 11 fp32 boxes in 13" in thin_verification(few, "detect")
    assert thin_verification({**few, "ref_detections": float(MIN_VERIFY_BOXES)}, "detect") is None
    assert thin_verification({"inputs": 13, "top1_agreement": 1.0}, "classify") is None


def test_alternative_ranges_are_kept_only_when_they_score_higher():
    import dataclasses

    from converters.emitters.api import CalibrationResult
    from converters.sensitivity import SensitivityReport, _try_alternative
    base = CalibrationResult(method="minmax", ranges={"t": (0.0, 9.0)}, samples=None, num_images=1)
    cut = dataclasses.replace(base, ranges={"t": (0.0, 3.0)}, tails_clipped=1)
    for alt_metric, chosen in ((0.95, True), (0.90, False), (0.80, False)):
        seen = []

        def measure(excluded, ranges):
            seen.append((list(excluded), ranges))
            return alt_metric
        rep = SensitivityReport(1.0, 0.5, 0.90, excluded=["n1"], calibration=base)
        _try_alternative(rep, base, lambda c: cut, ["n1"], measure, lambda m: None)
        assert seen == [(["n1"], cut)]            # the final kept-float set, under the other ranges
        assert rep.alternative["chosen"] is chosen and rep.alternative["tails_clipped"] == 1
        assert (rep.calibration is cut) is chosen and rep.final_metric == max(0.90, alt_metric)
    rep = SensitivityReport(1.0, 0.5, 0.90, calibration=base)
    _try_alternative(rep, base, lambda c: c, [], lambda *a: 1 / 0, lambda m: None)   # nothing to try: not measured
    assert rep.alternative is None and rep.calibration is base


def test_the_ranking_run_is_skipped_when_the_budget_left_cannot_hold_it():
    """The ranking run costs a few evaluations; started with less time left it only delays the convert
    (the fall YOLOv8s: 14 s spent, then no ranked candidate scanned)."""
    from converters.sensitivity import RANKING_ROOM, room_for_ranking
    assert room_for_ranking(10.0, None, [5.0])            # no budget: always
    assert room_for_ranking(10.0, 45.0, [])               # nothing timed yet: no grounds to skip
    assert room_for_ranking(45.0 - RANKING_ROOM * 5.0, 45.0, [4.0, 6.0])
    assert not room_for_ranking(45.0 - RANKING_ROOM * 5.0 + 0.1, 45.0, [4.0, 6.0])


def test_a_search_with_no_room_for_the_ranking_scans_the_head_groups_only(setup, monkeypatch):
    """On a clock where every run over the evaluation inputs takes 10 s, a budget that leaves less than
    RANKING_ROOM evaluations after the always-scanned candidates: no ranking run, out_of_time said; with
    room, the run happens and ranked candidates are scanned."""
    import converters.int8_error as int8_error
    import converters.sensitivity as sens
    model, calib, evals, ref, cal = setup
    always = 1 + len(head_groups(model))
    now, runs = [0.0], []
    orig_rank, orig_run = int8_error.node_error_ranking, sens.run_outputs
    monkeypatch.setattr(int8_error, "node_error_ranking", lambda *a, **k: runs.append(1) or orig_rank(*a, **k))
    monkeypatch.setattr(sens, "run_outputs", lambda *a, **k: now.__setitem__(0, now[0] + 10.0) or orig_run(*a, **k))
    monkeypatch.setattr(sens, "time", type("Clock", (), {"perf_counter": staticmethod(lambda: now[0])}))

    def search(budget):
        now[0] = 0.0
        return sensitivity_search(model, calib, evals, _score_agreement(ref), tolerance=0.0, calibration=cal,
                                  progress=False, time_budget=budget)
    # fp32 reference, naive int8, the always-scanned candidates: 10 s each before the room check
    tight = search(10.0 * (2 + always) + 10.0 * sens.RANKING_ROOM - 1.0)
    assert runs == [] and tight.ranking == [] and len(tight.scan) == always and tight.out_of_time
    roomy = search(1e6)
    assert runs == [1] and roomy.ranking and len(roomy.scan) > always and not roomy.out_of_time
