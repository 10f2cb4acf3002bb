"""Non-maximum suppression in numpy: greedy hard NMS, soft-NMS, weighted (blended) NMS.

Contracts shared by every function here:

* ``boxes`` are xyxy [N, 4] (any float dtype; IoU is computed in float64 by
  ``boxes.iou_matrix``), ``scores`` [N], ``class_ids`` [N] ints or ``None``.
* ``class_ids=None`` means class-agnostic; otherwise a box only suppresses (decays, merges)
  boxes of its own class (per-class NMS done in one pass by masking the IoU matrix).
* A box is suppressed by a kept box when their IoU is strictly greater than ``iou_threshold``.
* Order: descending score; equal scores keep their input order (stable sort), so results are
  deterministic with ties.
* Returned indices point into the arrays given.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .boxes import iou_matrix

# above this many candidates the N x N IoU matrix is not materialised (memory); rows are
# computed for kept boxes only. Both paths give identical results.
MATRIX_LIMIT = 2048
METHODS = ("hard", "soft-linear", "soft-gaussian", "weighted")


def _empty_idx() -> np.ndarray:
    return np.zeros(0, dtype=np.int64)


def _iou_rows(b: np.ndarray, class_ids):
    """The suppression helper: full IoU matrix (class-masked) for small N, else None."""
    if len(b) > MATRIX_LIMIT:
        return None
    iou = iou_matrix(b, b)
    if class_ids is not None:
        iou *= class_ids[:, None] == class_ids[None, :]
    return iou


def _row(b: np.ndarray, class_ids, mat, i: int) -> np.ndarray:
    """IoU of box i with every box (0 across classes when class-aware)."""
    if mat is not None:
        return mat[i]
    r = iou_matrix(b[i:i + 1], b)[0]
    if class_ids is not None:
        r *= class_ids == class_ids[i]
    return r


def _greedy(n: int, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Greedy pass over suppressing pairs (src < dst, ranks in score order): a box is kept
    unless a kept box earlier in the order suppresses it. Returns kept ranks, ascending.

    Vectorised in rounds: a source that no live pair targets is kept, so its targets are
    removed; pairs touching a removed box are dropped. The smallest live source is always
    untargeted, so every round makes progress; typical detector outputs need 1-3 rounds.
    """
    removed = np.zeros(n, dtype=bool)
    while src.size:
        targeted = np.zeros(n, dtype=bool)
        targeted[dst] = True
        removed[dst[~targeted[src]]] = True
        live = ~(removed[src] | removed[dst])
        src, dst = src[live], dst[live]
    return np.flatnonzero(~removed)


# the window below assumes the float64 IoU is within this relative error of the exact one
# (true for finite coordinates whose products do not underflow float64: errors are ~1e-15)
_IOU_SLACK = 1e-6


def _hit_pairs(b: np.ndarray, cls: np.ndarray | None, thr: float):
    """Every pair (i, j), i < j, of score-ordered float64 boxes ``b`` [N, 4] (same class when
    ``cls`` is given) whose IoU is > ``thr``, as two rank arrays; ``None`` when the inputs are
    outside what the sweep handles (the caller then uses the row-by-row path).

    Sweep and prune: IoU <= overlap_width / width of either box, so IoU > thr needs the later
    box (in x1 order) to start before ``x2 - thr * w`` of the earlier one. Boxes are sorted by
    x1 (offset by class so classes never share a window), each box's window is found with one
    ``searchsorted``, and the exact IoU (same float64 arithmetic as ``boxes.iou_matrix``) is
    computed for the window pairs only. The window is widened by ``_IOU_SLACK`` and one ulp, so
    it is a superset of the true hits and the result is exact.
    """
    n = len(b)
    rows = np.empty((6, n))  # x1, y1, x2, y2, area, rank (exact in float64)
    rows[:4] = b.T
    lo, hi = float(rows[:4].min()), float(rows[:4].max())
    if not (thr >= 0.0 and np.isfinite(lo) and np.isfinite(hi)):  # nan propagates into min/max
        return None
    if thr >= 1.0:  # IoU never exceeds 1 (inter <= each area <= union, also in floats)
        return _empty_idx(), _empty_idx()
    rows[5] = np.arange(n)
    wh = rows[2:4] - rows[0:2]
    bound = np.nextafter(rows[2] - (thr * (1.0 - _IOU_SLACK)) * wh[0], np.inf)
    np.maximum(wh, 0.0, out=wh)
    np.multiply(wh[0], wh[1], out=rows[4])
    key = rows[0]
    check_class = False
    if cls is not None:
        off = float(np.ceil(hi - lo)) + 1.0  # integral: c * off is exact below 2**53
        span = float(np.abs(cls).max()) * off + abs(lo) + abs(hi)
        if span < 2.0 ** 50:
            shift = cls * off
            key, bound = key + shift, bound + shift
        else:  # offsets would lose precision: sweep on x alone, filter pairs by class
            check_class = True
    xo = np.argsort(key)  # any order of equal x1 is fine: both boxes' bounds are valid
    ar = np.arange(1, n + 1)
    count = np.searchsorted(key.take(xo), bound.take(xo), side="right")
    count -= ar
    np.maximum(count, 0, out=count)
    ends = np.cumsum(count)
    total = int(ends[-1])
    if total == 0:
        return _empty_idx(), _empty_idx()
    rs = rows.take(xo, axis=1)  # rows in x order
    # window pairs as positions in x order: box p with p+1 .. p+count[p]
    ends -= count
    ends -= ar
    second = np.arange(total)
    second -= np.repeat(ends, count)
    if check_class:
        first = np.repeat(ar - 1, count)
        cl = cls.take(xo)
        pos = np.flatnonzero(cl.take(first) == cl.take(second))
        first, second = first.take(pos), second.take(pos)
        p = rs.take(first, axis=1)
    else:
        p = np.repeat(rs, count, axis=1)
    q = rs.take(second, axis=1)
    lo = np.maximum(p[0:2], q[0:2])
    inter = np.minimum(p[2:4], q[2:4])
    inter -= lo
    np.maximum(inter, 0.0, out=inter)
    iou = np.multiply(inter[0], inter[1], out=lo[0])
    union = np.add(p[4], q[4], out=lo[1])
    union -= iou
    np.maximum(union, 5e-324, out=union)  # 0 only when both boxes are empty; then iou is 0
    iou /= union
    hit = np.flatnonzero(iou > thr)
    a, c = p[5].take(hit), q[5].take(hit)
    return np.minimum(a, c).astype(np.intp), np.maximum(a, c).astype(np.intp)


def _hard_sorted(b: np.ndarray, cls: np.ndarray | None, thr: float, limit: int) -> np.ndarray:
    """Greedy hard NMS of boxes already in score order ([N, 4], any float dtype); kept ranks."""
    n = len(b)
    pairs = _hit_pairs(b, cls, thr) if n <= limit else None
    if pairs is not None:
        return _greedy(n, *pairs)
    b = b.astype(np.float64)
    keep: list[int] = []
    removed = np.zeros(n, dtype=bool)
    for i in range(n):
        if removed[i]:
            continue
        keep.append(i)
        r = iou_matrix(b[i:i + 1], b[i + 1:])[0] > thr
        if cls is not None:
            r &= cls[i + 1:] == cls[i]
        removed[i + 1:] |= r
    return np.asarray(keep, dtype=np.int64)


def hard_nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float,
             class_ids: np.ndarray | None = None, *, matrix_limit: int | None = None) -> np.ndarray:
    """Greedy NMS. Returns kept indices (int64), highest score first.

    Up to ``matrix_limit`` (default ``MATRIX_LIMIT``) candidates, the suppressing pairs are
    found at once by a sweep over x (see ``_hit_pairs``) and the greedy pass walks them; above
    it, IoU rows are computed for kept boxes only (bounded memory). Both give identical results.
    """
    scores = np.asarray(scores)
    n = scores.shape[0]
    if n == 0:
        return _empty_idx()
    order = np.argsort(-scores, kind="stable")
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)[order]
    cls = None if class_ids is None else np.asarray(class_ids)[order]
    limit = MATRIX_LIMIT if matrix_limit is None else matrix_limit
    return order[_hard_sorted(b, cls, float(iou_threshold), limit)]


def soft_nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float,
             class_ids: np.ndarray | None = None, *, method: str = "linear", sigma: float = 0.5,
             score_threshold: float = 0.001, max_detections: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Soft-NMS (Bodla et al. 2017). Returns (kept indices, decayed scores), in selection order.

    Repeatedly takes the live box with the highest current score (ties: the earliest in the
    input), then multiplies the scores of the other live boxes by ``1 - iou`` where
    ``iou > iou_threshold`` ("linear") or by ``exp(-iou**2 / sigma)`` ("gaussian"); boxes whose
    score falls to ``score_threshold`` or below are dropped.
    """
    if method not in ("linear", "gaussian"):
        raise ValueError(f"soft-NMS method must be linear or gaussian, got {method!r}")
    s = np.asarray(scores, dtype=np.float64).copy()
    n = s.shape[0]
    if n == 0:
        return _empty_idx(), np.zeros(0, dtype=np.float64)
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    cls = None if class_ids is None else np.asarray(class_ids)
    mat = _iou_rows(b, cls)
    alive = s > score_threshold
    keep, kept_scores = [], []
    limit = n if max_detections is None else max_detections
    while len(keep) < limit and alive.any():
        i = int(np.argmax(np.where(alive, s, -np.inf)))
        keep.append(i)
        kept_scores.append(s[i])
        alive[i] = False
        row = _row(b, cls, mat, i)
        if method == "linear":
            w = np.where(row > iou_threshold, 1.0 - row, 1.0)
        else:
            w = np.exp(-(row * row) / sigma)
        s = np.where(alive, s * w, s)
        alive &= s > score_threshold
    return np.asarray(keep, dtype=np.int64), np.asarray(kept_scores, dtype=np.float64)


def weighted_nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float,
                 class_ids: np.ndarray | None = None, extra: np.ndarray | None = None
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Weighted (blended) NMS as MediaPipe's BlazeFace graphs use it.

    Takes the highest-scoring remaining box, gathers it and every remaining box with IoU above
    ``iou_threshold`` (same class when class-aware), outputs the score-weighted mean of their
    boxes (and of ``extra`` [N, K], e.g. keypoints) with the top box's score, and removes the
    whole group. Returns (indices of the top boxes, blended boxes float64 [M, 4], blended extra).
    """
    scores = np.asarray(scores, dtype=np.float64)
    n = scores.shape[0]
    if n == 0:
        k = 0 if extra is None else np.asarray(extra).reshape(0, -1).shape[1]
        return _empty_idx(), np.zeros((0, 4)), (None if extra is None else np.zeros((0, k)))
    order = np.argsort(-scores, kind="stable")
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)[order]
    s = scores[order]
    cls = None if class_ids is None else np.asarray(class_ids)[order]
    ex = None if extra is None else np.asarray(extra, dtype=np.float64).reshape(n, -1)[order]
    mat = _iou_rows(b, cls)
    removed = np.zeros(n, dtype=bool)
    keep, out_b, out_e = [], [], []
    for i in range(n):
        if removed[i]:
            continue
        group = ~removed & (_row(b, cls, mat, i) > iou_threshold)
        group[i] = True
        removed |= group
        w = s[group]
        total = w.sum()
        keep.append(i)
        if total > 0:
            out_b.append((w[:, None] * b[group]).sum(axis=0) / total)
            if ex is not None:
                out_e.append((w[:, None] * ex[group]).sum(axis=0) / total)
        else:  # all-zero scores: no weights to blend with
            out_b.append(b[i])
            if ex is not None:
                out_e.append(ex[i])
    idx = order[np.asarray(keep, dtype=np.int64)]
    return idx, np.asarray(out_b), (None if ex is None else np.asarray(out_e))


class Selection(NamedTuple):
    """What survives ``select``: arrays aligned on the first axis, best first."""

    boxes: np.ndarray       # float32 [M, 4] xyxy
    scores: np.ndarray      # float32 [M]
    class_ids: np.ndarray   # int64 [M]
    extra: np.ndarray | None  # float32 [M, K] (e.g. keypoints) or None
    index: np.ndarray       # int64 [M] rows of the input each detection comes from


def prefilter(scores: np.ndarray, score_threshold: float, top_k: int | None) -> np.ndarray:
    """Indices of scores > threshold, best first (stable), at most ``top_k``."""
    scores = np.asarray(scores)
    cand = np.flatnonzero(scores > score_threshold)
    order = cand[np.argsort(-scores[cand], kind="stable")]
    return order if top_k is None or top_k <= 0 else order[:top_k]


def select(boxes: np.ndarray, scores: np.ndarray, class_ids: np.ndarray, *, method: str = "hard",
           iou_threshold: float = 0.45, score_threshold: float = 0.25, top_k: int | None = 1000,
           max_detections: int | None = 100, class_agnostic: bool = False, sigma: float = 0.5,
           extra: np.ndarray | None = None) -> Selection:
    """Score threshold -> top-k -> NMS (``method`` in METHODS) -> max detections."""
    if method not in METHODS:
        raise ValueError(f"NMS method must be one of {METHODS}, got {method!r}")
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float32).reshape(-1)
    class_ids = np.asarray(class_ids, dtype=np.int64).reshape(-1)
    pre = prefilter(scores, score_threshold, top_k)
    b, s, c = boxes[pre], scores[pre], class_ids[pre]
    e = None if extra is None else np.asarray(extra, dtype=np.float32).reshape(len(scores), -1)[pre]
    cls = None if class_agnostic else c
    if method == "hard":  # ``pre`` is already in score order (stable): no second sort
        k = _hard_sorted(b, cls, float(iou_threshold), MATRIX_LIMIT) if len(pre) else pre
        out_b, out_s = b[k], s[k]
        out_e = None if e is None else e[k]
    elif method.startswith("soft-"):
        k, new_s = soft_nms(b, s, iou_threshold, cls, method=method[5:], sigma=sigma,
                            score_threshold=score_threshold, max_detections=max_detections)
        out_b, out_s = b[k], new_s.astype(np.float32)
        out_e = None if e is None else e[k]
    else:
        k, out_b, out_e = weighted_nms(b, s, iou_threshold, cls, e)
        out_b, out_s = out_b.astype(np.float32), s[k]
    if max_detections is not None and max_detections > 0:
        k, out_b, out_s = k[:max_detections], out_b[:max_detections], out_s[:max_detections]
        out_e = None if out_e is None else out_e[:max_detections]
    return Selection(np.ascontiguousarray(out_b, dtype=np.float32), np.asarray(out_s, dtype=np.float32),
                     c[k], None if out_e is None else np.asarray(out_e, dtype=np.float32), pre[k])
