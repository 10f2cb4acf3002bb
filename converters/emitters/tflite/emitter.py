"""ONNX -> .tflite emitter entry point: ``emit(EmitRequest) -> EmittedArtifact``.

Precisions (``request.precision``): "fp32"; "fp16" (float16 weights + DEQUANTIZE); "int8"
full-integer with ``request.calibration.ranges`` (``options["int8_mode"] = "dynamic"`` for
dynamic-range int8 instead); "int4" (full-integer int8 activations, weights from the shared int4 plan
``request.int4``: per-channel int4/int8 convolutions, per-tensor FULLY_CONNECTED; a size recipe). Options: ``io_dtype`` "float32" (default) | "int8" | "uint8" for full-integer models.
The input layout (``request.input_layout``) is written into the model metadata under
``edgeinfer_layout``; the file is written only when the whole graph converted.
"""
from __future__ import annotations

import os
import time
from pathlib import Path


from edgeinfer.errors import EdgeInferError

from ..api import EmitRequest, EmittedArtifact
from .builder import quant_params
from .context import FLOAT32, NHWC, UINT8, Converter, Value, identity
from .op_versions import check_runtimes, runs_in
from .ops import HANDLERS
from .prepare import constants_from_nodes, fold_batchnorm, pin_batch, plan_fusion, plan_gap_heads, static_shapes

LAYOUT_METADATA = "edgeinfer_layout"
SKIPPED = {"Constant"}
INT4_NOTE = ("int4 weights ({method}, per output channel; FULLY_CONNECTED per tensor, as tflite-runtime 2.14 needs): "
             "{four} layers at 4 bits, {eight} at 8 bits; activations int8. A size recipe, not a speed-up.")


def _mode(request: EmitRequest) -> str:
    p = request.precision
    if p == "int8" and request.options.get("int8_mode", "full") == "dynamic":
        return "dynamic"
    if p not in ("fp32", "fp16", "int8", "int4"):
        raise EdgeInferError(f"TFLite emitter: precision {p!r} is not supported; supported: fp32, fp16, int8, int4")
    return p


def check_supported(model) -> None:
    """Reject the first node whose op has no handler, naming it and the supported ops."""
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx"):
            raise EdgeInferError(f"TFLite emitter: node {node.name or node.output[0]!r} uses custom domain {node.domain!r}; "
                                 "only standard ONNX ops are supported")
        if node.op_type not in HANDLERS and node.op_type not in SKIPPED | {"BatchNormalization"}:
            raise EdgeInferError(f"TFLite emitter: node {node.name or node.output[0]!r} has op {node.op_type!r}, which has "
                                 f"no TFLite handler; supported: {', '.join(sorted(HANDLERS))}")


def _kept_float(node, float_nodes: set[str]) -> bool:
    """True when the recipe keeps ``node`` in float (named by node name or first output)."""
    return bool(float_nodes) and (node.name in float_nodes or (len(node.output) > 0 and node.output[0] in float_nodes))


def weighted_input_means(model, calib) -> dict:
    """Per-channel means of the float inputs of every Conv and Gemm with a constant weight and a
    bias (the ones bias correction changes), on the calibration images (cached on ``calib``, shared
    with the ONNX emitter's bias correction)."""
    from ...bias_correction import cached_input_means
    if calib.samples is None or not len(calib.samples):
        return {}
    consts = {t.name for t in model.graph.initializer}
    tensors = {n.input[0] for n in model.graph.node
               if n.op_type in ("Conv", "Gemm") and len(n.input) > 2 and n.input[1] in consts and n.input[2]}
    return cached_input_means(model, calib.samples, tensors, calib.channel_means)


def build(request: EmitRequest) -> tuple[bytes, Converter, str]:
    """Convert ``request.model``; returns (.tflite bytes, converter state, io dtype)."""
    mode = _mode(request)
    io_dtype = request.options.get("io_dtype", "float32") if mode in ("int8", "int4") else "float32"
    if io_dtype not in ("float32", "int8", "uint8"):
        raise EdgeInferError(f"TFLite emitter: io_dtype {io_dtype!r} is not supported; use float32, int8 or uint8")
    layout = request.input_layout.upper()
    if layout not in ("NCHW", "NHWC"):
        raise EdgeInferError(f"TFLite emitter: input_layout {request.input_layout!r} is not supported; use NHWC or NCHW")
    check_supported(request.model)
    model, pinned = pin_batch(request.model)
    ranges = None
    if mode in ("int8", "int4"):
        if request.calibration is None:
            raise EdgeInferError(f"TFLite emitter: {mode} (full-integer, int8 activations) needs calibration ranges: "
                                 "pass --calib images")
        ranges = request.calibration.ranges
    ctx = Converter(model, mode, ranges, io_dtype)
    if mode == "int8" and request.options.get("bias_correction", True):
        ctx.channel_means = weighted_input_means(request.model, request.calibration)
    if mode == "int4":
        from ...int4 import plan_for
        ctx.int4_plan = plan_for(request.int4, model, "tflite")
    float_nodes = set(request.options.get("nodes_to_exclude") or ()) if ctx.quantized else set()
    ctx.pinned_batch = pinned
    ctx.shapes = static_shapes(model)
    constants_from_nodes(ctx)
    fold_batchnorm(ctx)
    plan_fusion(ctx)
    plan_gap_heads(ctx)
    nodes = list(model.graph.node)
    for i, head in list(ctx.gap_heads.items()):           # a float-island GAP or head keeps its own op
        if _kept_float(nodes[i], float_nodes) or _kept_float(head, float_nodes):
            ctx.skip.discard(nodes.index(head))
            del ctx.gap_heads[i]
    for i, (_, act_node) in list(ctx.fused.items()):      # float-island producers keep a separate activation
        if _kept_float(nodes[i], float_nodes):
            ctx.skip.discard(nodes.index(act_node))
            del ctx.fused[i]
    if ctx.quantized:
        ctx.plan_float_islands({i for i, n in enumerate(nodes) if _kept_float(n, float_nodes)}, nodes)
    inputs = [_graph_input(ctx, vi, layout) for vi in model.graph.input if vi.name not in ctx.consts]
    for i, node in enumerate(model.graph.node):
        if i in ctx.skip or node.op_type in SKIPPED:
            continue
        ctx.node = node
        for out in node.output:
            if out and out not in ctx.shapes:
                ctx.shape(out)  # raises the "no static shape" error
        if _kept_float(node, float_nodes):
            ctx.float_nodes.append(node.name or node.output[0])
            ctx.run_in_float(HANDLERS[node.op_type], i, node)
        else:
            HANDLERS[node.op_type](ctx, i, node)
    ctx.node = None
    outputs = [_graph_output(ctx, vi.name) for vi in model.graph.output]
    desc = f"edgeinfer {mode} input_layout={layout}"
    data = ctx.b.finish(inputs, outputs, desc, {LAYOUT_METADATA: layout.encode()})
    check_runtimes(ctx.b.requirements, request.options.get("tflite_runtimes"))
    return data, ctx, io_dtype


def _graph_input(ctx: Converter, vi, layout: str) -> int:
    shape = ctx.shape(vi.name)
    perm = NHWC if (layout == "NHWC" and len(shape) == 4) else identity(len(shape))
    stored = [shape[p] for p in perm]
    if not ctx.quantized:
        t = ctx.b.add_tensor(vi.name, stored, FLOAT32)
        ctx.values[vi.name] = Value(t, shape, perm)
        return t
    s, z = ctx.qparams(vi.name)
    if ctx.io_dtype == "int8":
        return ctx.new_value(vi.name, shape, perm).tensor
    t = ctx.b.add_tensor(vi.name, stored, FLOAT32 if ctx.io_dtype == "float32" else UINT8,
                         None if ctx.io_dtype == "float32" else quant_params(s, z + 128))
    v = ctx.new_value(vi.name + "_int8", shape, perm, q=(s, z))
    ctx.values[vi.name] = v
    ctx.b.add_op("QUANTIZE", [t], [v.tensor], None)
    return t


def _graph_output(ctx: Converter, name: str) -> int:
    """The output tensor in ONNX order; int8 values follow ``io_dtype``, a float-island output stays float32."""
    v = ctx.float_outputs.get(name) or ctx.get(name)
    t = ctx.onnx_order(v)
    shape = list(v.shape)
    is_float = ctx.b.ttype(t) == FLOAT32
    if ctx.quantized and is_float and ctx.io_dtype != "float32":
        ctx.notes.append(f"output {name!r} stays float32 (its producer is kept in float); io_dtype {ctx.io_dtype} applies to the other tensors")
    if not ctx.quantized or ctx.io_dtype == "int8" or is_float:
        if ctx.b.tensors[t].name != name:     # an aliased/internal tensor: give the output its ONNX name
            out = ctx.scratch(name, shape, t)
            ctx.reshape(t, shape, out=out)
            t = out
        return t
    if ctx.io_dtype == "float32":
        out = ctx.b.add_tensor(name, shape, FLOAT32)
        ctx.b.add_op("DEQUANTIZE", [t], [out], None)
        return out
    s, z = ctx.qof(t)
    out = ctx.b.add_tensor(name, shape, UINT8, quant_params(s, z + 128))
    ctx.b.add_op("QUANTIZE", [t], [out], None)
    return out


def emit(request: EmitRequest) -> EmittedArtifact:
    """Write ``request.out_path`` (.tflite) or raise ``EdgeInferError`` having written nothing."""
    t0 = time.perf_counter()
    data, ctx, io_dtype = build(request)
    out = Path(request.out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, out)
    notes, extra = [], {}
    if ctx.mode == "int4":
        from ...int4 import artifact_details
        from .stored_weights import read_integers
        try:
            extra = artifact_details(ctx.int4_plan, read_integers(out), ctx.float_nodes)
        except Exception:
            out.unlink(missing_ok=True)
            raise
        bits = ctx.int4_plan.bits_summary()
        notes.append(INT4_NOTE.format(four=bits["4"], eight=bits["8"], method=ctx.int4_plan.method))
    notes.extend(ctx.notes)
    if ctx.float_nodes:
        notes.append(f"{len(ctx.float_nodes)} node(s) kept in float inside the int8 graph: {', '.join(ctx.float_nodes[:8])}")
    if ctx.mode == "dynamic":
        notes.append("dynamic-range int8: int8 weights, float activations (hybrid kernels)")
    if ctx.mode == "fp16":
        notes.append("fp16: float16 weights dequantized to float32 at load; compute in float32")
    if ctx.pinned_batch:
        notes.append("symbolic batch pinned to 1 in the file; the runtime resizes the input for larger batches")
    elapsed = time.perf_counter() - t0
    return EmittedArtifact(
        path=out, format="tflite", precision=request.precision, input_layout=request.input_layout.upper(),
        io_dtype=io_dtype, notes=notes,
        details={"op_counts": dict(ctx.b.op_counts), "op_versions": ctx.b.opcode_versions(),
                 "runs_in": runs_in(ctx.b.requirements),
                 "mode": ctx.mode, "int4_ops": sorted(ctx.int4_ops), "float_nodes": list(ctx.float_nodes), "seconds": round(elapsed, 3), **extra},
    )
