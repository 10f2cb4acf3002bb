"""Which ops of an fp16 Core ML program stay in fp32 ("fp32 islands"), by position in the graph.

Groups (computed on the op graph, consts excluded):
  * ``head``: the ops from each program output back to, and including, the first weighted op
    (conv / linear / matmul with a constant weight) on the way: the classifier (and a softmax after it);
  * ``pool``: the unweighted ops between the head and the last feature op with weights before it
    (global pool, flatten, the last activation);
  * ``stem`` (= ``stem:1``) / ``stem:N``: the ops in program order before the (N+1)-th weighted op
    (the first N convolutions with the activations after them).

``op_selector(groups)`` is the ``op_selector`` for ``ct.transform.FP16ComputePrecision``: it returns
True (cast to fp16) for every op outside the named groups. ``groups_of_proto_block`` computes the
same groups on a saved program (the numpy evaluator's view), for the fp16 error analysis.

Measured (``tools/coreml_fp16_error.py``, evaluator vs ONNX Runtime fp32, max abs logit error): the
fp16 error is spread over the whole network (fp16 weight storage ~ fp16 activations; the output cast
alone is half an fp16 step, 0.0039 at |logit| 8..16), so ``head``/``pool`` islands barely help
(digits 0.0245 -> 0.0227; MobileNetV2 0.0244 -> 0.0238 and +37% weight.bin for its 1280x1000
classifier). Only long stems reach 1e-2: digits ``stem:6`` (12 of 29 ops fp32) 0.0094, MobileNetV2
``stem:24`` (44 of 100 ops) 0.0071. Hence no island is on by default.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Iterable

GROUPS = ("head", "pool", "stem")
WEIGHTED = {"conv", "conv_transpose", "linear", "matmul", "einsum"}


@dataclass(frozen=True)
class OpInfo:
    key: str                  # a unique op id (its first output name)
    type: str
    producers: tuple[str, ...]  # keys of the non-const ops whose outputs it reads
    weighted: bool


def parse_groups(spec: str | Iterable[str] | None) -> tuple[str, ...]:
    """``"head,pool"`` or ``["head"]`` -> validated group names (empty for None/"")."""
    if not spec:
        return ()
    names = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s and s.strip()]
    bad = [n for n in names if n not in GROUPS and not re.fullmatch(r"stem:[1-9][0-9]*", n)]
    if bad:
        from edgeinfer.errors import EdgeInferError

        raise EdgeInferError(f"Core ML fp32 op group(s) {', '.join(map(repr, bad))} unknown; use any of {', '.join(GROUPS)}, stem:N")
    return tuple(dict.fromkeys(names))


def island_groups(ops: list[OpInfo], outputs: Iterable[str]) -> dict[str, set[str]]:
    """The ``head``/``pool``/``stem``/``stem:N`` op keys of a graph (``ops`` in program order,
    ``outputs`` the keys of the ops producing program outputs)."""
    by_key = {o.key: o for o in ops}

    def walk(starts, nxt, include_stop: bool) -> tuple[set[str], set[str]]:
        seen, stops, todo = set(), set(), [k for k in starts if k in by_key]
        while todo:
            k = todo.pop()
            if k in seen or k in stops:
                continue
            if by_key[k].weighted:
                stops.add(k)
                if include_stop:
                    seen.add(k)
                continue
            seen.add(k)
            todo += [n for n in nxt(k) if n in by_key]
        return seen, stops

    head, head_stops = walk(outputs, lambda k: by_key[k].producers, include_stop=True)
    frontier = [p for k in head_stops for p in by_key[k].producers]
    pool, _ = walk(frontier, lambda k: by_key[k].producers, include_stop=False)
    groups = {"head": head, "pool": pool - head}
    stem: set[str] = set()
    n_weighted = 0
    for o in ops:
        n_weighted += o.weighted
        if o.weighted and n_weighted > 1:
            groups[f"stem:{n_weighted - 1}"] = set(stem)
        stem.add(o.key)
    groups[f"stem:{n_weighted}"] = stem
    groups["stem"] = groups.get("stem:1", set())
    return groups


def kept_ops(groups: dict[str, set[str]], names: Iterable[str]) -> set[str]:
    """Union of the named groups (``stem:N`` beyond the last weighted op = every op)."""
    out: set[str] = set()
    for n in names:
        if n.startswith("stem:") and n not in groups:
            n = max((g for g in groups if g.startswith("stem:")), key=lambda g: int(g[5:]))
        out |= groups[n]
    return out


# ---------------------------------------------------------------- coremltools (pymil) graph
def _is_const(op) -> bool:
    return op.op_type == "const" or op.op_type.startswith("constexpr_")


def _pymil_infos(block) -> tuple[list[OpInfo], list[str]]:
    ops = []
    for op in block.operations:
        if op.op_type == "const":
            continue
        vals = []
        for v in op.inputs.values():
            vals += list(v) if isinstance(v, (list, tuple)) else [v]
        producers = [v.op.name for v in vals if getattr(v, "op", None) is not None and not _is_const(v.op)]
        weighted = op.op_type in WEIGHTED and any(
            op.inputs.get(k) is not None and getattr(op.inputs[k], "op", None) is not None and _is_const(op.inputs[k].op)
            for k in ("weight", "y"))
        ops.append(OpInfo(op.name, op.op_type, tuple(producers), weighted))
    return ops, [v.op.name for v in block.outputs if getattr(v, "op", None) is not None]


def op_selector(groups: Iterable[str]) -> Callable:
    """``op_selector`` for ``FP16ComputePrecision``: fp16 for every op outside ``groups``.
    ``selector.kept`` collects the names of the ops left in fp32 (for the notes/report)."""
    groups = tuple(groups)
    cache: dict[int, set[str]] = {}

    def selector(op) -> bool:
        block = op.enclosing_block
        keep = cache.get(id(block))
        if keep is None:
            g = island_groups(*_pymil_infos(block))
            keep = cache[id(block)] = kept_ops(g, groups)
        if op.name in keep:
            selector.kept.add(op.name)
            return False
        return True

    selector.kept = set()
    return selector


# ---------------------------------------------------------------- saved program (proto) graph
def proto_infos(block) -> tuple[list[OpInfo], list[str]]:
    """OpInfos of a saved ``Block`` proto (const and constexpr ops count as constants)."""
    producer: dict[str, str] = {}
    const: set[str] = set()
    ops = []
    for o in block.operations:
        key = o.outputs[0].name
        if o.type == "const" or o.type.startswith("constexpr_"):   # same rule as _is_const
            const.update(x.name for x in o.outputs)
            continue
        names = [b.name for a in o.inputs.values() for b in a.arguments if b.name]
        weighted = o.type in WEIGHTED and any(b.name in const for k in ("weight", "y") if k in o.inputs
                                              for b in o.inputs[k].arguments)
        ops.append(OpInfo(key, o.type, tuple(producer[n] for n in names if n in producer), weighted))
        for x in o.outputs:
            producer[x.name] = key
    outs = [producer[n] for n in block.outputs if n in producer]
    return ops, outs


def groups_of_proto_block(block) -> dict[str, set[str]]:
    return island_groups(*proto_infos(block))
