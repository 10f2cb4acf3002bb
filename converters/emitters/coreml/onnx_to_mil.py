"""ONNX graph -> coremltools MIL program, one handler per ONNX op registered in ``HANDLERS``.

``build_program(model, opset_version)`` returns a ``Program`` whose single function ``main``
takes the ONNX graph input (NCHW float32, symbolic batch pinned to 1) and returns the graph
outputs under their (sanitized) ONNX names. Constant tensors stay numpy arrays in the
environment; nodes whose inputs are all constant are folded with ``onnx.reference``.
Unsupported ops raise ``EdgeInferError`` naming the node and the op.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgeinfer.errors import EdgeInferError

from coremltools.converters.mil import Builder as mb
from coremltools.converters.mil.mil import Function, Program

Value = Any  # a MIL Var or a numpy constant
HANDLERS: dict[str, Callable[["Ctx", onnx.NodeProto], list[Value]]] = {}
# ops whose all-constant instances are folded with onnx.reference instead of emitted
FOLDABLE_EXTRA = {"Shape", "Cast", "Constant", "ConstantOfShape", "Range", "Equal", "Where", "Expand", "Floor", "Ceil"}


def handler(*op_types: str):
    def register(fn):
        for t in op_types:
            HANDLERS[t] = fn
        return fn
    return register


def mil_name(name: str) -> str:
    """A valid MIL/Core ML identifier for an ONNX tensor name."""
    s = re.sub(r"[^A-Za-z0-9_]", "_", name)
    return s if s and not s[0].isdigit() else "t_" + s


@dataclass
class Ctx:
    env: dict[str, Value]
    opset: int
    notes: list[str] = field(default_factory=list)

    def get(self, node: onnx.NodeProto, i: int, default: Value = None) -> Value:
        if i >= len(node.input) or node.input[i] == "":
            return default
        name = node.input[i]
        if name not in self.env:
            raise EdgeInferError(f"node {node.name or node.op_type!r} ({node.op_type}) reads {name!r}, which nothing produces")
        return self.env[name]

    def const(self, node: onnx.NodeProto, i: int, what: str, default: Any = None) -> np.ndarray | None:
        v = self.get(node, i, None)
        if v is None:
            return None if default is None else np.asarray(default)
        if not isinstance(v, np.ndarray):
            raise fail(node, f"needs a constant {what} (input {i}); run the graph clean-up (constant folding) first")
        return v


def fail(node: onnx.NodeProto, why: str) -> EdgeInferError:
    return EdgeInferError(f"Core ML emitter: node {node.name or '?'!r} ({node.op_type}) {why}")


def attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def shape_of(v: Value) -> tuple[int, ...]:
    return tuple(v.shape) if isinstance(v, np.ndarray) else tuple(int(d) for d in v.shape)


def as_f32(v: Value) -> Value:
    return v.astype(np.float32) if isinstance(v, np.ndarray) and v.dtype.kind == "f" else v


def _out(node: onnx.NodeProto, i: int = 0) -> str:
    return mil_name(node.output[i])


def _spatial_pads(node: onnx.NodeProto, a: dict, nsp: int) -> dict[str, Any]:
    """ONNX auto_pad/pads -> MIL pad_type/pad ([begin, end] per spatial dim)."""
    auto = a.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        return {"pad_type": "same" if auto == "SAME_UPPER" else "same_lower"}
    if auto == "VALID":
        return {"pad_type": "valid"}
    pads = list(a.get("pads", [0] * (2 * nsp)))
    mil = []
    for d in range(nsp):
        mil += [pads[d], pads[d + nsp]]
    return {"pad_type": "custom", "pad": np.array(mil, dtype=np.int32)}


# ---------------------------------------------------------------- convolution / dense
@handler("Conv")
def conv(ctx: Ctx, node):
    a = attrs(node)
    x, w, b = ctx.get(node, 0), ctx.const(node, 1, "weight"), ctx.const(node, 2, "bias")
    nsp = w.ndim - 2
    kw = dict(x=x, weight=as_f32(w), strides=np.array(a.get("strides", [1] * nsp), np.int32),
              dilations=np.array(a.get("dilations", [1] * nsp), np.int32), groups=int(a.get("group", 1)),
              name=_out(node), **_spatial_pads(node, a, nsp))
    if b is not None:
        kw["bias"] = as_f32(b)
    return [mb.conv(**kw)]


@handler("Gemm")
def gemm(ctx: Ctx, node):
    a = attrs(node)
    x, B, C = ctx.get(node, 0), ctx.get(node, 1), ctx.get(node, 2)
    alpha, beta = float(a.get("alpha", 1.0)), float(a.get("beta", 1.0))
    if a.get("transA", 0):
        x = mb.transpose(x=x, perm=[1, 0])
    if isinstance(B, np.ndarray) and (C is None or isinstance(C, np.ndarray)):
        W = (B if a.get("transB", 0) else B.T) * alpha       # MIL linear weight is [out, in]
        kw = dict(x=x, weight=as_f32(np.ascontiguousarray(W)), name=_out(node))
        if C is not None:
            kw["bias"] = as_f32(np.broadcast_to(np.asarray(C) * beta, (W.shape[0],)).copy())
        return [mb.linear(**kw)]
    y = mb.matmul(x=x, y=B, transpose_y=bool(a.get("transB", 0)))
    if alpha != 1.0:
        y = mb.mul(x=y, y=np.float32(alpha))
    if C is None:
        return [mb.identity(x=y, name=_out(node))]
    return [mb.add(x=y, y=as_f32(np.asarray(C) * beta) if isinstance(C, np.ndarray) else C, name=_out(node))]


@handler("MatMul")
def matmul(ctx: Ctx, node):
    x, y = ctx.get(node, 0), ctx.get(node, 1)
    if isinstance(y, np.ndarray) and y.ndim == 2 and not isinstance(x, np.ndarray):
        return [mb.linear(x=x, weight=as_f32(np.ascontiguousarray(y.T)), name=_out(node))]
    return [mb.matmul(x=as_f32(x), y=as_f32(y), name=_out(node))]


@handler("BatchNormalization")
def batch_norm(ctx: Ctx, node):
    a = attrs(node)
    g, b, m, v = (as_f32(ctx.const(node, i, n)) for i, n in ((1, "scale"), (2, "bias"), (3, "mean"), (4, "var")))
    return [mb.batch_norm(x=ctx.get(node, 0), mean=m, variance=v, gamma=g, beta=b,
                          epsilon=np.float32(a.get("epsilon", 1e-5)), name=_out(node))]


# ---------------------------------------------------------------- activations
@handler("Relu")
def relu(ctx: Ctx, node):
    return [mb.relu(x=ctx.get(node, 0), name=_out(node))]


@handler("Sigmoid")
def sigmoid(ctx: Ctx, node):
    return [mb.sigmoid(x=ctx.get(node, 0), name=_out(node))]


@handler("Tanh")
def tanh(ctx: Ctx, node):
    return [mb.tanh(x=ctx.get(node, 0), name=_out(node))]


@handler("LeakyRelu")
def leaky_relu(ctx: Ctx, node):
    return [mb.leaky_relu(x=ctx.get(node, 0), alpha=np.float32(attrs(node).get("alpha", 0.01)), name=_out(node))]


@handler("Clip")
def clip(ctx: Ctx, node):
    a = attrs(node)
    if ctx.opset < 11:
        lo, hi = a.get("min", None), a.get("max", None)
    else:
        lo, hi = ctx.const(node, 1, "min"), ctx.const(node, 2, "max")
    lo = -65504.0 if lo is None else float(np.ravel(lo)[0])
    hi = 65504.0 if hi is None else float(np.ravel(hi)[0])
    if lo == 0.0 and hi == 65504.0:
        return [mb.relu(x=ctx.get(node, 0), name=_out(node))]
    if lo == 0.0 and hi == 6.0:
        return [mb.relu6(x=ctx.get(node, 0), name=_out(node))]
    return [mb.clip(x=ctx.get(node, 0), alpha=np.float32(lo), beta=np.float32(hi), name=_out(node))]


@handler("HardSigmoid")
def hard_sigmoid(ctx: Ctx, node):
    a = attrs(node)
    return [mb.sigmoid_hard(x=ctx.get(node, 0), alpha=np.float32(a.get("alpha", 0.2)),
                            beta=np.float32(a.get("beta", 0.5)), name=_out(node))]


@handler("HardSwish")
def hard_swish(ctx: Ctx, node):
    x = ctx.get(node, 0)
    gate = mb.sigmoid_hard(x=x, alpha=np.float32(1 / 6), beta=np.float32(0.5))
    return [mb.mul(x=x, y=gate, name=_out(node))]


@handler("Softmax")
def softmax(ctx: Ctx, node):
    x = ctx.get(node, 0)
    axis = int(attrs(node).get("axis", -1 if ctx.opset >= 13 else 1))
    rank = len(shape_of(x))
    if ctx.opset < 13 and axis % rank != rank - 1:
        raise fail(node, "uses opset<13 Softmax over several axes; only the last axis is supported")
    return [mb.softmax(x=x, axis=axis, name=_out(node))]


# ---------------------------------------------------------------- elementwise
_BINARY = {"Add": ("add", np.add), "Sub": ("sub", np.subtract), "Mul": ("mul", np.multiply), "Div": ("real_div", np.divide)}


@handler(*_BINARY)
def binary(ctx: Ctx, node):
    x, y = as_f32(ctx.get(node, 0)), as_f32(ctx.get(node, 1))
    mil_op, _ = _BINARY[node.op_type]
    return [getattr(mb, mil_op)(x=x, y=y, name=_out(node))]


# ---------------------------------------------------------------- shape ops
@handler("Concat")
def concat(ctx: Ctx, node):
    vals = [as_f32(ctx.get(node, i)) for i in range(len(node.input))]
    return [mb.concat(values=vals, axis=int(attrs(node)["axis"]), interleave=False, name=_out(node))]


@handler("Reshape")
def reshape(ctx: Ctx, node):
    x = ctx.get(node, 0)
    shape = [int(s) for s in ctx.const(node, 1, "shape")]
    if not attrs(node).get("allowzero", 0):
        shape = [shape_of(x)[i] if s == 0 else s for i, s in enumerate(shape)]
    return [mb.reshape(x=x, shape=np.array(shape, np.int32), name=_out(node))]


@handler("Flatten")
def flatten(ctx: Ctx, node):
    x = ctx.get(node, 0)
    shp = shape_of(x)
    axis = int(attrs(node).get("axis", 1)) % (len(shp) or 1)
    new = [int(np.prod(shp[:axis])), int(np.prod(shp[axis:]))]
    return [mb.reshape(x=x, shape=np.array(new, np.int32), name=_out(node))]


@handler("Transpose")
def transpose(ctx: Ctx, node):
    x = ctx.get(node, 0)
    perm = attrs(node).get("perm", list(range(len(shape_of(x))))[::-1])
    return [mb.transpose(x=x, perm=np.array(perm, np.int32), name=_out(node))]


def _axes(ctx: Ctx, node, attr_opset: int) -> list[int] | None:
    """Axes from the attribute (older opsets) or from input 1."""
    if ctx.opset < attr_opset:
        ax = attrs(node).get("axes")
    else:
        ax = ctx.const(node, 1, "axes")
    return None if ax is None else [int(v) for v in np.ravel(ax)]


@handler("Squeeze")
def squeeze(ctx: Ctx, node):
    x = ctx.get(node, 0)
    axes = _axes(ctx, node, 13)
    if axes is None:
        axes = [i for i, d in enumerate(shape_of(x)) if d == 1]
    return [mb.squeeze(x=x, axes=np.array(axes, np.int32), name=_out(node))]


@handler("Unsqueeze")
def unsqueeze(ctx: Ctx, node):
    return [mb.expand_dims(x=ctx.get(node, 0), axes=np.array(_axes(ctx, node, 13), np.int32), name=_out(node))]


@handler("Slice")
def slice_(ctx: Ctx, node):
    x = ctx.get(node, 0)
    shp = shape_of(x)
    if ctx.opset < 10:
        a = attrs(node)
        starts, ends, axes, steps = a["starts"], a["ends"], a.get("axes"), None
    else:
        starts, ends = ctx.const(node, 1, "starts"), ctx.const(node, 2, "ends")
        axes, steps = ctx.const(node, 3, "axes"), ctx.const(node, 4, "steps")
    axes = list(range(len(starts))) if axes is None else [int(v) % len(shp) for v in axes]
    steps = [1] * len(starts) if steps is None else [int(v) for v in steps]
    begin, end, stride = [0] * len(shp), list(shp), [1] * len(shp)
    for ax, s, e, st in zip(axes, starts, ends, steps):
        # python slice semantics resolve negative / out-of-range bounds exactly as ONNX does
        b_, e_, st_ = slice(int(s), int(e), st).indices(shp[ax])
        if st < 0 and e_ < 0:
            raise fail(node, "slices backwards to the first element; not supported")
        begin[ax], end[ax], stride[ax] = b_, e_, st_
    return [mb.slice_by_index(x=x, begin=np.array(begin, np.int32), end=np.array(end, np.int32),
                              stride=np.array(stride, np.int32), name=_out(node))]


@handler("Split")
def split(ctx: Ctx, node):
    a = attrs(node)
    x = ctx.get(node, 0)
    axis = int(a.get("axis", 0))
    sizes = a.get("split") if ctx.opset < 13 else ctx.const(node, 1, "split")
    n = len(node.output)
    if sizes is None:
        dim = shape_of(x)[axis]
        chunk = -(-dim // n)
        sizes = [chunk] * (n - 1) + [dim - chunk * (n - 1)]
    outs = mb.split(x=x, split_sizes=np.array([int(s) for s in sizes], np.int32), axis=axis, name=_out(node))
    outs = list(outs) if isinstance(outs, (list, tuple)) else [outs]
    return [mb.identity(x=o, name=_out(node, i)) for i, o in enumerate(outs)]


@handler("Gather")
def gather(ctx: Ctx, node):
    x = ctx.get(node, 0)
    idx = ctx.const(node, 1, "indices")
    axis = int(attrs(node).get("axis", 0))
    idx = np.where(idx < 0, idx + shape_of(x)[axis], idx).astype(np.int32)
    if idx.ndim == 0:
        y = mb.gather(x=x, indices=idx.reshape(1), axis=axis)
        return [mb.squeeze(x=y, axes=np.array([axis], np.int32), name=_out(node))]
    return [mb.gather(x=x, indices=idx, axis=axis, name=_out(node))]


@handler("Identity", "Dropout")
def identity(ctx: Ctx, node):
    return [mb.identity(x=ctx.get(node, 0), name=_out(node))]


# ---------------------------------------------------------------- pooling / reduce
@handler("GlobalAveragePool")
def global_avg_pool(ctx: Ctx, node):
    x = ctx.get(node, 0)
    axes = list(range(2, len(shape_of(x))))
    return [mb.reduce_mean(x=x, axes=np.array(axes, np.int32), keep_dims=True, name=_out(node))]


@handler("GlobalMaxPool")
def global_max_pool(ctx: Ctx, node):
    x = ctx.get(node, 0)
    axes = list(range(2, len(shape_of(x))))
    return [mb.reduce_max(x=x, axes=np.array(axes, np.int32), keep_dims=True, name=_out(node))]


def _pool_args(node, x) -> dict[str, Any]:
    a = attrs(node)
    k = list(a["kernel_shape"])
    nsp = len(k)
    if any(d != 1 for d in a.get("dilations", [1] * nsp)):
        raise fail(node, "uses dilated pooling; not supported")
    return dict(x=x, kernel_sizes=np.array(k, np.int32), strides=np.array(a.get("strides", [1] * nsp), np.int32),
                ceil_mode=bool(a.get("ceil_mode", 0)), name=_out(node), **_spatial_pads(node, a, nsp))


@handler("AveragePool")
def avg_pool(ctx: Ctx, node):
    kw = _pool_args(node, ctx.get(node, 0))
    kw["exclude_padding_from_average"] = not bool(attrs(node).get("count_include_pad", 0))
    return [mb.avg_pool(**kw)]


@handler("MaxPool")
def max_pool(ctx: Ctx, node):
    if len(node.output) > 1 and node.output[1]:
        raise fail(node, "returns indices; not supported")
    return [mb.max_pool(**_pool_args(node, ctx.get(node, 0)))]


@handler("ReduceMean")
def reduce_mean(ctx: Ctx, node):
    x = ctx.get(node, 0)
    a = attrs(node)
    axes = _axes(ctx, node, 18)
    if axes is None:
        if a.get("noop_with_empty_axes", 0):
            return [mb.identity(x=x, name=_out(node))]
        axes = list(range(len(shape_of(x))))
    return [mb.reduce_mean(x=x, axes=np.array(axes, np.int32), keep_dims=bool(a.get("keepdims", 1)), name=_out(node))]


# ---------------------------------------------------------------- pad / resize
_PAD_MODES = {"constant": "constant", "reflect": "reflect", "edge": "replicate"}


@handler("Pad")
def pad(ctx: Ctx, node):
    a = attrs(node)
    x = ctx.get(node, 0)
    rank = len(shape_of(x))
    mode = a.get("mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if mode not in _PAD_MODES:
        raise fail(node, f"uses pad mode {mode!r}; supported: constant, reflect, edge")
    if ctx.opset < 11:
        pads, value = list(a["pads"]), float(a.get("value", 0.0))
    else:
        pads = [int(p) for p in ctx.const(node, 1, "pads")]
        cv = ctx.const(node, 2, "constant_value")
        value = 0.0 if cv is None else float(np.ravel(cv)[0])
        axes = ctx.const(node, 3, "axes")
        if axes is not None:
            full = [0] * (2 * rank)
            for j, ax in enumerate(int(v) % rank for v in axes):
                full[ax], full[ax + rank] = pads[j], pads[j + len(axes)]
            pads = full
    if any(p < 0 for p in pads):
        raise fail(node, "has negative pads (cropping); not supported")
    mil = []
    for d in range(rank):
        mil += [pads[d], pads[d + rank]]
    return [mb.pad(x=x, pad=np.array(mil, np.int32), mode=_PAD_MODES[mode], constant_val=np.float32(value), name=_out(node))]


@handler("Resize", "Upsample")
def resize(ctx: Ctx, node):
    a = attrs(node)
    x = ctx.get(node, 0)
    shp = shape_of(x)
    if len(shp) != 4:
        raise fail(node, "resizes a tensor that is not 4-D NCHW; not supported")
    dec = lambda k, d: (a.get(k, d).decode() if isinstance(a.get(k, d), bytes) else a.get(k, d))
    mode = dec("mode", "nearest")
    ctm = dec("coordinate_transformation_mode", "half_pixel" if node.op_type == "Resize" else "asymmetric")
    if node.op_type == "Upsample":
        scales, sizes = ctx.const(node, 1, "scales"), None
    else:
        scales = ctx.const(node, 2, "scales") if ctx.opset >= 11 else ctx.const(node, 1, "scales")
        sizes = ctx.const(node, 3, "sizes") if ctx.opset >= 11 else None
    if sizes is not None and sizes.size:
        out_hw = [int(sizes[-2]), int(sizes[-1])]
    elif scales is not None and scales.size:
        if float(scales[0]) != 1.0 or float(scales[1]) != 1.0:
            raise fail(node, "resizes batch or channel dims; not supported")
        out_hw = [int(np.floor(shp[2] * float(scales[2]))), int(np.floor(shp[3] * float(scales[3])))]
    else:
        raise fail(node, "has neither constant scales nor sizes")
    sh, sw = out_hw[0] / shp[2], out_hw[1] / shp[3]
    if mode == "nearest":
        integer = sh == int(sh) and sw == int(sw) and sh >= 1 and sw >= 1
        nearest_mode = dec("nearest_mode", "round_prefer_floor")
        floorish = ctm == "asymmetric" and nearest_mode == "floor"
        halfpix = ctm in ("half_pixel", "pytorch_half_pixel") and nearest_mode in ("round_prefer_floor", "round_prefer_ceil")
        if integer and (floorish or halfpix):   # both reduce to out[i] = in[i // s] for integer s
            return [mb.upsample_nearest_neighbor(x=x, scale_factor_height=int(sh), scale_factor_width=int(sw), name=_out(node))]
        raise fail(node, f"uses nearest resize with scale ({sh:g},{sw:g}) / {ctm} / {nearest_mode}; only integer upsampling is supported")
    if mode == "linear":
        sampling = {"half_pixel": "UNALIGN_CORNERS", "pytorch_half_pixel": "UNALIGN_CORNERS",
                    "align_corners": "STRICT_ALIGN_CORNERS"}.get(ctm)
        if sampling is None:
            raise fail(node, f"uses linear resize with coordinate_transformation_mode {ctm!r}; supported: half_pixel, align_corners")
        return [mb.resize_bilinear(x=x, target_size_height=out_hw[0], target_size_width=out_hw[1],
                                   sampling_mode=sampling, name=_out(node))]
    raise fail(node, f"uses resize mode {mode!r}; supported: nearest, linear")


# ---------------------------------------------------------------- program construction
def _fold(node: onnx.NodeProto, env: dict[str, Value], opset: int) -> list[np.ndarray]:
    """Evaluate a node whose inputs are all constants with the ONNX reference evaluator."""
    from onnx.reference import ReferenceEvaluator

    inputs = [i for i in node.input if i]
    g = helper.make_graph([node], "fold", [helper.make_tensor_value_info(i, helper.np_dtype_to_tensor_dtype(env[i].dtype), env[i].shape) for i in inputs],
                          [helper.make_tensor_value_info(o, onnx.TensorProto.UNDEFINED, None) for o in node.output if o])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    return list(ReferenceEvaluator(m).run(None, {i: env[i] for i in inputs}))


def _static_shape(node: onnx.NodeProto, env: dict[str, Value]) -> np.ndarray | None:
    if node.op_type == "Shape" and node.input[0] in env and not isinstance(env[node.input[0]], np.ndarray):
        a = attrs(node)
        shp = np.array(shape_of(env[node.input[0]]), np.int64)
        return shp[a.get("start", 0):a.get("end", len(shp))]
    return None


def input_shape(vi: onnx.ValueInfoProto) -> tuple[int, ...]:
    """Static input shape; a symbolic leading (batch) dim is pinned to 1."""
    dims = []
    for i, d in enumerate(vi.type.tensor_type.shape.dim):
        if d.HasField("dim_value") and d.dim_value > 0:
            dims.append(int(d.dim_value))
        elif i == 0:
            dims.append(1)
        else:
            raise EdgeInferError(f"Core ML emitter: input {vi.name!r} has a symbolic dimension {i} ({d.dim_param or '?'}); "
                                 "give the model static spatial dims (re-export with a fixed input size)")
    return tuple(dims)


def onnx_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)


def check_supported(model: onnx.ModelProto) -> None:
    """Raise before anything is built if a node's op has no handler (and cannot be folded)."""
    const = {t.name for t in model.graph.initializer}
    for node in model.graph.node:
        ins = [i for i in node.input if i]
        if node.op_type in HANDLERS or (all(i in const for i in ins) and node.domain in ("", "ai.onnx")):
            const.update(node.output) if node.op_type not in HANDLERS else None
            continue
        if node.op_type == "Shape":
            const.update(node.output)
            continue
        raise EdgeInferError(f"Core ML emitter: node {node.name or '?'!r} uses op {node.op_type!r}, which has no Core ML "
                             f"handler; supported: {', '.join(sorted(HANDLERS))}")


@dataclass
class BuiltProgram:
    program: Program
    input_name: str
    input_shape: tuple[int, ...]
    output_names: list[str]
    notes: list[str]
    folded_conv: str | None = None     # ONNX node whose weights carry the folded per-channel input scale


def build_program(model: onnx.ModelProto, opset_version, input_scale: np.ndarray | None = None) -> BuiltProgram:
    """Translate the graph. ``input_scale`` (per-channel, optional) multiplies the input
    channels first: folded into the first Conv's weights when the input feeds only one Conv,
    else emitted as a ``mul`` op."""
    check_supported(model)
    g = model.graph
    init = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    real_inputs = [vi for vi in g.input if vi.name not in init]
    if len(real_inputs) != 1:
        raise EdgeInferError(f"Core ML emitter: the model has {len(real_inputs)} inputs; only single-input models are supported")
    vi = real_inputs[0]
    if vi.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
        raise EdgeInferError(f"Core ML emitter: input {vi.name!r} is not float32")
    shape = input_shape(vi)
    in_name = mil_name(vi.name)
    opset = onnx_opset(model)
    notes: list[str] = []
    consumers = [n for n in g.node if vi.name in n.input]
    fold_into_conv = (input_scale is not None and len(consumers) == 1 and consumers[0].op_type == "Conv"
                      and attrs(consumers[0]).get("group", 1) == 1 and consumers[0].input[1] in init)
    with Function({in_name: mb.placeholder(shape=shape)}, opset_version=opset_version) as func:
        env: dict[str, Value] = dict(init)
        x = func.inputs[in_name]
        if input_scale is not None and not fold_into_conv:
            x = mb.mul(x=x, y=input_scale.astype(np.float32).reshape(1, -1, *([1] * (len(shape) - 2))), name=in_name + "_std")
            notes.append("per-channel 1/std is applied by a mul op after the image input (Core ML image scale is a scalar)")
        env[vi.name] = x
        if fold_into_conv:
            w = init[consumers[0].input[1]].astype(np.float32) * input_scale.reshape(1, -1, *([1] * (len(shape) - 2)))
            env[consumers[0].input[1]] = w
            notes.append("per-channel 1/std is folded into the first convolution's weights (Core ML image scale is a scalar)")
        ctx = Ctx(env, opset, notes)
        for node in g.node:
            ins = [i for i in node.input if i]
            static = _static_shape(node, env)
            if static is not None:
                env[node.output[0]] = static
                continue
            if node.op_type == "Constant" or (ins and all(isinstance(env.get(i), np.ndarray) for i in ins)):
                for o, v in zip(node.output, _fold(node, env, opset)):
                    env[o] = np.asarray(v)
                continue
            outs = HANDLERS[node.op_type](ctx, node)
            for o, v in zip(node.output, outs):
                env[o] = v
        outputs = []
        for o in g.output:
            v = env[o.name]
            if isinstance(v, np.ndarray):
                raise EdgeInferError(f"Core ML emitter: output {o.name!r} is a constant; the graph does not depend on its input")
            if v.name != mil_name(o.name):
                v = mb.identity(x=v, name=mil_name(o.name))
            outputs.append(v)
        func.set_outputs(outputs)
    prog = Program()
    prog.add_function("main", func)
    folded = (consumers[0].name or consumers[0].output[0]) if fold_into_conv else None
    return BuiltProgram(prog, in_name, shape, [mil_name(o.name) for o in g.output], notes, folded)
