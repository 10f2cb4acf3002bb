"""Greedy least-squares channel selection (ThiNet / He et al. 2017's selection step, exact for the refit).

For every channel-mixing layer that reads a prunable group (Conv group 1, Gemm, MatMul with
constant weights), the Gram matrix of its inputs on calibration data gives, in closed form, the
error the least-squares refit (``reconstruct``) leaves when some input channels are gone:

    G = A^T A + lam R,  A = [X, 1],  W = G^-1 (A^T Y + lam R W0) = W0 (the unpruned layer)
    removing the columns J of one channel raises the refit's squared error by
        tr(W_J^T (G^-1)_JJ^-1 W_J)        (optimal brain surgeon, for least squares)

``lam`` and ``R`` are the refit's ridge (towards the unpruned weights, bias free). Channels are
removed one at a time, each time the one whose removal raises the summed relative squared error of
the layers reading it least, and ``G^-1`` / ``W`` are downdated. A channel's score is the step at
which it would go (higher = kept), so every ratio's cut is this elimination's prefix. Unlike a
one-channel-at-a-time score, it sees redundancy: of two channels that carry the same signal, the
refit loses little when one goes, but much when both do.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgeinfer.progress import Progress

from .groups import Analysis
from .reconstruct import sample_positions, unfold, weight_matrix
from .runner import iter_tensors, progress, progress_enabled

MAX_SAMPLES = 128           # images, as the refit
ROWS_PER_LAYER = 16384      # sampled output positions over all images, as the refit
MAX_FEATURES = 4608         # layers with more inputs (C * kh * kw) are left to the fallback


@dataclass
class _Reader:
    """One channel-mixing layer reading a group tensor, with its Gram matrix."""

    node: object
    tensor: str
    weight: np.ndarray           # [features + 1, outputs], bias as the last row
    col_class: np.ndarray        # class id per feature column
    k_hw: tuple = ()
    positions: tuple | None = None
    gram: np.ndarray | None = None


def _readers(an: Analysis) -> list[_Reader]:
    from .importance import _mixing_consumers
    view = an.view
    out: list[_Reader] = []
    seen: set[tuple[str, str]] = set()
    for g in an.groups:
        if not g.prunable:
            continue
        for t in g.tensors:
            for node in _mixing_consumers(view, t):
                key = (t, node.name or node.output[0])
                if key in seen:
                    continue
                seen.add(key)
                w = view.const(node.input[1]).astype(np.float64)
                if node.op_type == "Conv" and w.ndim != 4:
                    continue
                b = view.const(node.input[2]) if node.op_type != "MatMul" and len(node.input) > 2 and node.input[2] else None
                k_hw = tuple(w.shape[2:]) if node.op_type == "Conv" else ()
                cls = an.tensor_classes(t)
                col_class = np.repeat(cls, int(np.prod(k_hw))) if k_hw else cls
                if len(col_class) > MAX_FEATURES:
                    continue
                out.append(_Reader(node, t, weight_matrix(node, w, b), col_class, k_hw))
    return out


def _grams(an: Analysis, readers: list[_Reader], samples: np.ndarray, rng) -> None:
    """Accumulate each reader's [A, 1]^T [A, 1] over the calibration images (sampled positions)."""
    if len(samples) > MAX_SAMPLES:
        samples = samples[np.sort(rng.choice(len(samples), MAX_SAMPLES, replace=False))]
    for r in readers:
        if r.k_hw:
            r.positions = sample_positions(an.view, r.node, len(samples), ROWS_PER_LAYER, rng)
    names = sorted({r.tensor for r in readers})
    with Progress("greedy: layer inputs", len(samples), progress_enabled()) as bar:
        for batch in iter_tensors(an.view.model, names, samples, batch=8):
            for r in readers:
                x = batch[r.tensor].astype(np.float32)
                a = unfold(x, r.node, r.k_hw, *r.positions) if r.k_hw else x.reshape(len(x), -1)
                a1 = np.concatenate([a, np.ones((len(a), 1), np.float32)], axis=1)
                g = (a1.T @ a1).astype(np.float64)
                r.gram = g if r.gram is None else r.gram + g
            bar.update(len(next(iter(batch.values()))))


class _Solver:
    """Inverse ridge Gram and current refit weights of one reader, downdated as channels go.

    ``classes`` are the reader's removable classes; ``costs()`` / ``remove(i)`` index them."""

    def __init__(self, r: _Reader, removable: set[int], ridge: float):
        g = r.gram
        d = g.shape[0] - 1
        lam = ridge * float(np.trace(g[:d, :d])) / max(d, 1) + 1e-12
        reg = np.full(d + 1, lam)
        reg[d] = 0.0
        self.p = np.linalg.inv(g + np.diag(reg))
        self.w = r.weight.copy()
        self.energy = max(float(np.einsum("ij,ij->", r.weight, g @ r.weight)), 1e-30)
        self.classes = np.array(sorted(int(c) for c in np.unique(r.col_class) if int(c) in removable), dtype=np.int64)
        blocks = [np.flatnonzero(r.col_class == c) for c in self.classes]
        self.uniform = len({len(b) for b in blocks}) <= 1
        self.blocks = np.stack(blocks) if self.uniform and blocks else blocks
        self.alive = np.ones(len(self.classes), bool)
        self.live = np.ones(d + 1, bool)                       # columns of p / rows of w still in the model

    def _cost(self, j: np.ndarray) -> float:
        wj = self.w[j]
        return float(np.einsum("ij,ij->", wj, np.linalg.solve(self.p[np.ix_(j, j)], wj)))

    def costs(self) -> np.ndarray:
        """Rise of the relative refit error if each class went now (inf for classes already gone)."""
        out = np.full(len(self.classes), np.inf)
        live = np.flatnonzero(self.alive)
        if not len(live):
            return out
        if not self.uniform:
            out[live] = [self._cost(self.blocks[i]) for i in live]
        elif self.blocks.shape[1] == 1:
            j = self.blocks[live, 0]
            out[live] = (self.w[j] ** 2).sum(axis=1) / self.p[j, j]
        else:
            idx = self.blocks[live]                            # [n, k]
            wj = self.w[idx]                                   # [n, k, O]
            sol = np.linalg.solve(self.p[idx[:, :, None], idx[:, None, :]], wj)
            out[live] = np.einsum("nko,nko->n", wj, sol)
        return out / self.energy

    def remove(self, i: int) -> None:
        j = self.blocks[i]
        pj = self.p[:, j]                                      # [d, k]
        inv = np.linalg.inv(self.p[np.ix_(j, j)])
        self.w -= pj @ (inv @ self.w[j])
        self.p -= (pj @ inv) @ pj.T
        self.alive[i] = False
        self.live[j] = False
        if self.live.sum() < 0.75 * len(self.live):            # drop the dead rows: later steps get cheaper
            self._compact()

    def _compact(self) -> None:
        keep = np.flatnonzero(self.live)
        self.p = np.ascontiguousarray(self.p[np.ix_(keep, keep)])
        self.w = np.ascontiguousarray(self.w[keep])
        new = np.zeros(len(self.live), np.int64)
        new[keep] = np.arange(len(keep))
        if self.uniform:
            self.blocks = new[self.blocks]                     # gone classes map to 0: never read
        else:
            self.blocks = [new[b] for b in self.blocks]
        self.live = np.ones(len(keep), bool)


def elimination_order(group_classes: list[int], solvers: list[_Solver]) -> list[int]:
    """Classes of one group in the order the greedy refit-error criterion removes them (first = least needed)."""
    cls = np.asarray(group_classes, dtype=np.int64)
    pos = {int(c): i for i, c in enumerate(cls)}
    where = [np.array([pos[int(c)] for c in s.classes], dtype=np.int64) for s in solvers]
    at = [{int(c): i for i, c in enumerate(s.classes)} for s in solvers]
    alive = np.ones(len(cls), bool)
    order: list[int] = []
    for _ in range(len(cls)):
        total = np.zeros(len(cls))
        for s, wh in zip(solvers, where):
            total[wh] += s.costs()
        total[~alive] = np.inf
        i = int(np.argmin(total))
        alive[i] = False
        order.append(int(cls[i]))
        for s, a in zip(solvers, at):
            if int(cls[i]) in a:
                s.remove(a[int(cls[i])])
    return order


def greedy(an: Analysis, samples: np.ndarray | None, ridge: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Scores per class: the step at which greedy least-squares elimination, for a refit with
    ``ridge`` (``PruneConfig.ridge``), removes it (higher = kept).

    Groups that no channel-mixing layer reads whole are scored by ``activation`` instead."""
    from .importance import activation
    n = int(an.class_of.max()) + 1 if len(an.class_of) else 0
    scores, counts = np.zeros(n), np.zeros(n, dtype=np.int64)
    if n == 0:
        return scores, counts
    if samples is None or len(samples) == 0:
        activation(an, samples)                      # refuses without images, in its words
    readers = _readers(an)
    rng = np.random.default_rng(seed)
    if readers:
        _grams(an, readers, samples, rng)
    readers_of: dict[int, list[_Reader]] = {}       # class -> the readers with its columns
    for r in readers:
        for c in np.unique(r.col_class):
            readers_of.setdefault(int(c), []).append(r)
    prunable = [g for g in an.groups if g.prunable]
    fallback = []
    for k, g in enumerate(prunable):
        cls = [int(c) for c in g.classes]
        rs = {id(r): r for c in cls for r in readers_of.get(c, [])}
        if not rs or not all(c in readers_of for c in cls):
            fallback.append(g)
            continue
        progress(f"greedy selection: group {k + 1}/{len(prunable)} ({g.name}, {len(cls)} channels)")
        solvers = [_Solver(r, set(cls), ridge) for r in rs.values()]     # only this group's classes go here
        order = elimination_order(cls, solvers)
        scores[order] = np.arange(len(order), dtype=np.float64) + 1.0
        counts[cls] = 1
    if fallback:                                     # read by no mixing layer here: the activation score
        act, act_counts = activation(an, samples)
        for g in fallback:
            scores[g.classes] = act[g.classes]
            counts[g.classes] = act_counts[g.classes]
    return scores, counts
