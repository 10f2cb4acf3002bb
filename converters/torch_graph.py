"""An ONNX graph as a trainable ``torch.nn.Module`` (needs the optional ``[train]`` extra).

``TorchGraph(model)`` interprets the graph node by node with one handler per ONNX op (``OPS``,
like the emitters' tables); an op not in the table is refused by name when the module is built.
The float initializers read as Conv/Gemm/MatMul weights and biases (and BatchNormalization
scale/bias) become ``nn.Parameter``s; every other initializer is a constant. ``write_back(model)``
returns a copy of ``model`` with the trained values in those initializers, names and shapes
unchanged.

Contracts: graphs of static rank with constant shape arguments (run ``clean_model`` first so
shape sub-graphs are folded); BatchNormalization runs with its stored statistics (inference
form); a ``Reshape`` whose target starts with the graph's static batch size keeps the batch of
its input, so a batch-1 export trains on batches. Spatial size may differ from the export's
when no op depends on it (e.g. MobileNetV2 trains at 160 px, a Flatten -> Gemm head cannot).
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgeinfer.errors import EdgeInferError

try:
    import torch
    import torch.nn.functional as F
except ModuleNotFoundError as exc:  # pragma: no cover - exercised without the extra
    raise EdgeInferError("distillation needs PyTorch: pip install 'edgeinfer[train]' "
                         "(or use --recover lsq)") from exc

Handler = Callable[["Node", list], list]
OPS: dict[str, Handler] = {}
TRAINABLE_INPUTS = {"Conv": (1, 2), "ConvTranspose": (1, 2), "Gemm": (1, 2), "MatMul": (1,),
                    "BatchNormalization": (1, 2)}


def op(*names: str):
    def register(fn: Handler) -> Handler:
        for n in names:
            OPS[n] = fn
        return fn
    return register


class Node:
    """One ONNX node, its attributes decoded once (``a(name, default)``)."""

    def __init__(self, proto: onnx.NodeProto, batch: int | None):
        self.proto, self.op_type, self.batch = proto, proto.op_type, batch
        self.attrs = {a.name: helper.get_attribute_value(a) for a in proto.attribute}
        self.const: dict[int, np.ndarray] = {}     # constant inputs by index, as numpy

    def a(self, name: str, default=None):
        v = self.attrs.get(name, default)
        return v.decode() if isinstance(v, bytes) else v

    def c(self, index: int):
        """Constant input ``index`` as numpy (None if absent or computed at run time)."""
        return self.const.get(index)


# --- handlers: one per op -------------------------------------------------------------------

def _pads_2d(n: Node, x, k_hw, strides, dil) -> tuple[list[int], bool]:
    """(F.pad order [l, r, t, b], symmetric) for a Conv/Pool node's padding on input ``x``."""
    auto = n.a("auto_pad", "NOTSET")
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        tot = [max((-(-int(s) // st) - 1) * st + (k - 1) * d + 1 - int(s), 0)
               for s, k, st, d in zip(x.shape[2:], k_hw, strides, dil)]
        lo = [t // 2 if auto == "SAME_UPPER" else t - t // 2 for t in tot]
        p = [lo[0], tot[0] - lo[0], lo[1], tot[1] - lo[1]]
    elif auto == "VALID":
        p = [0, 0, 0, 0]
    else:
        pads = list(n.a("pads", [0] * (2 * len(k_hw))))
        half = len(pads) // 2
        p = []
        for i in range(half):
            p += [pads[i], pads[i + half]]
    t, b, left, r = p[0], p[1], p[2], p[3]   # p is [top, bottom, left, right] here
    return [left, r, t, b], (left == r and t == b)


@op("Conv")
def _conv(n: Node, x):
    w, b = x[1], (x[2] if len(x) > 2 else None)
    k_hw = list(w.shape[2:])
    if len(k_hw) != 2:
        raise EdgeInferError(f"{n.proto.name}: only 2-D Conv is trainable here")
    strides, dil = list(n.a("strides", [1, 1])), list(n.a("dilations", [1, 1]))
    pad, sym = _pads_2d(n, x[0], k_hw, strides, dil)
    inp = x[0] if sym else F.pad(x[0], pad)
    return [F.conv2d(inp, w, b, strides, (pad[2], pad[0]) if sym else 0, dil, int(n.a("group", 1)))]


@op("BatchNormalization")
def _bn(n: Node, x):
    return [F.batch_norm(x[0], x[3], x[4], x[1], x[2], False, 0.0, float(n.a("epsilon", 1e-5)))]


@op("Gemm")
def _gemm(n: Node, x):
    a = x[0].t() if n.a("transA", 0) else x[0]
    b = x[1].t() if n.a("transB", 0) else x[1]
    y = float(n.a("alpha", 1.0)) * (a @ b)
    if len(x) > 2 and x[2] is not None:
        y = y + float(n.a("beta", 1.0)) * x[2]
    return [y]


@op("MatMul")
def _matmul(n: Node, x):
    return [torch.matmul(x[0], x[1])]


def _unary(fn):
    return lambda n, x: [fn(x[0])]


OPS.update({
    "Relu": _unary(F.relu), "Sigmoid": _unary(torch.sigmoid), "Tanh": _unary(torch.tanh),
    "Identity": _unary(lambda t: t), "Dropout": _unary(lambda t: t), "Neg": _unary(torch.neg),
    "Exp": _unary(torch.exp), "Sqrt": _unary(torch.sqrt), "Abs": _unary(torch.abs),
    "HardSwish": _unary(F.hardswish), "Erf": _unary(torch.erf),
})


@op("Clip")
def _clip(n: Node, x):
    lo = x[1] if len(x) > 1 and x[1] is not None else n.a("min")
    hi = x[2] if len(x) > 2 and x[2] is not None else n.a("max")
    lo = float(lo) if lo is not None else None
    hi = float(hi) if hi is not None else None
    if lo == 0.0 and hi == 6.0:
        return [F.relu6(x[0])]
    return [torch.clamp(x[0], lo, hi)]


@op("LeakyRelu")
def _leaky(n: Node, x):
    return [F.leaky_relu(x[0], float(n.a("alpha", 0.01)))]


@op("HardSigmoid")
def _hsig(n: Node, x):
    return [torch.clamp(float(n.a("alpha", 0.2)) * x[0] + float(n.a("beta", 0.5)), 0.0, 1.0)]


@op("Add")
def _add(n: Node, x):
    return [x[0] + x[1]]


@op("Sub")
def _sub(n: Node, x):
    return [x[0] - x[1]]


@op("Mul")
def _mul(n: Node, x):
    return [x[0] * x[1]]


@op("Div")
def _div(n: Node, x):
    return [x[0] / x[1]]


@op("GlobalAveragePool")
def _gap(n: Node, x):
    return [x[0].mean(dim=tuple(range(2, x[0].dim())), keepdim=True)]


@op("GlobalMaxPool")
def _gmp(n: Node, x):
    return [x[0].amax(dim=tuple(range(2, x[0].dim())), keepdim=True)]


def _pool(n: Node, x, fn):
    k = list(n.a("kernel_shape"))
    strides = list(n.a("strides", [1] * len(k)))
    if len(k) != 2 or list(n.a("dilations", [1, 1])) != [1, 1]:
        raise EdgeInferError(f"{n.proto.name}: only 2-D undilated {n.op_type} is trainable here")
    pad, sym = _pads_2d(n, x[0], k, strides, [1, 1])
    return fn(x[0], k, strides, pad, sym)


@op("MaxPool")
def _maxpool(n: Node, x):
    def run(t, k, s, pad, sym):
        if not sym or pad[0] > k[1] // 2 or pad[2] > k[0] // 2:
            t, pad = F.pad(t, pad, value=float("-inf")), [0, 0, 0, 0]
        return [F.max_pool2d(t, k, s, (pad[2], pad[0]), ceil_mode=bool(n.a("ceil_mode", 0)))]
    return _pool(n, x, run)


@op("AveragePool")
def _avgpool(n: Node, x):
    include = bool(n.a("count_include_pad", 0))

    def run(t, k, s, pad, sym):
        ceil = bool(n.a("ceil_mode", 0))
        y = F.avg_pool2d(F.pad(t, pad), k, s, 0, ceil_mode=ceil, count_include_pad=True)
        if include or not any(pad):
            return [y]
        ones = F.pad(torch.ones_like(t[:1, :1]), pad)            # divide by the real (unpadded) count
        return [y / F.avg_pool2d(ones, k, s, 0, ceil_mode=ceil, count_include_pad=True)]
    return _pool(n, x, run)


@op("Flatten")
def _flatten(n: Node, x):
    axis = int(n.a("axis", 1))
    axis = axis if axis >= 0 else x[0].dim() + axis
    lead = int(np.prod(x[0].shape[:axis])) if axis else 1
    return [x[0].reshape(lead, -1)]


@op("Reshape")
def _reshape(n: Node, x):
    shape = n.c(1)
    if shape is None:
        raise EdgeInferError(f"{n.proto.name}: Reshape with a run-time shape is not trainable here (clean the graph first)")
    shape = [int(s) for s in shape]
    if shape and n.batch is not None and (shape[0] == n.batch or shape[0] == 0):
        shape[0] = x[0].shape[0]            # the batch follows the input (batch-1 exports)
    shape = [x[0].shape[i] if s == 0 and not n.a("allowzero", 0) else s for i, s in enumerate(shape)]
    return [x[0].reshape(shape)]


@op("Transpose")
def _transpose(n: Node, x):
    perm = n.a("perm") or list(range(x[0].dim()))[::-1]
    return [x[0].permute(*perm)]


@op("Concat")
def _concat(n: Node, x):
    return [torch.cat([t for t in x if t is not None], dim=int(n.a("axis")))]


@op("Softmax")
def _softmax(n: Node, x):
    return [torch.softmax(x[0], dim=int(n.a("axis", -1)))]


def _axes(n: Node, x, index: int = 1):
    axes = n.c(index) if len(x) > index else None
    axes = axes if axes is not None else n.a("axes")
    return None if axes is None else [int(a) for a in np.atleast_1d(axes)]


@op("Squeeze")
def _squeeze(n: Node, x):
    axes = _axes(n, x)
    t = x[0]
    if axes is None:
        return [t.squeeze()]
    for a in sorted((a % t.dim() for a in axes), reverse=True):
        t = t.squeeze(a)
    return [t]


@op("Unsqueeze")
def _unsqueeze(n: Node, x):
    t = x[0]
    rank = t.dim() + len(_axes(n, x))
    for a in sorted(a % rank for a in _axes(n, x)):
        t = t.unsqueeze(a)
    return [t]


@op("ReduceMean")
def _reduce_mean(n: Node, x):
    axes = _axes(n, x)
    keep = bool(n.a("keepdims", 1))
    return [x[0].mean(dim=tuple(axes) if axes else tuple(range(x[0].dim())), keepdim=keep)]


@op("Resize")
def _resize(n: Node, x):
    mode = n.a("mode", "nearest")
    scales = n.c(2) if len(x) > 2 else None
    sizes = n.c(3) if len(x) > 3 else None
    if mode != "nearest" or scales is None or len(scales) == 0 or sizes is not None:
        raise EdgeInferError(f"{n.proto.name}: only nearest Resize with constant scales is trainable here")
    return [F.interpolate(x[0], scale_factor=[float(s) for s in scales[2:]], mode="nearest")]


@op("Slice")
def _slice(n: Node, x):
    starts, ends = n.c(1), n.c(2)
    if starts is None or ends is None:
        raise EdgeInferError(f"{n.proto.name}: Slice with run-time bounds is not trainable here")
    t = x[0]
    axes = n.c(3) if len(x) > 3 and n.c(3) is not None else range(len(starts))
    steps = n.c(4) if len(x) > 4 and n.c(4) is not None else [1] * len(starts)
    index = [slice(None)] * t.dim()
    for s, e, a, st in zip(starts, ends, axes, steps):
        if int(st) < 1:
            raise EdgeInferError(f"{n.proto.name}: Slice with step {int(st)} is not trainable here")
        size = t.shape[int(a)]
        index[int(a)] = slice(max(min(int(s), size), -size), max(min(int(e), size), -size - 1), int(st))
    return [t[tuple(index)]]


@op("Constant")
def _constant(n: Node, x):
    return [torch.from_numpy(numpy_helper.to_array(n.attrs["value"]).copy())]


# --- the module ------------------------------------------------------------------------------

def _graph_batch(model: onnx.ModelProto) -> int | None:
    dims = model.graph.input[0].type.tensor_type.shape.dim
    return dims[0].dim_value if dims and dims[0].HasField("dim_value") else None


class TorchGraph(torch.nn.Module):
    """``forward(x) -> list of graph outputs``; ``features(x, names)`` also returns inner tensors."""

    def __init__(self, model: onnx.ModelProto):
        super().__init__()
        g = model.graph
        unknown = sorted({n.op_type for n in g.node if n.op_type not in OPS or n.domain not in ("", "ai.onnx")})
        if unknown:
            raise EdgeInferError(f"distillation cannot train ops {', '.join(unknown)}; use --recover lsq")
        inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
        trainable = {nd.input[i] for nd in g.node for i in TRAINABLE_INPUTS.get(nd.op_type, ())
                     if i < len(nd.input) and nd.input[i] in inits and inits[nd.input[i]].dtype == np.float32}
        self.params = torch.nn.ParameterList()
        self.param_names: list[str] = []
        self._values: dict[str, object] = {}
        for name, arr in inits.items():
            if name in trainable:
                p = torch.nn.Parameter(torch.from_numpy(arr.copy()))
                self.params.append(p)
                self.param_names.append(name)
                self._values[name] = p
            else:
                self._values[name] = torch.from_numpy(arr.copy()) if arr.dtype.kind in "fiub" else arr
        batch = _graph_batch(model)
        self.nodes: list[Node] = []
        for proto in g.node:
            nd = Node(proto, batch)
            for i, name in enumerate(proto.input):
                if name in inits:
                    nd.const[i] = inits[name]
            self.nodes.append(nd)
        self.input_name = g.input[0].name
        self.output_names = [o.name for o in g.output]

    def train_affine_only(self) -> int:
        """Train a per-output-channel scale of every weight (the folded BatchNorm's affine, FixRes
        style) and the biases instead of whole weights: ``params`` become the biases and one scale
        vector per weight (ones: the module computes the same until trained). Returns the trainable count."""
        axis = {}
        for nd in self.nodes:
            ins = nd.proto.input
            if nd.op_type in ("Conv", "ConvTranspose") and len(ins) > 1:
                axis[ins[1]] = 0 if nd.op_type == "Conv" else 1
            elif nd.op_type == "Gemm" and len(ins) > 1:
                axis[ins[1]] = 0 if nd.a("transB", 0) else 1
            elif nd.op_type == "MatMul" and len(ins) > 1:
                axis[ins[1]] = -1
        params, names = [], []
        self._scaled: dict[str, tuple] = {}
        for name, p in zip(self.param_names, self.params):
            if p.dim() < 2 or name not in axis:
                params.append(p)
                names.append(name)
                continue
            ax = axis[name] % p.dim()
            shape = [1] * p.dim()
            shape[ax] = p.shape[ax]
            s = torch.nn.Parameter(torch.ones(shape))
            base = p.detach().clone()
            self._scaled[name] = (base, s)
            self._values[name] = base
            params.append(s)
            names.append(f"{name}::scale")
        self.params = torch.nn.ParameterList(params)
        self.param_names = names
        return sum(int(p.numel()) for p in params)

    def features(self, x, names=()):
        """(graph outputs, {name: tensor} for ``names``)."""
        env = self.run_nodes({self.input_name: x}, 0, len(self.nodes))
        return [env[o] for o in self.output_names], {k: env[k] for k in names}

    def run_nodes(self, inputs: dict, start: int, stop: int) -> dict:
        """Run ``nodes[start:stop]`` on ``inputs`` (tensor name -> value) and the initializers;
        returns every tensor then known (a span of the graph, e.g. one block)."""
        env = dict(self._values)
        for name, (base, scale) in getattr(self, "_scaled", {}).items():
            env[name] = base * scale
        env.update(inputs)
        for nd in self.nodes[start:stop]:
            ins = [env[i] if i else None for i in nd.proto.input]
            outs = OPS[nd.op_type](nd, ins)
            for name, val in zip(nd.proto.output, outs):
                if name:
                    env[name] = val
        return env

    def forward(self, x):
        return self.features(x)[0]

    def write_back(self, model: onnx.ModelProto) -> onnx.ModelProto:
        """Copy of ``model`` whose trainable initializers hold this module's current values."""
        out = onnx.ModelProto()
        out.CopyFrom(model)
        values = {n: p.detach().cpu().numpy().astype(np.float32) for n, p in zip(self.param_names, self.params)}
        for name, (base, scale) in getattr(self, "_scaled", {}).items():
            values[name] = (base * scale).detach().cpu().numpy().astype(np.float32)
        for init in out.graph.initializer:
            if init.name in values:
                init.CopyFrom(numpy_helper.from_array(values[init.name].reshape(tuple(init.dims)), init.name))
        return out
