"""Add / Sub / Mul / Div with numpy broadcasting, and Concat, in whatever layout the inputs have.

The first dynamic input of full rank decides the layout; constants are transposed at
conversion time; a Div by a constant becomes a MUL by its reciprocal.
"""
from __future__ import annotations

import numpy as np
from ai_edge_litert import schema_py_generated as fb

from ..context import Converter, Value, identity

OPTIONS = {"ADD": fb.AddOptionsT, "SUB": fb.SubOptionsT, "MUL": fb.MulOptionsT, "DIV": fb.DivOptionsT}


def _layout(ctx: Converter, names, rank: int) -> tuple[int, ...]:
    for n in names:
        if not ctx.is_const(n) and len(ctx.get(n).shape) == rank:
            return ctx.get(n).perm
    return identity(rank)


def operand(ctx: Converter, name: str, rank: int, perm, const_fn=None) -> int:
    """Tensor for ``name`` broadcast-ready at ``rank`` in layout ``perm``."""
    if ctx.is_const(name):
        arr = ctx.const(name).astype(np.float32)
        if const_fn is not None:
            arr = const_fn(arr)
        arr = arr.reshape((1,) * (rank - arr.ndim) + arr.shape).transpose(perm)
        if arr.size == 1:
            arr = arr.reshape(1)
        return ctx.activation_const(arr, name)
    v = ctx.get(name)
    if len(v.shape) < rank:
        shape = (1,) * (rank - len(v.shape)) + tuple(v.shape)
        t = ctx.reshape(ctx.onnx_order(v), shape, hint=name + "_rank")
        v = Value(t, shape, identity(rank))
    return ctx.stored(v, perm)


def binary(ctx: Converter, index: int, node, op: str) -> None:
    a, b = node.input[0], node.input[1]
    if ctx.is_const(a) and ctx.is_const(b):
        raise ctx.error("both inputs constant: run clean_model (constant folding) first")
    rank = len(ctx.shape(node.output[0]))
    perm = _layout(ctx, (a, b), rank)
    fn = None
    if op == "DIV" and ctx.is_const(b):
        op, fn = "MUL", (lambda arr: (1.0 / arr.astype(np.float64)).astype(np.float32))
    elif op == "DIV" and ctx.quantized:      # no int8 DIV kernel: this node runs in float
        ctx.run_in_float(lambda c, i, n: binary(c, i, n, "DIV"), index, node)
        return
    ta = operand(ctx, a, rank, perm)
    tb = operand(ctx, b, rank, perm, fn)
    act, out_name = ctx.fused_activation(index, node)
    out = ctx.new_value(out_name, ctx.shape(node.output[0]), perm)
    o = OPTIONS[op]()
    o.fusedActivationFunction = act
    ctx.b.add_op(op, [ta, tb], [out.tensor], o)


def add(ctx, index, node):
    """Add (broadcasting) -> ADD."""
    binary(ctx, index, node, "ADD")


def sub(ctx, index, node):
    """Sub (broadcasting) -> SUB."""
    binary(ctx, index, node, "SUB")


def mul(ctx, index, node):
    """Mul (broadcasting) -> MUL."""
    binary(ctx, index, node, "MUL")


def div(ctx, index, node):
    """Div (broadcasting) -> MUL by reciprocal (constant divisor) or DIV (float only)."""
    binary(ctx, index, node, "DIV")


def concat(ctx: Converter, index: int, node) -> None:
    """Concat along any axis, in the layout of the first dynamic input (int8: inputs share the output scale)."""
    axis = int(next(a.i for a in node.attribute if a.name == "axis"))
    rank = len(ctx.shape(node.output[0]))
    axis %= rank
    names = [n for n in node.input if n]
    perm = _layout(ctx, names, rank)
    out = ctx.new_value(node.output[0], ctx.shape(node.output[0]), perm)
    q = ctx.qof(out.tensor)
    ins = []
    for n in names:
        if ctx.is_const(n):
            arr = ctx.const(n).astype(np.float32).transpose(perm)
            ins.append(ctx.activation_const(arr, n, q=q))
        else:
            t = ctx.stored(ctx.get(n), perm)
            ins.append(ctx.requantize(t, q) if q is not None else t)
    o = fb.ConcatenationOptionsT()
    o.axis = perm.index(axis)
    ctx.b.add_op("CONCATENATION", ins, [out.tensor], o)


HANDLERS = {"Add": add, "Sub": sub, "Mul": mul, "Div": div, "Concat": concat}
