"""16-bit activation regions for A16W8 targets: how much of the graph an NPU should run at 16 bits.

On a profile whose ONNX int8 artifact computes the nodes kept out of 8 bits with 16-bit activations
and 8-bit weights (``int8_fallback = "int16"``, e.g. Qualcomm's HTP), 16 bits are not a last resort
as float is on a CPU: the NPU runs them in its quantized graph at a fraction of int8's speed.
``choose_region`` measures nested regions: the graph's decode tail (the arithmetic after the last
weighted node, which the NPU hands to the CPU in float like any float output, ``graph_tail``) alone,
then with topological prefixes at 16 bits (the first 1/4, 1/2, 3/4 and all of its weighted nodes),
on a DENSE metric, and returns the smallest region whose figure is within ``delta`` of the whole
graph's. Dense: a detector's mAP@0.5 agreement saturates at 1.0 on the few photos a convert can
afford while hundreds of photos still show points lost; mAP@0.5:0.95 agreement (box precision
too) does not (``dense_detection_metric``).

Order of measurements: the search's own set (``kept``) at 16 bits, then the whole graph; if the
whole graph gains no more than ``delta`` nothing is added; else a bisection over the smaller regions
(at most five quantize + evaluate runs).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import onnx

from edgeinfer.progress import Progress

from .sensitivity import WEIGHTED_OPS, MetricFn, decode_tail, run_outputs

FRACTIONS = (0.0, 0.25, 0.5, 0.75, 1.0)
DELTA = 0.01


@dataclass
class RegionChoice:
    """What ``choose_region`` measured: ``metric`` of the search's set at 16 bits (``base``) and of each
    prefix tried (fraction of weighted nodes -> figure), the chosen fraction (None: no region) and its nodes."""

    metric: str
    base: float
    measured: dict[float, float] = field(default_factory=dict)
    fraction: float | None = None
    nodes: list[str] = field(default_factory=list)
    delta: float = DELTA
    recorded: dict[float | None, float] = field(default_factory=dict)   # fraction (None: kept nodes only) -> ``record``

    def to_dict(self) -> dict:
        return {"metric": self.metric, "kept_nodes_only": round(self.base, 4),
                "prefixes": {f"{f:.2f}": round(v, 4) for f, v in sorted(self.measured.items())},
                "chosen_fraction": self.fraction, "delta": self.delta, "nodes": len(self.nodes),
                "recorded": {("kept_nodes_only" if f is None else f"{f:.2f}"): round(v, 4)
                             for f, v in self.recorded.items()}}


@dataclass
class RegionMeter:
    """Measures ``prefix_regions`` once each: ``metric`` of ``quantize(kept + the region's nodes)`` on
    ``eval_inputs`` (``measured``, by fraction), ``record``'s figure of the same outputs in ``recorded``
    (key None: ``kept`` alone); each run ticks ``bar``."""

    regions: dict[float, list[str]]
    kept: list[str]
    eval_inputs: np.ndarray
    quantize: Callable[[list[str]], onnx.ModelProto]
    metric: MetricFn
    record: MetricFn | None = None
    bar: Progress | None = None
    measured: dict[float, float] = field(default_factory=dict)
    recorded: dict[float | None, float] = field(default_factory=dict)

    def _run(self, names: list[str], key: float | None) -> float:
        outs = run_outputs(self.quantize(names), self.eval_inputs)
        if self.record is not None:
            self.recorded[key] = float(self.record(outs))
        if self.bar is not None:
            self.bar.update()
        return float(self.metric(outs))

    def base(self) -> float:
        """The figure of ``kept`` alone."""
        return self._run(self.kept, None)

    def at(self, f: float) -> float:
        """The figure of region ``f`` (measured once)."""
        if f not in self.measured:
            self.measured[f] = self._run(self.kept + [n for n in self.regions[f] if n not in self.kept], f)
        return self.measured[f]

    def smallest(self, order: Sequence[float], ok: Callable[[float], bool]) -> float:
        """The first of ``order`` whose figure passes ``ok``, by bisection: ``ok`` is assumed to hold from
        some region on and for ``order[-1]``, which is not measured again."""
        lo, hi = 0, len(order) - 1
        while lo < hi:
            mid = (lo + hi) // 2
            if ok(self.at(order[mid])):
                hi = mid
            else:
                lo = mid + 1
        return order[hi]


def prefix_regions(model: onnx.ModelProto, fractions: Sequence[float] = FRACTIONS) -> dict[float, list[str]]:
    """fraction -> the ``decode_tail`` plus the node names (topological order) before the weighted
    node that follows the first ``fraction`` of the weighted nodes (so a conv's activation comes with it)."""
    tail = decode_tail(model)
    in_tail = set(tail)
    interior = [n for n in model.graph.node if n.name not in in_tail]
    weighted = [i for i, n in enumerate(interior) if n.op_type in WEIGHTED_OPS]
    out = {}
    for f in fractions:
        k = int(round(f * len(weighted)))
        end = len(interior) if k >= len(weighted) else (weighted[k] if k > 0 else 0)
        out[f] = [n.name for n in interior[:end]] + list(tail)
    return out


def dense_detection_metric(reference, postprocess: dict, transforms) -> MetricFn:
    """mAP@0.5:0.95 agreement with the reference detections (``sensitivity.detection_agreement``)."""
    from .sensitivity import detection_agreement
    return detection_agreement(reference, postprocess, transforms, key="map50_95_agreement")


def choose_region(model: onnx.ModelProto, eval_inputs: np.ndarray, kept: Sequence[str],
                  quantize: Callable[[list[str]], onnx.ModelProto], metric: MetricFn, metric_name: str,
                  delta: float = DELTA, fractions: Sequence[float] = FRACTIONS, progress: bool = True,
                  record: MetricFn | None = None) -> RegionChoice:
    """The smallest prefix (``prefix_regions``) whose 16-bit figure is within ``delta`` of the whole
    graph's (see the module docstring). ``quantize(names)``: the A16W8 model with ``names`` out of 8
    bits. ``record``: a second metric computed on the same outputs (``choice.recorded``)."""
    regions = prefix_regions(model, fractions)
    order = sorted(regions)
    log = (lambda m: print(m, file=sys.stderr, flush=True)) if progress else (lambda _m: None)
    with Progress("measuring 16-bit regions", 5, progress) as bar:
        meter = RegionMeter(regions, list(kept), eval_inputs, quantize, metric, record, bar)
        choice = RegionChoice(metric_name, meter.base(), delta=delta, measured=meter.measured, recorded=meter.recorded)
        whole = meter.at(order[-1])
        if whole - choice.base > delta:     # order[-1] is within delta of the whole graph; find the smallest
            choice.fraction = meter.smallest(order, lambda v: v >= whole - delta)
            choice.nodes = [n for n in regions[choice.fraction] if n not in meter.kept]
    summary = ", ".join(f"{f:.2f}: {v:.4f}" for f, v in sorted(choice.measured.items()))
    log(f"  16-bit regions ({metric_name}): kept nodes only {choice.base:.4f}; prefixes {summary}; "
        + (f"chosen: the decode tail{f' + the first {choice.fraction:.0%} of the weighted nodes' if choice.fraction else ' alone'}"
           if choice.fraction is not None
           else "none (no more than the tolerance to gain)"))
    return choice
