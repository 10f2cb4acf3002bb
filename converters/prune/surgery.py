"""Physical channel removal: rewrite weights, biases, BN parameters and shape constants.

``apply(view, an, kept_class)`` returns a new model in which every channel class marked False
is gone from every tensor that carries it. One cutter per op type (``CUTS``); ops whose output
shape simply follows the input (ReLU, pooling, Concat, Flatten, ...) need none. Tensor names
are unchanged, so the pruned and original graphs can be compared tensor by tensor.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import onnx
from onnx import numpy_helper

from .graph import GraphView, attr, infer_shapes, set_attr, unique_name
from .groups import Analysis, BROADCAST, _aligned_channel_axis, slice_params, sorted_range, split_sizes


class Cutter:
    """State of one surgery pass: kept channel indices per tensor and rewritten constants."""

    def __init__(self, view: GraphView, an: Analysis, kept_class: np.ndarray, model: onnx.ModelProto):
        self.view, self.an, self.model = view, an, model
        self.kept: dict[str, np.ndarray] = {}
        for t in an.cg.offset:
            mask = kept_class[an.tensor_classes(t)]
            if not mask.all():
                self.kept[t] = np.flatnonzero(mask)
        self.new_inits: dict[str, onnx.TensorProto] = {}
        self.uses: dict[str, int] = {}
        for n in model.graph.node:
            for i in n.input:
                self.uses[i] = self.uses.get(i, 0) + 1
        self.names = {i.name for i in model.graph.initializer} | set(view.producer) | set(view.graph_inputs)

    def keep(self, t: str) -> np.ndarray | None:
        return self.kept.get(t)

    def set_const(self, node: onnx.NodeProto, index: int, value: np.ndarray) -> None:
        """Give input ``index`` of ``node`` a new constant value (shared initializers are copied)."""
        old = node.input[index]
        name = old if self.uses.get(old, 0) == 1 and old not in self.view.graph_outputs \
            else unique_name(self.names, f"{old}.pruned")
        self.new_inits[name] = numpy_helper.from_array(np.ascontiguousarray(value), name)
        node.input[index] = name

    def const(self, node: onnx.NodeProto, index: int) -> np.ndarray | None:
        if len(node.input) <= index or not node.input[index]:
            return None
        name = node.input[index]
        if name in self.new_inits:
            return numpy_helper.to_array(self.new_inits[name])
        return self.view.const(name)


def _cut_conv(c: Cutter, node) -> None:
    x, y = node.input[0], node.output[0]
    ki, ko = c.keep(x), c.keep(y)
    w = c.const(node, 1)
    if int(attr(node, "group", 1)) != 1:            # depthwise: channels follow the input
        if ko is None:
            return
        set_attr(node, "group", int(len(ki)))
        c.set_const(node, 1, w[ko])
    else:
        if ko is not None:
            w = w[ko]
        if ki is not None:
            w = w[:, ki]
        if ko is not None or ki is not None:
            c.set_const(node, 1, w)
    b = c.const(node, 2)
    if b is not None and ko is not None:
        c.set_const(node, 2, b[ko])


def _cut_params(c: Cutter, node) -> None:
    ko = c.keep(node.output[0])
    if ko is None:
        return
    for k in range(1, len(node.input)):
        v = c.const(node, k)
        if v is not None and v.ndim == 1 and v.size > 1:
            c.set_const(node, k, v[ko])


def _cut_broadcast(c: Cutter, node) -> None:
    out = node.output[0]
    ko = c.keep(out)
    if ko is None:
        return
    rank, n = len(c.view.shape(out)), c.an.cg.count[out]
    for k in range(len(node.input)):
        v = c.const(node, k)
        if v is None:
            continue
        ax = _aligned_channel_axis(v.ndim, rank)
        if ax >= 0 and v.shape[ax] == n and n > 1:
            c.set_const(node, k, np.take(v, ko, axis=ax))


def _cut_gemm(c: Cutter, node) -> None:
    ki, ko = c.keep(node.input[0]), c.keep(node.output[0])
    if ki is None and ko is None:
        return
    w = c.const(node, 1)
    trans = node.op_type == "Gemm" and int(attr(node, "transB", 0))
    if trans:
        w = w.T
    if ki is not None:
        w = w[ki]
    if ko is not None:
        w = w[:, ko]
    c.set_const(node, 1, w.T if trans else w)
    b = c.const(node, 2)
    if b is not None and ko is not None and b.ndim >= 1 and b.shape[-1] > 1:
        c.set_const(node, 2, np.take(b, ko, axis=-1))


def _cut_reshape(c: Cutter, node) -> None:
    ko = c.keep(node.output[0])
    if ko is None:
        return
    s = c.const(node, 1).astype(np.int64).copy()
    if s[1] == -1 and (s == -1).sum() == 1 or s[1] == 0:
        return
    s[1] = len(ko)
    c.set_const(node, 1, s)


def _cut_split(c: Cutter, node) -> None:
    x = node.input[0]
    rank = len(c.view.shape(x))
    if int(attr(node, "axis", 0)) % rank != 1 or c.keep(x) is None:
        return
    sizes = split_sizes(c.view, node)
    new = [len(c.keep(o)) if o and c.keep(o) is not None else n for o, n in zip(node.output, sizes)]
    if c.view.opset >= 13:
        for i, a in enumerate(node.attribute):
            if a.name == "num_outputs":
                del node.attribute[i]
                break
        arr = np.asarray(new, dtype=np.int64)
        if len(node.input) > 1 and node.input[1]:
            c.set_const(node, 1, arr)
        else:
            name = unique_name(c.names, f"{node.output[0]}.split")
            c.new_inits[name] = numpy_helper.from_array(arr, name)
            node.input.append(name) if len(node.input) == 1 else node.input.__setitem__(1, name)
    else:
        set_attr(node, "split", new)


def _cut_slice(c: Cutter, node) -> None:
    ki = c.keep(node.input[0])
    if ki is None:
        return
    starts, ends, axes, _ = slice_params(c.view, node)
    if 1 not in axes:
        return
    k = axes.index(1)
    s, e = sorted_range(starts[k], ends[k], c.an.cg.count[node.input[0]])
    ns = int((ki < s).sum())
    ne = ns + int(((ki >= s) & (ki < e)).sum())
    starts[k], ends[k] = ns, ne
    if c.view.opset < 10:
        set_attr(node, "starts", [int(v) for v in starts])
        set_attr(node, "ends", [int(v) for v in ends])
    else:
        dtype = c.const(node, 1).dtype
        c.set_const(node, 1, np.asarray(starts, dtype=dtype))
        c.set_const(node, 2, np.asarray(ends, dtype=dtype))


def _cut_resize(c: Cutter, node) -> None:
    ko = c.keep(node.output[0])
    sizes = c.const(node, 3)
    if ko is None or sizes is None or sizes.size == 0:
        return
    sizes = sizes.copy()
    sizes[1] = len(ko)
    c.set_const(node, 3, sizes)


CUTS: dict[str, Callable[[Cutter, onnx.NodeProto], None]] = {
    "Conv": _cut_conv,
    "BatchNormalization": _cut_params,
    "InstanceNormalization": _cut_params,
    **{op: _cut_broadcast for op in BROADCAST},
    "Gemm": _cut_gemm,
    "MatMul": _cut_gemm,
    "Reshape": _cut_reshape,
    "Split": _cut_split,
    "Slice": _cut_slice,
    "Resize": _cut_resize,
}


def apply(an: Analysis, kept_class: np.ndarray) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """Remove every class with ``kept_class[k] == False``; returns (model, kept indices per cut tensor)."""
    m = onnx.ModelProto()
    m.CopyFrom(an.view.model)
    c = Cutter(an.view, an, kept_class, m)
    if c.kept:
        for node in m.graph.node:
            cut = CUTS.get(node.op_type)
            if cut is not None:
                cut(c, node)
    used = {i for n in m.graph.node for i in n.input}
    inits = [i for i in m.graph.initializer if i.name not in c.new_inits]
    inits += list(c.new_inits.values())
    del m.graph.initializer[:]
    m.graph.initializer.extend(i for i in inits if i.name in used)
    return infer_shapes(m), c.kept


def plain_kept(an: Analysis) -> np.ndarray:
    """All classes kept (the identity plan)."""
    n = int(an.class_of.max()) + 1 if len(an.class_of) else 0
    return np.ones(n, dtype=bool)

