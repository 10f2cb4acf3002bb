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


PAIR_LIMIT = 128   # |q1| + |q2| for a same-sign pair: 255 * 128 = 32640 fits a signed 16-bit lane


def _fit_pairs(q: np.ndarray, u: np.ndarray, order: np.ndarray) -> np.ndarray:
    """``q`` (rows, K) integers with every same-sign adjacent pair of the K ``order`` brought to
    |q1| + |q2| <= PAIR_LIMIT: a violating pair becomes the nearest integer pair on the limit to the
    unrounded values ``u`` (signs kept; no magnitude grows). Returns a new array."""
    q = q[:, order].astype(np.int32)
    u = u[:, order]
    if q.shape[1] % 2:
        q, u = np.pad(q, ((0, 0), (0, 1))), np.pad(u, ((0, 0), (0, 1)))
    a, b = q[:, 0::2], q[:, 1::2]
    bad = (a * b > 0) & (np.abs(a) + np.abs(b) > PAIR_LIMIT)
    if bad.any():
        ua, ub = np.abs(u[:, 0::2]), np.abs(u[:, 1::2])
        na = np.round((ua - ub + PAIR_LIMIT) / 2).astype(np.int32)
        na = np.clip(na, PAIR_LIMIT - np.abs(b), np.abs(a))   # both magnitudes only shrink (other orders stay fitted)
        sign = np.sign(a)
        a = np.where(bad, sign * na, a)
        b = np.where(bad, sign * (PAIR_LIMIT - na), b)
    out = np.empty_like(q)
    out[:, 0::2], out[:, 1::2] = a, b
    back = np.empty_like(order)
    back[order] = np.arange(len(order))
    return out[:, :len(order)][:, back]


def pair_safe_per_channel(w_out_k: np.ndarray, orders: list[np.ndarray] | None = None,
                          steps: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-row int8 weights whose same-sign adjacent pairs satisfy |q[2j]| + |q[2j+1]| <= 128.

    Then any pair a1*q1 + a2*q2 with uint8 a1, a2 lies in [-32640, 32640] and fits a signed 16-bit
    lane (a pair of opposite signs is bounded by 255 * 127): x86 u8s8 kernels without VNNI
    (``VPMADDUBSW``) cannot saturate, whatever the inputs. ``orders``: the K orderings a GEMM kernel
    may pack the row in (index arrays into K; default the natural order); the bound holds in each.

    Per row, ``steps`` scales from the 8-bit one (absmax / 127) up to the one at which every pair
    fits without change (largest pair sum / 127) are tried; at each, the weights are rounded and the
    pairs that still exceed the bound are moved to the nearest integer pair on it; the row keeps the
    scale with the least squared weight error. Returns (q int8 (outputs, K), scales float32[outputs]).
    """
    w = w_out_k.astype(np.float64)
    rows, k = w.shape
    orders = [np.arange(k)] if orders is None else [np.asarray(o) for o in orders]
    if not k:
        return np.zeros((rows, 0), np.int8), np.ones(rows, np.float32)
    absmax = np.abs(w).max(axis=1)
    reach = np.max([pair_sums(w[:, o]) for o in orders], axis=0)
    lo = np.where(absmax > 0, absmax / 127.0, 1.0)
    hi = np.maximum(lo, reach / 127.0)
    best_q, best_s, best_err = None, None, None
    for t in np.linspace(0.0, 1.0, max(int(steps), 1) if np.any(hi > lo) else 1):
        s = (lo + t * (hi - lo)).astype(np.float32).astype(np.float64)
        u = w / s[:, None]
        q = np.clip(np.round(u), -127, 127).astype(np.int32)
        for o in orders:
            q = _fit_pairs(q, u, o)
        err = ((q * s[:, None] - w) ** 2).sum(axis=1)
        if best_err is None:
            best_q, best_s, best_err = q, s, err
            continue
        better = err < best_err
        best_q = np.where(better[:, None], q, best_q)
        best_s, best_err = np.where(better, s, best_s), np.minimum(err, best_err)
    return best_q.astype(np.int8), best_s.astype(np.float32)
