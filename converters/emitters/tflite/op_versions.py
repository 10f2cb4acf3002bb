"""TFLite operator versions derived from each operator's actual signature, and the runtimes that run them.

A TFLite runtime runs an operator only if its resolver registers that (op, version). The version a
file must declare follows from the operator's signature: tensor types, ranks, quantization and
options (the rules of TFLite's ``tools/versioning/op_version.cc``, re-stated here for the ops this
emitter writes: one function per op in ``RULES``). ``derive(model_builder)`` computes every
operator's version after the graph is built, so no handler picks versions by hand, and
``check_runtimes`` refuses at convert time — naming the op, the feature that raised its version and
the runtimes that can run it — instead of the device failing at allocation.

``RUNTIME_MAX`` holds the highest version each runtime registers per op, measured with
``tools/probe_tflite_op_versions.py`` (re-run it when a runtime is added or updated).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from ai_edge_litert import schema_py_generated as fb

from edgeinfer.errors import EdgeInferError

T = fb.TensorType
NONE = -1      # an absent optional input (index -1)


@dataclass
class TensorSig:
    type: int
    shape: tuple[int, ...]
    per_channel: bool = False
    scale: float = 0.0            # first (or only) quantization scale; 0 when not quantized

    @property
    def rank(self) -> int:
        return len(self.shape)


@dataclass
class OpSig:
    op: str
    inputs: list[TensorSig]       # absent optional inputs have type NONE
    outputs: list[TensorSig]
    options: object | None = None
    why: list[str] = field(default_factory=list)   # features that raised the version (filled by rules)

    def t(self, i: int, out: bool = False) -> int:
        seq = self.outputs if out else self.inputs
        return seq[i].type if i < len(seq) else NONE

    def need(self, version: int, why: str) -> int:
        self.why.append(why)
        return version


def _broadcast_above4(s: OpSig) -> bool:
    a, b = s.inputs[0], s.inputs[1] if len(s.inputs) > 1 else None
    return b is not None and a.shape != b.shape and max(a.rank, b.rank) > 4


def _int8_or(base: int = 1) -> Callable[[OpSig], int]:
    """Ops whose only feature here is the int8 kernel (version 2)."""
    def rule(s: OpSig) -> int:
        return s.need(2, "int8") if s.t(0) == T.INT8 else base
    return rule


def _conv_2d(s: OpSig) -> int:
    x, w, y = s.t(0), s.t(1), s.t(0, out=True)
    if x == T.INT8 and w == T.INT4 and y == T.INT8:
        return s.need(7, "int4 filter")
    if x == T.INT8 and w == T.INT8 and y == T.INT8:
        return s.need(3, "int8")
    if x == T.FLOAT32 and w == T.INT8 and y == T.FLOAT32:
        return s.need(5, "hybrid, per-channel int8 filter") if s.inputs[1].per_channel else s.need(2, "hybrid int8 filter")
    return 1


def _depthwise_conv_2d(s: OpSig) -> int:
    x, w, y = s.t(0), s.t(1), s.t(0, out=True)
    if x == T.FLOAT32 and w == T.INT8 and y == T.FLOAT32:
        return s.need(6, "hybrid, per-channel int8 filter") if s.inputs[1].per_channel else s.need(4, "hybrid int8 filter")
    if x == T.INT8 and w == T.INT8 and y == T.INT8:
        return s.need(3, "int8")
    if x == T.INT8 and w == T.INT4 and y == T.INT8:
        return s.need(7, "int4 filter")
    o = s.options
    if o is not None and (o.dilationHFactor != 1 or o.dilationWFactor != 1):
        return s.need(2, "dilation")
    return 1


def _fully_connected(s: OpSig) -> int:
    x, w, y = s.t(0), s.t(1), s.t(0, out=True)
    o = s.options
    if x == T.FLOAT32 and w == T.INT8 and y == T.FLOAT32 and s.inputs[1].per_channel:
        return s.need(12, "hybrid, per-channel int8 weights")
    if len(s.inputs) == 2:
        return s.need(6, "no bias input")
    if o is not None and o.keepNumDims:
        return s.need(5, "keep_num_dims")
    if x == T.INT8 and w == T.INT8 and y == T.INT8:
        return s.need(4, "int8")
    if x == T.INT8 and w == T.INT4 and y == T.INT8:
        return s.need(10, "int4 weights")
    if x == T.FLOAT32 and w == T.INT8 and y == T.FLOAT32:
        if o is not None and o.asymmetricQuantizeInputs:
            return s.need(9, "hybrid, asymmetric input quantization")
        return s.need(3, "hybrid int8 weights")
    return 1


def _batch_matmul(s: OpSig) -> int:
    if s.t(0) == T.INT8:
        return s.need(2, "int8")
    if s.t(0) == T.FLOAT32 and s.t(1) == T.INT8 and s.options is not None and s.options.asymmetricQuantizeInputs:
        return s.need(4, "hybrid, asymmetric input quantization")
    return 1


def _add(s: OpSig) -> int:
    if s.t(0) == T.INT64:
        return s.need(4, "int64")
    return _int8_or()(s)


def _sub(s: OpSig) -> int:
    if s.t(0) == T.INT64:
        return s.need(4, "int64")
    if _broadcast_above4(s):
        return s.need(3, "broadcasting above rank 4")
    return _int8_or()(s)


def _mul(s: OpSig) -> int:
    if s.t(0) == T.INT64:
        return s.need(5, "int64")
    a, b, y = s.inputs[0].scale, s.inputs[1].scale, s.outputs[0].scale
    if a and b and y and a * b / y >= 1.0:
        return s.need(3, "int8 rescale >= 1 (input scales product >= output scale)")
    return _int8_or()(s)


def _div(s: OpSig) -> int:
    return s.need(2, "broadcasting above rank 4") if _broadcast_above4(s) else 1


def _min_max(s: OpSig) -> int:
    if _broadcast_above4(s):
        return s.need(3, "broadcasting above rank 4")
    return _int8_or()(s)


def _transpose(s: OpSig) -> int:
    r = s.inputs[0].rank
    if r > 5:
        return s.need(6, f"rank {r}")
    if r > 4:
        return s.need(4, f"rank {r}")
    if s.t(0) == T.BOOL:
        return s.need(3, "bool")
    return _int8_or()(s)


def _pad(s: OpSig) -> int:
    r = s.inputs[0].rank
    return s.need(4, f"rank {r}") if r > 4 else _int8_or()(s)


def _resize_bilinear(s: OpSig) -> int:
    if s.options is not None and s.options.halfPixelCenters:
        return s.need(3, "half_pixel_centers")
    return _int8_or()(s)


def _resize_nearest(s: OpSig) -> int:
    o = s.options
    if o is not None and (o.halfPixelCenters or o.alignCorners):
        return s.need(3, "half_pixel_centers" if o.halfPixelCenters else "align_corners")
    return _int8_or()(s)


def _strided_slice(s: OpSig) -> int:
    o = s.options
    if o is not None and getattr(o, "offset", False):
        return s.need(8, "offset")
    if o is not None and (o.ellipsisMask or o.newAxisMask):
        return s.need(6, "ellipsis/new-axis mask")
    r = s.inputs[0].rank
    if r > 4:
        return s.need(4, f"rank {r}")
    return _int8_or()(s)


def _split(s: OpSig) -> int:
    t = s.t(1)            # input 0 is the axis
    if t == T.INT32:
        return s.need(3, "int32")
    return s.need(2, "int8") if t == T.INT8 else 1


def _gather(s: OpSig) -> int:
    if s.t(0) == T.INT4:
        return s.need(7, "int4")
    if s.options is not None and getattr(s.options, "batchDims", 0):
        return s.need(5, "batch_dims")
    if s.t(0) == T.BOOL:
        return s.need(3, "bool")
    return _int8_or()(s)


def _quantize(s: OpSig) -> int:
    if T.INT4 in (s.t(0), s.t(0, out=True)):
        return s.need(4, "int4")
    if s.outputs[0].per_channel:
        return s.need(3, "per-channel")
    if s.t(0, out=True) == T.INT16:
        return s.need(2, "int16 output")
    return 1


def _dequantize(s: OpSig) -> int:
    t = s.t(0)
    if t == T.INT4:
        return s.need(6, "int4")
    if t in (T.INT16, T.FLOAT16):
        return s.need(3, "float16" if t == T.FLOAT16 else "int16")
    if t == T.INT8:
        return s.need(5, "per-channel int8") if s.inputs[0].per_channel else s.need(2, "int8")
    return 1


def _one(s: OpSig) -> int:
    return 1


RULES: dict[str, Callable[[OpSig], int]] = {
    "CONV_2D": _conv_2d, "DEPTHWISE_CONV_2D": _depthwise_conv_2d, "FULLY_CONNECTED": _fully_connected,
    "BATCH_MATMUL": _batch_matmul, "ADD": _add, "SUB": _sub, "MUL": _mul, "DIV": _div,
    "MAXIMUM": _min_max, "MINIMUM": _min_max, "CONCATENATION": _int8_or(), "RESHAPE": _one,
    "TRANSPOSE": _transpose, "MEAN": _int8_or(), "SOFTMAX": _int8_or(), "MIRROR_PAD": _int8_or(),
    "RELU6": _int8_or(), "RELU": _int8_or(), "LOGISTIC": _int8_or(), "AVERAGE_POOL_2D": _int8_or(),
    "MAX_POOL_2D": _int8_or(), "PAD": _pad, "PADV2": _pad, "RESIZE_BILINEAR": _resize_bilinear,
    "RESIZE_NEAREST_NEIGHBOR": _resize_nearest, "STRIDED_SLICE": _strided_slice, "SPLIT": _split,
    "SPLIT_V": _int8_or(), "GATHER": _gather, "RELU_N1_TO_1": _one, "HARD_SWISH": _one,
    "QUANTIZE": _quantize, "DEQUANTIZE": _dequantize,
}

# Highest version registered per op, measured by tools/probe_tflite_op_versions.py (2026-11-30).
RUNTIME_MAX: dict[str, dict[str, int]] = {
    "tflite-runtime 2.14.0": {
        "ADD": 5, "AVERAGE_POOL_2D": 3, "BATCH_MATMUL": 4, "CONCATENATION": 4, "CONV_2D": 7, "DEPTHWISE_CONV_2D": 7,
        "DEQUANTIZE": 5, "DIV": 2, "FULLY_CONNECTED": 10, "GATHER": 6, "HARD_SWISH": 1, "LOGISTIC": 3, "MAXIMUM": 4,
        "MAX_POOL_2D": 3, "MEAN": 3, "MINIMUM": 4, "MIRROR_PAD": 3, "MUL": 7, "PAD": 4, "PADV2": 4, "QUANTIZE": 3,
        "RELU": 3, "RELU6": 3, "RELU_N1_TO_1": 1, "RESHAPE": 1, "RESIZE_BILINEAR": 4, "RESIZE_NEAREST_NEIGHBOR": 4,
        "SOFTMAX": 3, "SPLIT": 4, "SPLIT_V": 2, "STRIDED_SLICE": 8, "SUB": 5, "TRANSPOSE": 6},
    "ai-edge-litert 2.3.0": {
        "ADD": 6, "AVERAGE_POOL_2D": 3, "BATCH_MATMUL": 4, "CONCATENATION": 7, "CONV_2D": 8, "DEPTHWISE_CONV_2D": 7,
        "DEQUANTIZE": 9, "DIV": 2, "FULLY_CONNECTED": 14, "GATHER": 8, "HARD_SWISH": 1, "LOGISTIC": 3, "MAXIMUM": 4,
        "MAX_POOL_2D": 3, "MEAN": 3, "MINIMUM": 4, "MIRROR_PAD": 3, "MUL": 8, "PAD": 6, "PADV2": 6, "QUANTIZE": 6,
        "RELU": 3, "RELU6": 3, "RELU_N1_TO_1": 1, "RESHAPE": 1, "RESIZE_BILINEAR": 4, "RESIZE_NEAREST_NEIGHBOR": 4,
        "SOFTMAX": 4, "SPLIT": 5, "SPLIT_V": 3, "STRIDED_SLICE": 8, "SUB": 5, "TRANSPOSE": 9},
}


def _tensor_sig(tensors, i: int) -> TensorSig:
    if i < 0:
        return TensorSig(NONE, ())
    t = tensors[i]
    q = t.quantization
    scales = np.asarray(q.scale) if q is not None and q.scale is not None else np.zeros(0)
    return TensorSig(int(t.type), tuple(int(d) for d in t.shape), per_channel=scales.size > 1,
                     scale=float(scales[0]) if scales.size else 0.0)


def signature(op: str, operator, tensors) -> OpSig:
    """The signature of one ``OperatorT`` over the builder's ``TensorT`` list."""
    return OpSig(op, [_tensor_sig(tensors, i) for i in operator.inputs], [_tensor_sig(tensors, i) for i in operator.outputs],
                 operator.builtinOptions)


def op_version(sig: OpSig) -> int:
    rule = RULES.get(sig.op)
    if rule is None:
        raise EdgeInferError(f"TFLite emitter: no version rule for op {sig.op}; add one to op_versions.RULES")
    return rule(sig)


@dataclass
class Requirement:
    op: str
    version: int
    why: str


def derive(ops: list[tuple[str, object]], tensors) -> dict[str, Requirement]:
    """{op: highest Requirement} over ``(op name, OperatorT)`` pairs."""
    need: dict[str, Requirement] = {}
    for name, operator in ops:
        sig = signature(name, operator, tensors)
        v = op_version(sig)
        if name not in need or v > need[name].version:
            need[name] = Requirement(name, v, sig.why[-1] if sig.why else "float32")
    return need


def runtimes_for(op: str, version: int) -> list[str]:
    return [rt for rt, table in RUNTIME_MAX.items() if table.get(op, 0) >= version]


def runs_in(need: dict[str, Requirement]) -> list[str]:
    """The known runtimes that register every (op, version) of a file."""
    return [rt for rt, table in RUNTIME_MAX.items() if all(table.get(r.op, 0) >= r.version for r in need.values())]


def check_runtimes(need: dict[str, Requirement], runtimes: list[str] | None = None) -> None:
    """Refuse a file that one of ``runtimes`` (default: every runtime in RUNTIME_MAX, so files run in
    tflite-runtime 2.14 as Raspberry Pi OS installs it) cannot run, naming the op."""
    targets = list(RUNTIME_MAX) if runtimes is None else runtimes
    for req in need.values():
        short = [rt for rt in targets if RUNTIME_MAX.get(rt, {}).get(req.op, 0) < req.version]
        if short:
            ok = runtimes_for(req.op, req.version)
            limits = ", ".join(f"{rt} runs up to v{RUNTIME_MAX[rt].get(req.op, 0)}" for rt in short)
            raise EdgeInferError(
                f"TFLite emitter: {req.op} needs version {req.version} ({req.why}); {limits}; "
                f"runtimes that can run it: {', '.join(ok) if ok else 'none known'}. "
                "Choose another precision (e.g. --quant int8 instead of int4) or another format")
