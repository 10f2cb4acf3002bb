"""MaxPool / AveragePool -> MAX_POOL_2D / AVERAGE_POOL_2D in NHWC (int8 output keeps the input scale)."""
from __future__ import annotations

from ai_edge_litert import schema_py_generated as fb

from ..context import NHWC, Converter, attrs
from .spatial import is_same, pad_nhwc, window


def _pool(ctx: Converter, index: int, node, op: str) -> None:
    a = attrs(node)
    kernel = tuple(a["kernel_shape"])
    if len(kernel) != 2:
        raise ctx.error("only 2-D pooling is supported")
    if len(node.output) > 1 and node.output[1]:
        raise ctx.error("MaxPool Indices output is not supported")
    geo = window(ctx, node, kernel)
    if tuple(geo["dilations"]) != (1, 1):
        raise ctx.error("dilated pooling is not supported")
    x = ctx.get(node.input[0])
    xin = ctx.stored(x, NHWC)
    if op == "MAX_POOL_2D":
        xin, padding = pad_nhwc(ctx, xin, geo, kernel, value=None)
    elif a.get("count_include_pad", 0):
        xin, padding = pad_nhwc(ctx, xin, geo, kernel, value=0.0, allow_same=False)
    else:
        if any(geo["pads"]) and not is_same(geo, kernel):
            raise ctx.error("AveragePool with count_include_pad=0 needs SAME-style or zero pads; "
                            "use count_include_pad=1 or symmetric SAME padding")
        xin, padding = pad_nhwc(ctx, xin, geo, kernel)
    act, out_name = ctx.fused_activation(index, node)
    out = ctx.new_value(out_name, ctx.shape(node.output[0]), NHWC, q=ctx.qof(xin))
    o = fb.Pool2DOptionsT()
    o.padding, (o.strideH, o.strideW), (o.filterHeight, o.filterWidth) = padding, geo["strides"], kernel
    o.fusedActivationFunction = act
    ctx.b.add_op(op, [xin], [out.tensor], o)


def max_pool(ctx: Converter, index: int, node) -> None:
    """MaxPool (2-D, no Indices output, no dilation)."""
    _pool(ctx, index, node, "MAX_POOL_2D")


def average_pool(ctx: Converter, index: int, node) -> None:
    """AveragePool (2-D; count_include_pad=0 only with zero or SAME-style pads)."""
    _pool(ctx, index, node, "AVERAGE_POOL_2D")


HANDLERS = {"MaxPool": max_pool, "AveragePool": average_pool}
