"""Emitter registry: format name -> ``emit(EmitRequest) -> EmittedArtifact``, imported lazily."""
from __future__ import annotations

from typing import Callable

from edgeinfer.errors import NotSupportedYet
from edgeinfer.registry import import_target

from .api import CalibrationResult, EmitRequest, EmittedArtifact

EMITTERS: dict[str, str] = {
    "onnx": "converters.emitters.onnx_emitter:emit",
    "tflite": "converters.emitters.tflite.emitter:emit",
    "coreml": "converters.emitters.coreml.emitter:emit",
}

FILE_SUFFIX = {"onnx": ".onnx", "tflite": ".tflite", "coreml": ".mlpackage"}


def get_emitter(fmt: str) -> Callable[[EmitRequest], EmittedArtifact]:
    target = EMITTERS.get(fmt)
    if target is None:
        raise NotSupportedYet(f"format {fmt!r} is not supported yet; supported: {', '.join(EMITTERS)}")
    try:
        return import_target(target)
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith("converters"):
            raise NotSupportedYet(f"the {fmt} emitter is not built yet") from None
        raise NotSupportedYet(f"the {fmt} emitter needs {exc.name}; install edgeinfer[convert]") from None


__all__ = ["EMITTERS", "FILE_SUFFIX", "get_emitter", "EmitRequest", "EmittedArtifact", "CalibrationResult"]
