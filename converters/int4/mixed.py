"""Mixed 4/8 bits by measured sensitivity: which layers stay at 8 bits.

1. the all-int4 mix is measured (``agreement`` of the simulated model with fp32 on the search
   inputs); if it meets ``target`` it is kept;
2. each layer's sensitivity is measured alone (only that layer at 4 bits, the rest float): the
   relative squared error of the model's first output, on the first ``sens_samples`` (8) inputs
   (MobileNetV2: 8, 16 and 4 photos left the same 3 layers at 4 bits under the default budget and
   the same first 32 layers; 8 costs 28 s of CPU against 45 s for 16);
3. layers are ranked by sensitivity per byte that 8 bits costs over 4; then either the smallest
   prefix of that ranking kept at 8 bits that meets ``target`` is found by bisection (the
   agreement grows with the prefix), or, with a byte budget, the longest prefix that fits it
   (the default rule: the budget halfway between all-4 and all-8 bits, ``default_budget``, with
   a floor); every measured mix is a point of the size/agreement curve.
If even all-8-bit misses the target, ``MixResult.met`` is False and the best mix is reported.
The graph is prepared and serialized once for all runs (``evaluate.WeightSession``); each run only
hands its weights to ONNX Runtime as initializer overrides.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import onnx

from edgeinfer.progress import Progress

from .evaluate import Simulate, WeightSession
from .plan import Int4Plan, LayerQuant

Agreement = Callable[[list[np.ndarray], list[np.ndarray]], float]
# the default rule (``edgeinfer convert --quant int4`` without --min-agreement / --int4-size): all layers
# stay at 4 bits only if they reach this agreement with fp32 on the calibration inputs (the aim of the
# int8 recipe's search); otherwise the byte budget ``default_budget`` decides, above the shared floor
DEFAULT_TARGET = 0.93


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


def _weights(cands: dict[int, dict[str, LayerQuant]], bits: dict[str, int]) -> dict[str, np.ndarray]:
    """Initializer name -> dequantized weight of the mix ``bits`` (node -> 4 | 8)."""
    return {cands[b][n].layer.weight: cands[b][n].weight() for n, b in bits.items()}


def _session(model: onnx.ModelProto, simulate: Simulate) -> WeightSession:
    return WeightSession(model, None if simulate is _same else simulate)


def rank(model: onnx.ModelProto, base: Int4Plan, cands: dict[int, dict[str, LayerQuant]], samples: np.ndarray,
         progress: bool = True, simulate: Simulate = _same,
         session: WeightSession | None = None) -> tuple[list[tuple[str, float]], list[str]]:
    """(sensitivity per layer: relative output error with only that layer at 4 bits, promotion
    order: layers by sensitivity per byte that 8 bits costs over 4, most deserving first).
    ``simulate`` turns a float graph into the arithmetic the artifact will use (e.g. int8
    activations); the error is measured against the simulated float-weight model. ``session``:
    a ``WeightSession`` of ``simulate(model)`` to reuse (else one is built)."""
    ev = session or _session(model, simulate)
    ref = ev.run(samples)[0]
    sens = []
    with Progress("int4: layer sensitivity", len(cands[4]), progress) as bar:
        for n in cands[4]:
            sens.append((n, rel_error(ref, ev.run(samples, _weights(cands, {n: 4}))[0])))
            bar.update()
    cost = {n: max(cands[8][n].nbytes - cands[4][n].nbytes, 1) for n in cands[4]}
    s = dict(sens)
    return sens, sorted(cands[4], key=lambda n: (-s[n] / cost[n], n))


def mix_of(order: list[str], k: int) -> dict[str, int]:
    """Bits per layer when the first ``k`` layers of ``order`` are kept at 8 bits."""
    return {n: 8 if i < k else 4 for i, n in enumerate(order)}


def default_budget(cands: dict[int, dict[str, LayerQuant]]) -> int:
    """The default byte budget of a mix: halfway between every layer at 4 bits and every layer at 8."""
    return (sum(lq.nbytes for lq in cands[4].values()) + sum(lq.nbytes for lq in cands[8].values())) // 2


def search(model: onnx.ModelProto, base: Int4Plan, cands: dict[int, dict[str, LayerQuant]], samples: np.ndarray,
           target: float, agreement: Agreement, *, sens_samples: int = 8, progress: bool = True,
           simulate: Simulate = _same, max_bytes: int | None = None, fill_floor: float | None = None) -> MixResult:
    """The mix of 4/8 bits (see module docstring). ``cands[bits][node]`` are the per-layer
    quantizations to choose from; ``agreement(reference_outputs, outputs)`` scores a model run
    as ``simulate`` makes it (default: float activations) against the float model. With ``max_bytes``
    the mix is chosen by size instead: the longest prefix of the ranking whose weights fit in
    ``max_bytes`` (more accuracy for that size); ``met`` still says whether it reaches ``target``.
    With ``fill_floor`` too (the default rule): all-int4 is kept if it meets ``target``; else the
    longest prefix within ``max_bytes``, which must meet ``fill_floor``; if it does not, the smallest
    longer prefix that does (bisection; ``met`` False when even all-8-bit misses the floor)."""
    say = (lambda m: print(m, file=sys.stderr, flush=True)) if progress else (lambda m: None)
    nodes = list(cands[4])
    ev = _session(model, simulate)
    plain = ev if simulate is _same else _session(model, _same)
    ref = plain.run(samples)
    del plain
    res = MixResult({n: 4 for n in nodes}, float("nan"), False)

    def measure(bits: dict[str, int]) -> float:
        res.evaluations += 1
        a = float(agreement(ref, ev.run(samples, _weights(cands, bits))))
        res.curve.append({"layers_8bit": sum(1 for b in bits.values() if b == 8),
                          "weight_bytes": _plan(base, cands, bits).weight_bytes(), "agreement": round(a, 4)})
        return a

    res.agreement = measure(res.bits)
    say(f"int4: all {len(nodes)} layers at 4 bits -> agreement {res.agreement:.4f} on {len(samples)} "
        f"calibration inputs (target {target})")
    if res.agreement >= target and (max_bytes is None or fill_floor is not None):
        res.met = True
        return res
    res.sensitivity, res.order = rank(model, base, cands, samples[:sens_samples], progress, simulate, session=ev)
    res.evaluations += len(nodes)
    mix = lambda k: mix_of(res.order, k)      # noqa: E731
    lo = 0                                    # mix(lo) misses the goal
    if max_bytes is not None:
        k = max([0] + [k for k in range(1, len(nodes) + 1) if _plan(base, cands, mix(k)).weight_bytes() <= max_bytes])
        res.bits = mix(k)
        res.agreement = measure(res.bits) if k else res.agreement
        goal = target if fill_floor is None else fill_floor
        res.met = res.agreement >= goal
        say(f"int4: {k} layers at 8 bits fit {max_bytes / 1e6:.2f} MB of weights -> agreement {res.agreement:.4f}")
        if res.met or fill_floor is None:
            return res
        target, lo = fill_floor, k            # the budget misses the floor: the smallest longer prefix that meets it

    best_a = measure(mix(len(nodes)))
    if best_a < target:
        res.bits, res.agreement = mix(len(nodes)), best_a
        say(f"int4: even all layers at 8 bits reach only {best_a:.4f} < target {target}")
        return res
    hi = len(nodes)               # mix(hi) meets the target
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
