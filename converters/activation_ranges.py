"""Activation-aware int8 ranges: a tensor read only by an activation whose low end is flat (SiLU,
HardSwish, x * HardSigmoid(x)) spends no 8-bit steps on values the activation maps to ~0; a SiLU
output whose top is a thin tail (``clip_heavy_tails``) spends none on its rarest values.

A YOLOv8 convolution output that min/max calibration puts at -63..67 keeps only -4..67 after
this: its step shrinks by ~45 % and SiLU(x) for x < -4 moves by at most a quarter of that step.
Contract: only the LOW end moves, only up (never past zero), only for tensors whose every
consumer belongs to one recognised activation; graph inputs and outputs are never changed.
One function per activation pattern, registered in ``RULES``.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import onnx
from onnx import helper

LEVELS = 255
# SiLU's clipped tail may move an output by at most this fraction of the int8 step
# (YOLOv8s 640, 150 photos, scratch runs: 0.25 -> mAP agreement 0.973, 0.5 -> 0.970, 0.1 -> 0.966,
# plain min/max 0.933; tools/diagnose_int8_detector.py: 0.981 vs 0.933)
SILU_TAIL_STEPS = 0.25


def _silu_low_end(lo: float, hi: float) -> float:
    """The highest low end -T >= lo with |SiLU(-T)| <= SILU_TAIL_STEPS * (hi + T) / LEVELS."""
    ts = np.linspace(0.5, -lo, 512)
    ok = np.abs(ts * np.exp(-ts) / (1.0 + np.exp(-ts))) <= SILU_TAIL_STEPS * (hi + ts) / LEVELS
    return -float(ts[int(np.argmax(ok))]) if ok.any() else lo


def _hard_sigmoid_zero(node: onnx.NodeProto) -> float:
    """Where HardSigmoid(alpha, beta) reaches 0: x = -beta / alpha (ONNX defaults 0.2, 0.5)."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    return -float(attrs.get("beta", 0.5)) / float(attrs.get("alpha", 0.2))


def _gated(tensor: str, consumers: list, gate_op: str) -> onnx.NodeProto | None:
    """The gate node when ``consumers`` are exactly gate_op(tensor) and Mul(tensor, gate output)."""
    if len(consumers) != 2:
        return None
    gate = next((c for c in consumers if c.op_type == gate_op), None)
    mul = next((c for c in consumers if c.op_type == "Mul"), None)
    if gate is None or mul is None or list(gate.input) != [tensor]:
        return None
    return gate if sorted(mul.input) == sorted([tensor, gate.output[0]]) else None


def silu(tensor: str, consumers: list, lo: float, hi: float) -> float | None:
    """x * Sigmoid(x): flat enough below ``_silu_low_end``."""
    return _silu_low_end(lo, hi) if _gated(tensor, consumers, "Sigmoid") is not None and lo < -0.5 else None


def hard_swish(tensor: str, consumers: list, lo: float, hi: float) -> float | None:
    """HardSwish(x), exactly 0 below -3."""
    return -3.0 if len(consumers) == 1 and consumers[0].op_type == "HardSwish" else None


def gated_hard_sigmoid(tensor: str, consumers: list, lo: float, hi: float) -> float | None:
    """x * HardSigmoid(x) (HardSwish as older exporters write it), exactly 0 below -beta/alpha."""
    gate = _gated(tensor, consumers, "HardSigmoid")
    return _hard_sigmoid_zero(gate) if gate is not None else None


RULES: dict[str, Callable[[str, list, float, float], "float | None"]] = {
    "silu": silu, "hardswish": hard_swish, "x*hardsigmoid": gated_hard_sigmoid}


def _rule_targets(model: onnx.ModelProto, ranges: dict[str, tuple[float, float]]):
    """(tensor, rule name, the rule's low end) for every pre-activation tensor of ``ranges`` a rule covers."""
    ends = {i.name for i in model.graph.input} | {o.name for o in model.graph.output}
    consumers: dict[str, list] = {}
    for n in model.graph.node:
        for name in set(n.input):
            consumers.setdefault(name, []).append(n)
    for name, (lo, hi) in ranges.items():
        if name in ends or lo >= 0 or name not in consumers:
            continue
        for rule, low_end in RULES.items():
            new = low_end(name, consumers[name], lo, hi)
            if new is not None:
                yield name, rule, new
                break


def tighten_ranges(model: onnx.ModelProto, ranges: dict[str, tuple[float, float]]
                   ) -> tuple[dict[str, tuple[float, float]], dict[str, int]]:
    """``ranges`` with the low end of every pre-activation tensor raised by its ``RULES`` entry,
    and how many tensors each rule changed."""
    out, counts = dict(ranges), {}
    for name, rule, new in _rule_targets(model, ranges):
        lo, hi = ranges[name]
        if min(new, 0.0) > lo:
            out[name] = (min(new, 0.0), hi)
            counts[rule] = counts.get(rule, 0) + 1
    return out, counts


def activation_floors(model: onnx.ModelProto, ranges: dict[str, tuple[float, float]]) -> dict[str, float]:
    """Pre-activation tensors a rule covers -> the low end of their (tightened) range: values below it
    reach the activation's flat end either way, so an error measured there should not count them."""
    return {name: ranges[name][0] for name, _, _ in _rule_targets(model, ranges)}


# a SiLU output whose min/max top is more than TAIL_RATIO times its (1 - TAIL_FRACTION) quantile has a thin
# top tail; CUT_MOST of them, those that lose most to 8 bits as they are, get that quantile as their high end.
# COCO YOLOv8n 640: /model.1's SiLU output spans 0..155 with 99.99 % of values below ~50 (median 0.5): a
# 0.6 step, the worst 8-bit SQNR of the model (26 dB, 29+ elsewhere); cut, mAP@0.5 agreement with fp32
# goes 0.860 -> 0.949 on 800 photos. Cutting every qualifying tail (25 tensors, the class branch's among
# them) gives no more there and costs the fall YOLOv8s 1.9 pt, so the search decides (calibrate.with_tails_clipped).
TAIL_FRACTION = 1e-4
TAIL_RATIO = 2.0
CUT_MOST = 1


def silu_outputs(model: onnx.ModelProto) -> list[str]:
    """Output tensors of the x * Sigmoid(x) pattern (the Mul), graph outputs excluded."""
    producer = {o: n for n in model.graph.node for o in n.output}
    ends = {o.name for o in model.graph.output}
    found = []
    for n in model.graph.node:
        if n.op_type != "Mul" or len(n.input) != 2 or n.output[0] in ends:
            continue
        a, b = n.input
        for x, gate in ((a, b), (b, a)):
            g = producer.get(gate)
            if g is not None and g.op_type == "Sigmoid" and list(g.input) == [x]:
                found.append(n.output[0])
                break
    return found


def top_quantiles(model: onnx.ModelProto, samples: np.ndarray, tensors: list[str], fraction: float,
                  progress: bool = False, ranges: dict[str, tuple[float, float]] | None = None
                  ) -> tuple[dict[str, float], dict[str, float]]:
    """Per tensor: the value that ``fraction`` of its elements over all ``samples`` exceed (exact: the
    largest ceil(fraction * N) elements of each image are kept, and the global ones are among them);
    and, for tensors of ``ranges``, the SQNR (dB) of the tensor through 8 bits with its range there."""
    from edgeinfer.progress import track

    from .ort_session import tensor_probe
    from .range_clip import quantization_mse
    if not tensors:
        return {}, {}
    ranges = ranges or {}
    probe = tensor_probe(model, tensors)
    tops: dict[str, list[np.ndarray]] = {t: [] for t in tensors}
    sizes: dict[str, int] = dict.fromkeys(tensors, 0)
    signal: dict[str, float] = dict.fromkeys(tensors, 0.0)
    noise: dict[str, float] = dict.fromkeys(tensors, 0.0)
    for i in track(range(len(samples)), "measuring activation tails", len(samples), progress):
        out = probe(np.ascontiguousarray(samples[i:i + 1], np.float32))
        for t in tensors:
            v = out[t].reshape(-1)
            sizes[t] += v.size
            k = min(v.size, int(np.ceil(fraction * v.size * len(samples))) + 1)
            tops[t].append(np.partition(v, v.size - k)[v.size - k:])
            if t in ranges:
                signal[t] += float((v.astype(np.float64) ** 2).sum())
                lo, hi = ranges[t]
                noise[t] += v.size * float(quantization_mse(v, np.array([lo]), np.array([hi]), LEVELS)[0])
    quantiles = {}
    for t in tensors:
        merged = np.sort(np.concatenate(tops[t]))[::-1]
        quantiles[t] = float(merged[min(len(merged) - 1, int(np.floor(fraction * sizes[t])))])
    sqnr = {t: float(10 * np.log10((signal[t] + 1e-30) / (noise[t] + 1e-30))) for t in tensors if t in ranges}
    return quantiles, sqnr


def clip_heavy_tails(model: onnx.ModelProto, samples: np.ndarray, ranges: dict[str, tuple[float, float]],
                     progress: bool = False, most: int = CUT_MOST) -> tuple[dict[str, tuple[float, float]], int]:
    """``ranges`` with the high end of the ``most`` SiLU outputs whose top is a thin tail (max > ``TAIL_RATIO``
    x their (1 - ``TAIL_FRACTION``) quantile over ``samples``) and whose 8-bit SQNR is lowest lowered to
    that quantile; how many changed. Contract: only high ends move, only down, never below zero."""
    tensors = [t for t in silu_outputs(model) if t in ranges and ranges[t][1] > 0]
    quantiles, sqnr = top_quantiles(model, samples, tensors, TAIL_FRACTION, progress, ranges)
    thin = sorted((t for t, q in quantiles.items() if q > 0 and ranges[t][1] > TAIL_RATIO * q), key=lambda t: sqnr[t])
    out = dict(ranges)
    for t in thin[:most]:
        out[t] = (ranges[t][0], quantiles[t])
    return out, len(thin[:most])
