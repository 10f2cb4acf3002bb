"""Mixed 4/8 bits by measured sensitivity, until an agreement target is met.

1. the all-int4 mix is measured (``agreement`` of the simulated model with fp32 on the search
   inputs); if it meets ``target`` it is kept;
2. each layer's sensitivity is measured alone (only that layer at 4 bits, the rest float): the
   relative squared error of the model's first output;
3. layers are ranked by sensitivity per byte that 8 bits costs over 4, and the smallest prefix
   of that ranking kept at 8 bits that meets ``target`` is found by bisection (the agreement
   grows with the prefix); every measured mix is a point of the size/agreement curve.
If even all-8-bit misses the target, ``MixResult.met`` is False and the best mix is reported.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import onnx

from edgeinfer.progress import Progress

from ..verify import run_reference
from .plan import Int4Plan, LayerQuant

Agreement = Callable[[list[np.ndarray], list[np.ndarray]], float]
Simulate = Callable[[onnx.ModelProto], onnx.ModelProto]


def _same(model: onnx.ModelProto) -> onnx.ModelProto:
    return model


@dataclass
class MixResult:
    bits: dict[str, int]                    # node -> 4 | 8
    agreement: float
    met: bool
    curve: list[dict] = field(default_factory=list)   # {"layers_8bit", "weight_bytes", "agreement"}
    sensitivity: list[tuple[str, float]] = field(default_factory=list)
    order: list[str] = field(default_factory=list)          # promotion order (empty when all-4 met the target)
    evaluations: int = 0


def _plan(base: Int4Plan, cands: dict[int, dict[str, LayerQuant]], bits: dict[str, int]) -> Int4Plan:
    return Int4Plan(base.granularity, {n: cands[b][n] for n, b in bits.items()}, base.skipped, base.method)


def rel_error(ref: np.ndarray, out: np.ndarray) -> float:
    ref = ref.astype(np.float64)
    return float(((out - ref) ** 2).sum() / max((ref ** 2).sum(), 1e-30))


def rank(model: onnx.ModelProto, base: Int4Plan, cands: dict[int, dict[str, LayerQuant]], samples: np.ndarray,
         progress: bool = True, simulate: Simulate = _same) -> tuple[list[tuple[str, float]], list[str]]:
    """(sensitivity per layer: relative output error with only that layer at 4 bits, promotion
    order: layers by sensitivity per byte that 8 bits costs over 4, most deserving first).
    ``simulate`` turns a float graph into the arithmetic the artifact will use (e.g. int8
    activations); the error is measured against the simulated float-weight model."""
    ref = run_reference(simulate(model), samples)[0]
    sens = []
    with Progress("int4: layer sensitivity", len(cands[4]), progress) as bar:
        for n in cands[4]:
            one = Int4Plan(base.granularity, {n: cands[4][n]}, base.skipped, base.method)
            sens.append((n, rel_error(ref, run_reference(simulate(one.apply(model)), samples)[0])))
            bar.update()
    cost = {n: max(cands[8][n].nbytes - cands[4][n].nbytes, 1) for n in cands[4]}
    s = dict(sens)
    return sens, sorted(cands[4], key=lambda n: -s[n] / cost[n])


def mix_of(order: list[str], k: int) -> dict[str, int]:
    """Bits per layer when the first ``k`` layers of ``order`` are kept at 8 bits."""
    return {n: 8 if i < k else 4 for i, n in enumerate(order)}


def search(model: onnx.ModelProto, base: Int4Plan, cands: dict[int, dict[str, LayerQuant]], samples: np.ndarray,
           target: float, agreement: Agreement, *, sens_samples: int = 16, progress: bool = True,
           simulate: Simulate = _same, max_bytes: int | None = None) -> MixResult:
    """The mix of 4/8 bits (see module docstring). ``cands[bits][node]`` are the per-layer
    quantizations to choose from; ``agreement(reference_outputs, outputs)`` scores a model run
    as ``simulate`` makes it (default: float activations) against the float model. With ``max_bytes``
    the mix is chosen by size instead: the longest prefix of the ranking whose weights fit in
    ``max_bytes`` (more accuracy for that size); ``met`` still says whether it reaches ``target``."""
    say = (lambda m: print(m, file=sys.stderr, flush=True)) if progress else (lambda m: None)
    nodes = list(cands[4])
    ref = run_reference(model, samples)
    res = MixResult({n: 4 for n in nodes}, float("nan"), False)

    def measure(bits: dict[str, int]) -> float:
        res.evaluations += 1
        plan = _plan(base, cands, bits)
        a = float(agreement(ref, run_reference(simulate(plan.apply(model)), samples)))
        res.curve.append({"layers_8bit": sum(1 for b in bits.values() if b == 8), "weight_bytes": plan.weight_bytes(),
                          "agreement": round(a, 4)})
        return a

    res.agreement = measure(res.bits)
    say(f"int4: all {len(nodes)} layers at 4 bits -> agreement {res.agreement:.4f} on {len(samples)} "
        f"calibration inputs (target {target})")
    if res.agreement >= target and max_bytes is None:
        res.met = True
        return res
    res.sensitivity, res.order = rank(model, base, cands, samples[:sens_samples], progress, simulate)
    res.evaluations += len(nodes)
    mix = lambda k: mix_of(res.order, k)      # noqa: E731
    if max_bytes is not None:
        k = max([0] + [k for k in range(1, len(nodes) + 1) if _plan(base, cands, mix(k)).weight_bytes() <= max_bytes])
        res.bits = mix(k)
        res.agreement = measure(res.bits) if k else res.agreement
        res.met = res.agreement >= target
        say(f"int4: {k} layers at 8 bits fit {max_bytes / 1e6:.2f} MB of weights -> agreement {res.agreement:.4f}")
        return res

    best_a = measure(mix(len(nodes)))
    if best_a < target:
        res.bits, res.agreement = mix(len(nodes)), best_a
        say(f"int4: even all layers at 8 bits reach only {best_a:.4f} < target {target}")
        return res
    lo, hi = 0, len(nodes)        # mix(lo) misses the target, mix(hi) meets it
    while hi - lo > 1:
        mid = (lo + hi) // 2
        a = measure(mix(mid))
        say(f"int4: {mid} most sensitive layers at 8 bits -> agreement {a:.4f}")
        if a >= target:
            hi, best_a = mid, a
        else:
            lo = mid
    res.bits, res.agreement, res.met = mix(hi), best_a, True
    return res
