"""Weight and bias tensors per precision mode (one place that decides how weights are stored).

- fp32: float32 constants; fp16: float16 constants + DEQUANTIZE.
- dynamic: symmetric int8 weights (per-channel on ``axis`` or per-tensor), float bias; the
  kernels run "hybrid" (int8 weights, float activations).
- int8 / int4: symmetric int8 (int4 where the op accepts it) per-channel weights, int32 bias
  with scale ``input_scale * weight_scale`` and zero point 0, as the TFLite int8 spec requires.
"""
from __future__ import annotations

import numpy as np

from converters.quant_math import quantize_weights_per_channel

from .builder import quant_params
from .context import Converter


def _quantize(w: np.ndarray, axis: int | None, bits: int) -> tuple[np.ndarray, np.ndarray]:
    if axis is None:                               # per-tensor: one channel holding everything
        q, s = quantize_weights_per_channel(w.reshape(1, -1), 0, bits)
        return q.reshape(w.shape), s
    return quantize_weights_per_channel(w, axis, bits)


def planned(ctx: Converter, node, layout) -> tuple[np.ndarray, np.ndarray, int] | None:
    """The int4 plan's (integers in the TFLite layout, per-channel scales [O], bits) for ``node``, or
    None outside int4 mode / for layers the plan leaves float. ``layout`` maps the plan's ONNX-layout
    integers to the TFLite layout (the same transform the float weight gets)."""
    lq = ctx.int4_plan.get(node.name or node.output[0]) if ctx.int4_plan is not None else None
    if lq is None or node.input[1] != lq.layer.weight:      # not planned, or rewritten here (BN folded)
        return None
    q = lq.layer.from_matrix(lq.q) if lq.layer.op == "Conv" else lq.q        # conv: OIHW; dense: [N, K]
    return np.ascontiguousarray(layout(q)), lq.scales[:, 0].astype(np.float32), lq.bits


def _conv_shift(err: np.ndarray, mean: np.ndarray) -> np.ndarray | None:        # OHWI
    return err.reshape(err.shape[0], -1, err.shape[3]).sum(axis=1) @ mean if mean.size == err.shape[3] else None


def _depthwise_shift(err: np.ndarray, mean: np.ndarray) -> np.ndarray | None:   # [1, kh, kw, C * multiplier]
    if err.shape[3] % mean.size:
        return None
    return err.reshape(-1, err.shape[3]).sum(axis=0) * np.repeat(mean, err.shape[3] // mean.size)


def _dense_shift(err: np.ndarray, mean: np.ndarray) -> np.ndarray | None:       # [N, K]
    return err @ mean if mean.size == err.shape[1] else None


# expected output change per output channel of an int8 weight error, for inputs of mean ``mean``
BIAS_SHIFT = {"CONV_2D": _conv_shift, "DEPTHWISE_CONV_2D": _depthwise_shift, "FULLY_CONNECTED": _dense_shift}


def weights(ctx: Converter, w: np.ndarray, bias: np.ndarray | None, axis: int | None, x_tensor: int,
            hint: str, op: str, pre: tuple[np.ndarray, np.ndarray, int] | None = None,
            in_mean: np.ndarray | None = None) -> tuple[int, int]:
    """(filter tensor, bias tensor or -1) for a conv / fully-connected op.

    ``w`` is already in the TFLite layout, ``axis`` its output-channel axis (None = per-tensor).
    ``pre``: the int4 plan's (integers in the same layout, per-channel scales, bits), stored as given.
    ``in_mean``: per-channel mean of the op's float input on the calibration images; int8 weights
    then get bias correction (``converters.bias_correction``): the bias absorbs ``BIAS_SHIFT[op]``.
    """
    w = np.asarray(w, np.float32)
    if ctx.mode in ("fp32", "fp16"):
        b = ctx.float_weight(bias, hint + "_bias") if bias is not None else -1
        return ctx.float_weight(w, hint + "_weights"), b
    if ctx.mode == "dynamic":
        q, s = _quantize(w, axis, 8)
        wt = ctx.b.add_const(hint + "_weights", q, quant_params(s, np.zeros_like(s, np.int64), axis or 0))
        b = ctx.b.add_const(hint + "_bias", np.asarray(bias, np.float32)) if bias is not None else -1
        return wt, b
    if pre is not None:
        q, s, bits = pre
        s = s[:1] if axis is None else s
        use4 = bits == 4
    else:                                          # int8 (also what an int4 plan leaves unplanned)
        use4 = False
        q, s = _quantize(w, axis, 8)
        if in_mean is not None and bias is not None:
            err = q.astype(np.float64) * (s.reshape([-1 if a == (axis or 0) else 1 for a in range(w.ndim)])
                                          if axis is not None else s[0]) - w
            shift = BIAS_SHIFT[op](err, np.asarray(in_mean, np.float64).ravel())
            if shift is not None and shift.shape == np.shape(bias):
                bias = np.asarray(bias, np.float64) - shift
    if use4:
        ctx.int4_ops.add(op)
    wt = ctx.b.add_const(hint + "_weights", q, quant_params(s, np.zeros_like(s, np.int64), axis or 0), int4=use4)
    b = -1
    if bias is not None:
        in_scale = ctx.qof(x_tensor)[0]
        bscale = (in_scale * s).astype(np.float64)
        bq = np.round(np.asarray(bias, np.float64) / (bscale if bscale.size > 1 else bscale[0]))
        bq = np.clip(bq, -(2 ** 31) + 1, 2 ** 31 - 1).astype(np.int32)
        b = ctx.b.add_const(hint + "_bias", bq, quant_params(bscale, np.zeros_like(bscale, np.int64), 0))
    return wt, b
