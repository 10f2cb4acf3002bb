"""Quantization arithmetic shared by every emitter (one implementation)."""
from __future__ import annotations

import numpy as np


def qparams_from_range(rmin: float, rmax: float, dtype: str = "int8", symmetric: bool = False) -> tuple[float, int]:
    """Scale and zero point for an activation range, as ONNX Runtime computes them.

    The range is widened to include 0. ``dtype`` is "int8" or "uint8".
    """
    rmin = min(float(rmin), 0.0)
    rmax = max(float(rmax), 0.0)
    qmin, qmax = (-128, 127) if dtype == "int8" else (0, 255)
    if symmetric:
        absmax = max(abs(rmin), abs(rmax))
        rmin, rmax = -absmax, absmax
    if rmax == rmin:
        return 1.0, 0 if dtype == "int8" else 0
    scale = (rmax - rmin) / float(qmax - qmin)
    if symmetric:
        zero_point = 0 if dtype == "int8" else 128
    else:
        zero_point = int(round(qmin - rmin / scale))
        zero_point = int(np.clip(zero_point, qmin, qmax))
    return float(scale), zero_point


def quantize_weights_per_channel(w: np.ndarray, axis: int, bits: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-channel weight quantization: returns (q int8 array, scales float32[channels]).

    Zero points are 0. ``bits`` 8 -> [-127, 127]; 4 -> [-7, 7] (values still stored in int8).
    """
    qmax = (1 << (bits - 1)) - 1
    moved = np.moveaxis(w.astype(np.float32), axis, 0)
    absmax = np.abs(moved.reshape(moved.shape[0], -1)).max(axis=1)
    scales = np.where(absmax > 0, absmax / qmax, 1.0).astype(np.float32)
    shape = [-1] + [1] * (moved.ndim - 1)
    q = np.clip(np.round(moved / scales.reshape(shape)), -qmax, qmax).astype(np.int8)
    return np.moveaxis(q, 0, axis), scales


def pair_sums(w_out_k: np.ndarray) -> np.ndarray:
    """Per row of a (outputs, K) weight matrix (K padded to even), the largest magnitude a pair
    w[2j], w[2j+1] can reach against non-negative inputs: |w[2j]| + |w[2j+1]| when the two share a
    sign, the larger of the two when they do not (opposite signs partly cancel)."""
    a = w_out_k.astype(np.float64)
    if a.shape[1] % 2:
        a = np.pad(a, ((0, 0), (0, 1)))
    if not a.shape[1]:
        return np.zeros(len(a))
    x, y = a[:, 0::2], a[:, 1::2]
    same_sign = x * y >= 0
    reach = np.where(same_sign, np.abs(x) + np.abs(y), np.maximum(np.abs(x), np.abs(y)))
    return reach.max(axis=1)


def pair_safe_per_channel(w_out_k: np.ndarray, pair_max: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-row int8 weights whose same-sign adjacent pairs satisfy |q[2j]| + |q[2j+1]| <= 128.

    Then any pair a1*q1 + a2*q2 with uint8 a1, a2 lies in [-32640, 32640] and fits a signed 16-bit
    lane (a pair of opposite signs is bounded by 255 * 127): x86 u8s8 kernels without VNNI
    (``VPMADDUBSW``) cannot saturate, whatever the inputs. Each row keeps 8 bits unless two adjacent
    same-sign weights are both large; then its scale is ``pair_max / 127`` (rounding adds at most one
    step to a pair, and never flips a sign). ``pair_max`` overrides the per-row pair bound (e.g. the max over several
    K orderings). Returns (q int8 (outputs, K), scales float32[outputs]).
    """
    w = w_out_k.astype(np.float32)
    absmax = np.abs(w).max(axis=1) if w.shape[1] else np.zeros(len(w), np.float32)
    pairs = pair_sums(w) if pair_max is None else pair_max
    scales = np.maximum(absmax / 127.0, pairs / 127.0).astype(np.float32)
    scales = np.where(scales > 0, scales, 1.0).astype(np.float32)
    q = np.clip(np.round(w / scales[:, None]), -127, 127).astype(np.int8)
    return q, scales
