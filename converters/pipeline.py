"""The conversion pipeline, one pass forward:

load+validate -> [prune] -> clean -> calibrate ONCE -> per profile: emit per format and
precision -> verify each artifact against the fp32 source -> write the bundle atomically.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import edgeinfer
from edgeinfer.bundle import sha256_of, size_of, write_manifest
from edgeinfer.errors import EdgeInferError, NotSupportedYet
from edgeinfer.int8_arith import saturates
from edgeinfer.profiles import Profile, load_profile

from . import images as image_io
from .bundle_writer import atomic_dir, check_target, scrub_local_paths
from .calibrate import calibrate
from .clean import clean_model, infer_shapes
from .emitters import FILE_SUFFIX, get_emitter
from .emitters.api import CalibrationResult, EmitRequest, EmittedArtifact
from .intake import Source, open_source
from .intake.shapes import hw_hint
from .load import opset_of
from .model_info import (classify_postprocess, input_spec, merged_preprocess, metadata, output_specs, resolve_labels,
                         resolve_preprocess, resolve_task)
from .verify import below_default_floor, check_min_agreement, run_reference, thin_verification, verify_artifact

PRECISION_ORDER = ("fp32", "fp16", "int8", "int4")
SEARCH_INPUTS = 32        # calibration images the keep-float search evaluates on, at most ...
SEARCH_PIXELS = 16 * 640 * 640   # ... and at most this many input pixels of them (16 at 640 px, 32 up to 452 px)
SYNTHETIC_COUNT = 32


@dataclass
class ConvertOptions:
    model: Path
    profiles: list[str]
    out_dir: Path
    quant: list[str] | None = None            # None -> profile default
    formats: list[str] | None = None          # None -> profile preferred
    calib_dir: Path | None = None
    verify_dir: Path | None = None
    calib_method: str = "minmax"
    calib_synthetic: bool = False
    calib_limit: int | None = None
    verify_fraction: float = 0.2
    labels_file: Path | None = None
    preset: str | None = None
    preprocess: dict[str, Any] = field(default_factory=dict)
    task: str | None = None
    postprocess: dict[str, Any] | None = None   # detection config built by the CLI
    postprocess_overrides: dict[str, Any] = field(default_factory=dict)  # e.g. score_threshold over the model's metadata
    prune: Any = None                           # converters.prune PruneConfig or None
    min_agreement: float | None = None
    int4_size: float | None = None              # int4: choose the 4/8 mix by bytes (fraction of fp32 weight bytes)
    force: bool = False
    progress: bool = True
    emitter_options: dict[str, Any] = field(default_factory=dict)   # e.g. tflite_io_dtype, tflite_layout
    exclude_nodes: list[str] = field(default_factory=list)
    auto_keep_float: bool = True                # detectors (and --min-agreement): search int8-sensitive nodes
    search_seconds: float = 45.0                # time budget of that search
    input_shape: list[int] | None = None        # fixes dynamic input dims (the model's own order)
    trust_pickle: bool = False                  # allow pickled PyTorch checkpoints (runs their code)
    opset: int | None = None                    # ONNX opset of the export of PyTorch sources
    verify_on: str = "host"                     # "emulated": also verify arm64 artifacts on the emulated core
    int8_fallback: str | None = None            # "float" | "int16": ONNX int8 nodes kept out of 8 bits (None: the profile's)
    max_float_macs: float | None = None         # CPU-only int8 detectors: float region's MAC share cap (None: default, 0: off)


@dataclass
class ConvertResult:
    bundles: list[Path]
    manifests: list[dict[str, Any]]
    prune_report: Any = None
    # int4: granularity name -> {"candidates": {bits: {node: LayerQuant}}, "mix": MixResult} (size/accuracy curves)
    int4_trace: dict[str, Any] = field(default_factory=dict)


def _say(opts: ConvertOptions, msg: str) -> None:
    if opts.progress:
        print(msg, file=sys.stderr, flush=True)


def _validate_lists(opts: ConvertOptions) -> None:
    for q in opts.quant or []:
        if q not in PRECISION_ORDER:
            raise EdgeInferError(f"unknown --quant {q!r}; choose from {', '.join(PRECISION_ORDER)}")
    for f in opts.formats or []:
        if f not in FILE_SUFFIX:
            raise EdgeInferError(f"unknown format {f!r} in --formats; choose from {', '.join(FILE_SUFFIX)}")
    if opts.int4_size is not None and not 0.0 < opts.int4_size <= 1.0:
        raise EdgeInferError(f"--int4-size {opts.int4_size} must be a fraction of the fp32 weight bytes in (0, 1]")
    if opts.min_agreement is not None and not 0.0 <= opts.min_agreement <= 1.0:
        raise EdgeInferError(f"--min-agreement {opts.min_agreement} must be between 0 and 1")


def _gather_inputs(opts: ConvertOptions, cfg, size_hw, need_calib: bool
                   ) -> tuple[np.ndarray | None, np.ndarray, dict, dict[str, list[Path]]]:
    """(calibration samples or None, verification samples, facts for the manifest, the image files
    each set was read from: ``calib`` / ``held_out``, empty for random inputs)."""
    facts: dict[str, Any] = {}
    files: dict[str, list[Path]] = {"calib": [], "held_out": []}
    calib = verify = None
    if opts.calib_dir:
        paths = image_io.list_images(opts.calib_dir)
        if opts.verify_dir:
            calib_paths, hold_paths = paths, image_io.list_images(opts.verify_dir)
        else:
            calib_paths, hold_paths = image_io.split_holdout(paths, opts.verify_fraction)
        if opts.calib_limit:
            calib_paths = calib_paths[:opts.calib_limit]
        cset = image_io.read_images(calib_paths, Path(opts.calib_dir), cfg, size_hw, "reading calib images", opts.progress)
        vset = image_io.read_images(hold_paths, Path(opts.verify_dir or opts.calib_dir), cfg, size_hw,
                                    "reading held-out images", opts.progress)
        calib, verify = cset.samples, vset.samples
        files.update(calib=cset.paths, held_out=vset.paths)
        facts.update(images=len(cset.paths), skipped=len(cset.skipped) + len(vset.skipped), held_out=len(vset.paths),
                     source=Path(opts.calib_dir).resolve().name)   # a folder name: no path of this machine travels
    elif opts.verify_dir:
        vset = image_io.read_images(image_io.list_images(opts.verify_dir), Path(opts.verify_dir), cfg, size_hw,
                                    "reading held-out images", opts.progress)
        verify = vset.samples
        files["held_out"] = vset.paths
        facts.update(held_out=len(vset.paths), skipped=len(vset.skipped))
    if calib is None and need_calib:
        if not opts.calib_synthetic:
            raise EdgeInferError("int8 and int4 need calibration images: pass --calib DIR (or --calib-synthetic to "
                                 "calibrate on random inputs, which the manifest will record)")
        calib = image_io.synthetic_inputs(cfg, size_hw, SYNTHETIC_COUNT, seed=1)
        facts.update(images=len(calib), skipped=0, synthetic=True)
    if verify is None:
        verify = image_io.synthetic_inputs(cfg, size_hw, 16, seed=2)
        facts["verify_synthetic"] = True
    return calib, verify, facts, files


READ_AGAIN_SIZES = 2   # 640 images at 208 px: 330 MB each


def read_again(files: list[Path], cfg, size_hw):
    """``prune.resolution.ReadAt`` over ``files`` (the first n read at another input size with the
    field of view kept), or None when the samples came from no files. The images of the last
    ``READ_AGAIN_SIZES`` sizes stay in memory (plans and floor steps read the same size again)."""
    if not files:
        return None

    recent: dict[tuple[int, int], np.ndarray] = {}   # the last READ_AGAIN_SIZES sizes read, most recent last

    def read(hw: tuple[int, int], n: int) -> np.ndarray:
        hw = tuple(hw)
        have = recent.pop(hw, None)
        if have is None or len(have) < n:
            have = image_io.read_images(files[:n], None, _pruned_preprocess(cfg, size_hw, hw), hw, "", False).samples
        recent[hw] = have
        while len(recent) > READ_AGAIN_SIZES:
            recent.pop(next(iter(recent)))
        return have[:n].copy()   # callers own their arrays
    return read


def _op_coverage(profile: Profile, art: EmittedArtifact) -> list[dict[str, Any]]:
    report = []
    ops = art.details.get("op_counts", {})
    for acc in profile.accelerators:
        if acc["format"] != art.format:
            continue
        entry: dict[str, Any] = {"accelerator": acc["name"], "reach": acc["reach"],
                                 "precision_supported": art.precision in acc["dtypes"]}
        if "ops" in acc and ops:
            supported = {o for o in ops if o in acc["ops"]}
            total = sum(ops.values())
            entry["nodes_supported"] = sum(ops[o] for o in supported)
            entry["nodes_total"] = total
            entry["unsupported_ops"] = sorted(set(ops) - supported)
        report.append(entry)
    return report


def _plan(profile: Profile, opts: ConvertOptions) -> list[tuple[str, str]]:
    formats = opts.formats or profile.preferred_formats
    precisions = opts.quant or profile.default_recipe
    return [(f, p) for f in formats for p in precisions]


INT16_VARIANT = "int16 activations (A16W8)"


def int8_fallback(fmt: str, profile: Profile, opts: ConvertOptions) -> str:
    """What ``fmt``'s int8 artifact does with the nodes kept out of 8 bits (search or --keep-float):
    ``int16`` activations with 8-bit weights (ONNX only: ``--int8-fallback``, else the profile's
    ``[recipe] int8_fallback``, for NPUs that run A16W8 but would hand float nodes to the CPU), else ``float``."""
    if fmt != "onnx":
        return "float"
    return opts.int8_fallback or profile.data["recipe"].get("int8_fallback", "float")


def cpu_only(profile: Profile) -> bool:
    """Whether every accelerator of ``profile`` is a CPU (float nodes in int8 graphs split no delegate)."""
    return bool(profile.accelerators) and all(a.get("kind") == "cpu" for a in profile.accelerators)


def takes_float_region(fmt: str, profile: Profile, opts: ConvertOptions) -> bool:
    """Whether ``fmt``'s int8 artifact on ``profile`` keeps the float region (``float_regions``): int8
    activations (not Core ML's weight-only int8), a CPU-only profile, nodes kept out of 8 bits in float."""
    return fmt != "coreml" and cpu_only(profile) and int8_fallback(fmt, profile, opts) == "float"


def _emit_options(fmt: str, profile: Profile, opts: ConvertOptions, keep_float: list[str],
                  wide: list[str] | None = None, float_region: list[str] | None = None) -> dict[str, Any]:
    """The emitter's options for ``fmt`` on ``profile``; ``wide``: the nodes an A16W8 artifact
    (``int8_fallback`` int16) keeps out of 8 bits (None: ``keep_float``); ``float_region``: nodes the
    int8 artifacts of CPU-only profiles keep in float besides ``keep_float`` (``float_regions``)."""
    recipe = profile.data["recipe"]
    if float_region and takes_float_region(fmt, profile, opts):
        keep_float = list(keep_float) + [n for n in float_region if n not in keep_float]
    o: dict[str, Any] = {"activation_dtype": recipe.get("activation_dtype", "int8"), "nodes_to_exclude": list(keep_float)}
    if fmt == "onnx":
        o["int8_pair_safe"] = saturates(profile.int8_kernels)
        wide = list(keep_float) if wide is None else list(wide)
        if wide and int8_fallback(fmt, profile, opts) == "int16":
            o["nodes_to_exclude"], o["int16_nodes"] = [], wide
    if fmt == "tflite":
        o["io_dtype"] = opts.emitter_options.get("tflite_io_dtype") or recipe.get("tflite_io_dtype", "float32")
        o["int8_mode"] = opts.emitter_options.get("int8_mode") or "full"
    if fmt == "coreml":
        o["w8a8"] = bool(opts.emitter_options.get("coreml_w8a8"))
        if opts.emitter_options.get("coreml_fp32_ops"):
            o["fp32_ops"] = opts.emitter_options["coreml_fp32_ops"]
    return o


def _input_layout(fmt: str, profile: Profile, opts: ConvertOptions, source_layout: str = "NCHW") -> str:
    if fmt == "tflite":
        return opts.emitter_options.get("tflite_layout") or profile.runtime.get("tflite_input_layout", "NHWC")
    if fmt == "onnx":
        return source_layout  # the ONNX artifact takes what the source model took
    return "NCHW"


def _request_key(fmt: str, req: EmitRequest) -> str:
    """What makes two emit requests produce the same file (the profile only matters through these)."""
    runtime = req.profile.get("runtime", {}) if fmt == "coreml" else {}
    return json.dumps([fmt, req.precision, req.input_layout, req.options, runtime.get("coreml_target")],
                      sort_keys=True, default=str)


def _copy_artifact(src: Path, dst: Path) -> None:
    if src.is_dir():
        shutil.copytree(src, dst)
    else:
        shutil.copy2(src, dst)


def _entry_as_artifact(entry: dict[str, Any], path: Path) -> EmittedArtifact:
    return EmittedArtifact(path=path, format=entry["format"], precision=entry["precision"],
                           input_layout=entry["input_layout"], io_dtype=entry["io_dtype"],
                           notes=entry["notes"], details=entry["details"])


def _resolve_postprocess(source, task: str, labels, spec: dict[str, Any], opts: ConvertOptions) -> dict[str, Any]:
    if task == "classify":
        if opts.postprocess_overrides:
            flag = "--" + next(iter(opts.postprocess_overrides)).replace("_", "-")
            raise EdgeInferError(f"{flag} applies to detectors but this model is a classifier; drop it "
                                 "(or pass --task detect --decoder ...)")
        return classify_postprocess(source, labels)
    meta = metadata(source).get("postprocess")
    post = dict(opts.postprocess or (meta if isinstance(meta, dict) else {}), **opts.postprocess_overrides)
    if not post.get("decoder"):
        raise EdgeInferError("a detector needs a decoder: pass --decoder yolov5|yolov8|ssd")
    from edgeinfer.detection.postprocess import validate_config
    if not post.get("input_size"):
        post["input_size"] = [spec["shape"][2], spec["shape"][3]]
    return validate_config(post)


def _named_nodes(model, patterns: list[str]) -> list[str]:
    """Node names of the cleaned graph given by ``patterns`` (names, or shell-style patterns such as
    ``/model.[0-9]/*``), in graph order; a name or pattern that matches nothing is refused."""
    import fnmatch
    names = [n.name for n in model.graph.node]
    chosen: set[str] = set()
    for p in patterns:
        hits = fnmatch.filter(names, p) if any(c in p for c in "*?[") else [p] if p in names else []
        if not hits:
            raise EdgeInferError(f"--keep-float names {p!r}, which matches no node of the cleaned graph; give node "
                                 f"names or patterns of the model, e.g. {', '.join(sorted(names)[:3])}")
        chosen.update(hits)
    return [n for n in names if n in chosen]


def _keep_float(model, calib: CalibrationResult | None, task: str, post: dict[str, Any],
                opts: ConvertOptions, int16: bool = False,
                cpu_float: bool = False) -> tuple[list[str], dict[str, Any] | None, CalibrationResult | None]:
    """Nodes kept in float in int8 artifacts (user's --keep-float, or the search) + manifest entry +
    the activation ranges to emit with (the search may choose thin SiLU tails cut).

    The search runs for detectors (target: mAP@0.5 agreement within 0.01 of fp32) and for any task
    given ``--min-agreement`` (target: that agreement), on the calibration images. ``int16``: some
    artifact computes those nodes with 16-bit activations instead (``int8_fallback``); the search
    measures its final set that way too. ``cpu_float``: some int8 artifact runs on a CPU-only profile
    with float fallback; for detectors a float region is chosen for it too (``_float_region``)."""
    if opts.exclude_nodes:
        chosen = _named_nodes(model, opts.exclude_nodes)
        entry = {"kept_float": chosen, "metric": "chosen with --keep-float"}
        if int16:
            entry["int16_activations"] = _int16_entry(model, chosen)
        return chosen, entry, calib
    if calib is None or not opts.auto_keep_float or (task != "detect" and opts.min_agreement is None):
        return [], None, calib
    from .calibrate import with_tails_clipped
    from .sensitivity import classifier_keep_float, detector_keep_float
    _say(opts, f"searching int8-sensitive nodes to keep in float (time budget {opts.search_seconds:.0f} s)")
    samples = calib.samples[:image_io.within_pixels(calib.samples, SEARCH_PIXELS, 8, SEARCH_INPUTS)]

    def tails_cut(c: CalibrationResult) -> CalibrationResult:
        return with_tails_clipped(model, c, samples, progress=opts.progress)

    def a16w8(m, c, names):     # None when every kept node is the graph's tail (float either way)
        from .quantize_onnx import graph_tail, quantize_a16w8
        return quantize_a16w8(m, c, names, pair_safe=True)[0] if set(graph_tail(m, names)) != set(names) else None
    variants = {INT16_VARIANT: a16w8} if int16 else None
    if task == "detect":
        tolerance = 0.01 if opts.min_agreement is None else max(0.0, 1.0 - opts.min_agreement)
        rep = detector_keep_float(model, calib, samples, post, tolerance=tolerance, progress=opts.progress,
                                  time_budget=opts.search_seconds, alternative=tails_cut, variants=variants)
        metric = "map50_agreement on calibration images"
    else:
        tolerance = max(0.0, 1.0 - opts.min_agreement)
        rep = classifier_keep_float(model, calib, samples, opts.min_agreement, progress=opts.progress,
                                    time_budget=opts.search_seconds, alternative=tails_cut, variants=variants)
        metric = "top1_agreement on calibration images"
    entry = {"kept_float": rep.excluded, "metric": metric, "float": rep.float_metric, "naive_int8": rep.naive_metric,
             "final": rep.final_metric, "evaluations": rep.evaluations, "ranked_by_sqnr_lost": rep.ranking,
             "out_of_time": rep.out_of_time, "arithmetic": "pair-safe int8 on this host's ORT (= exact-int)",
             "target": rep.float_metric - tolerance, "met": bool(rep.final_metric >= rep.float_metric - tolerance),
             "silu_tails_cut": rep.alternative}
    if int16:
        region = _int16_region(model, rep, samples, post, task, opts)
        final = region.recorded[region.fraction]
        entry["int16_activations"] = dict(_int16_entry(model, rep.excluded + region.nodes, final),
                                          region=region.to_dict())
    if cpu_float and task == "detect" and (opts.max_float_macs is None or opts.max_float_macs > 0):
        region = _float_region(model, rep, samples, post, opts)
        entry["float_region"] = dict(region.to_dict(), node_names=region.nodes)
    return list(rep.excluded), entry, rep.calibration or calib


def _float_region(model, rep, samples: np.ndarray, post: dict[str, Any], opts: ConvertOptions):
    """``float_regions.choose_float_region`` on the search's set and ranges (recording mAP@0.5 agreement)."""
    from edgeinfer.preprocess import Transform

    from . import float_regions
    from .quantize_onnx import quantize_int8
    from .sensitivity import detection_agreement
    record = detection_agreement(rep.reference, post, Transform((int(samples.shape[3]), int(samples.shape[2]))))
    cap = float_regions.MAX_FLOAT_MACS if opts.max_float_macs is None else opts.max_float_macs
    _say(opts, f"measuring how much of the graph's start int8 should keep in float on CPUs (at most {cap:.0%} of MACs)")
    return float_regions.choose_float_region(
        model, samples, rep.excluded,
        lambda names: quantize_int8(model, rep.calibration, nodes_to_exclude=tuple(names), pair_safe=True),
        rep.reference, min_sqnr_db=float_regions.MIN_OUTPUT_SQNR_DB, max_macs=cap, record=record, progress=opts.progress)


def float_region_note(mixed: dict[str, Any] | None) -> str | None:
    """The summary's line on the float region the int8 artifacts of CPU-only profiles keep, else None."""
    region = (mixed or {}).get("float_region")
    if not region or not region["nodes"]:
        return None
    db = region["prefixes_db"].get(f"{region['chosen_fraction']:.3f}", float("nan"))
    what = ("the decode tail" if region["chosen_fraction"] == 0
            else f"the first {region['chosen_fraction']:.1%} of the weighted nodes")
    return (f"int8 float region (CPU-only profile): {what} "
            f"({region['nodes']} nodes, {region['chosen_macs_share']:.0%} of the MACs) stay float, taking the outputs from "
            f"{region['kept_nodes_only_db']:.1f} to {db:.1f} dB SQNR against fp32 (target {region['target_db']:.0f} dB); "
            "int8 runs slower for it: --max-float-macs 0 keeps full int8")


def float_region_missed(mixed: dict[str, Any] | None) -> str | None:
    """A warning line when the float region (CPU-only profiles) stayed below its SQNR target, else None."""
    region = (mixed or {}).get("float_region")
    if not region or region["met"]:
        return None
    best = max([region["kept_nodes_only_db"], *region["prefixes_db"].values()])
    return (f"int8 float region: the outputs reached {best:.1f} dB SQNR against fp32 with at most "
            f"{region['max_float_macs']:.0%} of the MACs in float, below the target {region['target_db']:.0f} dB: "
            "int8 detections may differ from fp32 (raise --max-float-macs, or ship fp16/fp32)")


def _float_region_nodes(mixed: dict[str, Any] | None) -> list[str]:
    """The nodes the manifest says CPU-only profiles' int8 artifacts keep in float besides ``kept_float``."""
    return list(((mixed or {}).get("float_region") or {}).get("node_names", []))


def _int16_region(model, rep, samples: np.ndarray, post: dict[str, Any], task: str, opts: ConvertOptions):
    """``wide_regions.choose_region`` on the search's set and ranges: detectors on mAP@0.5:0.95
    agreement (recording mAP@0.5), other tasks on cosine agreement (recording top-1 agreement)."""
    from edgeinfer.preprocess import Transform

    from .quantize_onnx import quantize_a16w8
    from .sensitivity import cosine_agreement, detection_agreement, top1_agreement
    from .wide_regions import choose_region, dense_detection_metric
    if task == "detect":
        t = Transform((int(samples.shape[3]), int(samples.shape[2])))
        dense, name = dense_detection_metric(rep.reference, post, t), "map50_95_agreement"
        record = detection_agreement(rep.reference, post, t)
    else:
        dense, name, record = cosine_agreement(rep.reference), "cosine_agreement", top1_agreement(rep.reference)
    _say(opts, "measuring how much of the graph 16-bit activations should cover (A16W8 target)")
    return choose_region(model, samples, rep.excluded,
                         lambda names: quantize_a16w8(model, rep.calibration, names, pair_safe=True)[0],
                         dense, name, progress=opts.progress, record=record)


def _int16_nodes(mixed: dict[str, Any] | None) -> list[str] | None:
    """The nodes the manifest says A16W8 artifacts keep out of 8 bits (16-bit + float tail), or None."""
    wide = (mixed or {}).get("int16_activations")
    return None if wide is None else wide["nodes"] + wide["float_tail"]


def _int16_entry(model, kept: list[str], final: float | None = None) -> dict[str, Any]:
    """The manifest's record of the A16W8 artifacts: which kept nodes get 16-bit activations, which
    (the graph's tail) stay float, and the search's figure for that recipe when it measured one."""
    from .quantize_onnx import graph_tail
    tail = graph_tail(model, kept)
    entry = {"formats": ["onnx"], "nodes": [n for n in kept if n not in tail], "float_tail": tail}
    return entry if final is None else dict(entry, final=final)


def search_missed(mixed: dict[str, Any] | None) -> str | None:
    """A warning line when the keep-float search ended below its target (the manifest's
    ``mixed_precision`` entry), else None."""
    if not mixed:
        return None
    wide = mixed.get("int16_activations") or {}
    wide_missed = "final" in wide and wide["final"] < mixed["target"]
    if mixed.get("met") is not False:     # float met it (or no target: --keep-float); the A16W8 figure may not
        if wide_missed:
            return (f"int8 (ONNX, 16-bit activations on the kept nodes): {mixed['metric']} {wide['final']:.4f}, below "
                    f"the target {mixed['target']:.4f} that float reached: ship that profile's fp16, or pass --int8-fallback float")
        return None
    if "final" in wide and not wide_missed:
        return (f"int8 with nodes kept in float (every int8 artifact but the A16W8 ONNX one): the keep-float search "
                f"reached {mixed['metric']} {mixed['final']:.4f}, below its target {mixed['target']:.4f}; the A16W8 "
                f"ONNX artifact reached {wide['final']:.4f} (ship fp16/fp32 for the others, or check their int8 "
                "figures on your own images)")
    return (f"int8: the keep-float search reached {mixed['metric']} {mixed['final']:.4f}, below its target "
            f"{mixed['target']:.4f}: the int8 artifacts lose more than the target allows (ship fp16/fp32, or check "
            "the int8 figures on your own images)")


def _int8_weight_plan(model, calib_samples: np.ndarray | None, plans: dict, facts: dict, opts: ConvertOptions):
    """GPTQ-rounded 8-bit weights for the weight-only int8 artifacts (Core ML), on real calibration
    images only (random inputs would teach the rounding nothing); None: those round to nearest."""
    if calib_samples is None or facts.get("synthetic") or opts.emitter_options.get("coreml_w8a8") or not any(
            (fmt, prec) == ("coreml", "int8") for plan in plans.values() for fmt, prec in plan):
        return None     # W8A8 packages keep coremltools' weight rounding (the emitter would not use the plan)
    from .int4 import plan_int8
    _say(opts, "int8 weights (Core ML): error-compensating rounding (GPTQ) on the calibration images")
    return plan_int8(model, calib_samples, progress=opts.progress)


def _int4_plan(model, calib_samples: np.ndarray | None, calib: CalibrationResult | None,
               plans: dict[str, list[tuple[str, str]]], task: str, post: dict[str, Any], labels, size_hw,
               opts: ConvertOptions, trace: dict) -> Any:
    """The one int4 plan (GPTQ rounding + 4/8-bit mix on the calibration images) every int4 artifact
    stores: at the finest granularity all planned formats can store; when TFLite is among them the
    mix is scored with int8 activations simulated from the shared calibration ranges (its artifact
    computes so), which the float-activation formats then meet with margin."""
    fmts = sorted({f for plan in plans.values() for f, p in plan if p == "int4"})
    if not fmts or calib_samples is None:
        return None
    from .int4 import build_plans, shared_granularity
    from .int4.actsim import int8_activations
    from .verify import AGREEMENT, AGREEMENT_KEY, DEFAULT_AGREEMENT_FLOOR

    def agreement(ref, out) -> float:
        return AGREEMENT[task](ref, out, postprocess=post, labels=labels, input_hw=size_hw)[AGREEMENT_KEY[task]]
    from .int4.mixed import DEFAULT_TARGET
    target = DEFAULT_AGREEMENT_FLOOR if opts.min_agreement is None else opts.min_agreement
    fill_floor = None
    if opts.min_agreement is None and opts.int4_size is None:     # the default rule (converters.int4.mixed)
        target, fill_floor = DEFAULT_TARGET, DEFAULT_AGREEMENT_FLOOR
    gran = shared_granularity(fmts)
    simulate = {gran.name: lambda m: int8_activations(m, calib.ranges)} if "tflite" in fmts and calib else None
    _say(opts, f"int4: error-compensating rounding and 4/8-bit mix ({gran.name}) for {', '.join(fmts)} "
               f"(target agreement {target}{', int8 activations simulated' if simulate else ''})")
    return build_plans(model, [gran], calib_samples, target=target, agreement=agreement, progress=opts.progress,
                       trace=trace, simulate=simulate, size=opts.int4_size, fill_floor=fill_floor)[gran.name]


def _open_source(opts: ConvertOptions) -> Source:
    """The intake step: the source file (ONNX or PyTorch) as the NCHW float32 graph the converter works on."""
    def size_hint(model):  # the input size the preprocessing options (or the model's metadata) fix
        return hw_hint(merged_preprocess(model, opts.preset, opts.preprocess))
    gray = opts.preprocess.get("color") == "gray"
    return open_source(opts.model, input_shape=opts.input_shape, size_hint=size_hint, channels=1 if gray else 3,
                       trust_pickle=opts.trust_pickle, opset=opts.opset)


def _implied_preset(model, task: str, opts: ConvertOptions) -> str | None:
    """YOLO decoders imply YOLO preprocessing when nothing else says it."""
    if task != "detect" or opts.preset or any(opts.preprocess.get(k) is not None for k in ("mean", "std", "scale")):
        return None
    meta = metadata(model)
    if meta.get("preprocess"):
        return None
    post = opts.postprocess or meta.get("postprocess") or {}
    return "yolo" if isinstance(post, dict) and str(post.get("decoder", "")).startswith("yolo") else None


def convert(opts: ConvertOptions) -> ConvertResult:
    t0 = time.perf_counter()
    os.environ.setdefault("TQDM_DISABLE", "1")  # coremltools' per-pass bars; the pipeline reports its own steps
    _validate_lists(opts)
    profiles = [load_profile(p) for p in opts.profiles]
    if not profiles:
        raise EdgeInferError("give at least one --profile (see `edgeinfer profiles`)")
    stem = Path(opts.model).stem
    targets = [Path(opts.out_dir) / f"{stem}-{p.name}" for p in profiles]
    for t in targets:
        check_target(t, opts.force)

    _say(opts, f"loading {opts.model}")
    src = _open_source(opts)
    source = infer_shapes(src.model)
    spec = dict(input_spec(source), model_layout=src.layout, declared_shape=src.facts["declared_input_shape"])
    task = resolve_task(source, opts.task)
    implied = _implied_preset(source, task, opts)
    cfg = resolve_preprocess(source, opts.preset, opts.preprocess, implied=implied)
    labels = resolve_labels(source, opts.labels_file)
    post = _resolve_postprocess(source, task, labels, spec, opts)
    size_hw = (spec["shape"][2], spec["shape"][3])

    if opts.verify_on == "emulated":
        from .verify_emulated import check_available
        check_available([dict(p.data, name=p.name) for p in profiles])
    plans = {p.name: _plan(p, opts) for p in profiles}
    need_calib = any(prec in ("int8", "int4") for plan in plans.values() for _, prec in plan)
    # int8 activations: every int8 artifact but weight-only Core ML (no --coreml-w8a8)
    w8a8 = bool(opts.emitter_options.get("coreml_w8a8"))
    wants_int8 = any(prec == "int8" and (fmt != "coreml" or w8a8) for plan in plans.values() for fmt, prec in plan)
    # activation ranges: those, and int4 TFLite (int8 activations); int4 ONNX / Core ML are weight-only
    need_ranges = wants_int8 or any((prec, fmt) == ("int4", "tflite") for plan in plans.values() for fmt, prec in plan)
    calib_samples, verify_samples, facts, files = _gather_inputs(opts, cfg, size_hw, need_calib)

    model = source
    prune_report = None
    reference = run_reference(src.reference, verify_samples, layout=src.layout)
    if opts.prune is not None:
        from .prune import prune_model
        from .prune.runner import set_progress
        set_progress(opts.progress)
        _say(opts, "pruning channels")
        model, prune_report = prune_model(clean_model(model, keep_batchnorm=True), opts.prune, calib_samples, progress_bar=opts.progress,
                                          read_at=read_again(files["calib"], cfg, size_hw))
        _prune_floor(model, prune_report, reference, verify_samples, task, post, labels, size_hw, opts,
                     read_again(files["held_out"], cfg, size_hw))
        if prune_report.input_hw is not None and prune_report.input_hw[1] != tuple(size_hw):
            cfg, size_hw = _pruned_preprocess(cfg, size_hw, prune_report.input_hw[1]), prune_report.input_hw[1]
            spec = dict(spec, shape=[*spec["shape"][:2], *size_hw])
            _say(opts, f"  reading the images again at {size_hw[0]}x{size_hw[1]} (preprocess {cfg.to_dict()})")
            calib_samples, verify_samples, facts, _ = _gather_inputs(opts, cfg, size_hw, need_calib)
    _say(opts, "cleaning graph (shape inference, constant folding, BatchNorm folding)")
    model = clean_model(model)

    calib: CalibrationResult | None = None
    if need_ranges:
        calib = calibrate(model, calib_samples, opts.calib_method, skipped=facts.get("skipped", 0),
                          synthetic=bool(facts.get("synthetic")), progress=opts.progress)
    # the keep-float search is for int8 activations: weight-only Core ML int8 has none (GPTQ weights instead)
    int16 = any(int8_fallback(fmt, p, opts) == "int16" for p in profiles for fmt, prec in plans[p.name] if prec == "int8")
    cpu_float = any(takes_float_region(fmt, p, opts) for p in profiles for fmt, prec in plans[p.name] if prec == "int8")
    keep_float, mixed, chosen = _keep_float(model, calib if wants_int8 else None, task, post, opts, int16, cpu_float)
    calib = chosen if chosen is not None else calib
    int4_trace: dict[str, Any] = {}
    int4_plan = _int4_plan(model, calib_samples, calib, plans, task, post, labels, size_hw, opts, int4_trace)
    int8_weights = _int8_weight_plan(model, calib_samples, plans, facts, opts)

    source_path = Path(opts.model)
    base_manifest = {
        "schema": 1,
        "edgeinfer_version": edgeinfer.__version__,
        "created": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "source": {"file": source_path.name, "sha256": sha256_of(source_path), "size": size_of(source_path),
                   "opset": opset_of(source), **{k: v for k, v in src.facts.items() if k != "declared_input_shape"}},
        "notes": src.notes + ([f"preprocessing implied by the {post.get('decoder')} decoder: the {implied} preset "
                               "(RGB scaled to 0..1, letterbox); pass --preset/--mean/--std to change it"] if implied else []),
        "task": task,
        "input": spec,
        "outputs": output_specs(source),
        "preprocess": cfg.to_dict(),
        "postprocess": post,
        "labels": "labels.txt" if labels else None,
        "calibration": None if calib_samples is None or not need_calib else {
            "method": calib.method if calib is not None else None, "images": facts.get("images"),
            "skipped": facts.get("skipped", 0), "synthetic": bool(facts.get("synthetic")), "source": facts.get("source"),
            "activation_low_ends_raised": dict(calib.tightened) if calib is not None else {},
            "silu_output_high_ends_lowered": calib.tails_clipped if calib is not None else 0},
        "verification_data": {"inputs": int(len(verify_samples)), "held_out_from_calibration": not opts.verify_dir and bool(opts.calib_dir),
                              "synthetic": bool(facts.get("verify_synthetic"))},
        "pruning": prune_report.to_dict() if prune_report is not None else None,
        "mixed_precision": mixed,
    }

    missed = search_missed(mixed)
    region_nodes, region_lines = _float_region_nodes(mixed), (float_region_note(mixed), float_region_missed(mixed))
    bundles, manifests = [], []
    done: dict[str, tuple[Path, dict[str, Any], str]] = {}   # identical requests across profiles: emit once
    # every bundle is built in its temp dir first; they are renamed into place only when ALL succeeded
    with contextlib.ExitStack() as stack:
        tmps = [stack.enter_context(atomic_dir(t, opts.force)) for t in targets]
        for profile, target, tmp in zip(profiles, targets, tmps):
            manifest = dict(base_manifest, profile=profile.to_manifest(), artifacts=[], warnings=[])
            if facts.get("synthetic"):
                manifest["warnings"].append("calibrated on RANDOM inputs (--calib-synthetic): accuracy is not representative")
            if missed:
                manifest["warnings"].append(missed)
            if any(takes_float_region(fmt, profile, opts) for fmt, prec in plans[profile.name] if prec == "int8"):
                note, warning = region_lines
                manifest["notes"] = [*manifest["notes"], *([note] if note else [])]
                manifest["warnings"] += [warning] if warning else []
            for fmt, precision in plans[profile.name]:
                name = f"{stem}-{precision}{FILE_SUFFIX[fmt]}"
                _say(opts, f"[{profile.name}] emitting {fmt} {precision}")
                req = EmitRequest(model=model, precision=precision, out_path=tmp / name, calibration=calib,
                                  input_layout=_input_layout(fmt, profile, opts, src.layout),
                                  options=_emit_options(fmt, profile, opts, keep_float, _int16_nodes(mixed), region_nodes),
                                  preprocess=cfg.to_dict(), labels=labels, task=task, profile=profile.data,
                                  int4=int4_plan if precision == "int4" else None,
                                  int8_weights=int8_weights if (fmt, precision) == ("coreml", "int8") else None,
                                  postprocess=post)
                key = _request_key(fmt, req)
                if key in done:
                    _copy_artifact(done[key][0], req.out_path)
                    entry = dict(done[key][1], op_coverage=_op_coverage(profile, _entry_as_artifact(done[key][1], req.out_path)))
                    manifest["artifacts"].append(entry)
                    _say(opts, f"  same as the {done[key][2]} artifact: copied")
                    continue
                t_emit = time.perf_counter()
                try:
                    art = get_emitter(fmt)(req)
                except NotSupportedYet as exc:
                    explicit = bool(opts.formats and fmt in opts.formats) or bool(opts.quant and precision in opts.quant)
                    if explicit:
                        raise
                    manifest["warnings"].append(f"{fmt} {precision}: not supported yet ({exc})")
                    _say(opts, f"  skipped: {exc}")
                    continue
                _say(opts, f"  wrote {name}: {size_of(art.path) / 1e6:.3f} MB in {time.perf_counter() - t_emit:.2f} s; verifying")
                figures = verify_artifact(art, verify_samples, reference, task=task, postprocess=post, labels=labels,
                                          input_hw=size_hw, synthetic=bool(facts.get("verify_synthetic")),
                                          progress=opts.progress)
                if precision == "int4":     # the int4 floor: --min-agreement, else the shared default
                    from .int4 import check_floor
                    check_floor(figures, task, opts.min_agreement, name, req.int4)
                check_min_agreement(figures, task, opts.min_agreement, name)
                low = below_default_floor(figures, task, opts.min_agreement)
                if low and precision == "int8":
                    manifest["warnings"].append(f"{name}: {low}")
                thin = thin_verification(figures, task)
                if thin and thin not in manifest["warnings"]:
                    manifest["warnings"].append(thin)
                emulated = None
                if opts.verify_on == "emulated":
                    from .verify_emulated import verify_emulated
                    _say(opts, f"  verifying {name} again on the emulated arm64 core")
                    emulated = verify_emulated(art, verify_samples, reference, profile=dict(profile.data, name=profile.name),
                                               task=task, postprocess=post, labels=labels, input_hw=size_hw,
                                               synthetic=bool(facts.get("verify_synthetic")))
                    if emulated is not None:
                        check_min_agreement(emulated, task, opts.min_agreement, f"{name} ({emulated['arithmetic']})")
                manifest["artifacts"].append({
                    "file": name, "format": fmt, "precision": precision, "sha256": sha256_of(art.path),
                    "size": size_of(art.path), "input_layout": art.input_layout, "io_dtype": art.io_dtype,
                    "verification": figures, "op_coverage": _op_coverage(profile, art), "notes": art.notes,
                    "details": art.details, **({"verification_emulated": emulated} if emulated else {}),
                })
                done[key] = (tmp / name, manifest["artifacts"][-1], profile.name)
            if not manifest["artifacts"]:
                raise EdgeInferError(f"no artifact could be produced for {profile.name}: " + "; ".join(manifest["warnings"]))
            if labels:
                (tmp / "labels.txt").write_text("\n".join(labels) + "\n")
            manifest["conversion_seconds"] = round(time.perf_counter() - t0, 2)
            manifest = scrub_local_paths(manifest, [opts.out_dir, Path(opts.model).parent, opts.calib_dir, opts.verify_dir,
                                                    opts.labels_file and Path(opts.labels_file).parent], tmp, target)
            write_manifest(tmp, manifest)
            bundles.append(target)
            manifests.append(manifest)
    return ConvertResult(bundles, manifests, prune_report, int4_trace)


def _pruned_preprocess(cfg, size_hw, new_hw):
    """The preprocessing once pruning lowered the input resolution: images read at ``new_hw`` with
    the same field of view (pruning rewrote the model's own preprocess metadata alike)."""
    from edgeinfer.preprocess import PreprocessConfig
    from .prune.resolution import scaled_preprocess
    return PreprocessConfig.from_dict(scaled_preprocess(cfg.to_dict(), tuple(size_hw), tuple(new_hw)))


def _prune_floor(model, report, reference, samples, task, post, labels, size_hw, opts: ConvertOptions,
                 read=None) -> None:
    """Refuse a pruned model whose agreement with the unpruned one on the held-out images is below
    --min-agreement (or the shared DEFAULT_AGREEMENT_FLOOR): one line naming the figure and the
    largest cut that met it. A model at a smaller input size sees the images as ``read`` gives them
    at that size (``prune.resolution.at_size``: as it will be deployed), else resampled."""
    from .prune.api import enforce_floor
    from .verify import AGREEMENT, AGREEMENT_KEY, DEFAULT_AGREEMENT_FLOOR
    key = AGREEMENT_KEY[task]

    from .prune.resolution import at_size, fixed_hw

    def agreement(m) -> float:
        x = at_size(samples, slice(None), fixed_hw(m), read)
        return AGREEMENT[task](reference, run_reference(m, x), postprocess=post,
                               labels=labels, input_hw=size_hw)[key]
    floor = opts.min_agreement if opts.min_agreement is not None else DEFAULT_AGREEMENT_FLOOR
    value = enforce_floor(model, report, agreement, floor, key, len(samples))
    _say(opts, f"  pruned fp32 {key} with the unpruned model: {value:.4f} (floor {floor:g})")


def summary_lines(result: ConvertResult) -> list[str]:
    """Human-readable report of a conversion."""
    lines = []
    for path, m in zip(result.bundles, result.manifests):
        lines.append(f"bundle {path}  ({m['profile']['display_name']}, {m['task']})")
        lines.extend(f"  note: {note}" for note in m.get("notes", []))
        src = m["source"]["size"]
        for a in m["artifacts"]:
            v = a["verification"]
            agree = v.get("top1_agreement", v.get("map50_agreement"))
            agree_s = f"agreement {agree:.3f}" if agree is not None else ""
            lines.append(f"  {a['file']:<34} {a['size'] / 1e6:8.3f} MB ({a['size'] / src:5.2f}x)  "
                         f"max|err| {v['max_abs_error']:.2e}  cos {v['cosine']:.5f}  {agree_s}"
                         + (f"  [{v['arithmetic']}]" if v.get("arithmetic") else ""))
            host = v.get("host_check")
            if host:
                h_agree = host.get("top1_agreement", host.get("map50_agreement"))
                lines.append(f"      this host ({host['arithmetic']}): cos {host['cosine']:.5f}"
                             + (f"  agreement {h_agree:.3f}" if h_agree is not None else "")
                             + " (saturating kernels: the target computes the figures above)")
            e = a.get("verification_emulated")
            if e:
                agree = e.get("top1_agreement", e.get("map50_agreement"))
                lines.append(f"      on {e['arithmetic']}: max|err| {e['max_abs_error']:.2e}  cos {e['cosine']:.5f}  "
                             f"agreement {agree:.3f}  max|arm - host| {e['max_abs_diff_vs_host']:.2e}")
            for note in a["notes"]:
                lines.append(f"      note: {note}")
        for w in m["warnings"]:
            lines.append(f"  warning: {w}")
    if result.prune_report is not None:
        lines.extend("  " + line for line in result.prune_report.format().splitlines())
    return lines
