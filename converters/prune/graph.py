"""Small read helpers over an ONNX graph shared by the pruning modules.

``prepare(model)`` returns a copy where ``Constant`` nodes became initializers, initializers
are no longer listed as graph inputs, and shapes are inferred — the form every other pruning
module expects. ``GraphView`` indexes that copy (initializers, shapes, producers, consumers).
"""
from __future__ import annotations

import onnx
import numpy as np
from onnx import helper, numpy_helper

from .. import clean

WEIGHTED_OPS = ("Conv", "Gemm", "MatMul")


def attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def set_attr(node: onnx.NodeProto, name: str, value) -> None:
    for i, a in enumerate(node.attribute):
        if a.name == name:
            del node.attribute[i]
            break
    node.attribute.append(helper.make_attribute(name, value))


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Fresh shape inference (old value_info dropped, since pruning changes channel counts)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    del m.graph.value_info[:]
    return clean.infer_shapes(m)


def prepare(model: onnx.ModelProto) -> onnx.ModelProto:
    """Copy of ``model`` with Constant nodes as initializers, weights not graph inputs, shapes inferred."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    keep_nodes = []
    for n in g.node:
        if n.op_type == "Constant" and len(n.output) == 1 and attr(n, "value") is not None:
            t = numpy_helper.to_array(attr(n, "value"))
            g.initializer.append(numpy_helper.from_array(t, n.output[0]))
        else:
            keep_nodes.append(n)
    del g.node[:]
    g.node.extend(keep_nodes)
    inits = {i.name for i in g.initializer}
    real_inputs = [i for i in g.input if i.name not in inits]
    del g.input[:]
    g.input.extend(real_inputs)
    return infer_shapes(m)


def _dims(vi: onnx.ValueInfoProto) -> list | None:
    t = vi.type.tensor_type
    if not t.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim]


class GraphView:
    """Index of a prepared model: initializer arrays, tensor shapes, producers and consumers."""

    def __init__(self, model: onnx.ModelProto):
        self.model = model
        g = model.graph
        self.graph = g
        self.inits = {i.name: i for i in g.initializer}
        self._arrays: dict[str, np.ndarray] = {}
        self.shapes: dict[str, list] = {}
        self.elem_type: dict[str, int] = {}
        for vi in list(g.input) + list(g.value_info) + list(g.output):
            d = _dims(vi)
            if d is not None:
                self.shapes[vi.name] = d
            self.elem_type[vi.name] = vi.type.tensor_type.elem_type
        for name, init in self.inits.items():
            self.shapes[name] = list(init.dims)
            self.elem_type[name] = init.data_type
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for n in g.node:
            for o in n.output:
                if o:
                    self.producer[o] = n
            for i in n.input:
                if i:
                    self.consumers.setdefault(i, []).append(n)
        self.graph_inputs = [i.name for i in g.input]
        self.graph_outputs = [o.name for o in g.output]
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)

    def const(self, name: str) -> np.ndarray | None:
        """The initializer's value, or None when ``name`` is computed at run time."""
        if not name or name not in self.inits:
            return None
        if name not in self._arrays:
            self._arrays[name] = numpy_helper.to_array(self.inits[name])
        return self._arrays[name]

    def shape(self, name: str) -> list | None:
        return self.shapes.get(name)

    def channels(self, name: str) -> int | None:
        """Size of axis 1 (channels / features) when the tensor is rank >= 2 and it is known."""
        s = self.shapes.get(name)
        if s is None or len(s) < 2 or not isinstance(s[1], int) or s[1] <= 0:
            return None
        return s[1]

    def node_label(self, node: onnx.NodeProto) -> str:
        return node.name or f"{node.op_type}->{node.output[0]}"


def node_names(model: onnx.ModelProto) -> set[str]:
    return {n.name for n in model.graph.node if n.name}


def unique_name(existing: set[str], base: str) -> str:
    name, k = base, 1
    while name in existing:
        name = f"{base}.{k}"
        k += 1
    existing.add(name)
    return name
