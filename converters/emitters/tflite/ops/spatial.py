"""Shared 2-D window geometry: ONNX pads/auto_pad -> TFLite SAME/VALID or an explicit PAD."""
from __future__ import annotations

import math

import numpy as np
from ai_edge_litert import schema_py_generated as fb

from ..context import Converter, attrs


def window(ctx: Converter, node, kernel: tuple[int, int]) -> dict:
    """Strides, dilations and (top, left, bottom, right) pads of a 2-D Conv/Pool node."""
    a = attrs(node)
    strides = tuple(a.get("strides", (1, 1)))
    dil = tuple(a.get("dilations", (1, 1)))
    if len(strides) != 2 or len(kernel) != 2:
        raise ctx.error("only 2-D windows (NCHW input, 4-D) are supported")
    in_hw = ctx.shape(node.input[0])[2:]
    auto = a.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        pads = [0, 0, 0, 0]
        for i in range(2):
            total = _same_total(in_hw[i], kernel[i], strides[i], dil[i])
            small, big = total // 2, total - total // 2
            before, after = (small, big) if auto == "SAME_UPPER" else (big, small)
            pads[i], pads[i + 2] = before, after
    elif auto == "VALID":
        pads = [0, 0, 0, 0]
    else:
        pads = list(a.get("pads", (0, 0, 0, 0)))
    if a.get("ceil_mode", 0):
        for i in range(2):
            span = in_hw[i] + pads[i] + pads[i + 2] - ((kernel[i] - 1) * dil[i] + 1)
            if span % strides[i]:
                raise ctx.error("ceil_mode=1 with a partial last window is not supported; use ceil_mode=0")
    return {"strides": strides, "dilations": dil, "pads": pads, "in_hw": tuple(in_hw)}


def _same_total(size: int, k: int, s: int, d: int) -> int:
    out = math.ceil(size / s)
    return max((out - 1) * s + (k - 1) * d + 1 - size, 0)


def is_same(geo: dict, kernel) -> bool:
    pads = geo["pads"]
    for i in range(2):
        total = _same_total(geo["in_hw"][i], kernel[i], geo["strides"][i], geo["dilations"][i])
        if (pads[i], pads[i + 2]) != (total // 2, total - total // 2):
            return False
    return True


def pad_nhwc(ctx: Converter, x: int, geo: dict, kernel, value: float | None = 0.0, allow_same: bool = True) -> tuple[int, int]:
    """(input tensor, Padding) for an NHWC window op; an explicit PAD/PADV2 when SAME/VALID don't fit.

    ``value`` None means -inf (max pooling).
    """
    pads = geo["pads"]
    if not any(pads):
        return x, fb.Padding.VALID
    if allow_same and is_same(geo, kernel):
        return x, fb.Padding.SAME
    n, h, w, c = ctx.b.shape(x)
    t, l, btm, r = pads
    out = ctx.scratch(ctx.b.tensors[x].name + "_pad", [n, h + t + btm, w + l + r, c], x)
    paddings = ctx.int_const([[0, 0], [t, btm], [l, r], [0, 0]], "paddings")
    if value == 0.0:
        ctx.b.add_op("PAD", [x, paddings], [out], None)
        return out, fb.Padding.VALID
    if ctx.quantized:
        q = ctx.qof(x)
        fill = -128 if value is None else int(np.clip(round(value / q[0]) + q[1], -128, 127))
        cval = ctx.b.add_const("pad_value", np.array([fill], np.int8), ctx.b.quant(x))
    else:
        cval = ctx.b.add_const("pad_value", np.array([-np.inf if value is None else value], np.float32))
    ctx.b.add_op("PADV2", [x, paddings, cval], [out], None)
    return out, fb.Padding.VALID
