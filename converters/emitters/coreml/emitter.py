"""Core ML emitter: cleaned ONNX graph -> MIL program -> compressed ``.mlpackage``.

``emit(request)`` writes one ``.mlpackage`` directory at ``request.out_path``:
  * deployment target from the profile (``runtime.coreml_target``: iOS16/17/18, macOS13/14/15;
    default iOS16), compute precision fp16 (fp32 when ``request.precision == "fp32"``);
  * compression per ``converters.emitters.coreml.compress`` (int8 / int4 / palettize / prune);
  * W8A8 with ``options["w8a8"] = True`` and precision "int8" (iOS17/macOS14+ target, needs
    ``request.calibration``): int8 activations per ``activation_quant`` from the shared ranges
    (``options["w8a8_mode"]``: "linear_symmetric", the default, or "linear" with zero points);
  * fp32 islands in an fp16 program with ``options["fp32_ops"]`` ("head", "pool", "stem", "stem:N",
    comma-separated; see ``fp32_islands``): those ops compute in fp32 through coremltools'
    ``FP16ComputePrecision(op_selector=...)``, the rest in fp16; the share kept in fp32 is in the notes
    and ``details["fp32_ops"]`` (fp32 ops do not run on the Neural Engine);
  * image input (``ImageType``, scale/bias from ``request.preprocess``) for 4-D inputs with a
    preprocessing config, unless ``options["image_input"]`` is False;
  * class labels (``ClassifierConfig``) for classifiers with labels; metadata and the edgeinfer
    preprocessing config in ``user_defined_metadata``.
Nothing is left at ``out_path`` when it fails.
"""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeinfer.errors import EdgeInferError, NotSupportedYet

from ..api import EmitRequest, EmittedArtifact

logging.getLogger("coremltools").setLevel(logging.ERROR)

import coremltools as ct  # noqa: E402

from . import compress as _compress  # noqa: E402
from .activation_quant import quantize_activations  # noqa: E402
from .fp32_islands import op_selector, parse_groups  # noqa: E402
from .onnx_to_mil import build_program, check_supported, mil_name  # noqa: E402

TARGETS = {"iOS16": ct.target.iOS16, "iOS17": ct.target.iOS17, "iOS18": ct.target.iOS18,
           "macOS13": ct.target.macOS13, "macOS14": ct.target.macOS14, "macOS15": ct.target.macOS15}
_IOS18_LEVEL = {"iOS18", "macOS15"}
_IOS17_LEVEL = {"iOS17", "iOS18", "macOS14", "macOS15"}
_COLOR = {"rgb": "RGB", "bgr": "BGR", "gray": "GRAYSCALE"}
_BASE_CACHE: dict[tuple, Any] = {}   # last uncompressed conversion, keyed by model + settings
META_PREPROCESS = "edgeinfer.preprocess"
META_POSTPROCESS = "edgeinfer.postprocess"
META_TASK = "edgeinfer.task"


def deployment_target(request: EmitRequest) -> str:
    """Target name from options, then the profile (``runtime.coreml_target``), default iOS16."""
    prof = request.profile or {}
    runtime = prof.get("runtime") if isinstance(prof.get("runtime"), dict) else {}
    name = (request.options.get("coreml_target") or runtime.get("coreml_target") or prof.get("runtime.coreml_target")
            or prof.get("coreml_target") or "iOS16")
    if name not in TARGETS:
        raise EdgeInferError(f"Core ML deployment target {name!r} is not one of {', '.join(TARGETS)}")
    return name


@dataclass
class ImageSpec:
    """How raw pixels become the model input: input = image_scale * pixel + bias, then * channel_scale."""

    color: str
    image_scale: float
    bias: list[float]
    channel_scale: np.ndarray | None   # per-channel 1/std when std differs per channel


def image_spec(request: EmitRequest, channels: int) -> ImageSpec | None:
    """The ImageType parameters matching ``request.preprocess``, or None for a tensor input."""
    pre = request.preprocess or {}
    if not pre or request.options.get("image_input") is False or request.input_layout != "NCHW":
        return None
    color = pre.get("color", "rgb")
    if (color == "gray") != (channels == 1) or channels not in (1, 3):
        return None
    scale = float(pre.get("scale", 1 / 255))
    mean = np.broadcast_to(np.asarray(pre.get("mean") or [0.0], np.float64), (channels,))
    std = np.broadcast_to(np.asarray(pre.get("std") or [1.0], np.float64), (channels,))
    if np.allclose(std, std[0]):
        return ImageSpec(color, scale / std[0], list(-mean / std[0]), None)
    return ImageSpec(color, scale, list(-mean), (1.0 / std).astype(np.float32))


def _classifier(request: EmitRequest, model) -> Any:
    outs = list(model.graph.output)
    if request.task != "classify" or not request.labels or len(outs) != 1:
        return None
    dims = [d.dim_value for d in outs[0].type.tensor_type.shape.dim]
    if not dims or dims[-1] != len(request.labels) or int(np.prod([d or 1 for d in dims])) != len(request.labels):
        return None
    return ct.ClassifierConfig([str(s) for s in request.labels], predicted_feature_name="classLabel")


def _metadata(mlmodel, request: EmitRequest, built, img: ImageSpec | None, target: str, notes: list[str]) -> None:
    import edgeinfer

    mlmodel.author = "edgeinfer"
    mlmodel.license = str(request.options.get("license", "see the source model's license"))
    src = request.model.graph.name or "model"
    mlmodel.short_description = f"{src}: {request.task} model converted by edgeinfer ({request.precision}, {target})"
    mlmodel.version = str(getattr(edgeinfer, "__version__", "0"))
    spec_in = mlmodel.get_spec().description.input[0].name
    if img is not None:
        mlmodel.input_description[spec_in] = f"{_COLOR[img.color]} image {built.input_shape[3]}x{built.input_shape[2]}; normalization is built in"
    else:
        mlmodel.input_description[spec_in] = f"float32 tensor {list(built.input_shape)} (NCHW), preprocessed per {META_PREPROCESS}"
    for o in mlmodel.get_spec().description.output:
        mlmodel.output_description[o.name] = {"classLabel": "most likely class label"}.get(
            o.name, "class scores by label" if o.type.HasField("dictionaryType") else f"model output {o.name}")
    ud = mlmodel.user_defined_metadata
    ud[META_PREPROCESS] = json.dumps(request.preprocess or {})
    ud[META_POSTPROCESS] = json.dumps(request.postprocess or request.options.get("postprocess") or {})
    ud[META_TASK] = request.task
    if request.labels:
        ud["edgeinfer.labels"] = json.dumps([str(s) for s in request.labels])
    ud["edgeinfer.precision"] = request.precision
    ud["edgeinfer.notes"] = json.dumps(notes)


def w8a8_requested(options: dict) -> bool:
    return bool(options.get("w8a8"))


def _check_w8a8(request: EmitRequest, target: str) -> None:
    if request.precision != "int8":
        raise EdgeInferError(f"Core ML W8A8 needs precision int8 (got {request.precision}); use --quant int8 with W8A8")
    if target not in _IOS17_LEVEL:
        raise EdgeInferError(f"Core ML W8A8 (int8 activations) needs deployment target iOS17/macOS14 or newer, "
                             f"the profile targets {target}; set runtime.coreml_target to iOS17 or drop W8A8")
    if request.calibration is None or not request.calibration.ranges:
        raise EdgeInferError("Core ML W8A8 needs calibration data for the activation ranges; give --calib images")


def fp32_share(spec) -> dict:
    """How much of an ML Program computes in fp32: compute ops (not const/cast/image scale-bias/classify)
    whose float output is fp32, and the share of the float (fp16/fp32) weight-blob bytes stored as fp32."""
    from coremltools.proto import MIL_pb2

    fn = spec.mlProgram.functions["main"]
    ops = fn.block_specializations[fn.opset].operations
    f32, f16 = MIL_pb2.DataType.FLOAT32, MIL_pb2.DataType.FLOAT16
    compute = [o for o in ops if o.type not in ("const", "cast", "classify") and not o.type.startswith("constexpr_")
               and not o.outputs[0].name.endswith(("__scaled__", "__biased__"))
               and o.outputs[0].type.tensorType.dataType in (f32, f16)]
    kept = [o.outputs[0].name for o in compute if o.outputs[0].type.tensorType.dataType == f32]
    nbytes = {f32: 0, f16: 0}
    for o in ops:
        v = o.attributes.get("val")
        if o.type == "const" and v is not None and v.HasField("blobFileValue") and v.type.tensorType.dataType in nbytes:
            n = int(np.prod([d.constant.size for d in v.type.tensorType.dimensions]))
            nbytes[v.type.tensorType.dataType] += n * (4 if v.type.tensorType.dataType == f32 else 2)
    total = sum(nbytes.values()) or 1
    return {"ops": kept, "n_ops": len(kept), "of_ops": len(compute), "weight_bytes_share": nbytes[f32] / total}


def fp32_share_note(spec, islands: tuple[str, ...]) -> str:
    sh = fp32_share(spec)
    return (f"fp32 islands ({','.join(islands)}): {sh['n_ops']} of {sh['of_ops']} compute ops and "
            f"{100 * sh['weight_bytes_share']:.1f}% of weight bytes stay fp32, the rest is fp16; Core ML runs fp32 ops "
            "on the GPU/CPU, not the Neural Engine, so the model is split across compute units")


def convert(request: EmitRequest):
    """Build and compress the MLModel in memory; returns (mlmodel, built, image spec, target, notes)."""
    check_supported(request.model)
    target = deployment_target(request)
    if w8a8_requested(request.options):
        _check_w8a8(request, target)
    inp = next(vi for vi in request.model.graph.input if vi.name not in {t.name for t in request.model.graph.initializer})
    dims = [d.dim_value for d in inp.type.tensor_type.shape.dim]
    img = image_spec(request, dims[1] if len(dims) == 4 else 0) if len(dims) == 4 else None
    try:
        built = build_program(request.model, TARGETS[target], None if img is None else img.channel_scale)
    except (ValueError, TypeError, NotImplementedError) as exc:   # MIL type/shape checks reject the graph
        raise EdgeInferError(f"Core ML emitter: the graph cannot be expressed in MIL: {str(exc).splitlines()[0]}") from None
    notes = list(built.notes)
    if request.precision not in ("fp32", "fp16", "int8", "int4"):
        raise EdgeInferError(f"Core ML precision {request.precision!r} is not one of fp32, fp16, int8, int4")
    inputs = None
    if img is not None:
        inputs = [ct.ImageType(name=built.input_name, shape=built.input_shape, scale=img.image_scale,
                               bias=img.bias if img.color != "gray" else img.bias[0],
                               color_layout=getattr(ct.colorlayout, _COLOR[img.color]))]
    fp32 = request.precision == "fp32"
    islands = () if fp32 else parse_groups(request.options.get("fp32_ops"))
    key = (hashlib.sha1(request.model.SerializeToString()).hexdigest(), target, fp32, islands, repr(img),
           repr(request.labels), request.task)
    cached = _BASE_CACHE.get(key)
    if cached is None:   # fp16 + int8 + int4 of one model share the uncompressed conversion
        precision = (ct.precision.FLOAT32 if fp32 else ct.precision.FLOAT16 if not islands
                     else ct.transform.FP16ComputePrecision(op_selector=op_selector(islands)))
        cached = ct.convert(built.program, convert_to="mlprogram", minimum_deployment_target=TARGETS[target],
                            compute_precision=precision, inputs=inputs, classifier_config=_classifier(request, request.model))
        _BASE_CACHE.clear()
        _BASE_CACHE[key] = cached
    if islands:
        notes.append(fp32_share_note(cached.get_spec(), islands))
    mlmodel = ct.models.MLModel(cached.get_spec(), weights_dir=cached.weights_dir, skip_model_load=True)
    if w8a8_requested(request.options):   # int8 activations first, then int8 weights (coremltools' documented order)
        cal = request.calibration
        mlmodel, n = quantize_activations(mlmodel, cal.ranges, img, cal.method, request.options.get("w8a8_mode", "linear_symmetric"))
        notes.append(n)
    if request.precision == "int4":
        mlmodel, cnotes = _store_int4(request, mlmodel, built, img, target)
    elif _stores_int8_plan(request):
        mlmodel, cnotes = _store_int8(request, mlmodel, built, img, target)
    else:
        mlmodel, cnotes = _compress.compress(mlmodel, request.precision, request.options, target in _IOS18_LEVEL)
    notes += cnotes
    return mlmodel, built, img, target, notes


def mil_layer_names(model) -> dict[str, str]:
    """MIL op name -> ONNX node name for the weighted nodes (the op is named after the node's output)."""
    return {mil_name(n.output[0]): n.name or n.output[0] for n in model.graph.node if n.op_type in ("Conv", "Gemm", "MatMul")}


def _store_int4(request: EmitRequest, mlmodel, built, img, target: str):
    """The shared int4 plan as per-block int4 weights (iOS18+); other targets cannot store it."""
    from ...int4 import plan_for
    from .int4 import store_plan
    if target not in _IOS18_LEVEL:
        raise NotSupportedYet(f"Core ML int4 stores per-block int4 weights (constexpr_blockwise_shift_scale), which needs "
                              f"deployment target iOS18/macOS15; this profile targets {target}. Use int8 (or fp16 with "
                              "palettization) for it, or a profile with runtime.coreml_target = \"iOS18\"")
    plan = plan_for(request.int4, request.model, "coreml")
    mlmodel = store_plan(mlmodel, plan, mil_layer_names(request.model), None if img is None else img.channel_scale,
                         built.folded_conv)
    bits = plan.bits_summary()
    return mlmodel, [f"int4 weights ({plan.method}, {plan.granularity.name}, constexpr_blockwise_shift_scale): "
                     f"{bits['4']} layers at 4 bits, {bits['8']} at 8 bits; compute in fp16"]


def _stores_int8_plan(request: EmitRequest) -> bool:
    """Weight-only int8 with a GPTQ plan; W8A8, pruning and palettization keep coremltools' rounding."""
    o = request.options
    return (request.precision == "int8" and request.int8_weights is not None and not w8a8_requested(o)
            and not o.get("prune") and not o.get("palettize"))


def _int8_kept_float(request: EmitRequest, built, img, target: str) -> set[str]:
    """Planned layers the int8 package leaves fp16 (decided once, for storing and for the check)."""
    threshold = int(request.options.get("weight_threshold", _compress.DEFAULT_WEIGHT_THRESHOLD))
    kept = {n for n, lq in request.int8_weights.layers.items() if lq.q.size < threshold}   # as coremltools would
    if (target not in _IOS18_LEVEL and img is not None and img.channel_scale is not None
            and built.folded_conv in request.int8_weights.layers):
        kept.add(built.folded_conv)   # constexpr_affine_dequantize holds no per-input-channel scale
    return kept


def _store_int8(request: EmitRequest, mlmodel, built, img, target: str):
    """The shared int8 plan (GPTQ, per output channel): blockwise storage on iOS18, else constexpr_affine_dequantize."""
    from .int4 import store_plan
    affine = target not in _IOS18_LEVEL
    kept = sorted(_int8_kept_float(request, built, img, target))
    mlmodel = store_plan(mlmodel, request.int8_weights, mil_layer_names(request.model),
                         None if img is None else img.channel_scale, built.folded_conv, affine=affine,
                         keep_float=frozenset(kept))
    op = "constexpr_affine_dequantize" if affine else "constexpr_blockwise_shift_scale"
    note = (f"int8 weights per output channel, GPTQ-rounded on the calibration images ({op}); compute in fp16"
            + (f"; {len(kept)} layers stay fp16 (below the weight threshold, or input scaling folded per "
               f"input channel): {', '.join(kept[:3])}" if kept else ""))
    return mlmodel, [note]


def _stored_integers(request: EmitRequest, out: Path) -> dict:
    """The weight integers the written package stores, keyed by the ONNX node they came from."""
    from .int4 import node_of, read_integers
    names = mil_layer_names(request.model)
    return {node_of(k, names) or k: v for k, v in read_integers(out).items()}


def _check_int8(request: EmitRequest, out: Path, built, img, target: str) -> dict:
    """The int8 plan's integers are what the package stores (``_int8_kept_float`` layers excepted)."""
    stored = _stored_integers(request, out)
    kept = _int8_kept_float(request, built, img, target)
    check = request.int8_weights.compare(stored, kept)
    if not check["same_as_plan"]:
        raise EdgeInferError(f"Core ML int8: the package does not store the GPTQ plan's integers "
                             f"(differ: {check['differ']}, missing: {check['missing']})")
    return {"int8_weights": {"rounding": "gptq", "granularity": "per output channel", "layers": len(stored),
                             "kept_fp16": sorted(kept & set(request.int8_weights.layers)), "same_as_plan": True}}


def _check_int4(request: EmitRequest, out: Path) -> dict:
    from ...int4 import artifact_details, plan_for
    return artifact_details(plan_for(request.int4, request.model, "coreml"), _stored_integers(request, out))


def emit(request: EmitRequest) -> EmittedArtifact:
    out = Path(request.out_path)
    mlmodel, built, img, target, notes = convert(request)
    _metadata(mlmodel, request, built, img, target, notes)
    try:
        mlmodel.save(str(out))
        from .verify import check_structure
        facts = check_structure(out)
        if request.precision == "int4":
            facts.update(_check_int4(request, out))
        elif _stores_int8_plan(request):
            facts.update(_check_int8(request, out, built, img, target))
    except Exception:
        shutil.rmtree(out, ignore_errors=True)
        raise
    details = {"deployment_target": target, "input_type": "image" if img else "tensor",
               "compute_precision": "fp32" if request.precision == "fp32" else "fp16",
               "activations": "int8" if w8a8_requested(request.options) else ("fp32" if request.precision == "fp32" else "fp16"),
               **facts}
    islands = () if request.precision == "fp32" else parse_groups(request.options.get("fp32_ops"))
    if islands:
        sh = fp32_share(mlmodel.get_spec())
        details["fp32_ops"] = {"groups": list(islands), "ops": sh["n_ops"], "of_ops": sh["of_ops"],
                               "weight_bytes_share": round(sh["weight_bytes_share"], 4)}
    return EmittedArtifact(path=out, format="coreml", precision=request.precision, input_layout="NCHW",
                           io_dtype="float32", notes=notes, details=details)
