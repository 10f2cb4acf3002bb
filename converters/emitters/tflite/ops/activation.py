"""Relu, Clip, Sigmoid, HardSigmoid, HardSwish, Softmax.

Relu and Clip(0, 6) / Clip(-1, 1) are fused into the producing op when it can carry a fused
activation (see ``fusion.plan``); the handlers here cover the standalone cases.
"""
from __future__ import annotations

import math

import numpy as np
from ai_edge_litert import schema_py_generated as fb

from converters.quant_math import qparams_from_range

from ..builder import quant_params
from ..context import Converter, attrs

SIGMOID_Q = (1.0 / 256.0, -128)      # fixed int8 output params of LOGISTIC and SOFTMAX


def clip_bounds(ctx: Converter, node) -> tuple[float, float]:
    a = attrs(node)
    lo, hi = a.get("min", -math.inf), a.get("max", math.inf)
    if len(node.input) > 1 and node.input[1]:
        lo = float(ctx.const(node.input[1]).reshape(-1)[0])
    if len(node.input) > 2 and node.input[2]:
        hi = float(ctx.const(node.input[2]).reshape(-1)[0])
    return float(lo), float(hi)


def fused_kind(ctx: Converter, node) -> str | None:
    """TFLite fused-activation name for an activation node, or None when it cannot be fused."""
    if node.op_type == "Relu":
        return "RELU"
    if node.op_type == "Clip":
        bounds = clip_bounds(ctx, node)
        return {(0.0, 6.0): "RELU6", (-1.0, 1.0): "RELU_N1_TO_1", (0.0, math.inf): "RELU"}.get(bounds)
    return None


def _unary(ctx: Converter, node, op: str, q=None, options=None) -> None:
    x = ctx.get(node.input[0])
    out = ctx.new_value(node.output[0], ctx.shape(node.output[0]), x.perm, q=q)
    ctx.b.add_op(op, [x.tensor], [out.tensor], options)


def relu(ctx: Converter, index: int, node) -> None:
    """Relu -> RELU."""
    _unary(ctx, node, "RELU")


def clip(ctx: Converter, index: int, node) -> None:
    """Clip with constant bounds: RELU / RELU6 / RELU_N1_TO_1, else MAXIMUM + MINIMUM."""
    kind = fused_kind(ctx, node)
    if kind is not None:
        _unary(ctx, node, kind)
        return
    lo, hi = clip_bounds(ctx, node)
    x = ctx.get(node.input[0])
    cur = x.tensor
    q = ctx.qof(cur)
    for op, bound in (("MAXIMUM", lo), ("MINIMUM", hi)):
        if math.isinf(bound):
            continue
        last = op == "MINIMUM" or math.isinf(hi)
        c = ctx.activation_const(np.array([bound], np.float32), f"{node.output[0]}_{op.lower()}", q=q)
        nxt = ctx.new_value(node.output[0], x.shape, x.perm, q=q).tensor if last else ctx.scratch(node.output[0] + "_lo", ctx.b.shape(cur), cur)
        ctx.b.add_op(op, [cur, c], [nxt], None)
        cur = nxt


def sigmoid(ctx: Converter, index: int, node) -> None:
    """Sigmoid -> LOGISTIC (int8 output scale 1/256, zero point -128, as the kernel requires)."""
    _unary(ctx, node, "LOGISTIC", q=SIGMOID_Q if ctx.quantized else None)


def hard_swish(ctx: Converter, index: int, node) -> None:
    """HardSwish -> HARD_SWISH."""
    _unary(ctx, node, "HARD_SWISH")


def hard_sigmoid(ctx: Converter, index: int, node) -> None:
    """HardSigmoid(alpha, beta) = RELU6(6*alpha*x + 6*beta) / 6 as MUL, ADD(fused RELU6), MUL."""
    a = attrs(node)
    alpha, beta = float(a.get("alpha", 0.2)), float(a.get("beta", 0.5))
    x = ctx.get(node.input[0])
    shape = ctx.b.shape(x.tensor)
    name = node.output[0]

    def step(op, src, const, out_tensor, q_out, act=fb.ActivationFunctionType.NONE):
        c = ctx.activation_const(np.array([const], np.float32), f"{name}_{op.lower()}_c")
        if out_tensor is None:
            out_tensor = ctx.b.add_tensor(f"{name}_{op.lower()}", shape, ctx.act_type(),
                                          None if q_out is None else quant_params(*q_out))
        o = fb.MulOptionsT() if op == "MUL" else fb.AddOptionsT()
        o.fusedActivationFunction = act
        ctx.b.add_op(op, [src, c], [out_tensor], o)
        return out_tensor

    q1 = q2 = None
    if ctx.quantized:
        s, z = ctx.qof(x.tensor)
        lo, hi = (-128 - z) * s * 6 * alpha, (127 - z) * s * 6 * alpha
        q1 = qparams_from_range(min(lo, hi), max(lo, hi), "int8")
        q2 = qparams_from_range(0.0, 6.0, "int8")
    t1 = step("MUL", x.tensor, 6 * alpha, None, q1)
    t2 = step("ADD", t1, 6 * beta, None, q2, fb.ActivationFunctionType.RELU6)
    out = ctx.new_value(name, x.shape, x.perm)
    step("MUL", t2, 1.0 / 6.0, out.tensor, None)


def softmax(ctx: Converter, index: int, node) -> None:
    """Softmax over one axis (opset >= 13 semantics; older opsets only when that is equivalent)."""
    a = attrs(node)
    x = ctx.get(node.input[0])
    rank = len(x.shape)
    opset = next((o.version for o in ctx.model.opset_import if o.domain in ("", "ai.onnx")), 13)
    axis = int(a.get("axis", -1 if opset >= 13 else 1)) % rank
    if opset < 13 and any(d != 1 for d in x.shape[axis + 1:]):
        raise ctx.error("Softmax before opset 13 over several trailing axes is not supported")
    if x.perm[-1] == axis:
        perm = x.perm
    else:
        perm = tuple(i for i in range(rank) if i != axis) + (axis,)
    xin = ctx.stored(x, perm)
    out = ctx.new_value(node.output[0], ctx.shape(node.output[0]), perm, q=SIGMOID_Q if ctx.quantized else None)
    o = fb.SoftmaxOptionsT()
    o.beta = 1.0
    ctx.b.add_op("SOFTMAX", [xin], [out.tensor], o)


HANDLERS = {
    "Relu": relu, "Clip": clip, "Sigmoid": sigmoid, "HardSwish": hard_swish,
    "HardSigmoid": hard_sigmoid, "Softmax": softmax,
}
