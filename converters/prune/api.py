"""Public entry of structured pruning: ``prune_model(model, config, calib_samples)``.

Runs on the loaded, shape-inferred fp32 model (before BN folding): dependency groups
(``groups``) -> importance per channel (``importance``) -> kept channel count per group from
``ratio`` (MobileNet width multiplier 1 - ratio, rounded to ``channel_multiple``, never below
``min_channels``) or searched for ``flops_target`` -> physical removal (``surgery``) ->
optional least-squares refit of the layers whose inputs shrank (``reconstruct``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from edgeinfer.errors import EdgeInferError

from . import flops, surgery
from .graph import GraphView, node_names, prepare
from .groups import Analysis, analyze
from .importance import CRITERIA, class_scores
from .reconstruct import LayerFit, reconstruct
from .runner import progress


@dataclass
class PruneConfig:
    """What to prune. Exactly one of ``ratio`` / ``flops_target`` is set (both in [0, 1))."""

    ratio: float | None = None           # fraction of channels removed per prunable group
    flops_target: float | None = None    # fraction of MACs to remove (the ratio is searched)
    criterion: str = "activation"        # "l1" | "l2" | "bn" | "activation" (needs calib_samples)
    channel_multiple: int = 1            # kept channel counts are multiples of this (SIMD width)
    min_channels: int = 1                # never keep fewer channels than this in a group
    reconstruct: bool = True             # least-squares refit on calibration samples
    exclude: tuple[str, ...] = ()        # node names left whole
    ridge: float = 0.1                   # reconstruction ridge (relative to feature energy), towards the pruned weights

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
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise EdgeInferError(f"prune {name} must be an integer >= 1, got {v!r}")
        if not isinstance(self.reconstruct, bool):
            raise EdgeInferError(f"prune reconstruct must be true or false, got {self.reconstruct!r}")
        if isinstance(self.exclude, str) or not all(isinstance(n, str) for n in self.exclude):
            raise EdgeInferError("prune exclude must be a list of node names")
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
            "reconstructed": self.reconstructed,
            "reconstruction": [f.to_dict() for f in self.reconstruction], "notes": self.notes,
        }

    def format(self) -> str:
        """Human-readable summary for the CLI."""
        def row(label, pair, unit=""):
            return f"  {label:<10} {pair[0]:>12,}{unit} -> {pair[1]:>12,}{unit}  (-{100 * self._drop(pair):.1f}%)"
        cut = [g for g in self.groups if g["kept"] < g["channels"]]
        lines = [f"pruning: criterion {self.criterion}, ratio {self.ratio:.3f} (width x{1 - self.ratio:.3f})"
                 + (f", FLOPs target {self.flops_target:.2f}" if self.flops_target is not None else ""),
                 row("params", self.params), row("MACs", self.macs), row("file", self.size_bytes, " B"),
                 f"  {len(cut)} of {len(self.groups)} channel groups cut"]
        for g in cut:
            lines.append(f"    {g['name']}: {g['channels']} -> {g['kept']}")
        if self.unprunable:
            lines.append(f"  left whole ({len(self.unprunable)}):")
            lines += [f"    {u['layers']}: {u['reasons'][0]}" for u in self.unprunable]
        if self.reconstruction:
            b = np.mean([f.error_before for f in self.reconstruction])
            a = np.mean([f.error_after for f in self.reconstruction])
            lines.append(f"  reconstruction: {len(self.reconstruction)} layers refit, "
                         f"mean relative output error {b:.3f} -> {a:.3f}")
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


def _search_ratio(an: Analysis, scores, cfg: PruneConfig, macs0: int) -> float:
    """Smallest ratio (to 1e-3) whose MAC drop reaches ``cfg.flops_target``."""
    def drop(r):
        m, _ = surgery.apply(an, plan(an, scores, r, cfg))
        return 1.0 - flops.count(m, shapes_ready=True).macs / macs0
    hi = 0.95
    best = drop(hi)
    if best < cfg.flops_target:
        raise EdgeInferError(f"prune: at most {100 * best:.1f}% of MACs can be removed from this model "
                             f"(asked {100 * cfg.flops_target:.1f}%); lower --prune-flops or --prune-min-channels")
    lo = 0.0
    for _ in range(12):
        mid = (lo + hi) / 2
        if drop(mid) >= cfg.flops_target:
            hi = mid
        else:
            lo = mid
    return hi


def prune_model(model: onnx.ModelProto, config: PruneConfig,
                calib_samples: np.ndarray | None) -> tuple[onnx.ModelProto, PruneReport]:
    """Structured pruning of ``model``; returns (pruned model, report). Never changes graph I/O."""
    config.validate()
    unknown = [n for n in config.exclude if n not in node_names(model)]
    if unknown:
        raise EdgeInferError(f"prune exclude names unknown nodes: {', '.join(unknown)}")
    if config.reconstruct and (calib_samples is None or len(calib_samples) == 0):
        raise EdgeInferError("prune reconstruction needs calibration images: pass --calib DIR or --no-reconstruct")
    base = prepare(model)
    before = flops.count(base, shapes_ready=True)
    view = GraphView(base)
    an = analyze(view, tuple(config.exclude))
    progress(f"{len(an.groups)} channel groups, {sum(g.prunable for g in an.groups)} prunable")
    scores, notes = class_scores(an, config.criterion, calib_samples)
    ratio = config.ratio if config.ratio is not None else _search_ratio(an, scores, config, before.macs)
    kept_class = plan(an, scores, ratio, config)
    pruned, kept = surgery.apply(an, kept_class)
    fits: list[LayerFit] = []
    report_notes = [f"{k}: {v}" for k, v in notes.items()]
    if config.reconstruct and kept:
        pruned, fits, skipped = reconstruct(base, pruned, kept, np.asarray(calib_samples, np.float32),
                                            ridge=config.ridge)
        report_notes += [f"not refit: {s}" for s in skipped]
    try:
        onnx.checker.check_model(pruned)
    except onnx.checker.ValidationError as exc:   # a bug here must never ship a broken graph
        raise EdgeInferError(f"pruning produced an invalid graph ({str(exc).splitlines()[0]}); "
                             "run without --prune and report this model") from None
    after = flops.count(pruned, shapes_ready=True)
    groups = [{"name": g.name, "channels": g.size, "kept": int(kept_class[g.classes].sum()),
               "layers": g.producers, "prunable": g.prunable} for g in an.groups]
    unprunable = [{"layers": ", ".join(g.producers) or g.name, "channels": g.size, "reasons": g.reasons}
                  for g in an.groups if not g.prunable and g.producers]
    report = PruneReport(config.criterion, float(ratio), config.flops_target, (before.params, after.params),
                         (before.macs, after.macs), (before.size_bytes, after.size_bytes), groups, unprunable,
                         fits, report_notes, bool(config.reconstruct and fits))
    progress(f"params {before.params:,} -> {after.params:,}, MACs {before.macs:,} -> {after.macs:,}")
    return pruned, report
