"""numpy versions of ops that ``converters.exact_int`` runs next to ``onnx.reference``.

- ``QuantizeLinear`` / ``DequantizeLinear`` for every opset the converter emits (onnx's reference
  only ships them from opset 19), and ONNX Runtime's ``com.microsoft`` versions (the same
  semantics; what 16-bit activations are written with): per-tensor or per-axis, int8 / uint8 /
  int16 / uint16, round half to even, saturating, as the ONNX spec defines them.
- float ops whose reference implementations loop in Python (``MaxPool``), kept to the
  contract of the ONNX op for the cases they accept.
"""
from __future__ import annotations

import numpy as np
from onnx.reference.op_run import OpRun

_LIMITS = {np.dtype(np.int8): (-128, 127), np.dtype(np.uint8): (0, 255),
           np.dtype(np.int16): (-32768, 32767), np.dtype(np.uint16): (0, 65535)}


def _along(v: np.ndarray, axis: int, ndim: int) -> np.ndarray:
    v = np.asarray(v)
    if v.size == 1:
        return v.reshape(())
    shape = [1] * ndim
    shape[axis % ndim] = -1
    return v.reshape(shape)


class QuantizeLinear(OpRun):
    op_domain = ""

    def _run(self, x, y_scale, y_zero_point=None, axis=None, saturate=None, block_size=None, output_dtype=None,
             precision=None):
        axis = 1 if getattr(self, "axis", None) is None else self.axis
        zp = np.zeros((), np.uint8) if y_zero_point is None else np.asarray(y_zero_point)
        lo, hi = _LIMITS.get(zp.dtype, (None, None))
        if lo is None:
            raise NotImplementedError(f"exact-int QuantizeLinear handles 8- and 16-bit integers, not {zp.dtype}")
        s = _along(np.asarray(y_scale, np.float32), axis, x.ndim)
        q = np.rint(x.astype(np.float32) / s) + _along(zp.astype(np.float32), axis, x.ndim)
        return (np.clip(q, lo, hi).astype(zp.dtype),)


class DequantizeLinear(OpRun):
    op_domain = ""

    def _run(self, x, x_scale, x_zero_point=None, axis=None, block_size=None, output_dtype=None):
        axis = 1 if getattr(self, "axis", None) is None else self.axis
        s = _along(np.asarray(x_scale, np.float32), axis, x.ndim)
        zp = 0 if x_zero_point is None else _along(np.asarray(x_zero_point).astype(np.float32), axis, x.ndim)
        return (((x.astype(np.float32) - zp) * s).astype(np.float32),)


class MaxPool(OpRun):
    op_domain = ""

    def _run(self, x, auto_pad=None, ceil_mode=None, dilations=None, kernel_shape=None, pads=None,
             storage_order=None, strides=None):
        if x.ndim != 4 or getattr(self, "ceil_mode", 0) or (getattr(self, "auto_pad", "NOTSET") or "NOTSET") not in (
                "NOTSET", b"NOTSET", "VALID", b"VALID"):
            raise NotImplementedError("exact-int MaxPool handles 2-D pools with explicit pads and floor mode")
        kh, kw = self.kernel_shape
        sh, sw = self.strides or (1, 1)
        dh, dw = self.dilations or (1, 1)
        p = self.pads or (0, 0, 0, 0)
        xp = np.pad(x, ((0, 0), (0, 0), (p[0], p[2]), (p[1], p[3])), constant_values=-np.inf)
        win = np.lib.stride_tricks.sliding_window_view(xp, ((kh - 1) * dh + 1, (kw - 1) * dw + 1), axis=(2, 3))
        return (win[:, :, ::sh, ::sw, ::dh, ::dw].max(axis=(4, 5)).astype(x.dtype),)


class QuantizeLinearMS(QuantizeLinear):
    op_domain = "com.microsoft"


class DequantizeLinearMS(DequantizeLinear):
    op_domain = "com.microsoft"


# onnx.reference finds an implementation by class name and op_domain: the same names, ORT's domain
QuantizeLinearMS.__name__, DequantizeLinearMS.__name__ = "QuantizeLinear", "DequantizeLinear"
FAST_FLOAT_OPS = [QuantizeLinear, DequantizeLinear, QuantizeLinearMS, DequantizeLinearMS, MaxPool]
