"""INT4 weight math shared by every emitter: which layers, which integers, which bit-width.

    plans = build_plans(model, [shared_granularity(formats)], calib_samples, target=0.9, agreement=fn)
    plan = plans["channel"]          # -> EmitRequest.int4 of every emitter (same integers everywhere)

* ``layers``: the Conv/Gemm/MatMul weights as ``[out, K]`` matrices, granularity per format;
* ``hessian``: the layers' input statistics on the calibration samples (one ORT pass);
* ``gptq``: error-compensating rounding (GPTQ) with per-block scales; RTN without data;
* ``mixed``: which layers stay at 8 bits, by measured sensitivity, until ``target`` is met;
* ``actsim``: int8 activations simulated on the float graph (the search of full-integer formats);
* ``plan``: the result (integers, scales, bits per layer), applied to a float model for search
  and checked against what each artifact stores.
Emitters only store a plan (each in its own format); none of them rounds weights itself.
"""
from __future__ import annotations

import sys
import time
from typing import Callable

import numpy as np
import onnx

from edgeinfer.errors import EdgeInferError
from edgeinfer.progress import Progress

from . import hessian, mixed
from .gptq import quantize_matrix
from .layers import (BLOCK32, FORMAT_GRANULARITY, PER_CHANNEL, PER_ROW, STORABLE, Granularity, Layer, block_channels, find_layers,
                     per_tensor, shared_granularity, weight_of)
from .plan import Int4Plan, LayerQuant

MAX_STAT_SAMPLES = 128


def quantize_layer(layer: Layer, w: np.ndarray, h: np.ndarray | None, bits: int, gran: Granularity,
                   clip: bool = True) -> LayerQuant:
    block = block_channels(layer, gran)
    pt = per_tensor(layer, gran)
    q, s = quantize_matrix(layer.to_matrix(w), h, bits, block * layer.kernel, pt, clip)
    return LayerQuant(layer, bits, block, pt, q, s, "nearest" if h is None else "gptq")


def _candidates(model, layers, hs, gran: Granularity, bits: int) -> dict[str, LayerQuant]:
    return {l.node: quantize_layer(l, weight_of(model, l), None if hs is None else hs[l.node], bits, gran) for l in layers}


def plan_rtn(model: onnx.ModelProto, gran: Granularity, bits: int = 4) -> Int4Plan:
    """Data-free plan: every layer rounded to nearest at ``bits`` (used when no plan was computed)."""
    layers, skipped = find_layers(model)
    if not layers:
        raise EdgeInferError("int4 found no Conv, Gemm or MatMul weights to quantize in this model")
    return Int4Plan(gran, _candidates(model, layers, None, gran, bits), skipped, "rtn")


def build_plans(model: onnx.ModelProto, grans: list[Granularity], samples: np.ndarray, *, target: float,
                agreement: Callable[[list[np.ndarray], list[np.ndarray]], float], mixed_search: bool = True,
                progress: bool = True, trace: dict | None = None,
                simulate: dict[str, mixed.Simulate] | None = None, size: float | None = None,
                fill_floor: float | None = None) -> dict[str, Int4Plan]:
    """One plan per granularity (name -> plan): 4-bit candidates by GPTQ on ``samples`` (8-bit ones
    rounded to nearest: at 8 bits rounding costs ~1/16 of the 4-bit error and GPTQ would double the
    time), then the 4/8 mix meeting ``target`` agreement on the same samples. Raises when no mix meets it.
    ``simulate`` (granularity name -> graph transform, e.g. ``actsim.int8_activations``) makes the
    search score mixes in the arithmetic of the artifacts that store that granularity.
    ``size`` (0..1): choose the mix by bytes instead, as many layers at 8 bits as fit in ``size`` x
    the layers' fp32 weight bytes (the target must still be met).
    ``fill_floor`` (without ``size``; the default rule of ``edgeinfer convert``): all-int4 is kept if it
    meets ``target``, else as many layers at 8 bits as fit halfway in bytes between all-4 and all-8
    bits (``mixed.default_budget``), and that mix must meet ``fill_floor`` (else the smallest longer
    prefix that does).
    ``trace`` (a dict) receives per granularity name the candidates and the ``MixResult`` (for curves)."""
    t0 = time.perf_counter()
    layers, skipped = find_layers(model)
    if not layers:
        raise EdgeInferError("int4 found no Conv, Gemm or MatMul weights to quantize in this model")
    stat = np.asarray(samples[:MAX_STAT_SAMPLES], np.float32)
    hs = hessian.collect(model, layers, stat, progress=progress)
    plans = {}
    for gran in dict.fromkeys(grans):
        cands = {}
        with Progress(f"int4: GPTQ ({gran.name})", 2 * len(layers), progress) as bar:
            for bits in (4, 8):
                cands[bits] = {}
                for l in layers:
                    cands[bits][l.node] = quantize_layer(l, weight_of(model, l), hs[l.node] if bits == 4 else None,
                                                         bits, gran)
                    bar.update()
        base = Int4Plan(gran, dict(cands[4]), skipped, "gptq")
        if not mixed_search:
            plans[gran.name] = base
            continue
        sim = (simulate or {}).get(gran.name)
        fill = fill_floor if size is None else None
        max_bytes = (int(size * sum(4 * lq.q.size for lq in cands[4].values())) if size is not None
                     else mixed.default_budget(cands) if fill is not None else None)
        res = mixed.search(model, base, cands, stat, target, agreement, progress=progress, max_bytes=max_bytes,
                           fill_floor=fill, **({"simulate": sim} if sim else {}))
        if trace is not None:
            trace[gran.name] = {"candidates": cands, "mix": res}
        plan = Int4Plan(gran, {n: cands[b][n] for n, b in res.bits.items()}, skipped, "gptq")
        rule = (f"longest prefix of the ranking within {size} x the fp32 weight bytes; must meet {target}"
                if size is not None else
                f"all layers at 4 bits if they meet {target}; else the longest prefix of the ranking within the "
                f"budget halfway between all-4 and all-8 bits ({max_bytes} bytes), which must meet {fill} (else "
                "the smallest longer prefix that does)" if fill is not None else
                f"smallest prefix of the ranking that meets {target}")
        plan.search = {"rule": rule, "target": target, "floor": fill, "size_budget_bytes": max_bytes,
                       "agreement_on_calibration": round(res.agreement, 4), "met": res.met,
                       "inputs": int(len(stat)), "evaluations": res.evaluations, "curve": res.curve,
                       "activations": "int8 (simulated)" if sim else "float", "size_budget": size,
                       "most_sensitive": [n for n, _ in sorted(res.sensitivity, key=lambda r: -r[1])[:5]],
                       "seconds": round(time.perf_counter() - t0, 1)}
        if not res.met:
            raise EdgeInferError(
                f"int4 ({gran.name}): no 4/8-bit mix reaches agreement {target if fill is None else fill} with fp32 on the calibration images; "
                f"the best mix ({plan.bits_summary()['8']} of {len(layers)} layers at 8 bits, "
                f"{plan.weight_bytes() / 1e6:.2f} MB of weights) reaches {res.agreement:.4f}. "
                "Lower --min-agreement, or use int8")
        plans[gran.name] = plan
        if progress:
            print(f"int4 ({gran.name}): {plan.bits_summary()['8']} of {len(layers)} layers at 8 bits, "
                  f"agreement {res.agreement:.4f} on calibration inputs", file=sys.stderr, flush=True)
    return plans


def plan_int8(model: onnx.ModelProto, samples: np.ndarray, progress: bool = True) -> Int4Plan:
    """Every Conv/Gemm/MatMul weight at 8 bits per output channel, rounded by GPTQ on ``samples``: the
    integers of weight-only int8 artifacts (Core ML int8). Rounding to nearest is not enough there:
    on the COCO YOLOv8n in float compute, 8-bit weights rounded to nearest give mAP@0.5 agreement
    0.962 with fp32 on 800 photos, GPTQ-rounded 0.991 (the class scores' SQNR 17.7 -> 26.3 dB)."""
    layers, skipped = find_layers(model)
    if not layers:
        raise EdgeInferError("int8 weights: no Conv, Gemm or MatMul weights to quantize in this model")
    hs = hessian.collect(model, layers, np.asarray(samples[:MAX_STAT_SAMPLES], np.float32), progress=progress,
                         label="int8 weights: layer statistics")
    chosen = {}
    with Progress("int8 weights: GPTQ", len(layers), progress) as bar:
        for l in layers:
            chosen[l.node] = quantize_layer(l, weight_of(model, l), hs[l.node], 8, PER_ROW, clip=False)
            bar.update()
    return Int4Plan(PER_ROW, chosen, skipped, "gptq")


def plan_for(plan: Int4Plan | None, model: onnx.ModelProto, fmt: str) -> Int4Plan:
    """An emitter's plan: the shared one, or a data-free round-to-nearest one at the format's granularity."""
    plan = plan or plan_rtn(model, FORMAT_GRANULARITY[fmt])
    if plan.granularity not in STORABLE[fmt]:
        raise EdgeInferError(f"int4 plan granularity {plan.granularity.name} cannot be stored in {fmt} "
                             f"(it stores {', '.join(g.name for g in STORABLE[fmt])})")
    return plan


def artifact_details(plan: Int4Plan, stored: dict[str, tuple[int, np.ndarray]], kept_float=()) -> dict:
    """Manifest details of an int4 artifact: the plan, and the check that ``stored`` (the integers
    read back from the written artifact) are the plan's (``kept_float``: planned layers the emitter
    was asked to keep in float); a mismatch raises."""
    check = plan.compare(stored, set(kept_float))
    if not check["same_as_plan"]:
        raise EdgeInferError(f"int4: the artifact does not store the plan's integers (differ: {check['differ']}, "
                             f"missing: {check['missing']}); give the emitter the cleaned graph the plan was made "
                             "from (BatchNormalization folded: converters.clean.clean_model)")
    return {"int4": plan.to_manifest(), "int4_check": check}


def check_floor(figures: dict, task: str, minimum: float | None, artifact_name: str, plan: Int4Plan | None) -> None:
    """No int4 artifact below the agreement floor (``--min-agreement``, else the default floor shared
    by every lossy recipe): the error names the figure and the best mix the search found."""
    from ..verify import AGREEMENT_KEY, DEFAULT_AGREEMENT_FLOOR
    floor = DEFAULT_AGREEMENT_FLOOR if minimum is None else minimum
    key = AGREEMENT_KEY[task]
    value = figures.get(key)
    if value is not None and value >= floor:
        return
    mix = ""
    if plan is not None:
        b = plan.bits_summary()
        mix = (f"; the best mix kept {b['8']} of {b['4'] + b['8']} layers at 8 bits "
               f"({plan.weight_bytes() / 1e6:.2f} MB of weights)")
        if plan.search:
            mix += f" and reached {plan.search['agreement_on_calibration']} on the calibration images"
    raise EdgeInferError(f"{artifact_name}: int4 {key} {value if value is None else round(value, 4)} on held-out inputs is "
                         f"below the floor {floor}{mix}; nothing was written. Use int8, or lower --min-agreement")


__all__ = ["BLOCK32", "PER_CHANNEL", "FORMAT_GRANULARITY", "STORABLE", "shared_granularity", "Granularity", "Int4Plan", "LayerQuant", "build_plans",
           "plan_rtn", "plan_int8", "plan_for", "check_floor", "artifact_details", "quantize_layer", "find_layers"]
