"""Reshape, Flatten, Transpose, Squeeze, Unsqueeze, Slice, Split, Gather, Pad, Identity/Dropout.

These ops never change values, so in int8 their outputs keep the input's scale and zero point.
Transpose costs nothing: it only changes the recorded layout of the value.
"""
from __future__ import annotations

import numpy as np
from ai_edge_litert import schema_py_generated as fb

from ..context import Converter, Value, attrs, identity, inverse


def _axes_input(ctx: Converter, node, index: int, attr: str = "axes") -> list[int] | None:
    if len(node.input) > index and node.input[index]:
        return [int(v) for v in ctx.const(node.input[index]).reshape(-1)]
    a = attrs(node)
    return list(a[attr]) if attr in a else None


def _reshape_to(ctx: Converter, node, x: Value, out_shape) -> None:
    """RESHAPE in ONNX order (``Converter.reshape`` keeps a pinned batch resizable)."""
    t = ctx.onnx_order(x)
    out = ctx.new_value(node.output[0], out_shape, q=ctx.qof(t))
    ctx.reshape(t, list(out_shape), out=out.tensor)


def reshape(ctx: Converter, index: int, node) -> None:
    """Reshape with a constant shape (output shape from shape inference)."""
    ctx.const(node.input[1])
    _reshape_to(ctx, node, ctx.get(node.input[0]), ctx.shape(node.output[0]))


def flatten(ctx: Converter, index: int, node) -> None:
    """Flatten(axis) -> RESHAPE to 2-D (a TRANSPOSE first only when the layout needs it)."""
    _reshape_to(ctx, node, ctx.get(node.input[0]), ctx.shape(node.output[0]))


def transpose(ctx: Converter, index: int, node) -> None:
    """Transpose: no op, the output is the same tensor with a composed layout."""
    x = ctx.get(node.input[0])
    rank = len(x.shape)
    p = tuple(attrs(node).get("perm", tuple(reversed(range(rank)))))
    inv_p = inverse(p)
    q = tuple(inv_p[x.perm[i]] for i in range(rank))
    ctx.alias(node.output[0], x, shape=ctx.shape(node.output[0]), perm=q)


def squeeze(ctx: Converter, index: int, node) -> None:
    """Squeeze: RESHAPE of the stored tensor, layout kept for the remaining axes."""
    x = ctx.get(node.input[0])
    axes = _axes_input(ctx, node, 1)
    axes = [i for i, d in enumerate(x.shape) if d == 1] if axes is None else [a % len(x.shape) for a in axes]
    kept = [p for p in x.perm if p not in axes]
    perm = tuple(sorted(kept).index(p) for p in kept)
    out = ctx.new_value(node.output[0], ctx.shape(node.output[0]), perm, q=ctx.qof(x.tensor))
    ctx.reshape(x.tensor, list(out.stored_shape), out=out.tensor)


def unsqueeze(ctx: Converter, index: int, node) -> None:
    """Unsqueeze: RESHAPE in ONNX order."""
    _reshape_to(ctx, node, ctx.get(node.input[0]), ctx.shape(node.output[0]))


def identity_op(ctx: Converter, index: int, node) -> None:
    """Identity / Dropout (inference): the output is the input."""
    ctx.alias(node.output[0], ctx.get(node.input[0]))


def slice_(ctx: Converter, index: int, node) -> None:
    """Slice with constant starts/ends/axes/steps -> STRIDED_SLICE in the stored layout."""
    x = ctx.get(node.input[0])
    rank = len(x.shape)
    if len(node.input) > 1:
        starts = _axes_input(ctx, node, 1, "starts")
        ends = _axes_input(ctx, node, 2, "ends")
        axes = _axes_input(ctx, node, 3) or list(range(len(starts)))
        steps = _axes_input(ctx, node, 4) or [1] * len(starts)
    else:
        a = attrs(node)
        starts, ends = list(a["starts"]), list(a["ends"])
        axes, steps = list(a.get("axes", range(len(starts)))), [1] * len(starts)
    begin, end, stride = [0] * rank, list(x.stored_shape), [1] * rank
    end_mask = 0
    for s, e, ax, st in zip(starts, ends, axes, steps):
        ax %= rank
        lo, hi, st = slice(s, e, st).indices(x.shape[ax])
        pos = x.perm.index(ax)
        begin[pos], end[pos], stride[pos] = lo, hi, st
        if hi < 0:                      # negative step running past index 0
            end_mask |= 1 << pos
    out = ctx.new_value(node.output[0], ctx.shape(node.output[0]), x.perm, q=ctx.qof(x.tensor))
    o = fb.StridedSliceOptionsT()
    o.endMask = end_mask
    ins = [x.tensor, ctx.int_const(begin, "begin"), ctx.int_const(end, "end"), ctx.int_const(stride, "strides")]
    ctx.b.add_op("STRIDED_SLICE", ins, [out.tensor], o)


def split(ctx: Converter, index: int, node) -> None:
    """Split along a constant axis: SPLIT (equal parts) or SPLIT_V (given sizes)."""
    x = ctx.get(node.input[0])
    axis = int(attrs(node).get("axis", 0)) % len(x.shape)
    sizes = _axes_input(ctx, node, 1, "split")
    if sizes is None:
        sizes = [ctx.shape(o)[axis] for o in node.output]
    pos = x.perm.index(axis)
    q = ctx.qof(x.tensor)
    outs = [ctx.new_value(o, ctx.shape(o), x.perm, q=q).tensor for o in node.output]
    if len(set(sizes)) == 1:
        o = fb.SplitOptionsT()
        o.numSplits = len(sizes)
        ctx.b.add_op("SPLIT", [ctx.int_const([pos], "axis"), x.tensor], outs, o)
    else:
        o = fb.SplitVOptionsT()
        o.numSplits = len(sizes)
        ctx.b.add_op("SPLIT_V", [x.tensor, ctx.int_const(sizes, "size_splits"), ctx.int_const([pos], "axis")], outs, o)


def gather(ctx: Converter, index: int, node) -> None:
    """Gather with constant indices (data constant too: folded) -> GATHER on the stored axis."""
    idx = ctx.const(node.input[1]).astype(np.int64)
    axis = int(attrs(node).get("axis", 0))
    if ctx.is_const(node.input[0]):
        ctx.consts[node.output[0]] = np.take(ctx.const(node.input[0]), idx, axis=axis)
        return
    x = ctx.get(node.input[0])
    rank = len(x.shape)
    axis %= rank
    idx = np.where(idx < 0, idx + x.shape[axis], idx).astype(np.int32)
    if idx.ndim == 0:
        kept = [p for p in x.perm if p != axis]
        perm = tuple(sorted(kept).index(p) for p in kept)
        src = x
    elif idx.ndim == 1:
        perm, src = x.perm, x
    else:
        src = Value(ctx.onnx_order(x), x.shape, identity(rank))
        perm = identity(len(ctx.shape(node.output[0])))
    out = ctx.new_value(node.output[0], ctx.shape(node.output[0]), perm, q=ctx.qof(src.tensor))
    o = fb.GatherOptionsT()
    o.axis = src.perm.index(axis)
    ctx.b.add_op("GATHER", [src.tensor, ctx.int_const(idx, "indices")], [out.tensor], o)


def pad(ctx: Converter, index: int, node) -> None:
    """Pad with constant pads: constant mode -> PAD/PADV2, reflect -> MIRROR_PAD; edge is not supported."""
    a = attrs(node)
    mode = a.get("mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    x = ctx.get(node.input[0])
    rank = len(x.shape)
    pads = _axes_input(ctx, node, 1, "pads")
    axes = _axes_input(ctx, node, 3) if len(node.input) > 3 else None
    full = [[0, 0] for _ in range(rank)]
    for i, ax in enumerate(axes if axes is not None else range(rank)):
        full[ax % rank] = [pads[i], pads[i + len(pads) // 2]]
    if any(p < 0 for pr in full for p in pr):
        raise ctx.error("negative pads (cropping) are not supported")
    value = 0.0
    if len(node.input) > 2 and node.input[2]:
        value = float(ctx.const(node.input[2]).reshape(-1)[0])
    elif "value" in a:
        value = float(a["value"])
    stored_pads = [full[p] for p in x.perm]
    out = ctx.new_value(node.output[0], ctx.shape(node.output[0]), x.perm, q=ctx.qof(x.tensor))
    paddings = ctx.int_const(stored_pads, "paddings")
    if mode == "reflect":
        o = fb.MirrorPadOptionsT()
        o.mode = fb.MirrorPadMode.REFLECT
        ctx.b.add_op("MIRROR_PAD", [x.tensor, paddings], [out.tensor], o)
    elif mode != "constant":
        raise ctx.error(f"Pad mode {mode!r} is not supported; supported: constant, reflect")
    elif value == 0.0:
        ctx.b.add_op("PAD", [x.tensor, paddings], [out.tensor], None)
    else:
        cval = ctx.activation_const(np.array([value], np.float32), node.output[0] + "_value", q=ctx.qof(x.tensor))
        ctx.b.add_op("PADV2", [x.tensor, paddings, cval], [out.tensor], None)


HANDLERS = {
    "Reshape": reshape, "Flatten": flatten, "Transpose": transpose, "Squeeze": squeeze,
    "Unsqueeze": unsqueeze, "Identity": identity_op, "Dropout": identity_op, "Slice": slice_,
    "Split": split, "Gather": gather, "Pad": pad,
}
