"""``Predictor``: a bundle in, predictions out (preprocess -> engine -> postprocess)."""
from __future__ import annotations

import platform
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from PIL import Image

from .backends import Backend, BackendOptions, backend_class
from .bundle import read_labels, read_manifest
from .errors import EdgeInferError
from .postprocess import make_postprocessor
from .preprocess import PreprocessConfig, Transform, load_image, preprocess_pil, to_layout


def backend_options_for(manifest: dict[str, Any], fmt: str, threads: int | None = None,
                        delegates: Sequence[str] | None = None, strict_delegate: bool = False,
                        compute_units: str | None = None) -> BackendOptions:
    """Backend options from the bundle's profile runtime section, overridden by the caller."""
    runtime = (manifest.get("profile") or {}).get("runtime", {})
    return BackendOptions(
        threads=threads if threads is not None else runtime.get("threads"),
        providers=list(runtime.get("onnx_providers", [])) if fmt == "onnx" else [],
        delegates=list(delegates if delegates is not None else runtime.get("tflite_delegates", [])) if fmt == "tflite" else [],
        strict_delegate=strict_delegate,
        compute_units=compute_units or runtime.get("coreml_compute_units", "ALL"),
    )


class Predictor:
    """Run a converted bundle.

    ``Predictor(bundle_dir, artifact=None, threads=None, delegates=None, strict_delegate=False)``
    picks the named artifact (file name) or the first in manifest order that this host can run.
    ``predict(images)`` takes paths or PIL images and returns one result per image
    (``Classification`` or ``DetectionResult``).
    """

    def __init__(self, bundle_dir: str | Path, artifact: str | None = None, threads: int | None = None,
                 delegates: Sequence[str] | None = None, strict_delegate: bool = False,
                 compute_units: str | None = None):
        self.bundle_dir = Path(bundle_dir)
        self.manifest = read_manifest(self.bundle_dir)
        self.artifacts: list[dict[str, Any]] = self.manifest["artifacts"]
        self.labels = read_labels(self.bundle_dir, self.manifest)
        self.task = self.manifest["task"]
        self.preprocess_config = PreprocessConfig.from_dict(self.manifest["preprocess"])
        shape = self.manifest["input"]["shape"]
        self.input_hw = (int(shape[2]), int(shape[3]))
        self._backend_args = dict(threads=threads, delegates=delegates, strict_delegate=strict_delegate,
                                  compute_units=compute_units)
        self.artifact, self.backend = self._open(artifact)
        if delegates and self.artifact["format"] != "tflite":
            tfl = [a["file"] for a in self.artifacts if a["format"] == "tflite"]
            todo = f"pass --artifact {tfl[0]}" if tfl else "re-convert with --formats tflite"
            raise EdgeInferError(f"delegates ({', '.join(delegates)}) apply to TFLite artifacts but "
                                 f"{self.artifact['file']} is {self.artifact['format']}; {todo}")
        self.postprocessor = make_postprocessor(self.task, self.manifest["postprocess"], self.labels)

    def _open(self, name: str | None) -> tuple[dict[str, Any], Backend]:
        if name is not None:
            entry = next((a for a in self.artifacts if a["file"] == Path(name).name), None)
            if entry is None:
                files = ", ".join(a["file"] for a in self.artifacts)
                raise EdgeInferError(f"artifact {name!r} is not in this bundle; it has: {files}")
            return entry, self._make_backend(entry)
        reasons = []
        for entry in self.artifacts:
            try:
                return entry, self._make_backend(entry)
            except EdgeInferError as exc:
                reasons.append(f"{entry['file']}: {exc}")
        raise EdgeInferError(f"no artifact of this bundle runs on this host ({platform.system()}): " + " | ".join(reasons))

    def _make_backend(self, entry: dict[str, Any]) -> Backend:
        path = self.bundle_dir / entry["file"]
        if not path.exists():
            raise EdgeInferError(f"artifact file {path} named by the manifest is missing")
        cls = backend_class(entry["format"])
        return cls(path, backend_options_for(self.manifest, entry["format"], **self._backend_args))

    @property
    def input_layout(self) -> str:
        return self.artifact.get("input_layout", "NCHW")

    def preprocess(self, images: Iterable[str | Path | Image.Image]) -> tuple[np.ndarray, list[Transform]]:
        """Images -> (float32 NCHW batch, transforms)."""
        arrays, transforms = [], []
        for im in images:
            pil = im if isinstance(im, Image.Image) else load_image(im, self.preprocess_config.color)
            arr, t = preprocess_pil(pil, self.preprocess_config, self.input_hw)
            arrays.append(arr)
            transforms.append(t)
        if not arrays:
            raise EdgeInferError("no images given")
        return np.stack(arrays), transforms

    def run(self, batch_nchw: np.ndarray) -> list[np.ndarray]:
        """Raw engine outputs for a preprocessed NCHW float32 batch."""
        return self.backend.run(to_layout(batch_nchw, self.input_layout))

    def postprocess(self, outputs: list[np.ndarray], transforms: list[Transform], top_k: int | None = None) -> list[Any]:
        results = []
        for i, t in enumerate(transforms):
            per_image = [o[i:i + 1] for o in outputs]
            if self.task == "classify":
                results.append(self.postprocessor(per_image, t, top_k=top_k))
            else:
                results.append(self.postprocessor(per_image, t))
        return results

    def predict(self, images: Iterable[str | Path | Image.Image], top_k: int | None = None) -> list[Any]:
        batch, transforms = self.preprocess(images)
        return self.postprocess(self.run(batch), transforms, top_k)

    def describe(self) -> dict[str, Any]:
        return {"artifact": self.artifact["file"], "precision": self.artifact.get("precision"),
                **self.backend.describe(), "warnings": list(self.backend.warnings)}
