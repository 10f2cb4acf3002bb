"""GlobalAveragePool / ReduceMean -> MEAN over the stored positions of the reduced axes."""
from __future__ import annotations

from ai_edge_litert import schema_py_generated as fb

from ..context import Converter, Value, attrs


def _mean(ctx: Converter, node, x: Value, axes: list[int], keepdims: bool, out_name: str | None = None) -> None:
    """MEAN of ``x`` over logical ``axes``; the output is registered as ``out_name`` (default: the node's)."""
    out_name = out_name or node.output[0]
    axes = sorted({a % len(x.shape) for a in axes})
    stored_axes = [x.perm.index(a) for a in axes]
    if keepdims:
        perm = x.perm
    else:
        kept = [p for p in x.perm if p not in axes]
        perm = tuple(sorted(kept).index(p) for p in kept)
    qname = out_name if (not ctx.quantized or out_name in ctx.ranges) else node.output[0]
    out = ctx.new_value(out_name, ctx.shape(out_name), perm, qname=qname)
    o = fb.ReducerOptionsT()
    o.keepDims = bool(keepdims)
    ctx.b.add_op("MEAN", [x.tensor, ctx.int_const(stored_axes, "axes")], [out.tensor], o)


def global_average_pool(ctx: Converter, index: int, node) -> None:
    """GlobalAveragePool: mean over all spatial axes, keeping them as size 1.

    When ``plan_gap_heads`` paired it with the Flatten/Reshape to [N, C] that alone reads it, one
    MEAN(keep_dims=False) writes that head's output directly (int8 scale from the head's range).
    """
    x = ctx.get(node.input[0])
    head = ctx.gap_heads.get(index)
    spatial = list(range(2, len(x.shape)))
    if head is not None:
        _mean(ctx, node, x, spatial, False, out_name=head.output[0])
    else:
        _mean(ctx, node, x, spatial, True)


def reduce_mean(ctx: Converter, index: int, node) -> None:
    """ReduceMean with constant axes (attribute, or input since opset 18); noop_with_empty_axes=0."""
    a = attrs(node)
    x = ctx.get(node.input[0])
    if len(node.input) > 1 and node.input[1]:
        axes = [int(v) for v in ctx.const(node.input[1]).reshape(-1)]
    else:
        axes = list(a.get("axes", []))
    if not axes:
        if a.get("noop_with_empty_axes", 0):
            raise ctx.error("noop_with_empty_axes=1 is not supported")
        axes = list(range(len(x.shape)))
    _mean(ctx, node, x, axes, bool(a.get("keepdims", 1)))


HANDLERS = {"GlobalAveragePool": global_average_pool, "ReduceMean": reduce_mean}
