"""Public entry of structured pruning: ``prune_model(model, config, calib_samples)``.

Runs on the loaded, shape-inferred fp32 model (before BN folding): dependency groups
(``groups``) -> importance per channel (``importance``) -> kept channel count per group:
``allocation="sensitivity"`` (default) spends a MAC budget where measured output error is
lowest (``allocate``; ``ratio`` R sets the budget to the MACs a uniform cut R would remove),
``"uniform"`` cuts every group by ``ratio`` (MobileNet width multiplier 1 - ratio) or by the
ratio searched for ``flops_target``; counts are rounded to ``channel_multiple``, never below
``min_channels`` -> physical removal (``surgery``) -> recovery: ``"lsq"`` least-squares refit of
the layers whose inputs shrank (``reconstruct``), ``"distill"`` that refit then label-free
distillation from the unpruned model in PyTorch (``distill``, the optional ``[train]`` extra),
``"blockwise"`` that refit then block-by-block training against the unpruned model's block
outputs (``blockwise``, also PyTorch).
With ``resolution=True`` the input size is one more dimension of the budget (``resolution``:
MobileNet's resolution multiplier, for classifiers with global pooling): each smaller size is
measured like a group, the size + channel plans that reach the target are estimated by their
summed squared error, the best few are built, refit and measured, and the lowest measured wins;
recovery then runs at that size.
``enforce_floor`` refuses a pruned model whose agreement with the unpruned one is too low.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import onnx

from edgeinfer.errors import EdgeInferError

from . import allocate, flops, resolution, surgery
from .config_checks import integer_at_least
from .graph import GraphView, node_names, prepare
from .groups import Analysis, analyze
from .importance import CRITERIA, class_scores
from .reconstruct import LayerFit, OriginalStats, reconstruct
from .runner import progress, quiet


RECOVERY = ("none", "lsq", "distill", "blockwise", "blockwise+distill")
ALLOCATION = ("sensitivity", "uniform")


@dataclass
class PruneConfig:
    """What to prune. Exactly one of ``ratio`` / ``flops_target`` is set (both in [0, 1))."""

    ratio: float | None = None           # fraction of channels removed per prunable group
    flops_target: float | None = None    # fraction of MACs to remove (the ratio is searched)
    criterion: str = "activation"        # "l1" | "l2" | "bn" | "activation" (needs calib_samples)
    channel_multiple: int = 1            # kept channel counts are multiples of this (SIMD width)
    min_channels: int = 1                # never keep fewer channels than this in a group
    recover: str = "lsq"                 # "none" | "lsq" (least-squares refit) | "distill" / "blockwise" (lsq, then training)
    allocation: str = "sensitivity"      # "sensitivity" (per-group, measured) | "uniform" (same ratio everywhere)
    exclude: tuple[str, ...] = ()        # node names left whole
    ridge: float = 0.1                   # reconstruction ridge (relative to feature energy), towards the pruned weights
    protect_channels: int = 0            # sensitivity allocation: groups narrower than this stay whole
    max_group_ratio: float = 0.75        # sensitivity allocation: no group loses more than this fraction
    sensitivity_samples: int = 32        # calibration images the sensitivity scan runs on (counts at 224 x 224:
                                         # larger inputs use as many pixels, >= 8 / 16 images; ``pixel_scaled``)
    sensitivity_refit: bool = True       # with a least-squares recovery, measure each cut after that refit ...
    sensitivity_fit_samples: int = 64    # ... fit on these many other calibration images
    plan_samples: int = 128              # --prune-resolution: the shortlisted size + channel plans are measured on
                                         # these many images (the scan's, then ones no refit saw; counts at 224 x 224)
    distill: Any = None                  # converters.prune.distill.DistillConfig (None: its defaults)
    blockwise: Any = None                # converters.prune.blockwise.BlockwiseConfig (None: its defaults)
    resolution: bool = False             # the input size may shrink too (classifiers with global pooling)
    resolution_step: int = 8             # candidate heights are multiples of this (px) ...
    min_resolution_scale: float = 0.6    # ... down to this fraction of the full height

    @property
    def reconstruct(self) -> bool:
        return self.recover != "none"

    def validate(self) -> "PruneConfig":
        if (self.ratio is None) == (self.flops_target is None):
            raise EdgeInferError("prune: set exactly one of ratio (--prune R) or flops_target (--prune-flops F)")
        for name in ("ratio", "flops_target"):
            v = getattr(self, name)
            if v is not None and not (isinstance(v, (int, float)) and 0.0 <= float(v) < 1.0):
                raise EdgeInferError(f"prune {name} must be a number in [0, 1), got {v!r}")
        if self.criterion not in CRITERIA:
            raise EdgeInferError(f"prune criterion {self.criterion!r} is not one of {', '.join(CRITERIA)}")
        for name in ("channel_multiple", "min_channels"):
            integer_at_least("prune", name, getattr(self, name), 1)
        if self.recover not in RECOVERY:
            raise EdgeInferError(f"prune recover {self.recover!r} is not one of {', '.join(RECOVERY)}")
        if self.allocation not in ALLOCATION:
            raise EdgeInferError(f"prune allocation {self.allocation!r} is not one of {', '.join(ALLOCATION)}")
        if not (isinstance(self.max_group_ratio, (int, float)) and 0.0 < self.max_group_ratio < 1.0):
            raise EdgeInferError(f"prune max_group_ratio must be in (0, 1), got {self.max_group_ratio!r}")
        for name in ("protect_channels", "sensitivity_samples", "sensitivity_fit_samples", "plan_samples"):
            integer_at_least("prune", name, getattr(self, name), 0)
        if isinstance(self.exclude, str) or not all(isinstance(n, str) for n in self.exclude):
            raise EdgeInferError("prune exclude must be a list of node names")
        integer_at_least("prune", "resolution_step", self.resolution_step, 1)
        if not (isinstance(self.min_resolution_scale, (int, float)) and 0.0 < self.min_resolution_scale < 1.0):
            raise EdgeInferError(f"prune min_resolution_scale must be in (0, 1), got {self.min_resolution_scale!r}")
        if self.resolution and self.allocation != "sensitivity":
            raise EdgeInferError("--prune-resolution weighs the input size against channels by measured sensitivity: "
                                 "drop --prune-allocation uniform")
        if not (isinstance(self.ridge, (int, float)) and self.ridge >= 0):
            raise EdgeInferError(f"prune ridge must be a number >= 0, got {self.ridge!r}")
        return self


@dataclass
class PruneReport:
    """What pruning did: sizes before/after, channels kept per group, layers left whole."""

    criterion: str
    ratio: float
    flops_target: float | None
    params: tuple[int, int]
    macs: tuple[int, int]
    size_bytes: tuple[int, int]
    groups: list[dict[str, Any]] = field(default_factory=list)
    unprunable: list[dict[str, Any]] = field(default_factory=list)
    reconstruction: list[LayerFit] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    reconstructed: bool = False
    allocation: str = "uniform"
    recover: str = "lsq"
    sensitivity: list[allocate.Curve] = field(default_factory=list)
    distillation: dict[str, Any] | None = None   # the training report of "distill" or "blockwise" (its "method")
    floor: dict[str, Any] | None = None              # agreement with the unpruned model on held-out images
    cut_at: Callable[[float], onnx.ModelProto] | None = field(default=None, repr=False)  # MAC drop -> model (the floor's)
    kept: dict[str, np.ndarray] = field(default_factory=dict, repr=False)   # tensor -> kept channels (for ``distill``)
    input_hw: tuple[tuple[int, int], tuple[int, int]] | None = None   # (before, after) when the size may change
    resolution: resolution.ResolutionCurve | None = None              # measured cost of each smaller size
    cut_refit: int = 0      # calibration images ``cut_at``'s models are refit on by least squares (0: no recovery)

    @staticmethod
    def _drop(pair: tuple[int, int]) -> float:
        return 1.0 - pair[1] / pair[0] if pair[0] else 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form for the bundle manifest (``manifest["pruning"]``)."""
        return {
            "criterion": self.criterion, "ratio": round(self.ratio, 4), "flops_target": self.flops_target,
            "width_multiplier": round(1.0 - self.ratio, 4),
            "params": {"before": self.params[0], "after": self.params[1], "drop": round(self._drop(self.params), 4)},
            "macs": {"before": self.macs[0], "after": self.macs[1], "drop": round(self._drop(self.macs), 4)},
            "size_bytes": {"before": self.size_bytes[0], "after": self.size_bytes[1],
                           "drop": round(self._drop(self.size_bytes), 4)},
            "groups": self.groups, "unprunable": self.unprunable,
            "allocation": self.allocation, "recover": self.recover,
            "sensitivity": [c.to_dict() for c in self.sensitivity],
            "reconstructed": self.reconstructed,
            "reconstruction": [f.to_dict() for f in self.reconstruction],
            "distillation": self.distillation, "agreement_floor": self.floor, "notes": self.notes,
            "input_size": None if self.input_hw is None else {"before": list(self.input_hw[0]),
                                                              "after": list(self.input_hw[1])},
            "resolution_sensitivity": self.resolution.to_dict() if self.resolution is not None else None,
        }

    def format(self) -> str:
        """Human-readable summary for the CLI."""
        def row(label, pair, unit=""):
            return f"  {label:<10} {pair[0]:>12,}{unit} -> {pair[1]:>12,}{unit}  (-{100 * self._drop(pair):.1f}%)"
        cut = [g for g in self.groups if g["kept"] < g["channels"]]
        head = (f"ratio {self.ratio:.3f} (width x{1 - self.ratio:.3f})" if self.allocation == "uniform"
                else f"per-group ratios by measured sensitivity (budget of a uniform {self.ratio:.3f})")
        lines = [f"pruning: criterion {self.criterion}, {head}, recovery {self.recover}"
                 + (f", FLOPs target {self.flops_target:.2f}" if self.flops_target is not None else ""),
                 row("params", self.params), row("MACs", self.macs), row("file", self.size_bytes, " B"),
                 f"  {len(cut)} of {len(self.groups)} channel groups cut"]
        if self.input_hw is not None:
            (h0, w0), (h1, w1) = self.input_hw
            lines.insert(3, f"  input      {h0}x{w0} -> {h1}x{w1}" + (f"  (resolution x{h1 / h0:.3f})" if h1 != h0 else
                                                                     "  (kept: a smaller size measured costlier)"))
        for g in cut:
            lines.append(f"    {g['name']}: {g['channels']} -> {g['kept']} (-{100 * (1 - g['kept'] / g['channels']):.0f}%)")
        if self.unprunable:
            lines.append(f"  left whole ({len(self.unprunable)}):")
            lines += [f"    {u['layers']}: {u['reasons'][0]}" for u in self.unprunable]
        if self.reconstruction:
            b = np.mean([f.error_before for f in self.reconstruction])
            a = np.mean([f.error_after for f in self.reconstruction])
            lines.append(f"  reconstruction: {len(self.reconstruction)} layers refit, "
                         f"mean relative output error {b:.3f} -> {a:.3f}")
        if self.distillation and self.distillation.get("method") == "blockwise":
            d = self.distillation
            lines.append(f"  block-wise recovery: {d['blocks']} blocks, {d['steps']} steps on {d['images']} images in "
                         f"{d['seconds']:.0f} s" + (f", held-out KL {d['held_out']['kl_before']:.4f} -> {d['held_out']['kl_after']:.4f}"
                                             if d["held_out"]["images"] else "")
                         + budget_words(d))
            f = d.get("final_distillation")
            if f:
                lines.append(f"  end-to-end pass: {f['steps']} steps ({f['epochs']:.2f} epochs, teacher logits cached for "
                             f"{f['augment']['fixed_views']} views per image) in {f['seconds']:.0f} s"
                             + (f", held-out KL {f['held_out']['kl_before']:.4f} -> {f['held_out']['kl_after']:.4f}"
                                + (" (undone)" if f["held_out"]["reverted"] else "") if f["held_out"]["images"] else ""))
        elif self.distillation:
            d = self.distillation
            lines.append(f"  distillation: {d['steps']} steps ({d['epochs']:.2f} epochs of {d['images']} images) at "
                         f"{d['train_size']} px in {d['seconds']:.0f} s, loss {d['loss_first']:.4f} -> {d['loss_last']:.4f}"
                         + budget_words(d)
                         + (f", held-out KL {d['held_out']['kl_before']:.4f} -> {d['held_out']['kl_after']:.4f}"
                            + (" (undone: least-squares weights kept)" if d["held_out"]["reverted"] else "")
                            if d["held_out"]["images"] else ""))
        if self.floor:
            f = self.floor
            lines.append(f"  {f['metric']} with the unpruned model on {f['images']} held-out images: "
                         f"{f['value']:.4f} (floor {f['floor']}"
                         + (", 95 % interval {:.3f}-{:.3f}".format(*f["interval95"]) if "interval95" in f else "") + ")")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def keep_count(channels: int, ratio: float, multiple: int, minimum: int) -> int:
    """Channels kept in a group of ``channels``: round((1 - ratio) * C) to ``multiple``, >= ``minimum``."""
    if ratio <= 0:
        return channels
    k = (1.0 - ratio) * channels
    k = multiple * max(1, int(math.floor(k / multiple + 0.5))) if multiple > 1 else max(1, int(round(k)))
    k = max(k, minimum)
    return min(k, channels)


def plan(an: Analysis, scores: np.ndarray, ratio: float, cfg: PruneConfig) -> np.ndarray:
    """Boolean per class: True = kept. Lowest-scoring classes of each prunable group go."""
    kept = surgery.plain_kept(an)
    for g in an.groups:
        if not g.prunable:
            continue
        k = keep_count(g.size, ratio, cfg.channel_multiple, cfg.min_channels)
        if k >= g.size:
            continue
        cls = np.asarray(g.classes)
        order = np.argsort(-scores[cls], kind="stable")   # ties: earlier channel kept
        kept[cls[order[k:]]] = False
    return kept


SCAN_PIXELS = 224 * 224       # the scan's image counts are for inputs of this size


def pixel_scaled(count: int, hw: tuple, least: int) -> int:
    """``count`` images at 224 x 224, as many input pixels at ``hw`` (never fewer than ``least``):
    a 640 px detector scans on 8 images instead of 32, so its 150-odd refit cuts take minutes, not half an hour."""
    pixels = int(np.prod(hw)) if len(hw) == 2 else SCAN_PIXELS
    if pixels <= SCAN_PIXELS or count <= least:
        return count
    return max(least, int(round(count * SCAN_PIXELS / pixels)))


def _search_ratio(an: Analysis, scores, cfg: PruneConfig, macs0: int, target: float) -> float:
    """Smallest uniform ratio (to 1e-3) whose MAC drop reaches ``target``."""
    def drop(r):
        m, _ = surgery.apply(an, plan(an, scores, r, cfg))
        return 1.0 - flops.count(m, shapes_ready=True).macs / macs0
    hi = 0.95
    best = drop(hi)
    if best < target:
        raise EdgeInferError(f"prune: at most {100 * best:.1f}% of MACs can be removed from this model "
                             f"(asked {100 * target:.1f}%); lower --prune-flops or --prune-min-channels")
    lo = 0.0
    for _ in range(12):
        mid = (lo + hi) / 2
        if drop(mid) >= target:
            hi = mid
        else:
            lo = mid
    return hi


def _uniform_drop(an: Analysis, scores, cfg: PruneConfig, ratio: float, macs0: int) -> float:
    m, _ = surgery.apply(an, plan(an, scores, ratio, cfg))
    return 1.0 - flops.count(m, shapes_ready=True).macs / macs0


def _check_inputs(model: onnx.ModelProto, config: PruneConfig, calib_samples) -> None:
    unknown = [n for n in config.exclude if n not in node_names(model)]
    if unknown:
        raise EdgeInferError(f"prune exclude names unknown nodes: {', '.join(unknown)}")
    no_data = calib_samples is None or len(calib_samples) == 0
    if config.reconstruct and no_data:
        raise EdgeInferError("prune recovery needs calibration images: pass --calib DIR or --recover none")
    if config.allocation == "sensitivity" and no_data:
        raise EdgeInferError("per-group pruning measures sensitivity on calibration images: pass --calib DIR "
                             "or --prune-allocation uniform")


_SENSITIVITY: dict[str, list[allocate.Curve]] = {}   # in-process memos: a curve sweep re-measures nothing
_SCORES: dict[str, tuple[np.ndarray, dict[str, str]]] = {}


def _digest(model: onnx.ModelProto, arrays: tuple, params: tuple) -> str:
    """Key of an in-process memo: the model, the arrays (None allowed) and the parameters."""
    import hashlib
    h = hashlib.sha256(model.SerializeToString())
    for part in arrays:
        h.update(b"-" if part is None else np.ascontiguousarray(part).tobytes())
    h.update(repr(params).encode())
    return h.hexdigest()


def _scores(an: Analysis, cfg: PruneConfig, samples: np.ndarray | None) -> tuple[np.ndarray, dict[str, str]]:
    """``class_scores`` for this model, images and criterion, once per process (greedy takes a minute)."""
    key = _digest(an.view.model, (samples,), (cfg.criterion, cfg.ridge, tuple(cfg.exclude)))
    if key not in _SCORES:
        _SCORES.clear()                              # one model's scores at a time
        _SCORES[key] = class_scores(an, cfg.criterion, samples, cfg.ridge)
    scores, notes = _SCORES[key]
    return scores.copy(), dict(notes)


def _measured(an: Analysis, scores: np.ndarray, cfg: PruneConfig, samples: np.ndarray, fit_samples: np.ndarray,
              bar: bool) -> list[allocate.Curve]:
    """Sensitivity curves on ``samples``; with a least-squares recovery each cut is first refit on
    ``fit_samples`` (other images: a refit judged on its own images looks free, e.g. a classifier
    with more inputs than images fits them exactly)."""
    refit = cfg.reconstruct and cfg.sensitivity_refit
    key = _digest(an.view.model, (samples, fit_samples, scores),
                  (cfg.criterion, cfg.channel_multiple, cfg.min_channels, cfg.protect_channels, cfg.exclude,
                   refit, cfg.ridge))
    if key not in _SENSITIVITY:
        memo = OriginalStats(an.view.model, fit_samples)

        def repair(m: onnx.ModelProto, kept: dict) -> onnx.ModelProto:
            with quiet():
                return reconstruct(an.view.model, m, kept, fit_samples, ridge=cfg.ridge, memo=memo)[0]
        _SENSITIVITY[key] = allocate.measure(an, scores, cfg, samples, keep_count, bar, repair if refit else None)
    return _SENSITIVITY[key]


def prune_model(model: onnx.ModelProto, config: PruneConfig, calib_samples: np.ndarray | None,
                progress_bar: bool = True, read_at: resolution.ReadAt | None = None) -> tuple[onnx.ModelProto, PruneReport]:
    """Structured pruning of ``model``; returns (pruned model, report). Never changes graph outputs;
    the input's spatial size changes only with ``config.resolution``: smaller sizes see the
    calibration images read again by ``read_at`` when given, else resampled (``resolution.at_size``).

    With ``recover="distill"`` or ``"blockwise"`` the returned model is already cleaned (BatchNorm folded)."""
    config.validate()
    _check_inputs(model, config, calib_samples)
    base = prepare(model)
    before = flops.count(base, shapes_ready=True)
    view = GraphView(base)
    an = analyze(view, tuple(config.exclude))
    progress(f"{len(an.groups)} channel groups, {sum(g.prunable for g in an.groups)} prunable")
    scores, notes = _scores(an, config, calib_samples)
    curves: list[allocate.Curve] = []
    rcurve: resolution.ResolutionCurve | None = None
    hw: tuple[int, int] | None = None
    measure = None
    if config.allocation == "uniform":
        fit_part = None if calib_samples is None else slice(0, min(config.sensitivity_fit_samples, len(calib_samples)))
        ratio = config.ratio if config.ratio is not None else \
            _search_ratio(an, scores, config, before.macs, config.flops_target)

        def cut_plan(target: float, measure=None) -> tuple[np.ndarray, None]:
            return plan(an, scores, _search_ratio(an, scores, config, before.macs, target), config), None
        kept_class = plan(an, scores, ratio, config)
    else:
        hw = tuple(np.shape(calib_samples)[2:4])
        n_sens = min(pixel_scaled(config.sensitivity_samples, hw, 8), len(calib_samples))
        sens = np.asarray(calib_samples[:n_sens], np.float32)
        n_fit = pixel_scaled(config.sensitivity_fit_samples, hw, 16)
        fit_part = slice(n_sens, n_sens + n_fit) if len(calib_samples) - n_sens >= 16 else slice(0, n_sens)
        fit = np.asarray(calib_samples[fit_part], np.float32)
        curves = _measured(an, scores, config, sens, fit, progress_bar)
        target = config.flops_target if config.flops_target is not None else \
            _uniform_drop(an, scores, config, config.ratio, before.macs)
        ratio = config.ratio if config.ratio is not None else 0.0
        if config.resolution:
            full = resolution.input_hw(base)
            ref = allocate.model_outputs(base, sens)     # the unpruned model at full size: the sizes' and plans' reference
            rcurve = resolution.measure(base, sens, resolution.candidates(
                full, config.resolution_step, config.min_resolution_scale), ref, read_at)
            progress("resolution sensitivity: " + ", ".join(
                f"{h}x{w} {e:.3f}" for (h, w), e in zip(rcurve.sizes, rcurve.errors)))

        def cut_plan(target: float, measure=None) -> tuple[np.ndarray, tuple[int, int] | None]:
            if rcurve is not None:
                return _joint_plan(an, scores, curves, rcurve, target, config, before.macs, measure)
            ratios, _ = allocate.search(an, scores, curves, target, config, keep_count, before.macs)
            return allocate.kept_for(an, scores, ratios, config, keep_count), None
        measure = _plan_error(an, base, calib_samples, _plan_parts(n_sens, fit_part, len(calib_samples),
                                                                   pixel_scaled(config.plan_samples, hw, 8)),
                              fit_part, ref, config, read_at) if rcurve is not None else None
        kept_class, hw = cut_plan(target, measure) if target > 0 else (surgery.plain_kept(an), None)
        if config.ratio is None:
            ratio = 1.0 - float(kept_class.mean())
    pruned, kept = surgery.apply(an, kept_class)
    full_samples = samples = None if calib_samples is None else np.asarray(calib_samples, np.float32)
    pruned, teacher = _at_size(pruned, base, hw)
    resized = teacher is not base
    if resized:
        samples = resolution.at_size(full_samples, slice(None), hw, read_at)
        progress(f"input {'x'.join(map(str, resolution.input_hw(base)))} -> {hw[0]}x{hw[1]}: the refit and block-wise "
                 "recovery match the unpruned model at that size, distillation the unpruned model at full size")
    fits: list[LayerFit] = []
    report_notes = [f"{k}: {v}" for k, v in notes.items()]
    if config.reconstruct and kept:
        pruned, fits, skipped = reconstruct(teacher, pruned, kept, samples, ridge=config.ridge)
        report_notes += [f"not refit: {s}" for s in skipped]
    distilled = None
    if config.recover not in ("none", "lsq") and not kept and resized:
        skipped_recovery = f"{config.recover} recovery not run: the plan cut no channels, only the input size"
        report_notes.append(skipped_recovery)
        progress(skipped_recovery)
    if config.recover == "distill" and kept:
        from .distill import distill
        pruned, distilled = distill(base, pruned, kept, full_samples, config.distill, progress_bar)
    elif config.recover.startswith("blockwise") and kept:
        from .blockwise import blockwise
        pruned, distilled = blockwise(teacher, pruned, kept, samples, config.blockwise, progress_bar)
        if config.recover == "blockwise+distill":
            from .distill import distill, final_pass_config
            pruned, final = distill(base, pruned, kept, full_samples, config.distill or final_pass_config(),
                                    progress_bar)
            distilled = {**distilled, "final_distillation": final}
    try:
        onnx.checker.check_model(pruned)
    except onnx.checker.ValidationError as exc:   # a bug here must never ship a broken graph
        raise EdgeInferError(f"pruning produced an invalid graph ({str(exc).splitlines()[0]}); "
                             "run without --prune and report this model") from None
    if resized:
        resolution.rescale_metadata(pruned, resolution.input_hw(base), hw)
    after = flops.count(pruned, shapes_ready=True)
    groups = [{"name": g.name, "channels": g.size, "kept": int(kept_class[g.classes].sum()),
               "layers": g.producers, "prunable": g.prunable} for g in an.groups]
    unprunable = [{"layers": ", ".join(g.producers) or g.name, "channels": g.size, "reasons": g.reasons}
                  for g in an.groups if not g.prunable and g.producers]
    report = PruneReport(config.criterion, float(ratio), config.flops_target, (before.params, after.params),
                         (before.macs, after.macs), (before.size_bytes, after.size_bytes), groups, unprunable,
                         fits, report_notes, bool(config.reconstruct and fits), config.allocation, config.recover,
                         curves, distilled, None, None, kept,
                         (resolution.input_hw(base), resolution.input_hw(pruned)) if rcurve is not None else None, rcurve)
    refit_part = fit_part if config.reconstruct else None      # the floor's cuts get the run's refit, not its training

    def floor_cut(t: float) -> onnx.ModelProto:
        """MAC drop ``t`` planned as this run planned (size + channel plans measured), refit as it refits;
        quietly, leaving the report's measured plans (``rcurve.plans``) as the run left them."""
        plans = None if rcurve is None else rcurve.plans
        try:
            with quiet():
                kept_t, hw_t = cut_plan(t, measure)
                return _cut_model(an, kept_t, hw_t, base, calib_samples, refit_part, config.ridge, read_at)
        finally:
            if rcurve is not None:
                rcurve.plans = plans
    report.cut_at = floor_cut
    report.cut_refit = 0 if refit_part is None else len(calib_samples[refit_part])
    progress(f"params {before.params:,} -> {after.params:,}, MACs {before.macs:,} -> {after.macs:,}")
    return pruned, report


def _at_size(pruned: onnx.ModelProto, base: onnx.ModelProto,
             hw: tuple[int, int] | None) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """``pruned`` and the unpruned ``base`` with input size ``hw`` (both returned as given at ``base``'s size or None)."""
    if hw is None or hw == resolution.input_hw(base):
        return pruned, base
    return resolution.resize_input(pruned, hw), resolution.resize_input(base, hw)


def _plan_parts(n_sens: int, fit_part: slice, n_calib: int, n_plan: int) -> list[slice]:
    """The calibration images the joint search measures its plans on: the scan's first ``n_sens``, then
    up to ``n_plan`` in all from those after ``fit_part`` (no refit sees them)."""
    parts = [slice(0, n_sens)]
    more = min(n_plan - n_sens, n_calib - fit_part.stop) if fit_part.stop > n_sens else 0
    if more > 0:
        parts.append(slice(fit_part.stop, fit_part.stop + more))
    return parts


def _plan_error(an: Analysis, base: onnx.ModelProto, calib: np.ndarray, parts: list[slice], fit_part: slice,
                ref: list[np.ndarray], cfg: PruneConfig, read_at: resolution.ReadAt | None):
    """``measure(kept, size)`` for ``_joint_plan``: the plan built at that size, refit (when the
    recovery will refit) on ``calib[fit_part]`` against the unpruned model at that size, its output
    error on the images ``calib[parts]`` against the unpruned model's outputs at full size (``ref``
    holds them for ``parts[0]``); images at that size as ``resolution.at_size`` gives them."""

    refit = fit_part if cfg.reconstruct and cfg.sensitivity_refit else None
    refs = [ref] + [allocate.model_outputs(base, np.asarray(calib[p], np.float32)) for p in parts[1:]]
    ref_all = [np.concatenate(outs) for outs in zip(*refs)]

    def measure(kept_class: np.ndarray, hw: tuple[int, int]) -> float:
        m = _cut_model(an, kept_class, hw, base, calib, refit, cfg.ridge, read_at)
        got = [allocate.model_outputs(m, resolution.at_size(calib, p, hw, read_at)) for p in parts]
        return allocate.output_error(ref_all, [np.concatenate(outs) for outs in zip(*got)])
    return measure


def _cut_model(an: Analysis, kept_class: np.ndarray, hw: tuple[int, int] | None, base: onnx.ModelProto | None = None,
               calib: np.ndarray | None = None, fit_part: slice | None = None, ridge: float = 0.0,
               read_at: resolution.ReadAt | None = None) -> onnx.ModelProto:
    """The plan ``kept_class`` at input size ``hw`` (None: as it is); with ``fit_part``, refit by least
    squares on ``calib[fit_part]`` (at that size, as ``resolution.at_size`` gives them) against the
    unpruned ``base`` at that size."""
    m, kept = surgery.apply(an, kept_class)
    if fit_part is None or not kept:
        return m if hw is None or hw == resolution.input_hw(m) else resolution.resize_input(m, hw)
    m, teacher = _at_size(m, base, hw)
    with quiet():
        return reconstruct(teacher, m, kept, resolution.at_size(calib, fit_part, hw, read_at), ridge=ridge)[0]


JOINT_MEASURED = 3   # the input size + channel plans measured for real (the best estimates, + the size alone)


def _joint_plan(an: Analysis, scores: np.ndarray, curves: list[allocate.Curve], rcurve: resolution.ResolutionCurve,
                target: float, cfg: PruneConfig, macs0: int,
                measure: Callable[[np.ndarray, tuple[int, int]], float] | None = None
                ) -> tuple[np.ndarray, tuple[int, int]]:
    """(kept classes, input size): over the full size and each measured smaller one, the channel
    plan that completes the MAC target there, estimated by its summed squared error; the
    ``JOINT_MEASURED`` best, and the best size that reaches the target alone, are then built and
    measured (``measure(kept, size)``: the error after the refit that will run) and the lowest wins.
    Separate channel cuts compound, so their summed estimate runs low: measuring decides.
    MACs are checked on the real model at that size (a head that does not scale with pixels)."""
    by_group = {c.group: c for c in curves}

    def channels(t: float) -> tuple[np.ndarray, float]:
        if t <= 0:
            return surgery.plain_kept(an), 0.0
        ratios, _ = allocate.search(an, scores, curves, t, cfg, keep_count, macs0)
        cost = sum(float(by_group[g].at(np.array([r]))[0][0]) ** 2 for g, r in ratios.items())
        return allocate.kept_for(an, scores, ratios, cfg, keep_count), cost

    plans = []
    for hw, err, gain in [(rcurve.full, 0.0, 0.0), *zip(rcurve.sizes, rcurve.errors, rcurve.gains)]:
        need = 1.0 - (1.0 - target) / (1.0 - gain)
        try:
            kept, cost = channels(need)
        except EdgeInferError:      # the channels cannot complete the target at this size
            continue
        plans.append((err ** 2 + cost, hw, gain, need, kept))
    if not plans:
        raise EdgeInferError(f"prune: {100 * target:.1f}% of MACs cannot be removed from this model even at "
                             f"{'x'.join(map(str, rcurve.sizes[-1] if rcurve.sizes else rcurve.full))}; lower --prune-flops")
    plans.sort(key=lambda p: p[0])

    def topped_up(gain: float, need: float, kept: np.ndarray, hw: tuple[int, int]) -> tuple[float, np.ndarray]:
        for _ in range(4):    # the estimate assumed every MAC scales with the pixels: top up the channels if short
            drop = 1.0 - flops.count(_cut_model(an, kept, hw), shapes_ready=True).macs / macs0
            if drop >= target - 1e-4:
                break
            need += (target - drop) / max(1.0 - gain, 1e-6) + 1e-3
            kept, _ = channels(need)
        return need, kept

    if measure is None:    # no measuring (e.g. the floor's bisection): the best estimate, the report untouched
        _, hw, gain, need, kept = plans[0]
        return topped_up(gain, need, kept, hw)[1], hw
    alone = [p for p in plans if p[3] <= 0]     # the size that reaches the target by itself, least error
    shortlist = plans[:JOINT_MEASURED] + [p for p in alone[:1] if p not in plans[:JOINT_MEASURED]]
    best, rcurve.plans = None, []
    for est, hw, gain, need, kept in shortlist:
        need, kept = topped_up(gain, need, kept, hw)
        got = measure(kept, hw) if len(shortlist) > 1 else est ** 0.5
        rcurve.plans.append({"size": list(hw), "channel_macs_cut": round(max(need, 0.0), 4),
                             "estimated_error": round(est ** 0.5, 5), "measured_error": round(got, 5)})
        progress(f"  {hw[0]}x{hw[1]} + channels -{100 * max(need, 0.0):.1f}% MACs: error estimated "
                 f"{est ** 0.5:.3f}, measured {got:.3f}")
        if best is None or got < best[0]:
            best = (got, kept, hw)
    return best[1], best[2]


FLOOR_BISECTION_STEPS = 5     # cuts the floor measures when a run misses it


def _cuts_measured(report: PruneReport) -> str:
    """How the floor's bisection measured its cuts, for the refusal line."""
    if not report.cut_refit:
        return "measured without recovery"
    later = "" if report.recover == "lsq" else f", without the {report.recover} step"
    return f"measured after a least-squares refit on {report.cut_refit} calibration images{later}"


def budget_words(d: dict) -> str:
    """What the time budget did to a training report ``d``: stopped it, paced its schedule, or nothing."""
    if d["stopped_by_budget"]:
        return " (stopped by the time budget; the clock paced it, so the seed alone does not repeat it)"
    return " (paced by the time budget; the seed alone does not repeat it)" if d.get("followed_clock") else ""


def enforce_floor(pruned: onnx.ModelProto, report: PruneReport, agreement: Callable[[onnx.ModelProto], float],
                  floor: float, metric: str, images: int, floor_flag: str = "--min-agreement") -> float:
    """Agreement of ``pruned`` with the unpruned model; below ``floor`` raise one line naming the
    figure (with its 95 % interval when it is a top-1 agreement, a proportion of ``images``) and the
    largest MAC cut that met it (bisected with ``report.cut_at``: planned and refit as the run)."""
    from ..stats import wilson_interval
    value = float(agreement(pruned))
    report.floor = {"metric": metric, "value": round(value, 4), "floor": floor, "images": images}
    spread = ""
    if metric == "top1_agreement":
        report.floor["interval95"] = [round(v, 4) for v in wilson_interval(value, images)]
        spread = " (95 % interval {:.2f}-{:.2f})".format(*report.floor["interval95"])
    if value >= floor:
        return value
    lo, hi = 0.0, report._drop(report.macs)
    run_cut = hi
    if report.cut_at is not None:
        progress(f"{metric} {value:.4f} is below the floor {floor}: searching the largest cut that meets it")
        for _ in range(FLOOR_BISECTION_STEPS):
            mid = (lo + hi) / 2
            if agreement(report.cut_at(mid)) >= floor:
                lo = mid
            else:
                hi = mid
    every_cut_met = report.cut_at is not None and hi == run_cut
    found = (f"every cut the floor measured met it, up to --prune-flops {lo:.2f}, so this one misses within the "
             "figure's noise: give more held-out photos (--verify-data)" if every_cut_met else
             f"the largest cut that met it here was --prune-flops {lo:.2f}")
    raise EdgeInferError(
        f"pruned model's {metric} with the unpruned model is {value:.3f} on {images} held-out images{spread}, below the "
        f"floor {floor:g}; {found} ({_cuts_measured(report)}"
        f"{'; try --recover blockwise or distill' if report.recover in ('none', 'lsq') else ''}"
        f"{'; for a classifier, --prune-resolution lets the input size take part of the cut' if report.input_hw is None else ''}), "
        f"or set {floor_flag} "
        f"to accept less")
