"""Conv -> CONV_2D / DEPTHWISE_CONV_2D (group == channels) / SPLIT + CONV_2D + CONCATENATION (other groups)."""
from __future__ import annotations

import numpy as np
from ai_edge_litert import schema_py_generated as fb

from ..context import NHWC, Converter, attrs
from ..weights import planned, weights
from .spatial import pad_nhwc, window


def conv(ctx: Converter, index: int, node) -> None:
    """ONNX Conv (2-D, constant weights/bias, any pads/strides/dilations/groups) in NHWC."""
    w = ctx.const(node.input[1])
    if w.ndim != 4:
        raise ctx.error(f"only 2-D convolution is supported (weight rank {w.ndim})")
    bias = ctx.const(node.input[2]) if len(node.input) > 2 and node.input[2] else np.zeros(w.shape[0], np.float32)
    x = ctx.get(node.input[0])
    # bias correction where the ONNX recipe applies it too: nodes with a bias of their own
    mean = ctx.channel_means.get(node.input[0]) if len(node.input) > 2 and node.input[2] else None
    group = int(attrs(node).get("group", 1))
    cout, cin_g, kh, kw = w.shape
    cin = x.shape[1]
    geo = window(ctx, node, (kh, kw))
    xin, padding = pad_nhwc(ctx, ctx.stored(x, NHWC), geo, (kh, kw))
    act, out_name = ctx.fused_activation(index, node)
    out = ctx.new_value(out_name, ctx.shape(node.output[0]), NHWC)
    (sh, sw), (dh, dw) = geo["strides"], geo["dilations"]
    hint = node.name or node.output[0]
    pre = planned(ctx, node, lambda q: q)                                  # int4 plan integers, OIHW
    if group == 1:
        _conv2d(ctx, xin, w, bias, out.tensor, padding, sh, sw, dh, dw, act, hint, pre, mean)
    elif group == cin and cin_g == 1:
        o = fb.DepthwiseConv2DOptionsT()
        o.padding, o.strideH, o.strideW, o.dilationHFactor, o.dilationWFactor = padding, sh, sw, dh, dw
        o.depthMultiplier, o.fusedActivationFunction = cout // cin, act
        dw_layout = lambda a: a.reshape(cout, kh, kw).transpose(1, 2, 0)[None]   # noqa: E731 [1, kh, kw, cout]
        pre = None if pre is None else (np.ascontiguousarray(dw_layout(pre[0])), pre[1], pre[2])
        wt, bt = weights(ctx, dw_layout(w), bias, 3, xin, hint, "DEPTHWISE_CONV_2D", pre=pre,
                         in_mean=mean)
        ctx.b.add_op("DEPTHWISE_CONV_2D", [xin, wt, bt], [out.tensor], o)
    else:
        _grouped(ctx, xin, w, bias, group, out.tensor, padding, (sh, sw, dh, dw), act, hint, pre)


def _conv2d(ctx: Converter, xin: int, w, bias, out: int, padding, sh, sw, dh, dw, act, hint, pre=None,
            in_mean=None) -> None:
    o = fb.Conv2DOptionsT()
    o.padding, o.strideH, o.strideW, o.dilationHFactor, o.dilationWFactor = padding, sh, sw, dh, dw
    o.fusedActivationFunction = act
    pre = None if pre is None else (np.ascontiguousarray(pre[0].transpose(0, 2, 3, 1)), pre[1], pre[2])
    wt, bt = weights(ctx, w.transpose(0, 2, 3, 1), bias, 0, xin, hint, "CONV_2D", pre=pre, in_mean=in_mean)   # OHWI
    ctx.b.add_op("CONV_2D", [xin, wt, bt], [out], o)


def _grouped(ctx: Converter, xin: int, w, bias, group: int, out: int, padding, geo, act, hint, pre=None) -> None:
    """Groups that are neither 1 nor depthwise: split channels, one CONV_2D per group, concatenate."""
    n, h, wd, c = ctx.b.shape(xin)
    cg, og = c // group, w.shape[0] // group
    pieces_in = [ctx.scratch(f"{hint}_g{g}_in", [n, h, wd, cg], xin) for g in range(group)]
    so = fb.SplitOptionsT()
    so.numSplits = group
    ctx.b.add_op("SPLIT", [ctx.int_const([3], "axis"), xin], pieces_in, so)
    oshape = ctx.b.shape(out)
    pieces_out = []
    for g in range(group):
        po = ctx.scratch(f"{hint}_g{g}_out", oshape[:3] + [og], out)
        part = None if pre is None else (pre[0][g * og:(g + 1) * og], pre[1][g * og:(g + 1) * og], pre[2])
        _conv2d(ctx, pieces_in[g], w[g * og:(g + 1) * og], bias[g * og:(g + 1) * og], po, padding, *geo, act,
                f"{hint}_g{g}", part)
        pieces_out.append(po)
    co = fb.ConcatenationOptionsT()
    co.axis = 3
    ctx.b.add_op("CONCATENATION", pieces_out, [out], co)


HANDLERS = {"Conv": conv}
