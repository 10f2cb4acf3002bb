"""The weighted layers int4 quantizes, seen as matrices ``[out, K]``.

A layer's weight matrix has one row per output channel and ``K`` columns: ``I/groups * kh * kw``
for a Conv (ONNX order: input channel, then kernel row, column), ``in_features`` for Gemm/MatMul.
Quantization scales cover blocks of ``block`` consecutive input channels of one row (times the
kernel window), so every format can store the same integers: ONNX as a 2-D blocked
DequantizeLinear or MatMulNBits, Core ML as ``constexpr_blockwise_shift_scale`` on the 4-D
weight, TFLite per output channel (``block`` = all input channels).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper


@dataclass(frozen=True)
class Granularity:
    """How a format stores int4 scales. ``block``: input channels per scale (None: a whole row,
    i.e. per output channel); ``dense``: for Gemm/MatMul, "block" like convolutions or "tensor"
    (one scale for the whole matrix, e.g. TFLite's FULLY_CONNECTED for tflite-runtime 2.14)."""

    name: str
    block: int | None
    dense: str = "block"


BLOCK32 = Granularity("block32", 32)
PER_CHANNEL = Granularity("channel", None, dense="tensor")
PER_ROW = Granularity("row", None)      # one scale per output channel for every op (Core ML int8 weights)
# each emitter's preferred granularity (see the module docstring), and every one it can store
FORMAT_GRANULARITY = {"onnx": BLOCK32, "coreml": BLOCK32, "tflite": PER_CHANNEL}
STORABLE = {"onnx": (BLOCK32, PER_CHANNEL), "coreml": (BLOCK32, PER_CHANNEL), "tflite": (PER_CHANNEL,)}


def shared_granularity(formats) -> Granularity:
    """The finest granularity every format in ``formats`` can store: one plan, the same integers
    in every artifact (block32 unless TFLite is among them; then per channel)."""
    for gran in (BLOCK32, PER_CHANNEL):
        if all(gran in STORABLE[f] for f in formats):
            return gran
    raise ValueError(f"no int4 granularity is storable by all of {sorted(formats)}")


@dataclass
class Layer:
    """One quantizable weighted node of the cleaned graph."""

    node: str              # node name (unique in the cleaned graph)
    op: str                # Conv | Gemm | MatMul
    weight: str            # initializer name
    shape: tuple[int, ...] # ONNX weight shape
    input: str             # activation tensor the weight multiplies
    groups: int = 1
    trans_b: bool = False  # Gemm transB
    kernel: int = 1        # kh * kw (1 for dense)

    @property
    def rows(self) -> int:
        if self.op == "Conv":
            return self.shape[0]
        return self.shape[0] if self.trans_b else self.shape[1]

    @property
    def cols(self) -> int:
        return int(np.prod(self.shape[1:])) if self.op == "Conv" else (self.shape[1] if self.trans_b else self.shape[0])

    @property
    def in_channels(self) -> int:
        """Input channels per group (the axis blocks are cut along)."""
        return self.shape[1] if self.op == "Conv" else self.cols

    def to_matrix(self, w: np.ndarray) -> np.ndarray:
        if self.op == "Conv":
            return w.reshape(w.shape[0], -1)
        return w if self.trans_b else w.T

    def from_matrix(self, m: np.ndarray) -> np.ndarray:
        if self.op == "Conv":
            return m.reshape(self.shape)
        return m if self.trans_b else m.T


def block_channels(layer: Layer, gran: Granularity) -> int:
    """Input channels per scale block: the largest divisor of the layer's input channels that is
    <= the granularity's block (so blocks tile exactly: Core ML needs it); a whole row for
    per-channel granularity or 1x1-kernel-free cases."""
    n = layer.in_channels
    if gran.block is None or (layer.op != "Conv" and gran.dense == "tensor"):
        return n
    return max(d for d in range(1, min(gran.block, n) + 1) if n % d == 0)


def per_tensor(layer: Layer, gran: Granularity) -> bool:
    return layer.op != "Conv" and gran.dense == "tensor"


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def find_layers(model: onnx.ModelProto) -> tuple[list[Layer], list[str]]:
    """Quantizable layers (in graph order) and the names of weighted nodes left float, with why."""
    inits = {t.name: t for t in model.graph.initializer}
    uses: dict[str, int] = {}
    for n in model.graph.node:
        for i in n.input:
            uses[i] = uses.get(i, 0) + 1
    layers, skipped = [], []
    for n in model.graph.node:
        if n.op_type not in ("Conv", "Gemm", "MatMul") or len(n.input) < 2 or n.input[1] not in inits:
            continue
        name = n.name or n.output[0]
        w = inits[n.input[1]]
        shape = tuple(int(d) for d in w.dims)
        a = _attrs(n)
        if uses[n.input[1]] > 1:
            skipped.append(f"{name} (weight shared with another node)")
        elif w.data_type != onnx.TensorProto.FLOAT:
            skipped.append(f"{name} (weight is not float32)")
        elif n.op_type == "Conv" and len(shape) != 4:
            skipped.append(f"{name} ({len(shape) - 2}-D convolution)")
        elif n.op_type == "Gemm" and (a.get("transA", 0) or a.get("alpha", 1.0) != 1.0):
            skipped.append(f"{name} (Gemm with transA or alpha != 1)")
        elif n.op_type != "Conv" and len(shape) != 2:
            skipped.append(f"{name} (weight of rank {len(shape)})")
        elif n.input[0] in inits:
            skipped.append(f"{name} (constant input)")
        else:
            layers.append(Layer(name, n.op_type, n.input[1], shape, n.input[0], int(a.get("group", 1)),
                                bool(a.get("transB", 0)), int(np.prod(shape[2:])) if n.op_type == "Conv" else 1))
    return layers, skipped


def weight_of(model: onnx.ModelProto, layer: Layer) -> np.ndarray:
    for t in model.graph.initializer:
        if t.name == layer.weight:
            return numpy_helper.to_array(t).astype(np.float32)
    raise KeyError(layer.weight)


def conv_node_attrs(model: onnx.ModelProto, layer: Layer) -> dict:
    node = next(n for n in model.graph.node if (n.name or n.output[0]) == layer.node)
    return _attrs(node)
