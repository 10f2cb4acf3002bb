"""Model runs of the int4 search with some weights replaced, without rebuilding the model.

The search scores dozens of weight sets (one layer at 4 bits, then prefixes of a ranking) on the
same graph. Instead of copying the model, applying a plan and rewriting it (``simulate``, e.g.
int8 activations) for every run, the graph is prepared once; each run swaps the replaced
initializers' bytes, serializes and opens an ONNX Runtime session. The weights stay constants,
so ONNX Runtime keeps its constant-weight kernels (NCHWc convolutions on x86): feeding them as
graph inputs measured ~2x slower on MobileNetV2, and ``SessionOptions.add_initializer`` overrides
are not seen by the NCHWc convolutions (it reorders the graph's own weights first).

    ev = WeightSession(model, simulate=fn)
    ref = ev.run(samples)                       # float weights
    out = ev.run(samples, {name: array, ...})   # some initializers replaced (dequantized int4/int8)

A run's outputs are those of ``simulate(plan.apply(model))`` computed in float: the sessions keep
QuantizeLinear/DequantizeLinear as fake quantization (``cpu_session(fuse_qdq=False)``); with its
default optimizations ONNX Runtime would quantize the float weights next to them to int8 itself
and run the host's int8 kernels (saturating on x86 without VNNI), so the search would score a
different, host-dependent arithmetic. Every run is deterministic (same inputs, same bits out).
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from ..ort_session import cpu_session
from ..verify import BATCH

Simulate = Callable[[onnx.ModelProto], onnx.ModelProto]


class WeightSession:
    """``run(samples, weights)``: the model's outputs with the named initializers replaced."""

    def __init__(self, model: onnx.ModelProto, simulate: Simulate | None = None):
        self.model = simulate(model) if simulate else onnx.ModelProto.FromString(model.SerializeToString())
        self.initializers = {t.name: t for t in self.model.graph.initializer}
        self._float: ort.InferenceSession | None = None

    def _session(self, weights: dict[str, np.ndarray]) -> ort.InferenceSession:
        saved = {}
        try:
            for name, arr in weights.items():
                t = self.initializers.get(name)
                if t is None:
                    raise ValueError(f"not an initializer of this model: {name}")
                a = np.asarray(arr, np.float32)
                if tuple(a.shape) != tuple(t.dims):
                    raise ValueError(f"{name}: shape {a.shape} != {tuple(t.dims)}")
                saved[name] = onnx.TensorProto()
                saved[name].CopyFrom(t)
                t.CopyFrom(numpy_helper.from_array(a, name))
            return cpu_session(self.model, fuse_qdq=False)      # float fake quantization, no host int8 kernels
        finally:
            for name, t in saved.items():
                self.initializers[name].CopyFrom(t)

    def run(self, samples: np.ndarray, weights: dict[str, np.ndarray] | None = None) -> list[np.ndarray]:
        """Outputs (float32, concatenated over ``samples`` [N, ...] NCHW) with ``weights`` (initializer
        name -> float32 array of the same shape) in place of the model's own."""
        if weights:
            sess = self._session(weights)
        else:
            if self._float is None:
                self._float = self._session({})
            sess = self._float
        inp = sess.get_inputs()[0]
        step = 1 if inp.shape[0] == 1 else BATCH
        x = np.asarray(samples, np.float32)
        parts = [sess.run(None, {inp.name: x[i:i + step]}) for i in range(0, len(x), step)]
        return [np.concatenate([p[k] for p in parts]).astype(np.float32) for k in range(len(parts[0]))]
