"""Where the error of an fp16 Core ML program comes from, measured with the numpy MIL evaluator.

``Fp16Emulator(fp32_package, fp16_ops, weights=, inputs=, outputs=)`` runs an *fp32* package as if
the ops in ``fp16_ops`` computed in fp16 the way ``FP16ComputePrecision`` makes them: their float
constants (weights, biases) rounded to fp16 (``weights``), the activations they read rounded to fp16
(``inputs``; the cast coremltools inserts in front of an fp16 op), and their results stored as fp16
(``outputs``). Ops outside ``fp16_ops`` stay fp32. With every op in fp16 and all three flags on, the
result equals the fp16 package's (tested), so switching parts off attributes the error.

``breakdown(package, x, ref)`` returns rows (what is fp16, max abs error vs ``ref``, top-1 agreement,
share of ops / weights kept in fp32) for: everything fp16; weights only; activations only; the
output cast only; everything but each island group (``fp32_islands``) and their unions; and with
``per_op=True`` the ops whose fp32 island helps most. The evaluator computes each op in fp32 and
rounds its result: a device accumulating in fp16 can be worse than these figures.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from .fp32_islands import island_groups, kept_ops, proto_infos
from .mil_eval import MilProgram

IMAGE_PREPROCESS_SUFFIXES = ("__scaled__", "__biased__")   # coremltools' image scale/bias ops stay fp32


class Fp16Emulator(MilProgram):
    """An fp32 package executed with the ops in ``fp16_ops`` (op keys = first output names) in fp16."""

    def __init__(self, package: str | Path, fp16_ops: Iterable[str] | None = None, *, weights: bool = True,
                 inputs: bool = True, outputs: bool = True):
        super().__init__(package)
        self.const_names = {x.name for o in self.block.operations if o.type == "const" for x in o.outputs}
        every = compute_ops(self)
        self.fp16_ops = set(every) if fp16_ops is None else set(fp16_ops) & set(every)
        self.round_weights, self.round_inputs, self.round_outputs = weights, inputs, outputs

    def arg(self, o, name: str, val: Any) -> Any:
        if o.outputs[0].name not in self.fp16_ops or not _is_f32(val):
            return val
        return val.astype(np.float16) if (self.round_weights if name in self.const_names else self.round_inputs) else val

    def store(self, o, out, val) -> Any:
        val = super().store(o, out, val)
        if self.round_outputs and o.outputs[0].name in self.fp16_ops and _is_f32(val):
            return val.astype(np.float16)
        return val


def _is_f32(v) -> bool:
    return isinstance(v, np.ndarray) and v.dtype == np.float32


def compute_ops(prog: MilProgram) -> list[str]:
    """Keys of the ops that compute on floats in an fp16 program (not consts, not image scale/bias)."""
    return [o.outputs[0].name for o in prog.block.operations
            if o.type != "const" and not o.type.startswith("constexpr_") and o.type != "classify"
            and not o.outputs[0].name.endswith(IMAGE_PREPROCESS_SUFFIXES)]


@dataclass
class Row:
    label: str            # what is computed in fp16
    max_abs: float        # max abs error of the first output vs the reference
    top1: float           # top-1 agreement with the reference
    fp32_ops: int = 0     # compute ops left in fp32
    n_ops: int = 0
    fp32_weight_share: float = 0.0   # share of weight elements in fp32 ops


def _weight_elems(prog: MilProgram) -> dict[str, int]:
    """Elements of the constant weight (rank >= 2) each op reads."""
    sizes = {o.outputs[0].name: int(np.prod([d.constant.size for d in o.outputs[0].type.tensorType.dimensions]))
             for o in prog.block.operations if o.type == "const" and len(o.outputs[0].type.tensorType.dimensions) >= 2}
    out: dict[str, int] = {}
    for o in prog.block.operations:
        n = sum(sizes.get(b.name, 0) for a in o.inputs.values() for b in a.arguments)
        if n:
            out[o.outputs[0].name] = n
    return out


def breakdown(package: str | Path, x: np.ndarray, ref: np.ndarray, *, stems: Iterable[int] = (), per_op: bool = False,
              progress: bool = True) -> list[Row]:
    """Error rows for an fp32 ``package`` on the preprocessed batch ``x`` vs ``ref`` (see module doc)."""
    from .verify import run_program

    base = Fp16Emulator(package)
    ops = compute_ops(base)
    infos, outs = proto_infos(base.block)
    groups = island_groups(infos, outs)
    by_key = {o.key: o for o in infos}
    last = {k for o in outs for k in ((o,) if o in ops else by_key[o].producers) if k in ops}   # e.g. before classify
    wsize = _weight_elems(base)
    total_w = sum(wsize.values()) or 1

    def row(label, fp16, **flags) -> Row:
        if progress:
            print(f"  fp16 analysis: {label}", file=sys.stderr)
        got = run_program(Fp16Emulator(package, fp16, **flags), x)[0]
        keep = [k for k in ops if k not in set(fp16)] if not flags else []
        return Row(label, float(np.abs(got - ref).max()), float((got.argmax(1) == ref.argmax(1)).mean()),
                   len(keep), len(ops), sum(wsize.get(k, 0) for k in keep) / total_w)

    rows = [row("everything fp16", ops),
            row("fp16 weights only (fp32 activations)", ops, inputs=False, outputs=False),
            row("fp16 activations only (fp32 weights)", ops, weights=False),
            row("fp16 output cast only", last, weights=False, inputs=False)]
    names = [("head",), ("pool",), ("stem",), ("head", "pool"), ("head", "pool", "stem")] + [(f"stem:{n}",) for n in stems]
    for combo in names:
        keep = kept_ops(groups, combo)
        rows.append(row(f"all but {'+'.join(combo)} fp16", [k for k in ops if k not in keep]))
    if per_op:
        for k in [k for k in ops if k in wsize]:
            rows.append(row(f"all but {k} fp16", [o for o in ops if o != k]))
    return rows


def format_rows(rows: list[Row]) -> str:
    lines = [f"{'fp16 part':<48} {'max|err|':>9} {'top1':>6} {'fp32 ops':>9} {'fp32 w':>7}"]
    for r in rows:
        lines.append(f"{r.label:<48} {r.max_abs:9.4f} {100 * r.top1:5.1f}% {r.fp32_ops:4d}/{r.n_ops:<4d} {100 * r.fp32_weight_share:6.1f}%")
    return "\n".join(lines)
