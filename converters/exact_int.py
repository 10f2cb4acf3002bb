"""Exact integer evaluation of a QDQ ONNX model, independent of this host's int8 kernels.

``run_exact(model, samples)`` computes what a target whose int8 kernels accumulate exactly (ARM
NEON / dot-product, x86 VNNI or AMX, TFLite's integer kernels) gives for the model: every Conv,
Gemm and MatMul whose data input and constant weight both come from ``DequantizeLinear`` is
evaluated as ``QLinearConv`` / ``QGemm`` / ``QLinearMatMul`` do it: integer products summed
exactly (int32 semantics, carried in float64, which holds such sums exactly), the float bias
quantized into the accumulator's scale and added, then scaled back to float for the following
``QuantizeLinear``. Every other node runs with onnx's reference implementation (the ONNX spec's
QDQ float semantics). No 16-bit intermediate saturation, unlike ONNX Runtime's u8s8 kernels on
x86 CPUs without VNNI.

The rewrite is one table: op type -> function computing the op from integer operands.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import onnx
from onnx import helper

from .load import real_inputs, sort_nodes

DOMAIN = "ai.edgeinfer.exact"
ARITHMETIC = "exact-int"


# ---------------------------------------------------------------- integer kernels (float64 carriers)

def _conv_windows(x: np.ndarray, kernel: tuple[int, int], strides, pads, dilations) -> np.ndarray:
    """(N, C, OH, OW, KH, KW) view of the padded input (pads: top, left, bottom, right)."""
    x = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    kh, kw = kernel
    dh, dw = dilations
    span = ((kh - 1) * dh + 1, (kw - 1) * dw + 1)
    win = np.lib.stride_tricks.sliding_window_view(x, span, axis=(2, 3))
    return win[:, :, ::strides[0], ::strides[1], ::dh, ::dw]


def _exact_dtype(x: np.ndarray, w_rows: np.ndarray) -> type:
    """float32 when every partial sum is an integer below 2**24 (then exact in any order), else float64."""
    bound = float(np.abs(x).max(initial=0.0)) * float(np.abs(w_rows).sum(axis=1).max(initial=0.0))
    return np.float32 if bound < 2 ** 24 else np.float64


def int_conv(x: np.ndarray, w: np.ndarray, attrs: dict) -> np.ndarray:
    """Exact 2-D convolution of integer-valued float64 tensors (NCHW x MCKK -> NMHW)."""
    if x.ndim != 4:
        raise NotImplementedError(f"exact-int evaluation handles 2-D convolutions only (input rank {x.ndim})")
    group = int(attrs.get("group", 1))
    kernel = tuple(w.shape[2:])
    strides = list(attrs.get("strides") or [1, 1])
    dilations = list(attrs.get("dilations") or [1, 1])
    pads = list(attrs.get("pads") or [0, 0, 0, 0])
    if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET", b"VALID", "VALID"):
        raise NotImplementedError("exact-int evaluation needs explicit Conv pads (auto_pad SAME_* is not handled)")
    m, cg = w.shape[0], w.shape[1]
    n = x.shape[0]
    dtype = _exact_dtype(x, w.reshape(m, -1))
    x, w = x.astype(dtype), w.astype(dtype)
    if group == 1 and kernel == (1, 1) and strides == [1, 1] and not any(pads):
        h, wd = x.shape[2:]
        out = np.matmul(w.reshape(m, cg), x.reshape(n, cg, h * wd))
        return out.reshape(n, m, h, wd).astype(np.float64)
    win = _conv_windows(x, kernel, strides, pads, dilations)
    oh, ow = win.shape[2], win.shape[3]
    if group == x.shape[1] and cg == 1 and m == group:   # depthwise: one multiply-add per kernel tap
        out = np.zeros((n, m, oh, ow), dtype)
        for i in range(kernel[0]):
            for j in range(kernel[1]):
                out += win[:, :, :, :, i, j] * w[:, 0, i, j][None, :, None, None]
        return out.astype(np.float64)
    mg = m // group
    outs = []
    for g in range(group):
        cols = np.ascontiguousarray(win[:, g * cg:(g + 1) * cg].transpose(0, 2, 3, 1, 4, 5)).reshape(n * oh * ow, -1)
        outs.append(cols @ w[g * mg:(g + 1) * mg].reshape(mg, -1).T)
    return np.concatenate(outs, axis=1).reshape(n, oh, ow, m).transpose(0, 3, 1, 2).astype(np.float64)


def int_gemm(a: np.ndarray, b: np.ndarray, attrs: dict) -> np.ndarray:
    """Exact A @ B of integer-valued float64 matrices (Gemm's transA/transB honoured)."""
    if attrs.get("transA", 0):
        a = a.T
    if attrs.get("transB", 0):
        b = b.T
    return a @ b


def int_matmul(a: np.ndarray, b: np.ndarray, attrs: dict) -> np.ndarray:
    """Exact matmul of integer-valued float64 tensors (float64: K * 255 * 127 stays far below 2**53)."""
    return np.matmul(a, b)


# op type -> exact integer kernel
KERNELS: dict[str, Callable[[np.ndarray, np.ndarray, dict], np.ndarray]] = {
    "Conv": int_conv, "Gemm": int_gemm, "MatMul": int_matmul,
}


def _channel_shape(op_type: str, out_ndim: int) -> tuple[int, ...]:
    """Shape that broadcasts a per-output-channel vector over the op's output."""
    if op_type == "Conv":
        return (1, -1) + (1,) * (out_ndim - 2)
    return (1,) * (out_ndim - 1) + (-1,)


def _weight_axis_to_output(op_type: str, attrs: dict, axis: int, w_ndim: int) -> bool:
    """True when the weight's per-channel axis is the output-channel axis of the op."""
    axis %= max(w_ndim, 1)
    if op_type == "Conv":
        return axis == 0
    if op_type == "Gemm":
        return axis == (0 if attrs.get("transB", 0) else 1)
    return axis == w_ndim - 1


def _dequant_shape(zp_or_scale: np.ndarray, axis: int, ndim: int) -> np.ndarray:
    if zp_or_scale.ndim == 0 or zp_or_scale.size == 1:
        return zp_or_scale.reshape(())
    shape = [1] * ndim
    shape[axis % ndim] = -1
    return zp_or_scale.reshape(shape)


def _exact_op_class(op_type: str):
    from onnx.reference.op_run import OpRun

    kernel = KERNELS[op_type]

    def _run(self, xq, xs, xz, wq, ws, wz, bias=None, **_):
        attrs = {k: getattr(self, k, None) for k in ("group", "strides", "dilations", "pads", "auto_pad",
                                                     "transA", "transB")}
        attrs = {k: v for k, v in attrs.items() if v is not None}
        waxis = int(getattr(self, "w_axis", 0))
        x = xq.astype(np.float64) - np.asarray(xz, np.float64)
        w = wq.astype(np.float64) - _dequant_shape(np.asarray(wz, np.float64), waxis, wq.ndim)
        acc = kernel(x, w, attrs)
        out_scale = float(np.asarray(xs).reshape(-1)[0]) * np.asarray(ws, np.float64).reshape(-1)
        shape = _channel_shape(op_type, acc.ndim)
        out_scale = out_scale.reshape(shape) if out_scale.size > 1 else out_scale.reshape(())
        if bias is not None:
            # the bias enters the int32 accumulator, rounded to its scale (as ORT's fused kernels do)
            b = np.asarray(bias, np.float64).reshape(shape if np.size(bias) > 1 else ())
            acc = acc + np.round(b / out_scale)
        return ((acc * out_scale).astype(np.float32),)

    return type(op_type, (OpRun,), {"op_domain": DOMAIN, "_run": _run})


def _producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {o: n for n in model.graph.node for o in n.output}


def integer_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the Conv/Gemm/MatMul nodes that ``run_exact`` evaluates in integers."""
    return [n.name for n, _ in _matches(model)]


def _matches(model: onnx.ModelProto) -> list[tuple[onnx.NodeProto, tuple]]:
    prod = _producers(model)
    inits = {t.name for t in model.graph.initializer}
    found = []
    for n in model.graph.node:
        if n.op_type not in KERNELS or len(n.input) < 2:
            continue
        dq_x, dq_w = prod.get(n.input[0]), prod.get(n.input[1])
        if dq_x is None or dq_w is None or dq_x.op_type != "DequantizeLinear" or dq_w.op_type != "DequantizeLinear":
            continue
        if dq_w.input[0] not in inits or len(dq_x.input) < 3 or len(dq_w.input) < 3:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        w_axis = next((helper.get_attribute_value(a) for a in dq_w.attribute if a.name == "axis"), 1)
        if any(a.name == "block_size" and helper.get_attribute_value(a) for a in dq_w.attribute):
            continue
        w_rank = len(next(t for t in model.graph.initializer if t.name == dq_w.input[0]).dims)
        scale_size = _init_size(model, dq_w.input[1])
        if scale_size > 1 and not _weight_axis_to_output(n.op_type, attrs, w_axis, w_rank):
            continue   # per-channel along the reduction axis: not an integer kernel's layout
        bias = n.input[2] if len(n.input) > 2 and n.input[2] else None
        if bias is not None and (bias not in inits or attrs.get("beta", 1.0) != 1.0 or attrs.get("alpha", 1.0) != 1.0):
            continue
        found.append((n, (dq_x.input[:3], dq_w.input[:3], bias, w_axis, attrs)))
    return found


def _init_size(model: onnx.ModelProto, name: str) -> int:
    for t in model.graph.initializer:
        if t.name == name:
            return int(np.prod(t.dims)) if len(t.dims) else 1
    return 1


def rewrite_integer_ops(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` whose integer-evaluable nodes are custom-domain nodes (see module doc)."""
    out = onnx.ModelProto.FromString(model.SerializeToString())
    matched = {n.name or id(n): spec for n, spec in _matches(out)}
    nodes = []
    for n in out.graph.node:
        spec = matched.get(n.name or id(n))
        if spec is None:
            nodes.append(n)
            continue
        (xq, xs, xz), (wq, ws, wz), bias, w_axis, attrs = spec
        inputs = [xq, xs, xz, wq, ws, wz] + ([bias] if bias else [])
        keep = {k: v for k, v in attrs.items() if k not in ("alpha", "beta", "kernel_shape")}
        nodes.append(helper.make_node(n.op_type, inputs, list(n.output), name=n.name, domain=DOMAIN,
                                      w_axis=int(w_axis), **keep))
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    if not sort_nodes(out):
        raise ValueError("the QDQ graph has a cycle or a missing input")
    out.opset_import.append(helper.make_opsetid(DOMAIN, 1))
    return out


class ExactIntEvaluator:
    """``ExactIntEvaluator(qdq_model).run(samples) -> list of outputs`` (one sample at a time)."""

    def __init__(self, model: onnx.ModelProto):
        from onnx.reference import ReferenceEvaluator
        from . import exact_int_ops
        rewritten = rewrite_integer_ops(model)
        self.integer_nodes = sum(1 for n in rewritten.graph.node if n.domain == DOMAIN)
        ops = [_exact_op_class(t) for t in KERNELS] + list(exact_int_ops.FAST_FLOAT_OPS)
        self._ref = ReferenceEvaluator(rewritten, new_ops=ops)
        self._input = real_inputs(model)[0].name

    def run(self, samples: np.ndarray, progress=None) -> list[np.ndarray]:
        parts = []
        for x in samples:
            parts.append(self._ref.run(None, {self._input: np.ascontiguousarray(x[None], np.float32)}))
            if progress is not None:
                progress.update(1)
        return [np.concatenate([p[k] for p in parts]).astype(np.float32) for k in range(len(parts[0]))]


def run_exact(model: onnx.ModelProto, samples: np.ndarray, progress=None) -> list[np.ndarray]:
    """Outputs of the QDQ ``model`` for NCHW float ``samples`` in exact integer arithmetic."""
    return ExactIntEvaluator(model).run(samples, progress)
