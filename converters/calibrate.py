"""Calibration, done ONCE per conversion: activation ranges of every float tensor.

Uses ONNX Runtime's calibrators (minmax / percentile / entropy); ``mse`` is min/max over every
image, then each activation clipped to its least-squared-error range (``converters.range_clip``). Every
method then raises the low end of tensors read only by SiLU / HardSwish (``converters.activation_ranges``);
``with_tails_clipped`` also lowers the high end of SiLU outputs with a thin top tail (the search decides). The resulting
``CalibrationResult.ranges`` feed the ONNX QDQ quantizer and every other emitter.
"""
from __future__ import annotations

import contextlib
import io
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization.calibrate import CalibrationDataReader, CalibrationMethod, create_calibrator

from edgeinfer.errors import EdgeInferError
from edgeinfer.progress import Progress

from .emitters.api import CalibrationResult
from .load import real_inputs

METHODS = {
    "minmax": CalibrationMethod.MinMax,
    "percentile": CalibrationMethod.Percentile,
    "entropy": CalibrationMethod.Entropy,
    "mse": CalibrationMethod.MinMax,   # then clipped by converters.range_clip
}


class _BatchReader(CalibrationDataReader):
    def __init__(self, input_name: str, samples: np.ndarray, batch: int, progress: Progress):
        self.input_name, self.samples, self.batch, self.progress = input_name, samples, batch, progress
        self.pos = 0

    def get_next(self):
        if self.pos >= len(self.samples):
            return None
        chunk = self.samples[self.pos:self.pos + self.batch]
        self.pos += len(chunk)
        self.progress.update(len(chunk))
        return {self.input_name: chunk}


def _input_name(model: onnx.ModelProto) -> str:
    return real_inputs(model)[0].name


def _fixed_batch(model: onnx.ModelProto) -> int | None:
    dim = real_inputs(model)[0].type.tensor_type.shape.dim[0]
    return dim.dim_value if dim.HasField("dim_value") else None


def _even_batch(n: int, largest: int = 8) -> int:
    """The largest batch <= ``largest`` that divides ``n``: ORT's histogram collectors need equal batches."""
    return next(b for b in range(min(largest, max(n, 1)), 0, -1) if n % b == 0)


def collect_ranges(model: onnx.ModelProto, samples: np.ndarray, method: str = "minmax",
                   progress: bool = True, percentile: float = 99.999) -> dict[str, tuple[float, float]]:
    """Run ``samples`` (float32 NCHW) through ``model`` and return tensor -> (min, max)."""
    if method not in METHODS:
        raise EdgeInferError(f"unknown calibration method {method!r}; choose one of {', '.join(METHODS)}")
    extra = {"num_bins": 2048, "percentile": percentile, "symmetric": False}
    if method == "entropy":
        extra = {"num_bins": 512, "num_quantized_bins": 128, "symmetric": False}
    batch = _fixed_batch(model) or _even_batch(len(samples))
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "model.onnx"
        onnx.save(model, str(src))
        calibrator = create_calibrator(src, None, augmented_model_path=str(Path(tmp) / "augmented.onnx"),
                                       calibrate_method=METHODS[method], extra_options=extra)
        # ORT's histogram calibrators print to stdout; keep stdout clean for --json
        with contextlib.redirect_stdout(sys.stderr if progress else io.StringIO()):
            with Progress(f"calibrating ({method})", len(samples), progress) as p:
                calibrator.collect_data(_BatchReader(_input_name(model), samples, batch, p))
            tensors = calibrator.compute_data()
    ranges = {}
    for name, data in tensors.data.items():
        lo, hi = data.range_value
        ranges[name] = (float(np.asarray(lo).min()), float(np.asarray(hi).max()))
    if method == "mse":
        from .range_clip import mse_clip_ranges
        ranges = mse_clip_ranges(model, samples, ranges, progress)
    return ranges


def calibrate(model: onnx.ModelProto, samples: np.ndarray, method: str = "minmax", *, num_images: int | None = None,
              skipped: int = 0, synthetic: bool = False, progress: bool = True) -> CalibrationResult:
    from .activation_ranges import tighten_ranges
    ranges, tightened = tighten_ranges(model, collect_ranges(model, samples, method, progress))
    return CalibrationResult(method=method, ranges=ranges, samples=samples,
                             num_images=len(samples) if num_images is None else num_images,
                             skipped=skipped, synthetic=synthetic, tightened=tightened)


def with_tails_clipped(model: onnx.ModelProto, calib: CalibrationResult, samples: np.ndarray | None = None,
                       progress: bool = True) -> CalibrationResult:
    """``calib`` with the thin top tails of SiLU outputs cut (``activation_ranges.clip_heavy_tails``,
    quantiles over ``samples``, default all of ``calib.samples``); ``calib`` itself when no tensor
    qualifies. Not a default: it helps some models and costs others, so the keep-float search
    measures both (``sensitivity.sensitivity_search``)."""
    import dataclasses

    from .activation_ranges import clip_heavy_tails
    ranges, changed = clip_heavy_tails(model, calib.samples if samples is None else samples, calib.ranges, progress)
    return dataclasses.replace(calib, ranges=ranges, tails_clipped=changed) if changed else calib
