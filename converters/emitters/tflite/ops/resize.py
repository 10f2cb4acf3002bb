"""Resize (nearest / linear over H, W) -> RESIZE_NEAREST_NEIGHBOR / RESIZE_BILINEAR.

The ONNX coordinate mode is matched numerically: the source coordinates ONNX would sample
are computed for every output pixel and compared with those of each TFLite
(align_corners, half_pixel_centers) setting; the one that samples the same pixels is used,
otherwise the node is rejected with the modes that are supported.
"""
from __future__ import annotations

import numpy as np
from ai_edge_litert import schema_py_generated as fb

from ..context import NHWC, Converter, attrs

TFLITE_MODES = ((False, False), (True, False), (False, True))


def _onnx_coords(mode: str, out: int, inp: int, scale: float) -> np.ndarray:
    x = np.arange(out, dtype=np.float64)
    if mode == "half_pixel":
        return (x + 0.5) / scale - 0.5
    if mode == "pytorch_half_pixel":
        return (x + 0.5) / scale - 0.5 if out > 1 else np.zeros(out)
    if mode == "align_corners":
        return x * (inp - 1) / (out - 1) if out > 1 else np.zeros(out)
    if mode == "asymmetric":
        return x / scale
    raise ValueError(mode)


def _onnx_nearest(v: np.ndarray, nearest_mode: str, inp: int) -> np.ndarray:
    f = {"round_prefer_floor": lambda t: np.ceil(t - 0.5), "round_prefer_ceil": lambda t: np.floor(t + 0.5),
         "floor": np.floor, "ceil": np.ceil}[nearest_mode]
    return np.clip(f(v), 0, inp - 1).astype(np.int64)


def _tfl_coords(align: bool, half: bool, out: int, inp: int) -> np.ndarray:
    x = np.arange(out, dtype=np.float64)
    s = (inp - 1) / (out - 1) if align and out > 1 else inp / out
    return (x + 0.5) * s - 0.5 if half else x * s


def _tfl_nearest(align: bool, half: bool, out: int, inp: int) -> np.ndarray:
    x = np.arange(out, dtype=np.float64)
    s = (inp - 1) / (out - 1) if align and out > 1 else inp / out
    v = (x + (0.5 if half else 0.0)) * s
    idx = np.where(v >= 0, np.floor(v + 0.5), np.ceil(v - 0.5)) if align else np.floor(v)
    return np.clip(idx, 0, inp - 1).astype(np.int64)


def resize(ctx: Converter, index: int, node) -> None:
    """Resize of the two spatial axes of an NCHW tensor; nearest or (bi)linear."""
    a = attrs(node)
    dec = lambda v, d: (v.decode() if isinstance(v, bytes) else v) if v is not None else d  # noqa: E731
    opset = next((o.version for o in ctx.model.opset_import if o.domain in ("", "ai.onnx")), 13)
    mode = dec(a.get("mode"), "nearest")
    ctm = dec(a.get("coordinate_transformation_mode"), "half_pixel" if opset >= 11 else "asymmetric")
    nmode = dec(a.get("nearest_mode"), "round_prefer_floor")
    if mode not in ("nearest", "linear", "bilinear"):
        raise ctx.error(f"Resize mode {mode!r} is not supported; supported: nearest, linear")
    if ctm not in ("half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric"):
        raise ctx.error(f"coordinate_transformation_mode {ctm!r} is not supported; supported: half_pixel, "
                        "pytorch_half_pixel, align_corners, asymmetric")
    if a.get("antialias", 0):
        raise ctx.error("antialias=1 is not supported")
    x = ctx.get(node.input[0])
    out_shape = ctx.shape(node.output[0])
    if len(x.shape) != 4 or tuple(out_shape[:2]) != tuple(x.shape[:2]):
        raise ctx.error("only resizing the two spatial axes of a 4-D NCHW tensor is supported")
    scales = None
    sc_name = node.input[2] if len(node.input) > 2 else (node.input[1] if opset < 11 else "")
    if sc_name and ctx.is_const(sc_name) and ctx.const(sc_name).size == 4:
        scales = ctx.const(sc_name).astype(np.float64)[2:]
    chosen = None
    for align, half in TFLITE_MODES:
        ok = True
        for i in range(2):
            inp, out = x.shape[2 + i], out_shape[2 + i]
            scale = scales[i] if scales is not None else out / inp
            v = _onnx_coords(ctm, out, inp, scale)
            if mode == "nearest":
                ok &= np.array_equal(_onnx_nearest(v, nmode, inp), _tfl_nearest(align, half, out, inp))
            else:
                ok &= np.allclose(np.clip(v, 0, inp - 1), np.clip(_tfl_coords(align, half, out, inp), 0, inp - 1), atol=1e-6)
        if ok:
            chosen = (align, half)
            break
    if chosen is None:
        raise ctx.error(f"Resize {mode}/{ctm}/{nmode} at these sizes has no TFLite equivalent; supported: "
                        "asymmetric, align_corners, half_pixel (nearest: the rounding must pick the same pixels)")
    xin = ctx.stored(x, NHWC)
    out = ctx.new_value(node.output[0], out_shape, NHWC, q=ctx.qof(xin))
    op = "RESIZE_NEAREST_NEIGHBOR" if mode == "nearest" else "RESIZE_BILINEAR"
    o = fb.ResizeNearestNeighborOptionsT() if mode == "nearest" else fb.ResizeBilinearOptionsT()
    o.alignCorners, o.halfPixelCenters = chosen
    size = ctx.int_const(list(out_shape[2:]), "size")
    ctx.b.add_op(op, [xin, size], [out.tensor], o)


HANDLERS = {"Resize": resize}
