"""MSE-optimal clipping of int8 activation ranges (the ``mse`` calibration method).

Min/max ranges spend the 255 steps of an 8-bit activation on its rarest values: a SiLU output that
reaches 60 once but mostly lives in -0.3..4 gets a step of 0.24. ``mse_clip_ranges`` shrinks each
range to the one that minimises the mean squared quantization error (clipping plus rounding) over
values sampled from the calibration images, as TensorRT's and OpenVINO's MSE calibrators do.

Contract: ranges only ever shrink (never past zero); graph inputs and outputs keep their min/max
(an image is exact in uint8; clipping a model output would saturate what the user reads).
"""
from __future__ import annotations

import numpy as np
import onnx

from edgeinfer.progress import Progress

from .images import within_pixels
from .ort_session import tensor_probe

VALUES_PER_IMAGE = 1024      # uniform sample of each tensor per image
SAMPLE_PIXELS = 16 * 640 * 640   # images sampled: about this many input pixels (16 at 640 px, 130 at 224 px)
FRACTIONS = np.geomspace(0.02, 1.0, 32)   # candidate clip points, as a fraction of the min/max range
LEVELS = 255


def sampled_values(model: onnx.ModelProto, samples: np.ndarray, tensors: list[str], progress: bool = False,
                   seed: int = 0) -> dict[str, np.ndarray]:
    """``VALUES_PER_IMAGE`` values of each float tensor of ``model`` per image of ``samples``
    (uniform, seeded), concatenated over the images."""
    probe = tensor_probe(model, tensors)
    rng = np.random.default_rng(seed)
    got: dict[str, list[np.ndarray]] = {t: [] for t in tensors}
    with Progress("sampling activations (mse)", len(samples), progress) as bar:
        for i in range(len(samples)):
            for t, v in probe(samples[i:i + 1]).items():
                if t in got and v.dtype == np.float32 and v.size:
                    flat = v.reshape(-1)
                    got[t].append(flat[rng.integers(0, flat.size, VALUES_PER_IMAGE)] if flat.size > VALUES_PER_IMAGE else flat)
            bar.update()
    return {t: np.concatenate(v) for t, v in got.items() if v}


def quantization_mse(v: np.ndarray, los: np.ndarray, his: np.ndarray, levels: int) -> np.ndarray:
    """Mean squared quantization error of ``v`` for each candidate range (los[k], his[k])."""
    qlo, qhi = np.minimum(los, 0.0)[:, None], np.maximum(his, 0.0)[:, None]   # zero stays representable
    scale = np.maximum((qhi - qlo) / levels, 1e-30).astype(np.float32)
    zp = np.round(-qlo / scale).astype(np.float32)
    q = np.clip(np.round(v[None, :] / scale) + zp, 0, levels)
    return (((q - zp) * scale - v[None, :]) ** 2).mean(axis=1)


def mse_range(values: np.ndarray, lo: float, hi: float, levels: int = LEVELS) -> tuple[float, float]:
    """The clipped (lo', hi') within (lo, hi) whose asymmetric ``levels``-step quantization of
    ``values`` (zero always representable, as ONNX Runtime's quantizer makes it) has the least
    squared error: the upper end scaled toward zero by the best of ``FRACTIONS``, then the lower
    end likewise (an end on the far side of zero stays)."""
    lo, hi = float(lo), float(hi)
    if hi - lo <= 0 or values.size == 0:
        return lo, hi
    v = values.astype(np.float32)
    if hi > 0:
        his = hi * FRACTIONS
        hi = float(his[int(np.argmin(quantization_mse(v, np.full_like(his, lo), his, levels)))])
    if lo < 0:
        los = lo * FRACTIONS
        lo = float(los[int(np.argmin(quantization_mse(v, los, np.full_like(los, hi), levels)))])
    return lo, hi


def sample_count(samples: np.ndarray) -> int:
    return within_pixels(samples, SAMPLE_PIXELS, 1, len(samples))


def mse_clip_ranges(model: onnx.ModelProto, samples: np.ndarray, ranges: dict[str, tuple[float, float]],
                    progress: bool = False) -> dict[str, tuple[float, float]]:
    """``ranges`` (min/max over every calibration image) with every activation clipped by ``mse_range``
    on values sampled from the first ``sample_count(samples)`` images."""
    ends = {i.name for i in model.graph.input} | {o.name for o in model.graph.output}
    tensors = [t for t in ranges if t not in ends]
    values = sampled_values(model, samples[:sample_count(samples)], tensors, progress)
    clipped = dict(ranges)
    for t, v in values.items():
        clipped[t] = mse_range(v, *ranges[t])
    return clipped
