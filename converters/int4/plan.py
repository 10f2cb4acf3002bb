"""The int4 plan: integers and scales for every quantized layer, computed once and shared by the
emitters of one granularity (so their artifacts carry the same integers, checked by ``compare``)."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from .gptq import dequantize
from .layers import Granularity, Layer


@dataclass
class LayerQuant:
    """One layer's integers ``q`` [rows, K] (int8 holding 4- or 8-bit values) and ``scales``
    [rows, K / (block * kernel)] (one per row and block of ``block`` input channels)."""

    layer: Layer
    bits: int
    block: int              # input channels per scale block
    per_tensor: bool
    q: np.ndarray
    scales: np.ndarray
    rounding: str = "gptq"  # "gptq" (error-compensating, calibration data) | "nearest"

    @property
    def block_cols(self) -> int:
        """Columns of the weight matrix per scale block."""
        return self.q.shape[1] // self.scales.shape[1]

    def weight(self) -> np.ndarray:
        """The dequantized weight in the ONNX layout (what every artifact computes with)."""
        return self.layer.from_matrix(dequantize(self.q, self.scales))

    @property
    def nbytes(self) -> int:
        """Storage: packed integers + float16 scales (one scale when per-tensor)."""
        return int(np.ceil(self.q.size * self.bits / 8)) + 2 * (1 if self.per_tensor else self.scales.size)


@dataclass
class Int4Plan:
    granularity: Granularity
    layers: dict[str, LayerQuant]                     # node name -> chosen quantization
    skipped: list[str] = field(default_factory=list)   # weighted nodes left float, with why
    method: str = "gptq"                               # "gptq" (calibration data) | "rtn" (data-free)
    search: dict[str, Any] | None = None               # mixed 4/8 search report

    def get(self, node_name: str) -> LayerQuant | None:
        return self.layers.get(node_name)

    def digest(self, scales: bool = True) -> str:
        """sha256 over every layer's bits and integers (and scales), in node order."""
        h = hashlib.sha256()
        for name in sorted(self.layers):
            lq = self.layers[name]
            h.update(f"{name}:{lq.bits}:{lq.q.shape}".encode())
            h.update(np.ascontiguousarray(lq.q).tobytes())
            if scales:
                h.update(np.ascontiguousarray(lq.scales, np.float32).tobytes())
        return h.hexdigest()

    def int_digest(self) -> str:
        """The digest without scales (formats store scales at different float widths)."""
        return self.digest(scales=False)

    def bits_summary(self) -> dict[str, int]:
        out = {"4": 0, "8": 0}
        for lq in self.layers.values():
            out[str(lq.bits)] += 1
        return out

    def weight_bytes(self) -> int:
        return sum(lq.nbytes for lq in self.layers.values())

    def apply(self, model: onnx.ModelProto) -> onnx.ModelProto:
        """A float copy of ``model`` whose quantized weights are replaced by their dequantized values."""
        out = onnx.ModelProto.FromString(model.SerializeToString())
        by_weight = {lq.layer.weight: lq for lq in self.layers.values()}
        for t in out.graph.initializer:
            if t.name in by_weight:
                t.CopyFrom(numpy_helper.from_array(by_weight[t.name].weight(), t.name))
        return out

    def compare(self, stored: dict[str, tuple[int, np.ndarray]], kept_float: set[str] = frozenset()) -> dict[str, Any]:
        """Check an artifact's integers (node -> (bits, q [rows, K])) against the plan; layers in
        ``kept_float`` may be absent (the artifact computes them in float on request)."""
        missing = sorted(set(self.layers) - set(stored) - set(kept_float))
        differ = sorted(n for n, (bits, q) in stored.items() if n in self.layers and
                        (bits != self.layers[n].bits or q.shape != self.layers[n].q.shape
                         or not np.array_equal(q, self.layers[n].q)))
        out = {"same_as_plan": not missing and not differ, "layers_checked": len(stored), "missing": missing[:5],
               "differ": differ[:5], "plan_int_digest": self.int_digest()}
        if kept_float & set(self.layers):
            out["kept_float"] = sorted(kept_float & set(self.layers))
        return out

    def to_manifest(self) -> dict[str, Any]:
        return {
            "granularity": self.granularity.name, "method": self.method, "int_digest": self.int_digest(),
            "bits": self.bits_summary(), "weight_bytes": self.weight_bytes(), "left_float": self.skipped,
            "layers": [{"node": n, "op": lq.layer.op, "bits": lq.bits, "rounding": lq.rounding, "block_channels": lq.block,
                        "per_tensor": lq.per_tensor, "bytes": lq.nbytes} for n, lq in self.layers.items()],
            "search": self.search,
        }
