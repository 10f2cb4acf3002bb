"""Channel importance criteria: one score per channel class (higher = keep).

Registered by name in ``CRITERIA``; each returns ``(scores, counts)`` over all classes, where
``counts[k] == 0`` means the criterion saw nothing for class k. Scores from several layers of
one group (a residual stream has many producers) are each divided by their layer's mean before
they are summed, so no layer dominates by scale.

- ``l1`` / ``l2``: norm of each output filter of the Conv/Gemm/MatMul layers producing the
  channel (Li et al. 2017), depthwise filters included.
- ``bn``: |gamma| of the BatchNormalization layers on the channel (network slimming).
- ``greedy``: greedy least-squares elimination (``greedy.py``): channels ranked by how much the
  least-squares refit of the layers reading them loses when they go, redundancy included.
- ``activation``: data-driven contribution of the channel to the layers it feeds:
  RMS of the activation on the calibration set times the norm of the consumer weights reading it
  (a one-channel-at-a-time form of ThiNet's reconstruction criterion).
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from edgeinfer.errors import EdgeInferError

from .graph import WEIGHTED_OPS, attr
from .groups import Analysis
from .runner import iter_tensors


def _accumulate(an: Analysis, tensor: str, per_channel: np.ndarray, scores: np.ndarray, counts: np.ndarray) -> None:
    if not an.cg.has(tensor) or len(per_channel) != an.cg.count[tensor]:
        return
    mean = float(np.mean(per_channel))
    v = per_channel / mean if mean > 0 else np.zeros_like(per_channel)
    cls = an.tensor_classes(tensor)
    np.add.at(scores, cls, v)
    np.add.at(counts, cls, 1)


def filter_norms(node, view, order: int) -> np.ndarray | None:
    """Per-output-channel L1/L2 norm of a weighted node's weight."""
    w = view.const(node.input[1])
    if w is None:
        return None
    if node.op_type == "Conv":
        rows = w.reshape(w.shape[0], -1)
    elif node.op_type == "Gemm" and int(attr(node, "transB", 0)):
        rows = w
    else:                                      # Gemm transB=0 / MatMul: B is [K, N]
        rows = w.T
    rows = np.abs(rows.astype(np.float64))
    return rows.sum(axis=1) if order == 1 else np.sqrt((rows ** 2).sum(axis=1))


def _norm_scores(an: Analysis, order: int) -> tuple[np.ndarray, np.ndarray]:
    n = int(an.class_of.max()) + 1 if len(an.class_of) else 0
    scores, counts = np.zeros(n), np.zeros(n, dtype=np.int64)
    for node in an.view.graph.node:
        if node.op_type in WEIGHTED_OPS:
            norms = filter_norms(node, an.view, order)
            if norms is not None:
                _accumulate(an, node.output[0], norms, scores, counts)
    return scores, counts


def l1(an: Analysis, samples=None, ridge: float = 0.1):
    return _norm_scores(an, 1)


def l2(an: Analysis, samples=None, ridge: float = 0.1):
    return _norm_scores(an, 2)


def bn(an: Analysis, samples=None, ridge: float = 0.1):
    n = int(an.class_of.max()) + 1 if len(an.class_of) else 0
    scores, counts = np.zeros(n), np.zeros(n, dtype=np.int64)
    found = False
    for node in an.view.graph.node:
        if node.op_type == "BatchNormalization":
            gamma = an.view.const(node.input[1])
            if gamma is not None:
                found = True
                _accumulate(an, node.output[0], np.abs(gamma.astype(np.float64)), scores, counts)
    if not found:
        raise EdgeInferError("prune criterion 'bn' needs BatchNormalization layers but the model has none "
                             "(already folded?): use --prune-criterion l1, l2 or activation")
    return scores, counts


def _mixing_consumers(view, t: str) -> list:
    """Weighted consumers of ``t`` that mix channels (Conv group 1, Gemm, MatMul) with constant weights."""
    out = []
    for c in view.consumers.get(t, []):
        if c.op_type in WEIGHTED_OPS and c.input[0] == t and view.const(c.input[1]) is not None \
                and int(attr(c, "group", 1)) == 1 and not (c.op_type == "Gemm" and int(attr(c, "transA", 0))):
            out.append(c)
    return out


def _input_column_norms(node, view) -> np.ndarray:
    """L2 norm of the weights reading each input channel / feature of a mixing consumer."""
    w = view.const(node.input[1]).astype(np.float64)
    if node.op_type == "Conv":
        cols = w.transpose(1, 0, *range(2, w.ndim)).reshape(w.shape[1], -1)
    elif node.op_type == "Gemm" and int(attr(node, "transB", 0)):
        cols = w.T
    else:
        cols = w
    return np.sqrt((cols ** 2).sum(axis=1))


def activation(an: Analysis, samples: np.ndarray | None, ridge: float = 0.1):
    """Contribution of each channel to the layers it feeds: RMS(x_c) * ||W_next[:, c]|| on calibration data.

    Tensors of a group read by no channel-mixing layer are scored by RMS(x_c) alone.
    """
    if samples is None or len(samples) == 0:
        raise EdgeInferError("prune criterion 'activation' needs calibration images: pass --calib DIR "
                             "or use --prune-criterion l1")
    n = int(an.class_of.max()) + 1 if len(an.class_of) else 0
    scores, counts = np.zeros(n), np.zeros(n, dtype=np.int64)
    view = an.view
    names: list[str] = []
    for g in an.groups:
        if not g.prunable:
            continue
        fed = [t for t in g.tensors if _mixing_consumers(view, t)]
        names += [t for t in (fed or g.tensors) if t not in names]
    if not names:
        return scores, counts
    sums = {t: 0.0 for t in names}
    rows = {t: 0 for t in names}
    for out in iter_tensors(view.model, names, samples, batch=4):
        for t, v in out.items():
            axes = (0,) + tuple(range(2, v.ndim))
            sums[t] = sums[t] + (v.astype(np.float64) ** 2).sum(axis=axes)
            rows[t] += v.size // v.shape[1]
    for t in names:
        rms = np.sqrt(np.asarray(sums[t]) / max(rows[t], 1))
        weight = sum((_input_column_norms(c, view) for c in _mixing_consumers(view, t)), np.zeros_like(rms))
        _accumulate(an, t, rms * weight if weight.any() else rms, scores, counts)
    return scores, counts


def greedy(an: Analysis, samples: np.ndarray | None, ridge: float = 0.1):
    """Greedy least-squares elimination (``greedy.py``): what the refit with ``ridge`` loses when channels go."""
    from .greedy import greedy as run
    return run(an, samples, ridge)


# criterion(analysis, calibration samples, the refit's ridge) -> (score per class, layers seen per class);
# only criteria that anticipate the refit read the ridge
CRITERIA: dict[str, Callable[[Analysis, np.ndarray | None, float], tuple[np.ndarray, np.ndarray]]] = {
    "l1": l1, "l2": l2, "bn": bn, "activation": activation, "greedy": greedy,
}


def class_scores(an: Analysis, criterion: str, samples: np.ndarray | None,
                 ridge: float = 0.1) -> tuple[np.ndarray, dict[str, str]]:
    """Score per class; groups the criterion does not cover fall back to l1 (noted per group name).
    ``ridge`` is the least-squares refit's (``PruneConfig.ridge``)."""
    scores, counts = CRITERIA[criterion](an, samples, ridge)
    notes: dict[str, str] = {}
    if criterion == "l1":
        return scores, notes
    fb, fb_counts = l1(an)
    for g in an.groups:
        if g.prunable and not counts[g.classes].any():
            scores[g.classes] = fb[g.classes]
            notes[g.name] = f"criterion {criterion!r} sees no layer on this group: l1 used"
    return scores, notes
