"""Recovery without training: least-squares refit of the layers whose inputs lost channels.

After surgery, each Conv (group 1, 2-D), Gemm or MatMul whose input lost channels is refit so
that, on the calibration set, its output on the *pruned* network's input matches the output
the *original* network produced (the reconstruction step of ThiNet / He et al. 2017), layer by
layer in topological order (a layer sees the inputs its already-refit predecessors produce).

For a k x k convolution the regression runs on unfolded input patches (C' * k * k features)
at a random subset of output positions; for Gemm/MatMul on the kept input features. Solved in
closed form from accumulated normal equations with a ridge term that pulls the solution towards
the naively pruned weights (so a layer with little data stays close to where it was):

    (A^T A + lam R) W = A^T Y + lam R W_pruned,  A = [X, 1],  R = diag(1, .., 1, 0)

with ``lam = ridge * trace(X^T X) / dim``. The bias column is never regularised.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .graph import GraphView, attr, unique_name
from .runner import iter_tensors, progress, session, with_outputs


@dataclass
class LayerFit:
    """Relative output error of one refit layer on the calibration set, before and after."""

    layer: str
    features: int
    rows: int
    error_before: float
    error_after: float

    def to_dict(self) -> dict:
        return {"layer": self.layer, "features": self.features, "rows": self.rows,
                "rel_error_before": round(self.error_before, 5), "rel_error_after": round(self.error_after, 5)}


@dataclass
class _Layer:
    node: onnx.NodeProto
    kind: str                  # "conv" | "gemm" | "matmul"
    w_name: str                # graph input names in the reconstruction model
    b_name: str | None
    ko: np.ndarray | None      # kept output channels (indices into the original output)
    k_hw: tuple = ()
    positions: tuple | None = None
    wave: int = 0


def _conv_pads(node, in_hw, k_hw, strides, dil) -> list[int]:
    auto = attr(node, "auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        pads_b, pads_e = [], []
        for n, k, s, d in zip(in_hw, k_hw, strides, dil):
            total = max((-(-n // s) - 1) * s + (k - 1) * d + 1 - n, 0)
            lo = total // 2 if auto == "SAME_UPPER" else total - total // 2
            pads_b.append(lo)
            pads_e.append(total - lo)
        return pads_b + pads_e
    if auto == "VALID":
        return [0] * 4
    return list(attr(node, "pads", [0, 0, 0, 0]))


def unfold(x: np.ndarray, node, k_hw, oy: np.ndarray, ox: np.ndarray) -> np.ndarray:
    """Conv input patches at output positions (oy, ox): [batch * P, C * kh * kw] (C-major)."""
    strides = list(attr(node, "strides", [1, 1]))
    dil = list(attr(node, "dilations", [1, 1]))
    pads = _conv_pads(node, x.shape[2:], k_hw, strides, dil)
    xp = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    iy = oy[:, None] * strides[0] + np.arange(k_hw[0]) * dil[0]
    ix = ox[:, None] * strides[1] + np.arange(k_hw[1]) * dil[1]
    p = xp[:, :, iy[:, :, None], ix[:, None, :]]           # [b, C, P, kh, kw]
    b, c, n = p.shape[:3]
    return p.transpose(0, 2, 1, 3, 4).reshape(b * n, c * k_hw[0] * k_hw[1])


def _refit_layers(view: GraphView, kept: dict[str, np.ndarray]) -> tuple[list[onnx.NodeProto], list[str]]:
    """Layers to refit (inputs lost channels) and the ones skipped, with why."""
    layers, skipped = [], []
    for node in view.graph.node:
        if node.op_type not in ("Conv", "Gemm", "MatMul") or node.input[0] not in kept:
            continue
        w = view.const(node.input[1])
        if node.op_type == "Conv" and int(attr(node, "group", 1)) != 1:
            continue                                      # depthwise: no channel mixing to refit
        if node.op_type == "Conv" and (w is None or w.ndim != 4):
            skipped.append(f"{view.node_label(node)}: only 2-D convolutions are refit")
            continue
        layers.append(node)
    return layers, skipped


def reconstruct(original: onnx.ModelProto, pruned: onnx.ModelProto, kept: dict[str, np.ndarray],
                samples: np.ndarray, *, ridge: float = 0.1, max_samples: int = 128, rows_per_layer: int = 16384,
                seed: int = 0, memo: "OriginalStats | None" = None) -> tuple[onnx.ModelProto, list[LayerFit], list[str]]:
    """Refit the consumers of cut tensors in ``pruned``; returns (model, per-layer fits, skipped notes).

    With ``memo`` (built on ``original`` and the same ``samples``), what the refit needs from the
    original model comes from it: the first wave is solved from input Gram matrices without running
    the pruned model, later waves' targets are reused; the weights are the same as without it."""
    rng = np.random.default_rng(seed)
    if len(samples) > max_samples:
        samples = samples[np.sort(rng.choice(len(samples), max_samples, replace=False))]
    view_p = GraphView(pruned)
    nodes, skipped = _refit_layers(view_p, kept)
    if not nodes:
        return pruned, [], skipped
    model = onnx.ModelProto()
    model.CopyFrom(pruned)
    weights, layers = _weights_as_inputs(model, view_p, nodes, kept)
    _assign_waves(model, layers)
    _pick_positions(view_p, layers, len(samples), rows_per_layer, rng)
    fits: list[LayerFit] = []
    first = 0
    known = None if memo is None else memo.lookup(layers, kept, samples)
    if known is None:
        targets = _targets(original, layers, samples)
    else:
        grams, targets = known
        for ly in layers:
            if ly.wave == 0:
                fits.append(_solve(ly, grams[ly.node.output[0]], weights, ridge))
        first = 1
    later = [ly for ly in layers if ly.wave >= first]
    sess = session(with_outputs(model, sorted({ly.node.input[0] for ly in later}))) if later else None
    for wave in range(first, max(ly.wave for ly in layers) + 1):
        todo = [ly for ly in layers if ly.wave == wave]
        progress(f"reconstruction: wave {wave + 1}, {len(todo)} layer(s)")
        stats = {id(ly): None for ly in todo}
        names = sorted({ly.node.input[0] for ly in todo})
        start = 0
        for batch in iter_tensors(model, names, samples, feeds=weights, sess=sess):
            n = len(next(iter(batch.values())))
            for ly in todo:
                a = _features(ly, batch[ly.node.input[0]])
                y = targets[ly.node.output[0]][start:start + n].reshape(len(a), -1)
                stats[id(ly)] = _accumulate(stats[id(ly)], a, y)
            start += n
        for ly in todo:
            fits.append(_solve(ly, stats[id(ly)], weights, ridge))
    return _write_back(pruned, layers, weights), fits, skipped


class OriginalStats:
    """What a refit needs from the original model, kept for the last set of layers asked (a
    sensitivity scan refits the same readers at several ratios: one original pass per group).

    A first-wave layer reads the original tensor minus some channels, so its normal equations are
    in the original input Gram ``G = [A, 1]^T [A, 1]`` (sampled positions): features ``A[:, J]``,
    targets ``Y = [A, 1] W0`` (the unpruned layer, kept outputs), ``[A_J, 1]^T Y = G[J, :] W0``,
    ``|Y|^2 = tr(W0^T G W0)``. Later waves read refit outputs: only their targets are kept.
    Holds the samples it was built on and answers for those only."""

    def __init__(self, original: onnx.ModelProto, samples: np.ndarray):
        self.original = original
        self.view = GraphView(original)
        self.samples = samples
        self._memo: dict[tuple, np.ndarray] = {}

    @staticmethod
    def _key(ly: _Layer) -> tuple:
        pos = None if ly.positions is None else tuple(map(bytes, ly.positions))
        return (ly.wave == 0, ly.node.output[0], pos, None if ly.ko is None else bytes(np.asarray(ly.ko)))

    def lookup(self, layers: list[_Layer], kept: dict[str, np.ndarray], samples: np.ndarray):
        """({output: [G, H, |Y|^2, rows]} of the first wave, {output: targets} of later waves),
        or None when these samples or layers are not covered."""
        if samples is not self.samples and not np.array_equal(samples, self.samples):
            return None
        nodes = [self.view.producer.get(ly.node.output[0]) for ly in layers]
        if any(n is None or (ly.kind != "conv" and len(self.view.shape(n.input[0]) or ()) != 2)
               for ly, n in zip(layers, nodes)):
            return None
        keys = [self._key(ly) for ly in layers]
        self._memo = {k: v for k, v in self._memo.items() if k in keys}
        todo = [(k, ly, n) for k, ly, n in zip(keys, layers, nodes) if k not in self._memo]
        if todo:
            self._run(todo, samples)
        grams, targets = {}, {}
        for k, ly, n in zip(keys, layers, nodes):
            if ly.wave == 0:
                grams[ly.node.output[0]] = self._normal_equations(self._memo[k], ly, n, kept)
            else:
                targets[ly.node.output[0]] = self._memo[k]
        return grams, targets

    def _run(self, todo, samples) -> None:
        """One pass of the original model: first-wave input Grams and later waves' targets together."""
        gram_of = [(k, ly, n) for k, ly, n in todo if k[0]]
        target_of = [(k, ly) for k, ly, n in todo if not k[0]]
        names = sorted({n.input[0] for _, _, n in gram_of} | {ly.node.output[0] for _, ly in target_of})
        grams: dict[tuple, np.ndarray] = {}
        parts: dict[tuple, list[np.ndarray]] = {k: [] for k, _ in target_of}
        for batch in iter_tensors(self.original, names, samples):
            for k, ly, n in gram_of:
                a = _features(ly, batch[n.input[0]])
                a1 = np.concatenate([a.astype(np.float64), np.ones((len(a), 1))], axis=1)
                grams[k] = grams.get(k, 0) + a1.T @ a1
            for k, ly in target_of:
                parts[k].append(_target_rows(ly, batch[ly.node.output[0]]))
        self._memo.update(grams)
        self._memo.update({k: np.concatenate(v) for k, v in parts.items()})

    def _normal_equations(self, g: np.ndarray, ly: _Layer, n, kept) -> list:
        w = self.view.const(n.input[1]).astype(np.float64)
        b = self.view.const(n.input[2]) if n.op_type != "MatMul" and len(n.input) > 2 and n.input[2] else None
        w0 = weight_matrix(n, w, b)
        if ly.ko is not None:
            w0 = w0[:, ly.ko]
        per = int(np.prod(ly.k_hw)) if ly.kind == "conv" else 1
        ki = np.asarray(kept[n.input[0]], np.int64)
        cols = np.concatenate([(ki[:, None] * per + np.arange(per)).ravel(), [g.shape[0] - 1]])
        gw = g @ w0
        return [g[np.ix_(cols, cols)], gw[cols], float(np.einsum("ij,ij->", w0, gw)), int(round(g[-1, -1]))]


def _weights_as_inputs(model, view, nodes, kept):
    """Turn each refit layer's weight and bias into graph inputs of ``model`` (fed while fitting)."""
    g = model.graph
    by_name = {n.name or n.output[0]: n for n in g.node}
    names = {i.name for i in g.initializer} | {n for node in g.node for n in node.output}
    weights: dict[str, np.ndarray] = {}
    layers = []
    for src in nodes:
        node = by_name[src.name or src.output[0]]
        kind = {"Conv": "conv", "Gemm": "gemm", "MatMul": "matmul"}[node.op_type]
        w = view.const(node.input[1]).astype(np.float32)
        w_name = unique_name(names, f"{view.node_label(node)}.W.refit")
        weights[w_name] = w
        node.input[1] = w_name
        b_name = None
        if kind != "matmul":
            b = view.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
            n_out = w.shape[0] if kind == "conv" else (w.shape[0] if int(attr(node, "transB", 0)) else w.shape[1])
            b = np.zeros(n_out, np.float32) if b is None else np.broadcast_to(b, (n_out,)).astype(np.float32)
            b_name = unique_name(names, f"{view.node_label(node)}.B.refit")
            weights[b_name] = np.ascontiguousarray(b)
            while len(node.input) < 3:
                node.input.append("")
            node.input[2] = b_name
        for name in (w_name, b_name):
            if name:
                g.input.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, list(weights[name].shape)))
        layers.append(_Layer(node, kind, w_name, b_name, kept.get(node.output[0]), tuple(w.shape[2:])))
    return weights, layers


def _assign_waves(model, layers) -> None:
    """wave(L) = 1 + the largest wave of refit layers upstream of L (0 if none)."""
    by_out = {ly.node.output[0]: ly for ly in layers}
    upstream: dict[str, int] = {}
    for node in model.graph.node:
        level = max((upstream.get(i, -1) for i in node.input if i), default=-1)
        ly = by_out.get(node.output[0])
        if ly is not None:
            ly.wave = level + 1
            level = ly.wave
        for o in node.output:
            upstream[o] = level


def sample_positions(view, node, n_samples: int, rows: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """Output positions (oy, ox) of a conv sampled so that ``n_samples`` images give about ``rows`` rows."""
    h, w = view.shape(node.output[0])[2:4]
    p = min(h * w, max(8, rows // max(n_samples, 1)))
    flat = np.sort(rng.choice(h * w, p, replace=False))
    return flat // w, flat % w


def _pick_positions(view, layers, n_samples, rows, rng) -> None:
    for ly in layers:
        if ly.kind == "conv":
            ly.positions = sample_positions(view, ly.node, n_samples, rows, rng)


def _targets(original, layers, samples) -> dict[str, np.ndarray]:
    """Original outputs of each refit layer at its sampled positions: [N * P, O'] per layer."""
    names = [ly.node.output[0] for ly in layers]
    parts: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for batch in iter_tensors(original, names, samples):
        for ly in layers:
            parts[ly.node.output[0]].append(_target_rows(ly, batch[ly.node.output[0]]))
    return {n: np.concatenate(v) for n, v in parts.items()}


def _target_rows(ly: _Layer, y: np.ndarray) -> np.ndarray:
    """A batch of the original layer output ``y`` as refit targets: kept output channels, sampled positions."""
    if ly.ko is not None:
        y = y[:, ly.ko]
    if ly.kind == "conv":
        oy, ox = ly.positions
        y = y[:, :, oy, ox].transpose(0, 2, 1)        # [b, P, O']
    return np.ascontiguousarray(y, dtype=np.float32)


def _features(ly: _Layer, x: np.ndarray) -> np.ndarray:
    if ly.kind == "conv":
        return unfold(x.astype(np.float32), ly.node, ly.k_hw, *ly.positions)
    return x.reshape(len(x), -1).astype(np.float32)


def _accumulate(st, a: np.ndarray, y: np.ndarray):
    a = a.astype(np.float64)
    y = y.astype(np.float64)
    a1 = np.concatenate([a, np.ones((len(a), 1))], axis=1)
    g, h, yy = a1.T @ a1, a1.T @ y, float((y ** 2).sum())
    if st is None:
        return [g, h, yy, len(a)]
    st[0] += g
    st[1] += h
    st[2] += yy
    st[3] += len(a)
    return st


def weight_matrix(node, w: np.ndarray, b: np.ndarray | None) -> np.ndarray:
    """A Conv / Gemm / MatMul weight + bias as a [features + 1, outputs] float64 matrix (rows match unfold's columns)."""
    if node.op_type == "Conv":
        m = w.reshape(w.shape[0], -1).T
    elif node.op_type == "Gemm" and int(attr(node, "transB", 0)):
        m = w.T
    else:
        m = w
    bias = np.zeros(m.shape[1]) if b is None else np.broadcast_to(b, (m.shape[1],))
    return np.concatenate([m, bias[None, :]], axis=0).astype(np.float64)


def _as_matrix(ly: _Layer, weights) -> np.ndarray:
    """Current weight + bias of a refit layer as ``weight_matrix``."""
    return weight_matrix(ly.node, weights[ly.w_name], weights[ly.b_name] if ly.b_name else None)


def _solve(ly: _Layer, st, weights, ridge: float) -> LayerFit:
    g, h, yy, rows = st
    w0 = _as_matrix(ly, weights)
    d = g.shape[0] - 1
    lam = ridge * float(np.trace(g[:d, :d])) / max(d, 1) + 1e-12
    reg = np.full(d + 1, lam)
    reg[d] = 0.0
    if not ly.b_name:                       # no bias: pin the bias row to zero
        reg[d] = 1e12
    lhs = g + np.diag(reg)
    rhs = h + reg[:, None] * w0             # w0's bias row is 0 when the layer has no bias
    w1 = np.linalg.lstsq(lhs, rhs, rcond=None)[0]

    def err(w):
        e = float(np.einsum("ij,ij->", w, g @ w) - 2 * np.einsum("ij,ij->", w, h) + yy)
        return float(np.sqrt(max(e, 0.0) / max(yy, 1e-30)))

    before, after = err(w0), err(w1)
    if after > before:                      # never make a layer worse on its own data
        w1, after = w0, before
    m, b = w1[:d].astype(np.float32), w1[d].astype(np.float32)
    w = weights[ly.w_name]
    if ly.kind == "conv":
        weights[ly.w_name] = np.ascontiguousarray(m.T.reshape(w.shape))
    elif ly.kind == "gemm" and int(attr(ly.node, "transB", 0)):
        weights[ly.w_name] = np.ascontiguousarray(m.T)
    else:
        weights[ly.w_name] = np.ascontiguousarray(m)
    if ly.b_name:
        weights[ly.b_name] = np.ascontiguousarray(b)
    return LayerFit(ly.node.name or ly.node.output[0], d, rows, before, after)


def _write_back(pruned, layers, weights) -> onnx.ModelProto:
    """The pruned model with each refit layer's fitted weight and bias as (unshared) initializers."""
    m = onnx.ModelProto()
    m.CopyFrom(pruned)
    g = m.graph
    by_out = {n.output[0]: n for n in g.node}
    uses: dict[str, int] = {}
    for n in g.node:
        for i in n.input:
            uses[i] = uses.get(i, 0) + 1
    names = {i.name for i in g.initializer} | set(by_out)
    inits = {i.name: i for i in g.initializer}
    for ly in layers:
        node = by_out[ly.node.output[0]]
        for idx, key in ((1, ly.w_name), (2, ly.b_name)):
            if key is None:
                continue
            old = node.input[idx] if len(node.input) > idx else ""
            arr = weights[key]
            if old and uses.get(old, 0) == 1:
                name = old
            else:
                name = unique_name(names, f"{node.output[0]}.{'W' if idx == 1 else 'B'}")
            if old in inits and name == old:
                arr = arr.reshape(inits[old].dims) if int(np.prod(inits[old].dims)) == arr.size else arr
            inits[name] = numpy_helper.from_array(arr.astype(np.float32), name)
            while len(node.input) <= idx:
                node.input.append("")
            node.input[idx] = name
    used = {i for n in g.node for i in n.input}
    del g.initializer[:]
    g.initializer.extend(v for k, v in inits.items() if k in used)
    return m
