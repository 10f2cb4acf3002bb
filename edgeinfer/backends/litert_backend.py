"""LiteRT / TFLite backend: runs a .tflite artifact.

Engine: ``ai_edge_litert.interpreter``, else ``tflite_runtime.interpreter``, else
``tensorflow.lite`` (imported lazily, in that order). Delegates named in
``options.delegates`` ("xnnpack", "gpu", "nnapi", "hexagon", "edgetpu" or a library path)
are loaded with ``load_delegate``; a missing one falls back to CPU with a warning naming it
(``self.warnings`` and stderr), or raises ``EdgeInferError`` when ``options.strict_delegate``.
Quantized model I/O is quantized/dequantized here from the tensor parameters; batches larger
than the file's batch resize the input tensor (or run sample by sample when the graph cannot).
"""
from __future__ import annotations

import gc
import importlib
import sys
from pathlib import Path

import numpy as np

from ..errors import EdgeInferError
from .base import Backend, BackendOptions
from .names import BUILTIN_DELEGATES, DELEGATE_LIBRARIES, is_library_path
from .tflite_check import check_tflite
from .tflite_metadata import read_metadata

ENGINES = ("ai_edge_litert.interpreter", "tflite_runtime.interpreter", "tensorflow.lite")


def import_engine():
    """(engine module name, Interpreter class, load_delegate) of the first installed engine."""
    for name in ENGINES:
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        return name, mod.Interpreter, mod.load_delegate
    raise EdgeInferError("no TFLite interpreter installed; install edgeinfer[tflite] (ai-edge-litert) or tflite-runtime")


def delegate_candidates(name: str, platform: str = sys.platform) -> list[str]:
    """Library names (or the path itself) to try for a delegate given by name or path."""
    if is_library_path(name):
        return [name]
    key = name.lower()
    if key not in DELEGATE_LIBRARIES:
        raise EdgeInferError(f"unknown TFLite delegate {name!r}; use one of "
                             f"{', '.join(sorted(set(DELEGATE_LIBRARIES) | BUILTIN_DELEGATES))} or a library path")
    plat = "linux" if platform.startswith("linux") else platform
    return DELEGATE_LIBRARIES[key].get(plat, [])


def _try_load(load_delegate, lib: str):
    """(delegate, None) or (None, one-line reason). A failed load leaves a half-built Delegate
    whose ``__del__`` raises inside the engine; it is collected here with that noise silenced."""
    previous = sys.unraisablehook
    sys.unraisablehook = lambda u: None if isinstance(u.exc_value, AttributeError) else previous(u)
    try:
        try:
            return load_delegate(lib), None
        except (ValueError, OSError, RuntimeError) as exc:
            reason = f"{lib}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        gc.collect()
        return None, reason
    finally:
        sys.unraisablehook = previous


def guess_layout(shape) -> str:
    """Layout of a 4-D input without edgeinfer metadata: TFLite's NHWC unless channels come first."""
    if len(shape) == 4 and shape[1] in (1, 3, 4) and shape[3] not in (1, 3, 4):
        return "NCHW"
    return "NHWC" if len(shape) == 4 else "NCHW"


class LiteRTBackend(Backend):
    format = "tflite"

    def __init__(self, path: Path, options: BackendOptions | None = None):
        super().__init__(path, options)
        if not self.path.is_file():
            raise EdgeInferError(f"TFLite model not found: {self.path}")
        check_tflite(self.path)   # engines trust the flatbuffer: a malformed file is refused before they see it
        self.engine, self._interpreter_cls, load_delegate = import_engine()
        self.delegates_loaded: list[str] = []
        self._delegates = self._load_delegates(load_delegate)
        self._resizable = True
        self._open_interpreter()
        inp = self.interp.get_input_details()[0]
        self._input = inp
        self.input_name = inp["name"]
        self.input_shape = [int(d) for d in inp["shape"]]
        self._file_batch = self.input_shape[0] if self.input_shape else 1
        self.output_names = [d["name"] for d in self.interp.get_output_details()]
        layout = read_metadata(self.path).get("edgeinfer_layout", b"").decode() or guess_layout(self.input_shape)
        self.input_layout = layout

    def _open_interpreter(self) -> None:
        try:
            self.interp = self._interpreter_cls(model_path=str(self.path), num_threads=self.options.threads,
                                                experimental_delegates=self._delegates or None)
            self.interp.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise EdgeInferError(f"{self.engine} cannot load {self.path.name}: {str(exc).splitlines()[0]}; "
                                 "re-convert with this edgeinfer version or update the interpreter") from None
        self._input = self.interp.get_input_details()[0]

    def _load_delegates(self, load_delegate) -> list:
        loaded = []
        for name in self.options.delegates:
            if name.lower() in BUILTIN_DELEGATES:
                self.delegates_loaded.append(name.lower())
                continue
            errors = []
            for lib in delegate_candidates(name):
                delegate, error = _try_load(load_delegate, lib)
                if delegate is not None:
                    loaded.append(delegate)
                    self.delegates_loaded.append(name)
                    break
                errors.append(error)
            else:
                why = "; ".join(errors) or f"no library known for {sys.platform}"
                if self.options.strict_delegate:
                    raise EdgeInferError(f"TFLite delegate {name!r} could not be loaded ({why}); "
                                         "install it or drop --strict-delegate to fall back to CPU")
                msg = f"TFLite delegate {name!r} could not be loaded ({why}); running on CPU"
                self.warnings.append(msg)
                print(f"warning: {msg}", file=sys.stderr)
        return loaded

    # ---------- I/O quantization ----------
    @staticmethod
    def _quantize(x: np.ndarray, detail: dict) -> np.ndarray:
        dtype = detail["dtype"]
        if dtype == np.float32:
            return x.astype(np.float32, copy=False)
        scale, zp = detail["quantization"]
        info = np.iinfo(dtype)
        return np.clip(np.round(x / scale) + zp, info.min, info.max).astype(dtype)

    @staticmethod
    def _dequantize(y: np.ndarray, detail: dict) -> np.ndarray:
        if y.dtype == np.float32:
            return y
        scale, zp = detail["quantization"]
        if scale == 0:
            return y.astype(np.float32)
        return ((y.astype(np.float32) - zp) * scale).astype(np.float32)

    # ---------- running ----------
    def _invoke(self, batch: np.ndarray) -> list[np.ndarray]:
        self.interp.set_tensor(self._input["index"], self._quantize(batch, self._input))
        self.interp.invoke()
        return [self._dequantize(self.interp.get_tensor(d["index"]).copy(), d) for d in self.interp.get_output_details()]

    def _resize(self, n: int) -> bool:
        """Resize the input batch to ``n`` and re-allocate; False on failure, with a fresh interpreter at the
        file's batch (after a failed allocation tflite-runtime 2.14 crashes in ``invoke``) and no more tries."""
        shape = list(self.input_shape)
        shape[0] = n
        try:
            self.interp.resize_tensor_input(self._input["index"], shape, strict=False)
            self.interp.allocate_tensors()
        except (ValueError, RuntimeError):
            self._resizable = False
            self._open_interpreter()
            return False
        self._input = self.interp.get_input_details()[0]
        return True

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        """float32 batch in ``input_layout`` -> float32 outputs in ``output_names`` order."""
        batch = np.asarray(batch, np.float32)
        expect = tuple(self.input_shape[1:])
        if tuple(batch.shape[1:]) != expect:
            raise EdgeInferError(f"input of shape {list(batch.shape)} does not match the model's "
                                 f"{self.input_layout} input {self.input_shape}; preprocess to that size/layout")
        n = batch.shape[0]
        current = int(self._input["shape"][0])
        if n == current:
            return self._invoke(batch)
        if n != self._file_batch and self._resizable and self._resize(n):
            try:
                outs = self._invoke(batch)
                if all(o.shape[:1] == (n,) for o in outs):
                    return outs
            except (ValueError, RuntimeError):
                self._resizable = False
                self._open_interpreter()
        if int(self._input["shape"][0]) != self._file_batch:
            self._resize(self._file_batch)
        step = self._file_batch
        parts = [self._invoke(batch[i:i + step]) for i in range(0, n, step)]
        return [np.concatenate(p, axis=0) for p in zip(*parts)]

    def describe(self) -> dict:
        return {"format": self.format, "engine": self.engine, "delegates": list(self.delegates_loaded),
                "threads": self.options.threads, "input_layout": self.input_layout}
