"""Error-compensating rounding of a weight matrix (GPTQ, Frantar et al. 2023), in numpy.

``quantize_matrix(w, h, bits, block, per_tensor)`` rounds ``w`` [out, K] to integers with
symmetric scales per (row, block of ``block`` columns) (one scale for the whole matrix when
``per_tensor``). Scales are fixed first from the float weights (clip ratio searched per block,
weighted by the input energy ``diag(H)``); then the columns are rounded one at a time and each
column's rounding error is pushed onto the columns not yet rounded through the inverse Hessian,
so the layer OUTPUT error ``(W - Q) X`` stays small rather than the weight error. ``h`` is the
input second-moment matrix ``X^T X`` [K, K], or one per group [G, K, K] for grouped/depthwise
convolutions (rows are split into G equal groups). ``h`` None rounds to nearest (RTN).
"""
from __future__ import annotations

import numpy as np

QRANGE = {4: (-8, 7), 8: (-127, 127)}   # 8-bit stays symmetric (TFLite's int8 weight rule)
CLIP_RATIOS = np.linspace(1.0, 0.55, 10)
DAMP = 0.01
COLUMN_BLOCK = 128


def _expand(scales: np.ndarray, k: int, block: int) -> np.ndarray:
    """[rows, nblocks] -> [rows, K] (each scale repeated over its block of columns)."""
    return np.repeat(scales, block, axis=1)[:, :k]


def choose_scales(w: np.ndarray, bits: int, block: int, per_tensor: bool = False,
                  col_weight: np.ndarray | None = None, ratios=CLIP_RATIOS) -> np.ndarray:
    """Scales [rows, K / block] (float32) minimizing the rounding error per block over clip ``ratios``.

    ``col_weight`` [K] (or [rows, K]) weights each column's squared error (e.g. diag of X^T X)."""
    qmin, qmax = QRANGE[bits]
    rows, k = w.shape
    wt = np.ones_like(w) if col_weight is None else np.broadcast_to(col_weight, w.shape)
    if per_tensor:
        wb, wtb = w.reshape(1, 1, -1), wt.reshape(1, 1, -1)
    else:
        wb, wtb = w.reshape(rows, k // block, block), wt.reshape(rows, k // block, block)
    absmax = np.abs(wb).max(axis=2)
    best_err = np.full(absmax.shape, np.inf)
    best = np.where(absmax > 0, absmax / qmax, 1.0)
    for r in ratios:
        s = np.where(absmax > 0, r * absmax / qmax, 1.0)
        q = np.clip(np.round(wb / s[..., None]), qmin, qmax)
        err = (((q * s[..., None]) - wb) ** 2 * wtb).sum(axis=2)
        better = err < best_err
        best_err, best = np.where(better, err, best_err), np.where(better, s, best)
    if per_tensor:
        return np.full((rows, 1), best.reshape(()), np.float32)
    return best.astype(np.float32)


FP16_MIN_NORMAL = 2.0 ** -14


def fp16_exact(scales: np.ndarray) -> np.ndarray:
    """Scales rounded to float16 where float16 holds them as normal numbers, so a format may store
    them as float16 and still dequantize to exactly the same float32 weights."""
    s16 = scales.astype(np.float16).astype(np.float32)
    return np.where((scales >= FP16_MIN_NORMAL) & np.isfinite(s16), s16, scales).astype(np.float32)


def _inverse_cholesky(h: np.ndarray) -> np.ndarray:
    """Upper Cholesky factor U of H^-1 (H^-1 = U^T U), per group; damping grows until H is PD."""
    k = h.shape[-1]
    eye = np.eye(k)
    mean_diag = np.mean(np.diagonal(h, axis1=-2, axis2=-1), axis=-1)[:, None, None]
    damp = DAMP
    while True:
        try:
            hd = h + damp * np.maximum(mean_diag, 1e-12) * eye
            low = np.linalg.cholesky(hd)
            linv = np.linalg.inv(low)
            hinv = np.swapaxes(linv, -1, -2) @ linv
            return np.swapaxes(np.linalg.cholesky(hinv), -1, -2)
        except np.linalg.LinAlgError:
            damp *= 10
            if damp > 1e3:
                raise


def gptq_round(w: np.ndarray, h: np.ndarray, scales_full: np.ndarray, bits: int) -> np.ndarray:
    """Integers [rows, K] for ``w`` with per-element scales ``scales_full``; columns are rounded in
    decreasing input energy ("act order") when the layer has one group."""
    qmin, qmax = QRANGE[bits]
    g = h.shape[0]
    rows, k = w.shape
    W = w.astype(np.float64).reshape(g, rows // g, k).copy()
    S = scales_full.astype(np.float64).reshape(g, rows // g, k)
    H = h.astype(np.float64).copy()
    diag = np.diagonal(H, axis1=-2, axis2=-1)
    dead = diag <= 0
    if dead.any():
        gi, ci = np.nonzero(dead)
        H[gi, ci, ci] = 1.0
        W[gi, :, ci] = 0.0
    perm = None
    if g == 1:      # act order: columns with the most input energy first (scales stay fixed per block)
        perm = np.argsort(-np.diagonal(H[0]), kind="stable")
        W, S, H = W[:, :, perm], S[:, :, perm], H[:, perm][:, :, perm]
    U = _inverse_cholesky(H)
    Q = np.zeros_like(W)
    for i1 in range(0, k, COLUMN_BLOCK):
        i2 = min(i1 + COLUMN_BLOCK, k)
        W1 = W[:, :, i1:i2].copy()
        E1 = np.zeros_like(W1)
        U1 = U[:, i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = W1[:, :, i]
            s = S[:, :, i1 + i]
            q = np.clip(np.round(col / s), qmin, qmax)
            Q[:, :, i1 + i] = q
            err = (col - q * s) / U1[:, i, i][:, None]
            W1[:, :, i:] -= err[:, :, None] * U1[:, None, i, i:]
            E1[:, :, i] = err
        if i2 < k:
            W[:, :, i2:] -= E1 @ U[:, i1:i2, i2:]
    if perm is not None:
        Q = Q[:, :, np.argsort(perm)]
    return Q.reshape(rows, k).astype(np.int8)


def quantize_matrix(w: np.ndarray, h: np.ndarray | None, bits: int, block: int,
                    per_tensor: bool = False, clip: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(integers int8 [rows, K], scales float32 [rows, K / block]); GPTQ when ``h`` is given, else RTN.

    ``block`` is in columns (input channels per block times the kernel window). ``clip`` False: every
    block's scale spans its largest weight (at 8 bits clipping the largest weights costs more output
    error than the finer step saves: 3x the logit error on the digits sample)."""
    rows, k = w.shape
    if k % block:
        raise ValueError(f"block {block} does not divide K={k}")
    col_weight = None
    if h is not None:
        d = np.diagonal(h, axis1=-2, axis2=-1)                       # [G, K]
        col_weight = np.repeat(d, rows // h.shape[0], axis=0)        # [rows, K]
    scales = fp16_exact(choose_scales(w, bits, block, per_tensor, col_weight, CLIP_RATIOS if clip else (1.0,)))
    full = _expand(scales, k, k // scales.shape[1])
    if h is None:
        qmin, qmax = QRANGE[bits]
        q = np.clip(np.round(w / full), qmin, qmax).astype(np.int8)
    else:
        q = gptq_round(w, h, full, bits)
    return q, scales


def dequantize(q: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """float32 [rows, K] from integers and [rows, nblocks] scales (blocks tile K evenly)."""
    block = q.shape[1] // scales.shape[1]
    return (q.astype(np.float32) * _expand(scales, q.shape[1], block)).astype(np.float32)
