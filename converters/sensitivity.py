"""Quantization sensitivity: which nodes an int8 recipe must keep in float to hold a metric.

``find_sensitive_nodes(model, calib_samples, eval_inputs, metric_fn)`` calibrates ONCE, then

1. measures ``metric_fn`` on the fp32 model and on the naive int8 model (nothing excluded);
   if the drop is within ``tolerance`` it returns ``[]``;
2. ranks the quantized nodes by the SQNR they lose in ONE instrumented run of the float and naive
   int8 models (``converters.int8_error``), and scans the head groups plus the worst few: each
   candidate (one node name, or a group of names kept in float together, e.g. a detector head's
   decode tail) is excluded ALONE and the metric re-measured;
3. greedily accumulates the candidates that helped, best first (the smallest among those that
   reach the target alone), keeping each only if it raises the metric, until the drop is within
   ``tolerance`` or ``budget`` weighted nodes are kept in float;
4. when the target is met, drops again each kept node the target does not need;
5. with ``alternative`` ranges (e.g. ``calibrate.with_tails_clipped``), measures the final set under
   them too and keeps whichever ranges score higher (``report.calibration``, ``report.alternative``);
6. measures each of ``variants`` (other recipes for the final set, e.g. its nodes with 16-bit
   activations instead of float) once, for the record (``report.variants``).

``metric_fn(outputs) -> float`` scores a model's outputs on ``eval_inputs`` (higher is better):
``outputs[i]`` is the list of output arrays for ``eval_inputs[i]``. It can be a task metric
(mAP against ground truth) or agreement with the float model (``cosine_agreement``).
Quantization is ``converters.quantize_onnx.quantize_int8`` (static QDQ, per-channel weights) with
ranges from ``converters.calibrate.calibrate``, so the result applies to the pipeline's int8 recipe.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import numpy as np
import onnx

from edgeinfer.errors import EdgeInferError
from edgeinfer.progress import Progress

from .ort_session import cpu_session

from .emitters.api import CalibrationResult

Outputs = list[list[np.ndarray]]
MetricFn = Callable[[Outputs], float]
Candidate = str | tuple[str, ...]
Quantize = Callable[[onnx.ModelProto, CalibrationResult, Sequence[str]], onnx.ModelProto]
WEIGHTED_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul"}
RANKED_CANDIDATES = 8     # quantized nodes (by SQNR lost) evaluated one by one
RANKING_PIXELS = 8 * 224 * 224   # the instrumented ranking run sees about this many input pixels
RANKING_ROOM = 4          # evaluations' worth of time the ranking run needs left: itself (~3 on a 640 px
                          # YOLOv8s: 14 s against 5 s per evaluation) and one ranked candidate after it


def room_for_ranking(elapsed: float, time_budget: float | None, eval_seconds: Sequence[float]) -> bool:
    """Whether the SQNR ranking run and one candidate after it fit the rest of ``time_budget``,
    judged by the mean of the evaluations timed so far (``eval_seconds``; none timed: yes)."""
    if time_budget is None or not eval_seconds:
        return True
    return time_budget - elapsed >= RANKING_ROOM * float(np.mean(eval_seconds))


def ranking_inputs(inputs: np.ndarray) -> int:
    """How many inputs the ranking run uses: 8 at 224 x 224, fewer for larger inputs (2 at 640), at least 2."""
    from .images import within_pixels
    return within_pixels(inputs, RANKING_PIXELS, 2, 8)


@dataclass
class SensitivityReport:
    """What the search measured. ``excluded`` are node names to keep in float."""

    float_metric: float
    naive_metric: float
    final_metric: float
    excluded: list[str] = field(default_factory=list)
    scan: list[tuple[str, float]] = field(default_factory=list)   # (candidate, metric when kept float alone)
    steps: list[tuple[str, float, bool]] = field(default_factory=list)  # (candidate, metric, accepted)
    evaluations: int = 0
    ranking: list[tuple[str, float]] = field(default_factory=list)   # (candidate, SQNR lost in dB), worst first
    out_of_time: bool = False
    calibration: CalibrationResult | None = None   # the ranges the result was measured with
    alternative: dict | None = None   # {"tails_clipped", "metric_without", "metric_with", "chosen"}
    variants: dict[str, float] = field(default_factory=dict)   # variant name -> metric of the final set under it
    reference: Outputs | None = field(default=None, repr=False)   # the float model's outputs on the eval inputs


def run_outputs(model: onnx.ModelProto, inputs: np.ndarray, threads: int | None = None) -> Outputs:
    """All outputs of ``model`` for each sample of ``inputs`` (run one at a time: batch 1 graphs);
    ``threads`` None: ONNX Runtime's default (every physical core)."""
    sess = cpu_session(model, threads)
    name = sess.get_inputs()[0].name
    return [sess.run(None, {name: np.ascontiguousarray(x[None], dtype=np.float32)}) for x in inputs]


def cosine_agreement(reference: Outputs) -> MetricFn:
    """Metric factory: mean cosine similarity of each output with ``reference`` (1.0 = identical)."""
    def metric(outputs: Outputs) -> float:
        sims = []
        for ref, got in zip(reference, outputs):
            for r, g in zip(ref, got):
                r, g = r.ravel().astype(np.float64), g.ravel().astype(np.float64)
                sims.append(float(r @ g / (np.linalg.norm(r) * np.linalg.norm(g) + 1e-12)))
        return float(np.mean(sims))
    return metric


def detection_agreement(reference: Outputs, postprocess: dict, transforms, key: str = "map50_agreement") -> MetricFn:
    """Metric factory for detectors, needing no labels: COCO mAP of a model's detections against
    the reference (fp32) model's detections on the same inputs (``edgeinfer.detection.metrics.
    map_agreement``). The reference keeps the bundle's ``score_threshold``; the tested model is
    decoded by ``verify.ranked_postprocessor`` so its AP is ranked over the whole score range.
    ``transforms``: one ``Transform`` per input, or a single one for all (e.g.
    ``Transform((S, S))``: boxes stay in model-input pixels, which is enough for agreement)."""
    from edgeinfer.detection.metrics import map_agreement
    from edgeinfer.detection.postprocess import DetectPostprocessor

    from .verify import ranked_postprocessor
    ref_post = DetectPostprocessor(postprocess)
    test_post = ranked_postprocessor(ref_post)
    per_input = list(transforms) if isinstance(transforms, (list, tuple)) else [transforms] * len(reference)
    ref_results = [ref_post(outs, t) for outs, t in zip(reference, per_input)]

    def metric(outputs: Outputs) -> float:
        got = [test_post(outs, t) for outs, t in zip(outputs, per_input)]
        return float(map_agreement(ref_results, got, score_threshold=ref_post.config["score_threshold"])[key])
    return metric


def _consumers(model: onnx.ModelProto) -> dict[str, list[onnx.NodeProto]]:
    out: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        for i in n.input:
            out.setdefault(i, []).append(n)
    return out


def _after_weighted(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The nodes from which no Conv/Gemm/MatMul is reachable (topological order)."""
    cons = _consumers(model)
    reaches_weighted: dict[str, bool] = {}
    for n in reversed(model.graph.node):  # topological order: consumers are already known
        reaches_weighted[n.name] = any(c.op_type in WEIGHTED_OPS or reaches_weighted.get(c.name, False)
                                       for o in n.output for c in cons.get(o, []))
    return [n for n in model.graph.node if not reaches_weighted[n.name]]


def decode_tail(model: onnx.ModelProto) -> tuple[str, ...]:
    """The float tail after the last weighted ops (decode arithmetic, the concat of box and score branches)."""
    return tuple(n.name for n in _after_weighted(model) if n.op_type not in WEIGHTED_OPS)


def head_groups(model: onnx.ModelProto) -> list[tuple[str, ...]]:
    """Op groups of a model's head: the float tail after the last weighted ops (``decode_tail``)
    and the last weighted ops themselves (final convs)."""
    final = tuple(n.name for n in _after_weighted(model) if n.op_type in WEIGHTED_OPS)
    return [g for g in (decode_tail(model), final) if g]


def mixed_range_concats(model: onnx.ModelProto, ranges: dict[str, tuple[float, float]],
                        ratio: float = 16.0) -> list[str]:
    """Concat nodes joining tensors whose calibrated ranges differ more than ``ratio`` times (boxes in
    pixels next to scores in 0..1): one int8 scale for all of them erases the small ones, while
    whole-tensor SQNR barely notices."""
    found = []
    for n in model.graph.node:
        if n.op_type != "Concat":
            continue
        spans = [max(abs(ranges[i][0]), abs(ranges[i][1])) for i in n.input if i in ranges]
        if len(spans) >= 2 and min(spans) > 0 and max(spans) / min(spans) > ratio:
            found.append(n.name)
    return found


def quantized_nodes(qmodel: onnx.ModelProto) -> list[str]:
    """Names of the nodes a QDQ model computes in int8 (an input comes from DequantizeLinear)."""
    dq_out = {o for n in qmodel.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return [n.name for n in qmodel.graph.node
            if n.op_type not in ("QuantizeLinear", "DequantizeLinear") and any(i in dq_out for i in n.input)]


def _names(c: Candidate) -> tuple[str, ...]:
    return (c,) if isinstance(c, str) else tuple(c)


def _label(c: Candidate) -> str:
    names = _names(c)
    return names[0] if len(names) == 1 else f"[{names[0]} .. {names[-1]}] ({len(names)} nodes)"


def _checked(candidates: Iterable[Candidate], model: onnx.ModelProto) -> list[Candidate]:
    """The non-empty candidates, refused if they name nodes the model does not have."""
    cands = [c for c in candidates if _names(c)]
    known = {n.name for n in model.graph.node}
    unknown = sorted({n for c in cands for n in _names(c)} - known)
    if unknown:
        raise EdgeInferError(f"sensitivity candidates name nodes not in the model: {', '.join(unknown[:5])}")
    return cands


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def sensitivity_search(model: onnx.ModelProto, calib_samples: np.ndarray, eval_inputs: np.ndarray,
                       metric_fn: MetricFn, candidates: Iterable[Candidate] | None = None, budget: int = 8,
                       tolerance: float = 0.01, *, calibration: CalibrationResult | None = None,
                       quantize: Quantize | None = None,
                       progress: bool = True, top_k: int | None = RANKED_CANDIDATES,
                       time_budget: float | None = None, float_outputs: Outputs | None = None,
                       alternative: Callable[[CalibrationResult], CalibrationResult] | None = None,
                       variants: dict[str, Quantize] | None = None) -> SensitivityReport:
    """The full search (see module docstring); ``find_sensitive_nodes`` returns only its names.

    ``candidates`` None: the ``head_groups`` plus the quantized nodes, ranked by the SQNR they lose
    in one instrumented run (``converters.int8_error``) and cut to the ``top_k`` worst (``top_k``
    None: every quantized node, head first). ``alternative(calib)``: other ranges to try on the final
    set (it returns ``calib`` itself when it has none; step 5). ``budget`` caps the number of Conv/Gemm/MatMul nodes kept
    in float (elementwise and shape nodes of a kept group, e.g. a detector's decode tail, are free).
    ``tolerance`` is the allowed metric drop below fp32 (absolute, in ``metric_fn`` units).
    ``calibration`` reuses ranges already collected; ``quantize(model, calib, nodes_to_exclude)``
    replaces the default recipe. ``time_budget`` (seconds, from the start of the search; an evaluation
    that would end past it, at the mean time of those so far, counts as past it): after it no
    ranked candidate is scanned (the head groups and mixed-range concats always are), the ranking run
    is skipped when the time left would not hold it and one candidate (``room_for_ranking``), the greedy
    pass stops once it has kept something, and ``report.out_of_time`` says so. ``float_outputs``: the
    float model's outputs on ``eval_inputs`` when the caller already has them. ``variants``: name ->
    ``quantize``-like recipe, each measured on the final set and ranges (step 6; not used to choose);
    a recipe returning None computes what the main one does for that set (its figure is the final one).
    """
    from .calibrate import calibrate
    from .quantize_onnx import quantize_int8

    if len(eval_inputs) == 0:
        raise EdgeInferError("sensitivity search needs evaluation inputs: pass held-out images")
    log = _log if progress else (lambda _m: None)
    calib = calibration or calibrate(model, np.asarray(calib_samples, np.float32), "minmax", progress=progress)
    # pair-safe weights: this host's ORT then computes what exact-integer targets compute, on any CPU
    quant = quantize or (lambda m, c, excl: quantize_int8(m, c, nodes_to_exclude=tuple(excl), pair_safe=True))
    report = SensitivityReport(float("nan"), float("nan"), float("nan"))

    t_start = time.perf_counter()
    eval_seconds: list[float] = []   # quantize + run, per evaluation: what the ranking run's room is judged by
    ops = {n.name: n.op_type for n in model.graph.node}

    def weighted(names: Sequence[str]) -> int:   # the budget counts compute kept in float, not decode arithmetic
        return sum(ops.get(n) in WEIGHTED_OPS for n in names)

    def out_of_time() -> bool:     # the next evaluation would end past the budget; the report keeps saying so
        per_eval = float(np.mean(eval_seconds)) if eval_seconds else 0.0
        late = time_budget is not None and time.perf_counter() - t_start + per_eval > time_budget
        report.out_of_time = report.out_of_time or late
        return late

    def measure_with(recipe: Quantize, exclude: Sequence[str], ranges: CalibrationResult) -> float | None:
        t0 = time.perf_counter()
        qmodel = recipe(model, ranges, list(exclude))
        if qmodel is None:          # the recipe computes nothing different for this set
            return None
        report.evaluations += 1
        value = float(metric_fn(run_outputs(qmodel, eval_inputs)))
        eval_seconds.append(time.perf_counter() - t0)
        return value

    def measure(exclude: Sequence[str], other: CalibrationResult | None = None) -> float:
        return measure_with(quant, exclude, other or calib)

    report.reference = float_outputs if float_outputs is not None else run_outputs(model, eval_inputs)
    report.float_metric = float(metric_fn(report.reference))
    t0 = time.perf_counter()
    naive = quant(model, calib, [])
    report.naive_metric = report.final_metric = float(metric_fn(run_outputs(naive, eval_inputs)))
    eval_seconds.append(time.perf_counter() - t0)
    report.evaluations += 1
    log(f"sensitivity: fp32 {report.float_metric:.4f}, naive int8 {report.naive_metric:.4f} "
        f"(tolerance {tolerance})")
    report.calibration = calib
    target = report.float_metric - tolerance
    if report.naive_metric >= target:
        return _measure_variants(_try_alternative(report, calib, alternative, [], measure, log), variants, measure_with, log)

    always: list[Candidate] = []     # evaluated even past the time budget: the known int8 failure points
    rank_later = False               # the SQNR ranking run happens only if the always-candidates fall short
    if candidates is None:
        always = [*mixed_range_concats(model, calib.ranges), *head_groups(model)]   # smallest first
        candidates = [*always, *reversed(quantized_nodes(naive))] if top_k is None else list(always)
        rank_later = top_k is not None
    cands = _checked(candidates, model)

    def ranked_candidates() -> list[Candidate]:
        from .activation_ranges import activation_floors
        from .int8_error import node_error_ranking
        ranking = node_error_ranking(model, naive, eval_inputs[:ranking_inputs(eval_inputs)],
                                     nodes=quantized_nodes(naive), progress=progress,
                                     floors=activation_floors(model, calib.ranges))
        report.ranking = [(_label(r.nodes), round(r.lost_db, 2)) for r in ranking[:top_k]]
        log("  worst int8 nodes (SQNR lost): " + ", ".join(f"{n} {db:.1f} dB" for n, db in report.ranking[:5]))
        return [r.nodes for r in ranking[:top_k] if r.nodes not in always]

    with Progress("scanning int8 nodes", len(cands) + (top_k or 0) * rank_later, progress) as bar:
        i = 0
        while True:
            if i == len(cands):
                if not rank_later:
                    break
                if out_of_time() or not room_for_ranking(time.perf_counter() - t_start, time_budget, eval_seconds):
                    report.out_of_time = True     # the ranked candidates would not get scanned: skip their run
                    log(f"  time budget {time_budget:.0f} s: no room left for the SQNR ranking run "
                        f"(~{RANKING_ROOM} evaluations of {np.mean(eval_seconds):.1f} s)")
                    break
                rank_later = False
                cands += ranked_candidates()
                continue
            c = cands[i]
            if c not in always and out_of_time():
                log(f"  time budget {time_budget:.0f} s reached: scanned {i} candidates")
                break
            report.scan.append((_label(c), measure(_names(c))))
            bar.update()
            i += 1
            if report.scan[-1][1] >= target:   # this candidate alone meets the target: nothing to add
                break
        cands = cands[:len(report.scan)]
    best = max(report.scan, key=lambda r: r[1], default=None)
    if best is not None:
        log(f"  best single node kept in float: {best[0]} -> {best[1]:.4f}")
    # best metric first; among candidates that reach the target alone, the smallest one first
    ranked = sorted((i for i in range(len(cands)) if report.scan[i][1] > report.naive_metric),
                    key=lambda i: (-min(report.scan[i][1], target), len(_names(cands[i])), -report.scan[i][1]))

    excluded: list[str] = []
    current = report.naive_metric
    for i in ranked:
        names = [n for n in _names(cands[i]) if n not in excluded]
        if not names or weighted(excluded + names) > budget:
            continue
        if excluded and out_of_time():   # past the budget, still take the first step that helps
            break
        m = report.scan[i][1] if not excluded else measure(excluded + names)   # alone: measured in the scan
        ok = m > current
        report.steps.append((_label(cands[i]), m, ok))
        log(f"  greedy: + {_label(cands[i])} -> {m:.4f} ({'kept' if ok else 'dropped'})")
        if ok:
            excluded += names
            current = m
            if current >= target:
                break
    if current >= target:  # backward pass: drop nodes the target does not need
        for name in list(excluded)[::-1]:
            if out_of_time():
                break
            trial = [n for n in excluded if n != name]
            m = measure(trial)
            if m >= target:
                excluded, current = trial, m
                report.steps.append((f"- {name}", m, True))
                log(f"  prune: - {name} -> {m:.4f} (still within tolerance)")
    report.excluded, report.final_metric = excluded, current
    return _measure_variants(_try_alternative(report, calib, alternative, excluded, measure, log), variants, measure_with, log)


def _try_alternative(report: SensitivityReport, calib: CalibrationResult, alternative, excluded: list[str],
                     measure, log) -> SensitivityReport:
    """Step 5: the final set measured under ``alternative(calib)``; the better ranges are kept (ties: ``calib``)."""
    alt = alternative(calib) if alternative is not None else calib
    if alt is calib:
        return report
    m = measure(excluded, alt)
    chosen = m > report.final_metric
    report.alternative = {"tails_clipped": alt.tails_clipped, "metric_without": report.final_metric,
                          "metric_with": m, "chosen": chosen}
    log(f"  thin SiLU tails cut ({alt.tails_clipped} tensors): {report.final_metric:.4f} -> {m:.4f} "
        f"({'kept' if chosen else 'dropped'})")
    if chosen:
        report.calibration, report.final_metric = alt, m
    return report


def _measure_variants(report: SensitivityReport, variants: dict[str, Quantize] | None, measure_with,
                      log) -> SensitivityReport:
    """Step 6: the final set and ranges measured under each other recipe (nothing kept: nothing to measure)."""
    if report.excluded:
        for name, recipe in (variants or {}).items():
            value = measure_with(recipe, report.excluded, report.calibration)
            report.variants[name] = report.final_metric if value is None else value
            if value is not None:
                log(f"  the same nodes as {name}: {value:.4f}")
    return report


def find_sensitive_nodes(model: onnx.ModelProto, calib_samples: np.ndarray, eval_inputs: np.ndarray,
                         metric_fn: MetricFn, candidates: Iterable[Candidate] | None = None, budget: int = 8,
                         tolerance: float = 0.01, **kwargs) -> list[str]:
    """Node names to keep in float so int8 stays within ``tolerance`` of fp32 on ``metric_fn``
    (best effort within ``budget`` nodes); pass them as ``quantize_int8(..., nodes_to_exclude=)``."""
    return sensitivity_search(model, calib_samples, eval_inputs, metric_fn, candidates, budget, tolerance,
                              **kwargs).excluded


def top1_agreement(reference: Outputs) -> MetricFn:
    """Metric factory: fraction of inputs whose first output's argmax equals the reference's."""
    ref = [int(np.argmax(r[0])) for r in reference]

    def metric(outputs: Outputs) -> float:
        return float(np.mean([int(np.argmax(o[0])) == r for o, r in zip(outputs, ref)]))
    return metric


def classifier_keep_float(model: onnx.ModelProto, calibration: CalibrationResult, eval_inputs: np.ndarray,
                          min_agreement: float, budget: int = 8, progress: bool = True,
                          time_budget: float | None = None, alternative=None, variants=None) -> SensitivityReport:
    """The converter's call for a classifier with ``--min-agreement``: nodes of the CLEANED ``model`` to
    keep in float so int8 top-1 agrees with fp32 on ``eval_inputs`` at least ``min_agreement``."""
    reference = run_outputs(model, eval_inputs)
    return sensitivity_search(model, calibration.samples, eval_inputs, top1_agreement(reference), budget=budget,
                              tolerance=max(0.0, 1.0 - min_agreement), calibration=calibration, progress=progress,
                              time_budget=time_budget, float_outputs=reference, alternative=alternative,
                              variants=variants)


def detector_keep_float(model: onnx.ModelProto, calibration: CalibrationResult, eval_inputs: np.ndarray,
                        postprocess: dict, tolerance: float = 0.01, budget: int = 8,
                        progress: bool = True, time_budget: float | None = None, alternative=None,
                        variants=None) -> SensitivityReport:
    """The converter's one call for ``--task detect`` int8: nodes of the CLEANED ``model`` to keep in
    float so int8 detections agree with fp32 (``detection_agreement`` mAP@0.5) within ``tolerance``
    on ``eval_inputs`` (preprocessed NCHW, e.g. the verification inputs). Boxes are compared in
    model-input pixels, so no transforms or labels are needed."""
    from edgeinfer.preprocess import Transform

    h, w = int(eval_inputs.shape[2]), int(eval_inputs.shape[3])
    reference = run_outputs(model, eval_inputs)
    metric = detection_agreement(reference, postprocess, Transform((w, h)))
    return sensitivity_search(model, calibration.samples, eval_inputs, metric, budget=budget, tolerance=tolerance,
                              calibration=calibration, progress=progress, time_budget=time_budget,
                              float_outputs=reference, alternative=alternative, variants=variants)
