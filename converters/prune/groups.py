"""Channel dependency analysis: which channels of which tensors must be cut together.

Every tensor with a known channel axis (axis 1: NC..., or [N, features]) contributes one
*atom* per channel. Each ONNX op that the pruner understands ties atoms of its inputs and
outputs (a table of one handler per op type, ``TIES``): a ReLU ties channel c of its input
to channel c of its output, a Concat ties input k's channel c to output channel offset_k + c,
a depthwise Conv ties input c to output c, a residual Add ties both inputs to the output,
a Flatten ties channel c to features c*HW .. c*HW+HW-1. Atoms tied together form a *class*
(one channel that leaves the model as a whole); classes touching exactly the same tensors form
a *group* (the unit a ratio is applied to, e.g. one conv's filters or one residual stream).

A node the table does not know, graph inputs and outputs, and excluded nodes *block* the atoms
they touch; a group with a blocked class is left whole and reported with the reasons.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import onnx

from .graph import WEIGHTED_OPS, GraphView, attr


class Unsupported(Exception):
    """Raised by a tie handler: this node's pattern is not understood (message = reason)."""


@dataclass
class Group:
    """Channels that are cut together. ``classes`` are class ids, ordered by channel position."""

    index: int
    name: str
    classes: list[int]
    tensors: list[str]
    producers: list[str] = field(default_factory=list)   # weighted nodes (Conv/Gemm/MatMul) producing it
    reasons: list[str] = field(default_factory=list)     # why it cannot be pruned ([] = prunable)

    @property
    def prunable(self) -> bool:
        return not self.reasons

    @property
    def size(self) -> int:
        return len(self.classes)


class ChannelGraph:
    """Atoms (tensor, channel) linked by union-find, plus block reasons per atom."""

    def __init__(self, view: GraphView):
        self.view = view
        self.offset: dict[str, int] = {}
        self.count: dict[str, int] = {}
        n = 0
        for name in view.shapes:
            if name in view.inits:
                continue
            c = view.channels(name)
            if c is not None and view.elem_type.get(name) in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16,
                                                              onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16):
                self.offset[name], self.count[name] = n, c
                n += c
        self.parent = np.arange(n)
        self.blocked: dict[int, list[str]] = {}

    def has(self, t: str) -> bool:
        return t in self.offset

    def atoms(self, t: str) -> np.ndarray:
        return np.arange(self.offset[t], self.offset[t] + self.count[t])

    def find(self, a: int) -> int:
        p = self.parent
        root = a
        while p[root] != root:
            root = p[root]
        while p[a] != root:
            p[a], a = root, p[a]
        return int(root)

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def tie(self, a: str, b: str) -> None:
        """Channel c of ``a`` is channel c of ``b``."""
        self.need(a), self.need(b)
        if self.count[a] != self.count[b]:
            raise Unsupported(f"channel counts differ ({a}: {self.count[a]}, {b}: {self.count[b]})")
        for x, y in zip(self.atoms(a), self.atoms(b)):
            self.union(int(x), int(y))

    def tie_index(self, a: str, ai, b: str, bi) -> None:
        """Channel ai[k] of ``a`` is channel bi[k] of ``b``."""
        self.need(a), self.need(b)
        for x, y in zip(np.asarray(ai), np.asarray(bi)):
            self.union(self.offset[a] + int(x), self.offset[b] + int(y))

    def need(self, t: str) -> None:
        if t not in self.offset:
            raise Unsupported(f"channel count of tensor {t!r} is unknown")

    def block(self, t: str, reason: str) -> None:
        if t in self.offset:
            for a in self.atoms(t):
                self.blocked.setdefault(int(a), []).append(reason)


# --- tie handlers: one per op type -----------------------------------------------------

def _data_inputs(view: GraphView, node) -> list[str]:
    return [i for i in node.input if i and view.const(i) is None]


def _tie_unary(cg: ChannelGraph, view: GraphView, node) -> None:
    """Per-channel ops: output channel c depends only on input channel c."""
    data = _data_inputs(view, node)
    if len(data) != 1:
        raise Unsupported(f"{node.op_type} with {len(data)} run-time inputs")
    for i in node.input[1:]:
        if i and view.const(i) is not None and view.const(i).size > 1:
            raise Unsupported(f"{node.op_type} with a non-scalar constant input {i!r}")
    cg.tie(data[0], node.output[0])
    if node.op_type == "MaxPool" and len(node.output) > 1 and node.output[1]:
        cg.tie(data[0], node.output[1])
    if node.op_type == "Dropout" and len(node.output) > 1 and node.output[1] and view.consumers.get(node.output[1]):
        raise Unsupported("Dropout mask is used")


def _tie_per_channel_params(cg: ChannelGraph, view: GraphView, node) -> None:
    """BatchNormalization / InstanceNormalization: one parameter per channel, all constant."""
    x, y = node.input[0], node.output[0]
    for p in node.input[1:]:
        if p and view.const(p) is None:
            raise Unsupported(f"{node.op_type} parameter {p!r} is not a constant")
    if len([o for o in node.output if o]) > 1:
        raise Unsupported(f"{node.op_type} in training mode")
    cg.tie(x, y)


def _aligned_channel_axis(ndim_in: int, rank_out: int) -> int:
    """Index in an input of ``ndim_in`` dims broadcasting onto axis 1 of a rank ``rank_out`` output."""
    return ndim_in - rank_out + 1


def _tie_broadcast(cg: ChannelGraph, view: GraphView, node) -> None:
    """Add/Mul/Sub/Div/...: inputs whose channel axis has the output's size are the same channels."""
    out = node.output[0]
    cg.need(out)
    rank, c = len(view.shape(out)), cg.count[out]
    for i in node.input:
        const = view.const(i)
        shape = list(const.shape) if const is not None else view.shape(i)
        if shape is None:
            raise Unsupported(f"shape of {i!r} is unknown")
        ax = _aligned_channel_axis(len(shape), rank)
        if ax < 0 or shape[ax] == 1:
            continue
        if shape[ax] != c:
            raise Unsupported(f"input {i!r} does not broadcast on channels")
        if const is None:
            if len(shape) != rank:
                raise Unsupported(f"input {i!r} has rank {len(shape)}, output rank {rank}")
            cg.tie(i, out)


def _tie_conv(cg: ChannelGraph, view: GraphView, node) -> None:
    w = view.const(node.input[1]) if len(node.input) > 1 else None
    if w is None:
        raise Unsupported("Conv weight is not a constant")
    if len(node.input) > 2 and node.input[2] and view.const(node.input[2]) is None:
        raise Unsupported("Conv bias is not a constant")
    group = int(attr(node, "group", 1))
    if group == 1:
        return
    cin_per_group = w.shape[1]
    if cin_per_group != 1:
        raise Unsupported(f"grouped convolution (group={group}) that is not depthwise")
    mult = w.shape[0] // group
    x, y = node.input[0], node.output[0]
    cg.need(x), cg.need(y)
    cin = np.repeat(np.arange(group), mult)
    cg.tie_index(x, cin, y, np.arange(group * mult))


def _tie_gemm(cg: ChannelGraph, view: GraphView, node) -> None:
    if int(attr(node, "transA", 0)):
        raise Unsupported("Gemm with transA=1")
    if view.const(node.input[1]) is None:
        raise Unsupported("Gemm weight is not a constant")
    if len(node.input) > 2 and node.input[2] and view.const(node.input[2]) is None:
        raise Unsupported("Gemm bias is not a constant")


def _tie_matmul(cg: ChannelGraph, view: GraphView, node) -> None:
    b = view.const(node.input[1])
    sa = view.shape(node.input[0])
    if b is None or b.ndim != 2 or sa is None or len(sa) != 2:
        raise Unsupported("MatMul other than [N, K] x constant [K, M]")


def _tie_flatten(cg: ChannelGraph, view: GraphView, node) -> None:
    x, y = node.input[0], node.output[0]
    s = view.shape(x)
    if int(attr(node, "axis", 1)) != 1 or s is None:
        raise Unsupported("Flatten not on axis 1")
    _tie_flatten_like(cg, s, x, y)


def _tie_flatten_like(cg: ChannelGraph, s: list, x: str, y: str) -> None:
    spatial = s[2:]
    if not all(isinstance(d, int) and d > 0 for d in spatial):
        raise Unsupported("flattened spatial size is not static")
    hw = int(np.prod(spatial)) if spatial else 1
    cg.need(x), cg.need(y)
    c = cg.count[x]
    if cg.count[y] != c * hw:
        raise Unsupported("flattened feature count does not match channels x spatial")
    cg.tie_index(x, np.repeat(np.arange(c), hw), y, np.arange(c * hw))


def _tie_reshape(cg: ChannelGraph, view: GraphView, node) -> None:
    x, y = node.input[0], node.output[0]
    si, so = view.shape(x), view.shape(y)
    if view.const(node.input[1]) is None or si is None or so is None or len(si) < 2 or len(so) < 2:
        raise Unsupported("Reshape with a run-time shape")
    if si[0] != so[0] and not (isinstance(si[0], int) and si[0] == 1 and so[0] == 1):
        raise Unsupported("Reshape changes the batch axis")
    if si[1] == so[1] and isinstance(si[1], int):
        rest_i, rest_o = si[2:], so[2:]
        if all(isinstance(d, int) for d in rest_i + rest_o) and np.prod(rest_i) == np.prod(rest_o):
            cg.tie(x, y)
            return
    if len(so) == 2:
        _tie_flatten_like(cg, si, x, y)
        return
    raise Unsupported(f"Reshape {si} -> {so} moves the channel axis")


def _axes(view: GraphView, node, input_index: int) -> list[int] | None:
    a = attr(node, "axes")
    if a is None and len(node.input) > input_index and node.input[input_index]:
        c = view.const(node.input[input_index])
        if c is None:
            raise Unsupported(f"{node.op_type} axes are not constant")
        a = c.tolist()
    return None if a is None else [int(v) for v in a]


def _tie_squeeze(cg: ChannelGraph, view: GraphView, node) -> None:
    axes = _axes(view, node, 1)
    rank = len(view.shape(node.output[0] if node.op_type == "Unsqueeze" else node.input[0]) or [])
    if axes is None or rank == 0:
        raise Unsupported(f"{node.op_type} without constant axes")
    axes = [a % rank for a in axes]
    if 0 in axes or 1 in axes:
        raise Unsupported(f"{node.op_type} on the batch or channel axis")
    cg.tie(node.input[0], node.output[0])


def _tie_reduce(cg: ChannelGraph, view: GraphView, node) -> None:
    x, y = node.input[0], node.output[0]
    rank = len(view.shape(x) or [])
    axes = _axes(view, node, 1)
    if not axes or rank == 0:
        raise Unsupported(f"{node.op_type} over all axes")
    axes = [a % rank for a in axes]
    if 1 in axes or (0 in axes and not int(attr(node, "keepdims", 1))):
        raise Unsupported(f"{node.op_type} across channels")
    cg.tie(x, y)


def _tie_softmax(cg: ChannelGraph, view: GraphView, node) -> None:
    rank = len(view.shape(node.input[0]) or [])
    default = -1 if view.opset >= 13 else 1
    axis = int(attr(node, "axis", default)) % max(rank, 1)
    if axis <= 1 if view.opset < 13 else axis == 1:
        raise Unsupported(f"{node.op_type} across channels")
    cg.tie(node.input[0], node.output[0])


def _tie_transpose(cg: ChannelGraph, view: GraphView, node) -> None:
    perm = attr(node, "perm")
    if perm is None or list(perm[:2]) != [0, 1]:
        raise Unsupported("Transpose moves the channel axis")
    cg.tie(node.input[0], node.output[0])


def _tie_concat(cg: ChannelGraph, view: GraphView, node) -> None:
    y = node.output[0]
    rank = len(view.shape(y) or [])
    axis = int(attr(node, "axis", 1)) % max(rank, 1)
    ins = [i for i in node.input if i]
    if any(view.const(i) is not None for i in ins):
        raise Unsupported("Concat with a constant input")
    if axis != 1:
        for i in ins:
            cg.tie(i, y)
        return
    off = 0
    for i in ins:
        cg.need(i)
        c = cg.count[i]
        cg.tie_index(i, np.arange(c), y, np.arange(off, off + c))
        off += c


def split_sizes(view: GraphView, node) -> list[int] | None:
    """Explicit Split sizes (attribute, input, or equal split), or None when unknown."""
    s = attr(node, "split")
    if s is None and len(node.input) > 1 and node.input[1]:
        c = view.const(node.input[1])
        if c is None:
            return None
        s = c.tolist()
    if s is None:
        shapes = [view.shape(o) for o in node.output]
        rank = len(view.shape(node.input[0]) or [])
        axis = int(attr(node, "axis", 0)) % max(rank, 1)
        if any(sh is None or not isinstance(sh[axis], int) for sh in shapes):
            return None
        s = [sh[axis] for sh in shapes]
    return [int(v) for v in s]


def _tie_split(cg: ChannelGraph, view: GraphView, node) -> None:
    x = node.input[0]
    rank = len(view.shape(x) or [])
    axis = int(attr(node, "axis", 0)) % max(rank, 1)
    outs = list(node.output)
    if axis != 1:
        for o in outs:
            if o:
                cg.tie(x, o)
        return
    sizes = split_sizes(view, node)
    if sizes is None:
        raise Unsupported("Split sizes are not static")
    off = 0
    for o, n in zip(outs, sizes):
        if o:
            cg.tie_index(x, np.arange(off, off + n), o, np.arange(n))
        off += n


def slice_params(view: GraphView, node) -> tuple[list, list, list, list]:
    """(starts, ends, axes, steps) of a Slice as Python lists; Unsupported if not constant."""
    if view.opset < 10:
        starts, ends = attr(node, "starts"), attr(node, "ends")
        axes, steps = attr(node, "axes"), None
    else:
        vals = []
        for k in range(1, 5):
            name = node.input[k] if len(node.input) > k else ""
            if name and view.const(name) is None:
                raise Unsupported("Slice bounds are not constant")
            vals.append(view.const(name).tolist() if name else None)
        starts, ends, axes, steps = vals
    rank = len(view.shape(node.input[0]) or [])
    axes = list(range(len(starts))) if axes is None else [a % rank for a in axes]
    steps = [1] * len(starts) if steps is None else steps
    return list(starts), list(ends), axes, list(steps)


def _tie_slice(cg: ChannelGraph, view: GraphView, node) -> None:
    x, y = node.input[0], node.output[0]
    starts, ends, axes, steps = slice_params(view, node)
    if 0 in axes:
        raise Unsupported("Slice on the batch axis")
    if 1 not in axes:
        cg.tie(x, y)
        return
    k = axes.index(1)
    if steps[k] != 1:
        raise Unsupported("Slice on channels with a step")
    cg.need(x), cg.need(y)
    c = cg.count[x]
    s, e = sorted_range(starts[k], ends[k], c)
    cg.tie_index(x, np.arange(s, e), y, np.arange(e - s))


def sorted_range(start: int, end: int, c: int) -> tuple[int, int]:
    """Clamp ONNX slice bounds (step 1) on an axis of size c."""
    s = start + c if start < 0 else start
    e = end + c if end < 0 else end
    s, e = min(max(s, 0), c), min(max(e, 0), c)
    return s, max(s, e)


def _tie_pad(cg: ChannelGraph, view: GraphView, node) -> None:
    pads = attr(node, "pads")
    if pads is None and len(node.input) > 1:
        c = view.const(node.input[1])
        if c is None:
            raise Unsupported("Pad amounts are not constant")
        pads = c.tolist()
    if len(node.input) > 3 and node.input[3]:
        raise Unsupported("Pad with axes")
    rank = len(view.shape(node.input[0]) or [])
    if pads is None or rank < 2 or pads[1] or pads[rank + 1] or pads[0] or pads[rank]:
        raise Unsupported("Pad on the batch or channel axis")
    cg.tie(node.input[0], node.output[0])


def _tie_resize(cg: ChannelGraph, view: GraphView, node) -> None:
    ins = list(node.input) + [""] * 4
    scales = view.const(ins[2]) if ins[2] else (view.const(ins[1]) if node.op_type == "Upsample" else None)
    sizes = view.const(ins[3]) if ins[3] else None
    if ins[3] and sizes is None or ins[2] and scales is None and sizes is None:
        raise Unsupported("Resize target is not constant")
    if scales is not None and scales.size and (scales.size < 2 or scales[0] != 1 or scales[1] != 1):
        raise Unsupported("Resize scales the batch or channel axis")
    if attr(node, "axes") is not None:
        raise Unsupported("Resize with axes")
    cg.tie(node.input[0], node.output[0])


UNARY = ("Relu", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Elu", "Selu", "Celu", "Softplus",
         "Softsign", "Mish", "Gelu", "Erf", "Exp", "Log", "Abs", "Neg", "Sqrt", "Reciprocal", "Floor", "Ceil",
         "Round", "Identity", "Dropout", "Clip", "MaxPool", "AveragePool", "LpPool", "GlobalAveragePool",
         "GlobalMaxPool", "GlobalLpPool", "ThresholdedRelu", "Shrink", "Sin", "Cos")
BROADCAST = ("Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "PRelu")

TIES: dict[str, Callable[[ChannelGraph, GraphView, onnx.NodeProto], None]] = {
    **{op: _tie_unary for op in UNARY},
    **{op: _tie_broadcast for op in BROADCAST},
    "BatchNormalization": _tie_per_channel_params,
    "InstanceNormalization": _tie_per_channel_params,
    "Conv": _tie_conv,
    "Gemm": _tie_gemm,
    "MatMul": _tie_matmul,
    "Flatten": _tie_flatten,
    "Reshape": _tie_reshape,
    "Squeeze": _tie_squeeze,
    "Unsqueeze": _tie_squeeze,
    "ReduceMean": _tie_reduce, "ReduceMax": _tie_reduce, "ReduceMin": _tie_reduce, "ReduceSum": _tie_reduce,
    "ReduceL2": _tie_reduce, "ReduceL1": _tie_reduce,
    "Softmax": _tie_softmax, "LogSoftmax": _tie_softmax,
    "Transpose": _tie_transpose,
    "Concat": _tie_concat,
    "Split": _tie_split,
    "Slice": _tie_slice,
    "Pad": _tie_pad,
    "Resize": _tie_resize, "Upsample": _tie_resize,
}


@dataclass
class Analysis:
    """Result of ``analyze``: the atom graph, class id per atom, and the groups."""

    view: GraphView
    cg: ChannelGraph
    class_of: np.ndarray             # atom -> class id (0..n_classes-1)
    groups: list[Group]
    node_reasons: dict[str, str]     # node label -> why it blocks (unknown pattern, excluded, ...)

    def tensor_classes(self, t: str) -> np.ndarray:
        return self.class_of[self.cg.atoms(t)]


def _subgraph_inputs(node) -> set[str]:
    names: set[str] = set()
    for a in node.attribute:
        for g in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
            for n in g.node:
                names.update(n.input)
                names |= _subgraph_inputs(n)
    return names


def analyze(view: GraphView, exclude: tuple[str, ...] = ()) -> Analysis:
    """Build the channel dependency groups of a prepared model (see module docstring)."""
    cg = ChannelGraph(view)
    node_reasons: dict[str, str] = {}
    excluded = set(exclude)
    for node in view.graph.node:
        label = view.node_label(node)
        io = [t for t in list(node.input) + list(node.output) if t]
        handler = TIES.get(node.op_type) if node.domain in ("", "ai.onnx") else None
        reason = None
        if node.name in excluded:
            reason = f"{label} is excluded by the user"
        elif handler is None:
            reason = f"{node.op_type} node {label} is not understood by the pruner"
        else:
            try:
                handler(cg, view, node)
            except Unsupported as exc:
                reason = f"{node.op_type} node {label}: {exc}"
            except Exception as exc:   # a malformed pattern blocks its channels, never crashes pruning
                reason = f"{node.op_type} node {label} could not be analysed ({type(exc).__name__}: {exc})"
        sub = _subgraph_inputs(node)
        if sub:
            reason = reason or f"{node.op_type} node {label} has a subgraph"
            io += [t for t in sub if cg.has(t)]
        if reason:
            node_reasons[label] = reason
            for t in io:
                cg.block(t, reason)
    for t in view.graph_inputs:
        cg.block(t, f"graph input {t!r} keeps its channels")
    for t in view.graph_outputs:
        cg.block(t, f"graph output {t!r} keeps its channels")
    return _build_groups(view, cg, node_reasons)


def _build_groups(view: GraphView, cg: ChannelGraph, node_reasons: dict[str, str]) -> Analysis:
    n = len(cg.parent)
    roots = np.array([cg.find(a) for a in range(n)], dtype=np.int64)
    uniq, class_of = np.unique(roots, return_inverse=True)
    n_classes = len(uniq)
    members: list[set[str]] = [set() for _ in range(n_classes)]
    order = sorted(cg.offset, key=cg.offset.get)   # tensors in graph order of first appearance
    for t in order:
        for k in set(class_of[cg.atoms(t)].tolist()):
            members[k].add(t)
    reasons: list[set[str]] = [set() for _ in range(n_classes)]
    for atom, rs in cg.blocked.items():
        reasons[class_of[atom]].update(rs)
    by_key: dict[frozenset, list[int]] = {}
    for k in range(n_classes):
        by_key.setdefault(frozenset(members[k]), []).append(k)
    topo = {}
    for i, node in enumerate(view.graph.node):
        for o in node.output:
            topo.setdefault(o, i)
    groups = []
    for key, classes in by_key.items():
        tensors = sorted(key, key=lambda t: (topo.get(t, -1), t))
        first = tensors[0]
        pos = {int(c): j for j, c in enumerate(class_of[cg.atoms(first)].tolist())}
        classes = sorted(classes, key=lambda c: pos.get(c, 1 << 30))
        producers = []
        for t in tensors:
            p = view.producer.get(t)
            if p is not None and p.op_type in WEIGHTED_OPS and view.node_label(p) not in producers:
                producers.append(view.node_label(p))
        rs = sorted(set().union(*(reasons[c] for c in classes)))
        if not rs and not producers:
            rs = ["no Conv/Gemm/MatMul produces these channels"]
        name = producers[0] if producers else first
        groups.append(Group(len(groups), name, classes, tensors, producers, rs))
    groups.sort(key=lambda g: topo.get(g.tensors[0], -1))
    seen: dict[str, int] = {}
    for i, g in enumerate(groups):
        g.index = i
        seen[g.name] = seen.get(g.name, 0) + 1
        if seen[g.name] > 1:
            g.name = f"{g.name}#{seen[g.name]}"
    return Analysis(view, cg, class_of, groups, node_reasons)
