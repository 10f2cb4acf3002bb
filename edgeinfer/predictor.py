"""``Predictor``: a bundle in, predictions out (preprocess -> engine -> postprocess)."""
from __future__ import annotations

import contextlib
import itertools
import platform
import sys
import threading
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
from PIL import Image

from .backends import Backend, BackendOptions, backend_class
from .bundle import contained, read_labels, read_manifest, verified_artifact
from .errors import EdgeInferError
from .int8_arith import saturation_warning
from .postprocess import make_postprocessor
from .preprocess import PreprocessConfig, Transform, load_image, preprocess_pil, to_layout
from .profiles import installed_runtime

DEFAULT_BATCH = 8   # images per engine call when neither the caller nor the installed profile says


def backend_options_for(manifest: dict[str, Any], fmt: str, threads: int | None = None,
                        delegates: Sequence[str] | None = None, strict_delegate: bool = False,
                        compute_units: str | None = None, providers: Sequence[str] | None = None) -> BackendOptions:
    """Backend options from the caller, else from the installed profile the bundle names.

    The bundle's own copy of its profile is never read here: delegates, providers and threads from a
    bundle would let a file choose which native code runs (and how many threads it takes)."""
    runtime = installed_runtime((manifest.get("profile") or {}).get("name"))
    return BackendOptions(
        threads=threads if threads is not None else runtime.get("threads"),
        providers=list(providers if providers is not None else runtime.get("onnx_providers", [])) if fmt == "onnx" else [],
        delegates=list(delegates if delegates is not None else runtime.get("tflite_delegates", [])) if fmt == "tflite" else [],
        strict_delegate=strict_delegate,
        compute_units=compute_units or runtime.get("coreml_compute_units", "ALL"),
    )


_WARNED: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _WARNED:
        _WARNED.add(message)
        print(f"warning: {message}", file=sys.stderr, flush=True)


class Predictor:
    """Run a converted bundle.

    ``Predictor(bundle_dir, artifact=None, threads=None, delegates=None, strict_delegate=False)``
    picks the named artifact (file name) or the first in manifest order that this host can run.
    ``predict(images)`` takes paths or PIL images and returns one result per image
    (``Classification`` or ``DetectionResult``); images are decoded ``batch`` at a time, so memory
    does not grow with their number (``iter_predict`` yields results as they come).

    Each artifact's size and sha256 are checked against the manifest before an engine opens it
    (``verify_hash=False`` skips that, for bundles edited on purpose). ``require_signature=KEY.pub``
    refuses a bundle whose ``manifest.sig`` is missing or not by that key (``edgeinfer.signature``). ``delegates`` (TFLite names or
    library paths) and ``providers`` (ONNX Runtime EP names) come from the caller; otherwise from the
    device profile installed with edgeinfer under the bundle's profile name, never from the bundle.

    Thread safety: one instance may be shared by threads. Engines that are not thread-safe (LiteRT,
    Core ML) are called under one lock per Predictor; ONNX Runtime sessions are called concurrently.
    Decoding and pre/postprocessing always run in parallel. ``tools/bench_threads.py`` measures this
    against an engine per thread.
    """

    def __init__(self, bundle_dir: str | Path, artifact: str | None = None, threads: int | None = None,
                 delegates: Sequence[str] | None = None, strict_delegate: bool = False,
                 compute_units: str | None = None, providers: Sequence[str] | None = None,
                 verify_hash: bool = True, batch: int | None = None, require_signature: str | Path | None = None):
        self.bundle_dir = Path(bundle_dir)
        self.verify_hash = verify_hash
        self.manifest = read_manifest(self.bundle_dir)
        if require_signature is not None:
            if not verify_hash:
                raise EdgeInferError("a required signature covers the artifacts through their hashes: "
                                     "drop --no-verify-hash (verify_hash=False)")
            from .signature import verify_bundle_signature
            verify_bundle_signature(self.bundle_dir, Path(require_signature), self.manifest)
        self.artifacts: list[dict[str, Any]] = self.manifest["artifacts"]
        self.labels = read_labels(self.bundle_dir, self.manifest)
        self.task = self.manifest["task"]
        self.preprocess_config = PreprocessConfig.from_dict(self.manifest["preprocess"])
        shape = self.manifest["input"]["shape"]
        self.input_hw = (int(shape[2]), int(shape[3]))
        self._backend_args = dict(threads=threads, delegates=delegates, strict_delegate=strict_delegate,
                                  compute_units=compute_units, providers=providers)
        if batch is not None and (isinstance(batch, bool) or not isinstance(batch, int) or batch < 1):
            raise EdgeInferError(f"batch must be a positive integer, not {batch!r}")
        profile_batch = installed_runtime((self.manifest.get("profile") or {}).get("name")).get("batch")
        self.batch = batch or profile_batch or DEFAULT_BATCH
        self.artifact, self.backend = self._open(artifact)
        # engine calls from several threads: serialised unless the engine is thread-safe (tools/bench_threads.py)
        self._lock = contextlib.nullcontext() if self.backend.thread_safe else threading.Lock()
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
        if self.verify_hash:
            path = verified_artifact(self.bundle_dir, entry)
        else:
            path = contained(self.bundle_dir, entry["file"], "artifact file")
            if not path.exists():
                raise EdgeInferError(f"artifact file {self.bundle_dir / entry['file']} named by the manifest is missing")
        cls = backend_class(entry["format"])
        backend = cls(path, backend_options_for(self.manifest, entry["format"], **self._backend_args))
        warning = saturation_warning(entry)
        if warning:
            backend.warnings.append(warning)
            _warn_once(warning)
        return backend

    @property
    def input_layout(self) -> str:
        return self.artifact.get("input_layout", "NCHW")

    def preprocess(self, images: Iterable[str | Path | Image.Image]) -> tuple[np.ndarray, list[Transform]]:
        """Images -> (float32 NCHW batch, transforms)."""
        arrays, transforms = [], []
        for im in images:
            pil = im if isinstance(im, Image.Image) else load_image(im, self.preprocess_config.color, self.input_hw)
            arr, t = preprocess_pil(pil, self.preprocess_config, self.input_hw)
            arrays.append(arr)
            transforms.append(t)
        if not arrays:
            raise EdgeInferError("no images given")
        return np.stack(arrays), transforms

    def run(self, batch_nchw: np.ndarray) -> list[np.ndarray]:
        """Raw engine outputs for a preprocessed NCHW float32 batch (serialised for engines that are not thread-safe)."""
        x = to_layout(batch_nchw, self.input_layout)
        with self._lock:
            return self.backend.run(x)

    def postprocess(self, outputs: list[np.ndarray], transforms: list[Transform], top_k: int | None = None) -> list[Any]:
        results = []
        for i, t in enumerate(transforms):
            per_image = [o[i:i + 1] for o in outputs]
            if self.task == "classify":
                results.append(self.postprocessor(per_image, t, top_k=top_k))
            else:
                results.append(self.postprocessor(per_image, t))
        return results

    def iter_predict(self, images: Iterable[str | Path | Image.Image], top_k: int | None = None,
                     batch: int | None = None) -> Iterator[tuple[Any, Any]]:
        """(image, result) pairs, decoding at most ``batch`` (default ``self.batch``) images at a time."""
        it = iter(images)
        size = batch or self.batch
        any_image = False
        while chunk := list(itertools.islice(it, size)):
            any_image = True
            x, transforms = self.preprocess(chunk)
            yield from zip(chunk, self.postprocess(self.run(x), transforms, top_k))
        if not any_image:
            raise EdgeInferError("no images given")

    def predict(self, images: Iterable[str | Path | Image.Image], top_k: int | None = None) -> list[Any]:
        return [r for _, r in self.iter_predict(images, top_k)]

    def describe(self) -> dict[str, Any]:
        return {"artifact": self.artifact["file"], "precision": self.artifact.get("precision"),
                **self.backend.describe(), "warnings": list(self.backend.warnings)}
