"""ONNX storage of an int4 plan (``converters.int4``): the plan's integers, nothing re-rounded.

* Conv: the weight as a 2-D ``[out, K]`` INT4 (or INT8 for 8-bit layers) initializer behind
  ``DequantizeLinear`` (opset 21, ``block_size`` = the plan's block; per-axis when one block per
  row), then ``Reshape`` to the 4-D kernel; scales stored as float16 (+ ``Cast``) when exact.
  Storage-only: ONNX Runtime computes in float.
* Gemm / MatMul at 4 bits with power-of-two blocks >= 16: ``com.microsoft.MatMulNBits`` (the
  integers + 8 as unsigned nibbles, zero point implied 8), bias as an ``Add``; otherwise
  (8-bit or other blocks) ``DequantizeLinear`` + the original op.
``read_integers(model)`` gives back ``node -> (bits, [out, K])`` for ``Int4Plan.compare``.
"""
from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgeinfer.errors import EdgeInferError

from ..int4.plan import Int4Plan, LayerQuant

DQ_SUFFIX = "/weight_dq"
MS_DOMAIN = "com.microsoft"


def _int_tensor(name: str, q: np.ndarray, bits: int) -> onnx.TensorProto:
    """INT8, or INT4 packed two per byte in ``raw_data`` (``helper.make_tensor`` with a value list
    would store one varint per pair: ~40 % larger)."""
    if bits == 8:
        return numpy_helper.from_array(q.astype(np.int8), name)
    return numpy_helper.from_array(q.astype(np.int8).astype(ml_dtypes.int4), name)


def _scale(name: str, scales: np.ndarray) -> tuple[list, list]:
    """The scales as a float16 initializer + Cast when float16 holds them exactly (the plan rounds
    them so), else float32: (initializers, nodes) producing float32 ``name + "_scale"``."""
    s = np.ascontiguousarray(scales, np.float32)
    s16 = s.astype(np.float16)
    if np.array_equal(s16.astype(np.float32), s):
        return ([numpy_helper.from_array(s16, name + "_scale16")],
                [helper.make_node("Cast", [name + "_scale16"], [name + "_scale"], to=TensorProto.FLOAT,
                                  name=name + "/scale_cast")])
    return [numpy_helper.from_array(s, name + "_scale")], []


def _dq(name: str, q: np.ndarray, scales: np.ndarray, bits: int, axis: int, out: str) -> tuple[list, list]:
    """Initializers + nodes dequantizing integers ``q`` blocked along ``axis`` (scales same rank)."""
    nblocks = scales.shape[axis]
    per_axis = nblocks == 1                            # one scale per row: per-axis
    inits, nodes = _scale(name, scales.reshape(-1) if per_axis else scales)
    inits.insert(0, _int_tensor(name + "_q", q, bits))
    attrs = {"axis": 1 - axis} if per_axis else {"axis": axis, "block_size": q.shape[axis] // nblocks}
    nodes.append(helper.make_node("DequantizeLinear", [name + "_q", name + "_scale"], [out], name=name + DQ_SUFFIX, **attrs))
    return inits, nodes


def _conv(lq: LayerQuant, node: onnx.NodeProto) -> tuple[list, list]:
    w = lq.layer.weight
    if lq.per_tensor:
        scales = np.full((lq.q.shape[0], 1), lq.scales.reshape(-1)[0], np.float32)
    else:
        scales = lq.scales
    inits, nodes = _dq(w, lq.q, scales, lq.bits, 1, w + "_dq2d")
    inits.append(numpy_helper.from_array(np.asarray(lq.layer.shape, np.int64), w + "_shape"))
    nodes.append(helper.make_node("Reshape", [w + "_dq2d", w + "_shape"], [w + "_dq"], name=w + "/weight_reshape"))
    node.input[1] = w + "_dq"
    return inits, nodes + [node]


def _nbits_ok(lq: LayerQuant) -> bool:
    b = lq.block_cols
    return lq.bits == 4 and not lq.per_tensor and b >= 16 and (b & (b - 1)) == 0


def _matmul_nbits(lq: LayerQuant, node: onnx.NodeProto) -> tuple[list, list]:
    n, k = lq.q.shape
    b = lq.block_cols
    nb = k // b
    u = (lq.q.astype(np.int16) + 8).astype(np.uint8).reshape(n, nb, b)
    packed = (u[..., 0::2] | (u[..., 1::2] << 4)).astype(np.uint8)           # low nibble first
    w = lq.layer.weight
    inits = [numpy_helper.from_array(packed, w + "_nbits"),
             numpy_helper.from_array(lq.scales.reshape(-1).astype(np.float32), w + "_nbits_scale")]
    has_bias = node.op_type == "Gemm" and len(node.input) > 2 and node.input[2]
    out = node.output[0] + "_nobias" if has_bias else node.output[0]
    nodes = [helper.make_node("MatMulNBits", [node.input[0], w + "_nbits", w + "_nbits_scale"], [out], domain=MS_DOMAIN,
                              name=lq.layer.node, K=k, N=n, bits=4, block_size=b)]
    if has_bias:
        nodes.append(helper.make_node("Add", [out, node.input[2]], [node.output[0]], name=lq.layer.node + "/bias"))
    return inits, nodes


def _dense_dq(lq: LayerQuant, node: onnx.NodeProto) -> tuple[list, list]:
    w = lq.layer.weight
    scales = np.full((lq.q.shape[0], 1), lq.scales.reshape(-1)[0], np.float32) if lq.per_tensor else lq.scales
    if lq.layer.trans_b:                                 # stored [N, K]: blocks along axis 1
        inits, nodes = _dq(w, lq.q, scales, lq.bits, 1, w + "_dq")
    else:                                                # stored [K, N]: blocks along axis 0
        inits, nodes = _dq(w, lq.q.T, scales.T, lq.bits, 0, w + "_dq")
    node.input[1] = w + "_dq"
    return inits, nodes + [node]


def to_opset21(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy at opset 21 (blocked DequantizeLinear and INT4 need it), converted by ONNX's version
    converter so ops whose signature changed (ReduceMean axes, Split, ...) stay valid."""
    version = next((op.version for op in model.opset_import if op.domain in ("", "ai.onnx")), 21)
    if version >= 21:
        return onnx.ModelProto.FromString(model.SerializeToString())
    from onnx import version_converter
    try:
        out = version_converter.convert_version(model, 21)
    except Exception as exc:   # the converter names the op it cannot adapt
        raise EdgeInferError(f"int4 ONNX needs opset 21 (blocked DequantizeLinear); converting this opset-{version} "
                             f"model failed: {str(exc).splitlines()[0][:200]}") from None
    out.ir_version = max(out.ir_version, 10)
    return out


def store_plan(model: onnx.ModelProto, plan: Int4Plan) -> tuple[onnx.ModelProto, dict[str, int]]:
    """The model with every planned weight stored as the plan's integers; returns (model, op counts
    of what was written: conv_dq, matmul_nbits, dense_dq)."""
    out = to_opset21(model)
    counts = {"conv_dq": 0, "matmul_nbits": 0, "dense_dq": 0}
    nodes, new_inits = [], []
    for node in out.graph.node:
        lq = plan.get(node.name or node.output[0])
        if lq is None or len(node.input) < 2 or node.input[1] != lq.layer.weight:
            nodes.append(node)
            continue
        if node.op_type == "Conv":
            inits, made = _conv(lq, node)
            counts["conv_dq"] += 1
        elif _nbits_ok(lq):
            inits, made = _matmul_nbits(lq, node)
            counts["matmul_nbits"] += 1
        else:
            inits, made = _dense_dq(lq, node)
            counts["dense_dq"] += 1
        new_inits += inits
        nodes += made
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    out.graph.initializer.extend(new_inits)
    used = {i for n in out.graph.node for i in n.input}
    keep = [t for t in out.graph.initializer if t.name in used]
    del out.graph.initializer[:]
    out.graph.initializer.extend(keep)
    if counts["matmul_nbits"] and not any(op.domain == MS_DOMAIN for op in out.opset_import):
        out.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    out.ir_version = max(out.ir_version, 10)
    return out, counts


def read_integers(model: onnx.ModelProto) -> dict[str, tuple[int, np.ndarray]]:
    """node name -> (bits, integers [out, K]) as stored by ``store_plan``."""
    inits = {t.name: t for t in model.graph.initializer}
    consumer = {}
    for n in model.graph.node:
        for i in n.input:
            consumer.setdefault(i, []).append(n)
    found: dict[str, tuple[int, np.ndarray]] = {}
    for n in model.graph.node:
        if n.op_type == "MatMulNBits":
            a = {x.name: helper.get_attribute_value(x) for x in n.attribute}
            packed = numpy_helper.to_array(inits[n.input[1]])
            lo, hi = packed & 0x0F, packed >> 4
            u = np.stack([lo, hi], axis=-1).reshape(a["N"], -1)[:, :a["K"]]
            found[n.name] = (int(a["bits"]), u.astype(np.int8) - 8)
        elif n.op_type == "DequantizeLinear" and n.name.endswith(DQ_SUFFIX) and n.input[0] in inits:
            t = inits[n.input[0]]
            q = numpy_helper.to_array(t).astype(np.int8)
            bits = 4 if t.data_type == TensorProto.INT4 else 8
            user = consumer[n.output[0]][0]
            if user.op_type == "Reshape":                 # conv: 2-D [out, K] -> Reshape -> Conv
                user = consumer[user.output[0]][0]
            elif user.op_type == "MatMul" or (user.op_type == "Gemm" and not _trans_b(user)):
                q = q.T
            found[user.name or user.output[0]] = (bits, q)
    return found


def _trans_b(node: onnx.NodeProto) -> bool:
    return any(a.name == "transB" and a.i for a in node.attribute)
