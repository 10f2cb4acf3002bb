"""Per-group pruning ratios from measured, label-free sensitivity (AMC / NetAdapt style).

``measure(an, scores, cfg, samples)`` cuts each prunable group ALONE at a few ratios (``LEVELS``)
and runs the cut model on calibration images: the sensitivity of a group at a ratio is the
output error against the unpruned model (``output_error``: sqrt of the KL divergence of the class
distributions for class scores, else the relative error ``||y - y0|| / ||y0||``, mean over images),
and its gain is the fraction of the model's MACs that cut removes. No labels are read.

With ``refit`` the cut is first repaired by the recovery's least-squares refit (on the same
images), so the error is the one the recovered model keeps.

``allocate(curves, lam, cfg)`` then chooses, per group, the ratio maximising
``lam * gain(r) - error(r) ** 2`` (both interpolated linearly between the measured ratios, on a
grid of 1/32; errors of independent cuts add in quadrature, so the squared error is the cost
and cuts spread over many groups rather than ruining a few): cheap cuts go first, a group whose small cut already costs much (narrow and early
layers: few channels, each carrying a lot) stays whole. Groups narrower than
``cfg.protect_channels`` are never cut, and no group loses more than ``cfg.max_group_ratio``.
``search(...)`` finds ``lam`` so the real MAC drop of the plan (after surgery) reaches the target.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import onnx

from edgeinfer.errors import EdgeInferError
from edgeinfer.progress import Progress

from . import flops, surgery
from .groups import Analysis
from .runner import SuffixRuns, iter_tensors

LEVELS = (0.25, 0.5, 0.75)
GRID = np.linspace(0.0, 1.0, 33)


@dataclass
class Curve:
    """One group's measured sensitivity: ratio -> (output error, fraction of MACs removed)."""

    group: int
    name: str
    channels: int
    ratios: list[float]
    errors: list[float]
    gains: list[float]

    def at(self, r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(error, gain) at ratios ``r``: linear between measured points, the error made convex
        (a larger cut never costs less error per removed channel than a smaller one did: the
        measured error saturates once the output is ruined, which must not make deep cuts look cheap)."""
        xs = [0.0, *self.ratios]
        errs, slope = [0.0], 0.0
        for x0, x1, e in zip(xs[:-1], xs[1:], self.errors):
            e = max(e, errs[-1] + slope * (x1 - x0))
            slope = (e - errs[-1]) / (x1 - x0)
            errs.append(e)
        return np.interp(r, xs, errs), np.interp(r, xs, [0.0, *self.gains])

    def to_dict(self) -> dict:
        return {"group": self.name, "channels": self.channels,
                "ratios": [round(r, 4) for r in self.ratios],
                "error": [round(e, 5) for e in self.errors],
                "macs_removed": [round(g, 5) for g in self.gains]}


def model_outputs(model: onnx.ModelProto, samples: np.ndarray) -> list[np.ndarray]:
    """Every graph output of ``model`` on ``samples`` (batches of 8), float64."""
    names = [o.name for o in model.graph.output]
    parts = list(iter_tensors(model, names, samples, batch=8))
    return [np.concatenate([p[n] for p in parts]).astype(np.float64) for n in names]


def _log_probs(x: np.ndarray) -> np.ndarray:
    """Row-wise log-probabilities: of the rows themselves when they already are a distribution
    (a Softmax output), else of their softmax (logits)."""
    if x.min() >= 0 and np.allclose(x.sum(axis=1), 1.0, atol=1e-3):
        return np.log(np.maximum(x, 1e-12))
    z = x - x.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def output_error(ref: list[np.ndarray], got: list[np.ndarray]) -> float:
    """Mean over outputs of the error of ``got`` against ``ref``: for class scores ([N, K], K > 1)
    sqrt of the mean KL(ref || got) of the class distributions (it weighs the classes that decide
    the answer; independent small perturbations add up in KL as squared errors do); for any other
    output the mean over images of ||got - ref|| / ||ref||."""
    errs = []
    for r, g in zip(ref, got):
        if r.ndim == 2 and r.shape[1] > 1:
            lr, lg = _log_probs(r), _log_probs(g)
            errs.append(float(np.sqrt(max(float(np.mean((np.exp(lr) * (lr - lg)).sum(axis=1))), 0.0))))
        else:
            r2, g2 = r.reshape(len(r), -1), g.reshape(len(g), -1)
            errs.append(float(np.mean(np.linalg.norm(g2 - r2, axis=1) / np.maximum(np.linalg.norm(r2, axis=1), 1e-12))))
    return float(np.mean(errs))


def single_group_plan(an: Analysis, scores: np.ndarray, group: int, keep: int) -> np.ndarray:
    kept = surgery.plain_kept(an)
    cls = np.asarray(an.groups[group].classes)
    order = np.argsort(-scores[cls], kind="stable")
    kept[cls[order[keep:]]] = False
    return kept


def measure(an: Analysis, scores: np.ndarray, cfg, samples: np.ndarray, keep_count: Callable,
            progress: bool = True, refit: Callable | None = None) -> list[Curve]:
    """Sensitivity curve of every prunable group (each cut alone at ``LEVELS``).

    ``refit(cut_model, kept) -> model`` (optional) is applied to each cut before its error is
    measured: the recovery that will run (the least-squares refit) repairs some cuts far better
    than others (inverted-residual hidden channels: their one consumer is refit; residual streams:
    the lost channels themselves are gone), so the allocation must see the error *after* it."""
    macs0 = flops.count(an.view.model, shapes_ready=True).macs
    ref = model_outputs(an.view.model, samples)
    runs = SuffixRuns(an.view.model, samples)          # a cut runs from the nodes it changed on
    todo = []
    for g in an.groups:
        if not g.prunable or g.size < max(cfg.protect_channels, 2):
            continue
        keeps = []
        for r in LEVELS:
            k = keep_count(g.size, r, cfg.channel_multiple, cfg.min_channels)
            if k < g.size and (not keeps or k < keeps[-1][1]):
                keeps.append((1.0 - k / g.size, k))
        if keeps:
            todo.append((g, keeps))
    curves = []
    with Progress("pruning sensitivity", sum(len(k) for _, k in todo), progress) as bar:
        for g, keeps in todo:
            c = Curve(g.index, g.name, g.size, [], [], [])
            for r, k in keeps:
                m, kept = surgery.apply(an, single_group_plan(an, scores, g.index, k))
                if refit is not None:
                    m = refit(m, kept)
                c.ratios.append(r)
                c.errors.append(output_error(ref, runs.outputs(m)))
                c.gains.append(1.0 - flops.count(m, shapes_ready=True).macs / macs0)
                bar.update()
            curves.append(c)
    return curves


def allocate(curves: list[Curve], lam: float, cfg) -> dict[int, float]:
    """Ratio per group index for trade-off ``lam`` (MAC fraction worth one unit of output error)."""
    out = {}
    grid = GRID[GRID <= cfg.max_group_ratio + 1e-9]
    for c in curves:
        grid_c = grid[grid <= max(c.ratios) + 1e-9]
        err, gain = c.at(grid_c)
        r = float(grid_c[int(np.argmax(gain * lam - err ** 2))])
        if r > 0:
            out[c.group] = r
    return out


def kept_for(an: Analysis, scores: np.ndarray, ratios: dict[int, float], cfg, keep_count: Callable) -> np.ndarray:
    """Boolean per class (True = kept) for per-group ratios; lowest-scoring classes go first."""
    kept = surgery.plain_kept(an)
    for gi, r in ratios.items():
        g = an.groups[gi]
        k = keep_count(g.size, r, cfg.channel_multiple, cfg.min_channels)
        if k < g.size:
            cls = np.asarray(g.classes)
            order = np.argsort(-scores[cls], kind="stable")
            kept[cls[order[k:]]] = False
    return kept


def search(an: Analysis, scores: np.ndarray, curves: list[Curve], target: float, cfg, keep_count: Callable,
           macs0: int) -> tuple[dict[int, float], float]:
    """(ratios per group, real MAC drop): the least-sensitive allocation whose MAC drop reaches ``target``.

    Bisects ``lam`` (real MAC drops after surgery), then moves the groups that differ between the
    last allocation short of the target and the first one past it, cheapest error per MAC first,
    one grid step at a time, stopping as soon as the target is reached (no overshoot by a whole level).
    """
    def drop(ratios):
        m, _ = surgery.apply(an, kept_for(an, scores, ratios, cfg, keep_count))
        return 1.0 - flops.count(m, shapes_ready=True).macs / macs0

    hi = 1e6
    hi_r = allocate(curves, hi, cfg)
    d = drop(hi_r)
    if d < target:
        raise EdgeInferError(f"prune: at most {100 * d:.1f}% of MACs can be removed from this model with the "
                             f"per-group limits (asked {100 * target:.1f}%); lower --prune-flops")
    lo, lo_r = 1e-6, {}
    for _ in range(40):
        mid = float(np.sqrt(lo * hi))
        r = allocate(curves, mid, cfg)
        if drop(r) >= target:
            hi, hi_r = mid, r
        else:
            lo, lo_r = mid, r
        if hi / lo < 1.01:
            break
    by_group = {c.group: c for c in curves}
    moves = []
    for g, r_hi in hi_r.items():
        r_lo = lo_r.get(g, 0.0)
        if r_hi > r_lo:
            e, gain = by_group[g].at(np.array([r_lo, r_hi]))
            moves.append(((e[1] ** 2 - e[0] ** 2) / max(gain[1] - gain[0], 1e-12), g, r_lo, r_hi))
    ratios = dict(lo_r)
    step = GRID[1]
    for _, g, r_lo, r_hi in sorted(moves):
        r = r_lo
        while r < r_hi - 1e-9:
            r = min(r + step, r_hi)
            ratios[g] = r
            d = drop(ratios)
            if d >= target:
                return ratios, d
    return hi_r, drop(hi_r)
