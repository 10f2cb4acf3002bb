"""Core ML backend: runs a ``.mlpackage`` with ``coremltools.models.MLModel`` (macOS/iOS only).

``run`` takes the preprocessed float32 NCHW batch like every backend. For a package with an
image input (normalization built in) the batch is mapped back to 0..255 pixels with the
preprocessing recorded in the package and fed as images; classifier outputs are returned as
the score vector in label order. On other hosts the constructor raises a one-line error.
"""
from __future__ import annotations

import json
import platform
from pathlib import Path

import numpy as np

from ..errors import EdgeInferError
from .base import Backend, BackendOptions

COMPUTE_UNITS = ("ALL", "CPU_AND_NE", "CPU_AND_GPU", "CPU_ONLY")


def pixels_from_normalized(x: np.ndarray, pre: dict) -> np.ndarray:
    """Invert ``(pixel*scale - mean)/std`` for an NCHW batch: normalized -> 0..255 pixels (float32).

    Exact for batches made from 8-bit images, which is what an image-input model receives."""
    c = x.shape[1]
    scale = float(pre.get("scale", 1 / 255))
    mean = np.broadcast_to(np.asarray(pre.get("mean") or [0.0], np.float32), (c,)).reshape(1, c, 1, 1)
    std = np.broadcast_to(np.asarray(pre.get("std") or [1.0], np.float32), (c,)).reshape(1, c, 1, 1)
    return np.clip(np.round((x * std + mean) / scale), 0, 255).astype(np.float32)


def apple_host() -> bool:
    return platform.system() == "Darwin"


class CoreMLBackend(Backend):
    format = "coreml"

    def __init__(self, path: Path, options: BackendOptions | None = None):
        super().__init__(path, options)
        if not apple_host():
            raise EdgeInferError(f"Core ML runs only on macOS/iOS (this host is {platform.system()}); run the bundle's "
                                 "onnx or tflite artifact instead with --artifact FILE")
        units = (self.options.compute_units or "ALL").upper()
        if units not in COMPUTE_UNITS:
            raise EdgeInferError(f"Core ML compute units {units!r} is not one of {', '.join(COMPUTE_UNITS)}")
        try:
            import coremltools as ct
        except ModuleNotFoundError:
            raise EdgeInferError("the coreml backend needs coremltools: pip install edgeinfer[coreml]") from None
        try:
            self.model = ct.models.MLModel(str(self.path), compute_units=getattr(ct.ComputeUnit, units))
        except Exception as exc:
            raise EdgeInferError(f"cannot load Core ML package {self.path}: {exc}") from None
        self.compute_units = units
        spec = self.model.get_spec()
        desc = spec.description
        feat = desc.input[0]
        self.input_name = feat.name
        self._image = feat.type.HasField("imageType")
        if self._image:
            it = feat.type.imageType
            self._gray = it.colorSpace == it.GRAYSCALE
            self.input_shape = [1, 1 if self._gray else 3, int(it.height), int(it.width)]
        else:
            self.input_shape = [int(s) for s in feat.type.multiArrayType.shape]
        self._pre = json.loads(desc.metadata.userDefined.get("edgeinfer.preprocess", "{}") or "{}")
        # the classifier's score dictionary is returned as a vector in the label order recorded at conversion
        self._labels = json.loads(desc.metadata.userDefined.get("edgeinfer.labels", "null") or "null")
        self.output_names = [o.name for o in desc.output if not o.type.HasField("stringType") and not o.type.HasField("int64Type")]

    def _images(self, x: np.ndarray):
        """PIL images for the image input. Core ML reads a PIL image as RGB and reorders it to the
        input's colour layout itself, so a BGR-ordered batch is turned back into RGB first."""
        from PIL import Image

        bgr = self._pre.get("color") == "bgr"
        for p in pixels_from_normalized(x, self._pre).astype(np.uint8):
            if self._gray:
                yield Image.fromarray(p[0], "L")
            else:
                yield Image.fromarray(np.ascontiguousarray(np.transpose(p[::-1] if bgr else p, (1, 2, 0))), "RGB")

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        x = np.asarray(batch, np.float32)
        feeds = list(self._images(x)) if self._image else [x[i:i + 1] for i in range(x.shape[0])]
        outs: list[list[np.ndarray]] = [[] for _ in self.output_names]
        for f in feeds:
            res = self.model.predict({self.input_name: f})
            for j, name in enumerate(self.output_names):
                v = res[name]
                if isinstance(v, dict):   # classifier scores: label -> score, in the model's label order
                    if self._labels is None:
                        self._labels = list(v)
                    v = np.array([[v[k] for k in self._labels]], np.float32)
                outs[j].append(np.asarray(v, np.float32))
        return [np.concatenate(o, axis=0) for o in outs]

    def describe(self) -> dict:
        return {"format": self.format, "engine": "coreml", "compute_units": self.compute_units,
                "image_input": self._image}
