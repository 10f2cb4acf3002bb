"""Float regions for int8 detectors on CPUs: how much of the graph's start to keep out of 8 bits.

On a CPU (a profile whose every accelerator is a CPU) a float node costs only its float speed: no
delegate is split. Real YOLOv8 detectors lose their int8 accuracy across the backbone's 8-bit
activations, not in a few nodes the keep-float search could name (COCO YOLOv8n, 800 photos: mAP@0.5
agreement 0.949 with the decode tail float, 0.980 with the first 1/8 of the weighted nodes float
too, 0.990 with 1/4, 0.994 with 1/2). ``choose_float_region`` measures the same nested prefixes as
``wide_regions.prefix_regions`` (the decode tail + a topological prefix of the weighted nodes, each
conv with its activation) in steps of 1/16 of the weighted nodes, limited to ``max_macs`` of the
model's MACs in float, and returns the smallest whose raw-output SQNR against fp32 reaches
``min_sqnr_db`` (1/8 steps until 2026-12-02: YOLOv8n took 3/8, 34 % of its MACs, where 5/16, 28 %,
measures above 40 dB too).

Why SQNR and not mAP: on the 16-64 photos a convert can afford, mAP@0.5 agreement saturates at 1.0
and jumps by several points between samples (YOLOv8n, 15 samples of 51 photos, one prefix: 0.94 to
1.00), so it cannot tell prefixes apart; the output SQNR moves by 0.5-2 dB between the same samples
and grows with the prefix (YOLOv8n: 32.1, 38.5, 39.4, 41.0, 42.8 dB for 0, 1/8, 1/4, 3/8, 1/2).
The threshold ``MIN_OUTPUT_SQNR_DB`` is read off two real detectors on 800 photos (docs/measurements/
detection.md, "Float regions"): at 40 dB (until 2026-12-02) YOLOv8n's two int8 artifacts of one convert measured
0.9905 / 0.9818 mAP@0.5 agreement, one of them under the 0.99 the product aims at; at 42 dB (half of
its weighted nodes, 43 % of its MACs, float) 0.9959 / 0.9971; the fall YOLOv8s reaches 42.5 dB at 7/16
(46 % of its MACs, inside the default cap) and 0.9919 / 0.9910. A rule of thumb, not a guarantee; the bundle's verification and ``edgeinfer eval`` on the user's photos say
what it gives.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import onnx

from edgeinfer.progress import Progress

from .sensitivity import MetricFn, Outputs
from .wide_regions import RegionMeter, prefix_regions

FRACTIONS = tuple(k / 16 for k in range(9))   # the decode tail + 0, 1/16, ..., 1/2 of the weighted nodes
MIN_OUTPUT_SQNR_DB = 42.0
MAX_FLOAT_MACS = 0.5      # default share of the model's MACs an int8 artifact may keep in float


@dataclass
class FloatRegion:
    """What ``choose_float_region`` measured: output SQNR (dB) of the search's set (``base``) and of each
    prefix tried (fraction of weighted nodes -> dB), each prefix's share of the MACs, the choice
    (None: no region) and its nodes, whether the choice reached ``target_db``, and ``record``'s figure."""

    base: float
    target_db: float
    max_macs: float
    measured: dict[float, float] = field(default_factory=dict)
    macs: dict[float, float] = field(default_factory=dict)
    fraction: float | None = None
    nodes: list[str] = field(default_factory=list)
    met: bool = True
    recorded: dict[float | None, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        key = (lambda f: "kept_nodes_only" if f is None else f"{f:.3f}")
        return {"metric": "output_sqnr_db", "target_db": self.target_db, "max_float_macs": self.max_macs,
                "kept_nodes_only_db": round(self.base, 2),
                "prefixes_db": {key(f): round(v, 2) for f, v in sorted(self.measured.items())},
                "macs_share": {key(f): round(v, 4) for f, v in sorted(self.macs.items())},
                "chosen_fraction": self.fraction, "chosen_macs_share": self.macs.get(self.fraction, 0.0),
                "nodes": len(self.nodes), "met": self.met,
                "recorded_map50_agreement": {key(f): round(v, 4) for f, v in self.recorded.items()}}


def output_sqnr(reference: Outputs) -> MetricFn:
    """SQNR in dB of outputs against ``reference``: per output (pooled over the inputs), the lowest of
    them, so a small-valued output (scores next to box pixels) cannot hide behind a large one."""
    signal = [sum(float(np.square(np.asarray(outs[k], np.float64)).sum()) for outs in reference)
              for k in range(len(reference[0]) if reference else 0)]

    def metric(outputs: Outputs) -> float:
        worst = float("inf")
        for k, sig in enumerate(signal):
            noise = sum(float(np.square(np.asarray(ro[k], np.float64) - np.asarray(oo[k], np.float64)).sum())
                        for ro, oo in zip(reference, outputs))
            worst = min(worst, 10.0 * np.log10(max(sig, 1e-30) / max(noise, 1e-30)))
        return float(worst)
    return metric


def macs_shares(model: onnx.ModelProto, sets: dict[float, Sequence[str]]) -> dict[float, float]:
    """key -> fraction of ``model``'s MACs (shape-inferred) computed by the nodes of ``sets[key]``."""
    from .prune.flops import layer_macs
    from .prune.graph import GraphView
    view = GraphView(model)
    macs = {n.name: layer_macs(view, n) or 0 for n in model.graph.node}
    total = sum(macs.values())
    return {k: sum(macs.get(n, 0) for n in set(names)) / total if total else 0.0 for k, names in sets.items()}


def distinct_regions(regions: dict[float, list[str]]) -> dict[float, list[str]]:
    """``regions`` without the fractions whose nodes a smaller fraction already names (a model with few
    weighted nodes rounds neighbouring fractions to the same prefix)."""
    out: dict[float, list[str]] = {}
    for f in sorted(regions):
        if not any(set(v) == set(regions[f]) for v in out.values()):
            out[f] = regions[f]
    return out


def choose_float_region(model: onnx.ModelProto, eval_inputs: np.ndarray, kept: Sequence[str],
                        quantize: Callable[[list[str]], onnx.ModelProto], reference: Outputs,
                        min_sqnr_db: float = MIN_OUTPUT_SQNR_DB, max_macs: float = MAX_FLOAT_MACS,
                        fractions: Sequence[float] = FRACTIONS, record: MetricFn | None = None,
                        progress: bool = True, metric: MetricFn | None = None) -> FloatRegion:
    """The smallest prefix (``prefix_regions``) within ``max_macs`` whose int8 outputs reach
    ``min_sqnr_db`` against ``reference`` (the fp32 outputs on ``eval_inputs``); the largest allowed
    one, with ``met`` False, when none does; no region when the search's ``kept`` set reaches it alone.
    ``quantize(names)``: the int8 model with ``names`` in float. Bisects, assuming SQNR grows with the
    prefix: at most 2 + log2(prefixes) quantize + run steps. ``metric``: replaces the SQNR (same units as
    ``min_sqnr_db``)."""
    regions = distinct_regions(prefix_regions(model, fractions))
    kept = list(kept)
    choice = FloatRegion(float("nan"), min_sqnr_db, max_macs)
    choice.macs = macs_shares(model, {f: kept + regions[f] for f in regions})
    allowed = sorted(f for f in regions if choice.macs[f] <= max_macs + 1e-9)
    log = (lambda m: print(m, file=sys.stderr, flush=True)) if progress else (lambda _m: None)
    with Progress("measuring float regions", 2 + max(1, len(allowed)).bit_length(), progress) as bar:
        meter = RegionMeter(regions, kept, eval_inputs, quantize, metric or output_sqnr(reference), record, bar)
        choice.measured, choice.recorded = meter.measured, meter.recorded
        choice.base = meter.base()
        if choice.base < min_sqnr_db and allowed:
            choice.met = meter.at(allowed[-1]) >= min_sqnr_db
            choice.fraction = meter.smallest(allowed, lambda v: v >= min_sqnr_db) if choice.met else allowed[-1]
            choice.nodes = [n for n in regions[choice.fraction] if n not in kept]
        elif choice.base < min_sqnr_db:
            choice.met = False
    summary = ", ".join(f"{f:.3f} ({choice.macs[f]:.0%} MACs): {v:.1f} dB" for f, v in sorted(choice.measured.items()))
    log(f"  float regions (output SQNR, target {min_sqnr_db:.0f} dB, at most {max_macs:.0%} of MACs): kept nodes only "
        f"{choice.base:.1f} dB" + (f"; prefixes {summary}" if summary else "") + "; chosen: "
        + ("none" if choice.fraction is None else "the decode tail" if choice.fraction == 0 else
           f"the first {choice.fraction:.1%} of the weighted nodes ({choice.macs[choice.fraction]:.0%} of MACs)")
        + ("" if choice.met else " (below the target)"))
    return choice
