"""Input second moments ``H = X^T X`` of every quantizable layer, from calibration samples.

One ONNX Runtime pass per batch exposes every layer's input tensor; convolution inputs are
unfolded (im2col, the layer's pads/strides/dilations/groups) into rows of ``K`` values in the
weight's column order. About ``rows_per_layer`` random rows per layer are kept in all, spread
evenly over the batches (more images, fewer positions each), which bounds the cost on large
feature maps (it grows with rows x K^2) without biasing the estimate.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from edgeinfer.progress import Progress

from ..load import real_inputs
from ..ort_session import cpu_session
from .layers import Layer, conv_node_attrs

BATCH = 8


def _conv_rows(x: np.ndarray, layer: Layer, a: dict, max_rows: int, rng) -> np.ndarray:
    """At most ``max_rows`` random output positions of a conv, unfolded: [R, G, Cg*kh*kw] (NCHW input).
    Windows are gathered only at the sampled positions, padding included (zeros outside the input):
    neither a full im2col nor a padded copy of the batch is made."""
    kh, kw = layer.shape[2], layer.shape[3]
    sh, sw = a.get("strides", [1, 1])
    dh, dw = a.get("dilations", [1, 1])
    auto = a.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    n, c, h, w = x.shape
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        pads = []
        for size, k, s, d in ((h, kh, sh, dh), (w, kw, sw, dw)):
            total = max((-(-size // s) - 1) * s + (k - 1) * d + 1 - size, 0)
            lo = total // 2 if auto == "SAME_UPPER" else total - total // 2
            pads.append((lo, total - lo))
        (pt, pb), (pl, pr) = pads
    else:
        pt, pl, pb, pr = a.get("pads", [0, 0, 0, 0])
    ho = (h + pt + pb - (kh - 1) * dh - 1) // sh + 1
    wo = (w + pl + pr - (kw - 1) * dw - 1) // sw + 1
    total = n * ho * wo
    pos = np.sort(rng.choice(total, max_rows, replace=False)) if total > max_rows else np.arange(total)
    bi, rem = np.divmod(pos, ho * wo)
    yi, xi = np.divmod(rem, wo)
    yy = yi[:, None] * sh - pt + np.arange(kh) * dh                 # [R, kh] input rows of each window
    xx = xi[:, None] * sw - pl + np.arange(kw) * dw                 # [R, kw]
    rows = x[bi[:, None, None], :, np.clip(yy, 0, h - 1)[:, :, None], np.clip(xx, 0, w - 1)[:, None, :]]   # [R, kh, kw, C]
    inside = ((yy >= 0) & (yy < h))[:, :, None] & ((xx >= 0) & (xx < w))[:, None, :]
    if not inside.all():
        rows = rows * inside[..., None]
    rows = rows.transpose(0, 3, 1, 2)                                # [R, C, kh, kw]
    g = layer.groups
    return np.ascontiguousarray(rows).reshape(len(pos), g, (c // g) * kh * kw)


def _rows(x: np.ndarray, layer: Layer, a: dict | None, max_rows: int, rng) -> np.ndarray:
    """At most ``max_rows`` random rows [R, G, K] of the layer input."""
    if layer.op == "Conv":
        return _conv_rows(x, layer, a, max_rows, rng)
    r = x.reshape(-1, 1, x.shape[-1])
    return r[np.sort(rng.choice(len(r), max_rows, replace=False))] if len(r) > max_rows else r


def collect(model: onnx.ModelProto, layers: list[Layer], samples: np.ndarray, *, rows_per_layer: int = 16384,
            seed: int = 0, progress: bool = True, label: str = "int4: layer statistics") -> dict[str, np.ndarray]:
    """layer node name -> H [G, K, K] (float64, averaged over rows)."""
    probe = onnx.ModelProto.FromString(model.SerializeToString())
    known = {o.name for o in probe.graph.output}
    wanted = list(dict.fromkeys(l.input for l in layers))
    for name in wanted:
        if name not in known:
            probe.graph.output.append(helper.make_empty_tensor_value_info(name))
    sess = cpu_session(probe)
    feed = real_inputs(model)[0].name
    fixed = sess.get_inputs()[0].shape[0]
    step = 1 if fixed == 1 else BATCH
    max_rows = max(64, -(-rows_per_layer // max(1, -(-len(samples) // BATCH))))     # per chunk of BATCH images
    attrs = {l.node: conv_node_attrs(model, l) if l.op == "Conv" else None for l in layers}
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    rng = np.random.default_rng(seed)
    with Progress(label, len(samples), progress) as bar:
        for i in range(0, len(samples), BATCH):    # a chunk of images per unfold + product (batch-1 models too)
            chunk = samples[i:i + BATCH]
            runs = [sess.run(wanted, {feed: chunk[j:j + step]}) for j in range(0, len(chunk), step)]
            outs = {name: np.concatenate([r[k] for r in runs]) for k, name in enumerate(wanted)}
            for l in layers:
                r = _rows(outs[l.input].astype(np.float32, copy=False), l, attrs[l.node], max_rows, rng)
                if r.shape[1] == 1:                                  # float32 products, float64 sums
                    h = (r[:, 0].T @ r[:, 0])[None].astype(np.float64)
                else:                                                # per group: batched [G, K, R] @ [G, R, K]
                    g = np.ascontiguousarray(r.transpose(1, 0, 2))
                    h = (g.transpose(0, 2, 1) @ g).astype(np.float64)
                sums[l.node] = sums.get(l.node, 0) + h
                counts[l.node] = counts.get(l.node, 0) + len(r)
            bar.update(len(chunk))
    return {k: v / max(counts[k], 1) for k, v in sums.items()}
