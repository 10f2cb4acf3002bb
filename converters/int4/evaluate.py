"""One ONNX Runtime session for every model run of the int4 search.

The search scores dozens of weight sets (one layer at 4 bits, then prefixes of a ranking) on the
same graph. Instead of copying the model, applying a plan and building a session for each, the
quantizable weights become graph inputs of one session (built once, on the graph as ``simulate``
makes it, e.g. int8 activations) and each run feeds the weights it scores:

    ev = WeightSession(model, weights=[l.weight for l in layers], simulate=fn)
    ref = ev.run(samples)                       # float weights
    out = ev.run(samples, {name: array, ...})   # some weights replaced (dequantized int4/int8)

A run's outputs equal ``run_reference(simulate(plan.apply(model)), samples)`` up to the float
summation order of ONNX Runtime's kernels (constant weights may be pre-packed differently).
Every run is deterministic: same inputs and weights, same bits out.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..ort_session import cpu_session
from ..verify import BATCH

Simulate = Callable[[onnx.ModelProto], onnx.ModelProto]


class WeightSession:
    """``run(samples, weights)``: the model's outputs with the named weight initializers replaced."""

    def __init__(self, model: onnx.ModelProto, weights: list[str], simulate: Simulate | None = None):
        m = simulate(model) if simulate else onnx.ModelProto.FromString(model.SerializeToString())
        g = m.graph
        wanted = set(weights)
        self.float_weights: dict[str, np.ndarray] = {}
        keep = []
        for t in g.initializer:
            if t.name in wanted:
                arr = numpy_helper.to_array(t)
                self.float_weights[t.name] = arr
                g.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(arr.shape)))
            else:
                keep.append(t)
        missing = wanted - set(self.float_weights)
        if missing:
            raise ValueError(f"weights not among the initializers: {sorted(missing)[:5]}")
        del g.initializer[:]
        g.initializer.extend(keep)
        self.sess = cpu_session(m)
        inp = self.sess.get_inputs()[0]
        self.feed_name = inp.name
        self.step = 1 if inp.shape[0] == 1 else BATCH

    def run(self, samples: np.ndarray, weights: dict[str, np.ndarray] | None = None) -> list[np.ndarray]:
        """Outputs (float32, concatenated over ``samples`` [N, ...] NCHW) with ``weights`` (initializer
        name -> array) in place of the float ones; names not given keep their float weights."""
        feed = dict(self.float_weights)
        if weights:
            unknown = set(weights) - set(feed)
            if unknown:
                raise ValueError(f"not a weight of this session: {sorted(unknown)[:5]}")
            feed.update({k: np.asarray(v, np.float32) for k, v in weights.items()})
        x = np.asarray(samples, np.float32)
        parts = [self.sess.run(None, dict(feed, **{self.feed_name: x[i:i + self.step]}))
                 for i in range(0, len(x), self.step)]
        return [np.concatenate([p[k] for p in parts]).astype(np.float32) for k in range(len(parts[0]))]
