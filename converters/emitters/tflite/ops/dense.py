"""Gemm / MatMul -> FULLY_CONNECTED (constant right operand) or BATCH_MATMUL (both dynamic)."""
from __future__ import annotations

import numpy as np
from ai_edge_litert import schema_py_generated as fb

from ..context import Converter, attrs
from ..weights import planned, weights


def _fully_connected(ctx: Converter, index: int, node, x_tensor: int, w_nk: np.ndarray, bias, keep_dims: bool) -> None:
    act, out_name = ctx.fused_activation(index, node)
    out = ctx.new_value(out_name, ctx.shape(node.output[0]))
    o = fb.FullyConnectedOptionsT()
    o.fusedActivationFunction, o.keepNumDims = act, keep_dims
    # per-tensor weights in the integer modes: per-channel FULLY_CONNECTED is newer than tflite-runtime 2.14
    axis = 0 if ctx.mode in ("fp32", "fp16") else None
    pre = planned(ctx, node, lambda q: q)                                   # int4 plan integers, [N, K]
    has_bias = node.op_type == "Gemm" and len(node.input) > 2 and bool(node.input[2])
    mean = ctx.channel_means.get(node.input[0]) if has_bias else None
    wt, bt = weights(ctx, w_nk, bias, axis, x_tensor, node.name or node.output[0], "FULLY_CONNECTED", pre=pre,
                     in_mean=mean)
    ctx.b.add_op("FULLY_CONNECTED", [x_tensor, wt, bt], [out.tensor], o)


def gemm(ctx: Converter, index: int, node) -> None:
    """Gemm with constant B (and C broadcastable to [N]); transA=0; alpha/beta folded into the weights."""
    a = attrs(node)
    if a.get("transA", 0):
        raise ctx.error("Gemm with transA=1 is not supported")
    b = ctx.const(node.input[1]).astype(np.float32)
    w = b if a.get("transB", 0) else b.T                       # [N, K]
    w = w * float(a.get("alpha", 1.0))
    n = w.shape[0]
    bias = None
    if len(node.input) > 2 and node.input[2]:
        c = ctx.const(node.input[2]).astype(np.float32) * float(a.get("beta", 1.0))
        if c.size not in (1, n):
            raise ctx.error(f"Gemm C of shape {list(c.shape)} is not broadcastable to [{n}]")
        bias = np.broadcast_to(c.reshape(-1), (n,)).copy()
    x = ctx.get(node.input[0])
    _fully_connected(ctx, index, node, ctx.onnx_order(x), w, bias, False)


def matmul(ctx: Converter, index: int, node) -> None:
    """MatMul: constant 2-D B -> FULLY_CONNECTED (keep_num_dims for rank > 2), else BATCH_MATMUL."""
    x = ctx.get(node.input[0])
    if ctx.is_const(node.input[1]) and ctx.const(node.input[1]).ndim == 2 and len(x.shape) >= 2:
        w = ctx.const(node.input[1]).astype(np.float32).T
        _fully_connected(ctx, index, node, ctx.onnx_order(x), w, None, len(x.shape) > 2)
        return
    y = ctx.get(node.input[1])
    out = ctx.new_value(node.output[0], ctx.shape(node.output[0]))
    ctx.b.add_op("BATCH_MATMUL", [ctx.onnx_order(x), ctx.onnx_order(y)], [out.tensor], fb.BatchMatMulOptionsT())


HANDLERS = {"Gemm": gemm, "MatMul": matmul}
