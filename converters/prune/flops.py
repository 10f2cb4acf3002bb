"""Parameter and multiply-accumulate (MAC) counts of an ONNX model, per input sample.

Parameters: elements of every floating-point initializer (weights, biases, BN statistics).
MACs: Conv (``prod(out[1:]) * prod(W[1:])``), ConvTranspose (``prod(in[1:]) * prod(W[1:])``),
Gemm and MatMul (``prod(out[1:]) * K``); other ops count zero, as is usual. Shapes come from
shape inference; layers with a symbolic non-batch dimension are listed in ``unknown``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from .graph import GraphView, attr, infer_shapes

FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16)


@dataclass
class Counts:
    params: int
    macs: int
    size_bytes: int
    unknown: list[str] = field(default_factory=list)   # layers whose MACs could not be counted


def _prod(dims) -> int | None:
    if any(not isinstance(d, int) or d <= 0 for d in dims):
        return None
    return int(np.prod(dims)) if len(dims) else 1


def layer_macs(view: GraphView, node) -> int | None:
    """MACs of one node per sample (0 for ops that are not counted, None when shapes are unknown)."""
    op = node.op_type
    if op not in ("Conv", "ConvTranspose", "Gemm", "MatMul"):
        return 0
    w_shape = view.shape(node.input[1])
    if op == "Conv" and w_shape is not None:
        out = view.shape(node.output[0])
        a, b = (_prod(out[1:]) if out else None), _prod(w_shape[1:])
    elif op == "ConvTranspose" and w_shape is not None:
        inp = view.shape(node.input[0])
        a, b = (_prod(inp[1:]) if inp else None), _prod(w_shape[1:])
    else:
        out, a_shape = view.shape(node.output[0]), view.shape(node.input[0])
        if out is None or a_shape is None:
            return None
        k = a_shape[0] if op == "Gemm" and int(attr(node, "transA", 0)) else a_shape[-1]
        a, b = _prod(out[1:]), (k if isinstance(k, int) else None)
    return None if a is None or b is None else a * b


def count(model: onnx.ModelProto, shapes_ready: bool = False) -> Counts:
    """Params, MACs and serialized size of ``model``."""
    m = model if shapes_ready else infer_shapes(model)
    view = GraphView(m)
    params = sum(int(np.prod(i.dims)) for i in m.graph.initializer if i.data_type in FLOAT_TYPES)
    macs, unknown = 0, []
    for node in m.graph.node:
        v = layer_macs(view, node)
        if v is None:
            unknown.append(view.node_label(node))
        else:
            macs += v
    return Counts(params, macs, model.ByteSize(), unknown)
