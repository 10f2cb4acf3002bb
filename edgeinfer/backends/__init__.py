"""Backend registry: artifact format -> backend class, imported lazily.

Only the engine a bundle needs is imported, so a device needs just one engine installed.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import EdgeInferError
from ..registry import import_target
from .base import Backend, BackendOptions

BACKENDS: dict[str, str] = {
    "onnx": "edgeinfer.backends.onnxruntime_backend:OnnxRuntimeBackend",
    "tflite": "edgeinfer.backends.litert_backend:LiteRTBackend",
    "coreml": "edgeinfer.backends.coreml_backend:CoreMLBackend",
}


def backend_class(fmt: str) -> type[Backend]:
    """Return the backend class for an artifact format, or raise a one-line error."""
    target = BACKENDS.get(fmt)
    if target is None:
        raise EdgeInferError(f"no runtime backend for artifact format {fmt!r}; known: {', '.join(BACKENDS)}")
    try:
        return import_target(target)
    except ModuleNotFoundError as exc:
        raise EdgeInferError(f"the {fmt} backend is not available ({exc}); install edgeinfer[{fmt}]") from None


def open_backend(fmt: str, path: Path, options: BackendOptions | None = None) -> Backend:
    return backend_class(fmt)(Path(path), options)


__all__ = ["Backend", "BackendOptions", "BACKENDS", "backend_class", "open_backend"]
