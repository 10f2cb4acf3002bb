"""ONNX Runtime backend: an InferenceSession with providers and threads from the profile."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from ..errors import EdgeInferError
from .base import Backend, BackendOptions

try:
    import onnxruntime as ort
except ImportError:  # pragma: no cover - exercised by the light-runtime test
    raise ModuleNotFoundError("onnxruntime", name="onnxruntime") from None


class OnnxRuntimeBackend(Backend):
    format = "onnx"
    thread_safe = True   # InferenceSession.run is documented safe to call concurrently; run() keeps no state

    def __init__(self, path: Path, options: BackendOptions | None = None):
        super().__init__(path, options)
        so = ort.SessionOptions()
        so.log_severity_level = 3
        if self.options.threads:
            so.intra_op_num_threads = int(self.options.threads)
            so.inter_op_num_threads = 1
        available = ort.get_available_providers()
        wanted = list(self.options.providers) or ["CPUExecutionProvider"]
        providers = [p for p in wanted if p in available]
        missing = [p for p in wanted if p not in available]
        if missing:
            msg = f"ONNX Runtime provider(s) {', '.join(missing)} not available here; using {', '.join(providers) or 'CPUExecutionProvider'}"
            if self.options.strict_delegate:
                raise EdgeInferError(msg.split(";")[0] + "; install the onnxruntime build that has them or drop --strict-delegate")
            self.warnings.append(msg)
            print(f"warning: {msg}", file=sys.stderr)
        if "CPUExecutionProvider" not in providers:
            providers.append("CPUExecutionProvider")
        try:
            self.session = ort.InferenceSession(str(self.path), so, providers=providers)
        except Exception as exc:  # ORT raises private exception types
            raise EdgeInferError(f"ONNX Runtime cannot load {self.path.name}: {str(exc).splitlines()[0]}") from None
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.input_shape = [d if isinstance(d, int) else None for d in inp.shape]
        self.input_layout = "NCHW"
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        fixed = self.input_shape[0] if self.input_shape else None
        if fixed is not None and fixed != len(batch):
            if fixed != 1:
                raise EdgeInferError(f"{self.path.name} takes batches of exactly {fixed}; got {len(batch)}")
            parts = [self.session.run(None, {self.input_name: batch[i:i + 1]}) for i in range(len(batch))]
            return [np.concatenate([p[k] for p in parts]).astype(np.float32, copy=False) for k in range(len(parts[0]))]
        outs = self.session.run(None, {self.input_name: batch})
        return [np.asarray(o, dtype=np.float32) for o in outs]

    def describe(self) -> dict:
        return {"format": self.format, "engine": f"onnxruntime {ort.__version__}",
                "providers": self.session.get_providers()}
