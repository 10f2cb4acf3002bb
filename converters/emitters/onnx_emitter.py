"""ONNX emitter: the cleaned graph at the requested precision, one recipe per precision."""
from __future__ import annotations

from typing import Callable

import onnx

from edgeinfer.errors import EdgeInferError, NotSupportedYet

from .. import quantize_onnx
from .api import EmitRequest, EmittedArtifact


def _fp32(req: EmitRequest) -> tuple[onnx.ModelProto, list[str]]:
    return req.model, []


def _fp16(req: EmitRequest) -> tuple[onnx.ModelProto, list[str]]:
    return quantize_onnx.to_fp16(req.model), ["fp16 weights and compute; float32 I/O (fast on GPUs/NPUs, not on x86 CPUs)"]


def _int8(req: EmitRequest) -> tuple[onnx.ModelProto, list[str]]:
    act = req.options.get("activation_dtype", "int8")
    pair_safe = bool(req.options.get("int8_pair_safe", True))
    kept = list(req.options.get("nodes_to_exclude", ()))
    wide = list(req.options.get("int16_nodes", ()))
    if wide:
        model, kept = quantize_onnx.quantize_a16w8(req.model, req.calibration, wide, per_channel=True,
                                                   activation_dtype=act, pair_safe=pair_safe)
        wide = [n for n in wide if n not in kept]
    else:
        model = quantize_onnx.quantize_int8(req.model, req.calibration, per_channel=True, nodes_to_exclude=kept,
                                            activation_dtype=act, pair_safe=pair_safe)
    notes = [f"static QDQ: per-channel int8 weights, {act} activations ({req.calibration.method} calibration)"]
    source_opset = quantize_onnx.default_opset(req.model)
    if quantize_onnx.default_opset(model) < source_opset:
        notes.append(f"opset {source_opset} -> {quantize_onnx.QDQ_OPSET} (same ops, same meaning): ONNX Runtime on x86 "
                     "fails to load int8 QDQ graphs at opset 21+ (onnxruntime#25526)")
    notes.append("bias correction: Conv/Gemm biases absorb the mean output shift of weight rounding on the calibration images")
    if pair_safe:
        notes.append("pair-safe weights (|w[2j]|+|w[2j+1]| <= 128 per output channel): x86 CPUs without VNNI cannot "
                     "saturate their 16-bit pair sums, so every CPU computes the same; a channel with two large adjacent "
                     "weights gets the scale (between 8-bit and pair-sum/127) with the least weight error, its "
                     "over-limit pairs moved to the nearest pair on the limit (depthwise convolutions keep full 8 bits)")
    else:
        notes.append("full 8-bit weights for exact-accumulating int8 kernels (ARM NEON/dot-product, x86 VNNI); x86 CPUs "
                     "without VNNI saturate 16-bit pair sums with them, so such hosts verify in exact integer arithmetic")
    if kept:
        notes.append(f"kept in float: {_some(kept)}" + (" (the end of the graph: an NPU hands it to the CPU once, "
                                                               "like any float output)" if req.options.get("int16_nodes") else ""))
    if wide:
        notes.append(f"16-bit activations, 8-bit weights (A16W8) on {len(wide)} node(s): {_some(wide)} (NPUs with A16W8 kernels, such as Qualcomm's HTP, run them "
                     "in their quantized graph; ONNX Runtime on CPUs runs them in float between Dequantize and Quantize)")
    return model, notes


def _some(names: list[str], shown: int = 4) -> str:
    """The first ``shown`` names, then how many more."""
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")


def _int4(req: EmitRequest) -> tuple[onnx.ModelProto, list[str], dict]:
    from ..int4 import artifact_details, plan_for
    from .onnx_int4 import read_integers, store_plan
    plan = plan_for(req.int4, req.model, "onnx")
    model, counts = store_plan(req.model, plan)
    bits = plan.bits_summary()
    notes = [f"int4 weights ({plan.method}, {plan.granularity.name}): {bits['4']} layers at 4 bits, {bits['8']} at 8 bits; "
             f"{counts['matmul_nbits']} MatMul/Gemm as MatMulNBits, {counts['conv_dq'] + counts['dense_dq']} as "
             "blocked DequantizeLinear (opset 21). A size recipe: ONNX Runtime dequantizes Conv weights to float"]
    if plan.skipped:
        notes.append(f"left float: {', '.join(plan.skipped[:5])}")
    return model, notes, artifact_details(plan, read_integers(model))


# recipe -> (model, notes[, extra manifest details])
RECIPES: dict[str, Callable[[EmitRequest], tuple]] = {
    "fp32": _fp32, "fp16": _fp16, "int8": _int8, "int4": _int4,
}


def emit(req: EmitRequest) -> EmittedArtifact:
    if req.input_layout not in ("NCHW", "NHWC"):
        raise NotSupportedYet(f"ONNX input layout {req.input_layout!r} is not NCHW or NHWC")
    recipe = RECIPES.get(req.precision)
    if recipe is None:
        raise EdgeInferError(f"ONNX precision {req.precision!r} is not one of {', '.join(RECIPES)}")
    model, notes, *extra = recipe(req)
    if req.input_layout == "NHWC":  # an NHWC source: the artifact takes NHWC, like the source did
        from ..intake.layout import nhwc_input
        model = nhwc_input(model)
    onnx.save(model, str(req.out_path))
    ops: dict[str, int] = {}
    for n in model.graph.node:
        ops[n.op_type] = ops.get(n.op_type, 0) + 1
    details = {"op_counts": ops, **(extra[0] if extra else {})}
    if req.precision == "int8":
        details["pair_safe_weights"] = bool(req.options.get("int8_pair_safe", True))
    return EmittedArtifact(path=req.out_path, format="onnx", precision=req.precision, input_layout=req.input_layout,
                           io_dtype="float32", notes=notes, details=details)
