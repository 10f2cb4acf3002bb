"""Run a model under ONNX Runtime and fetch intermediate tensors, batch by batch."""
from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Iterator

import numpy as np
import onnx
from onnx import helper

from edgeinfer.errors import EdgeInferError

from ..ort_session import cpu_session


def session(model: onnx.ModelProto, threads: int = 2):
    """An ORT CPU session on an in-memory model (pruning runs on 2 threads by default)."""
    return cpu_session(model, threads)


def with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """Copy of ``model`` whose graph outputs are ``names`` (intermediate tensors exposed), without
    the nodes those do not need (ONNX Runtime runs every node of a graph)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    types = {vi.name: vi.type.tensor_type.elem_type for vi in list(m.graph.value_info) + list(m.graph.output)}
    del m.graph.output[:]
    for n in names:
        m.graph.output.append(helper.make_tensor_value_info(n, types.get(n, onnx.TensorProto.FLOAT), None))
    _drop_unneeded(m.graph, set(names))
    return m


def _drop_unneeded(g: onnx.GraphProto, needed: set[str]) -> None:
    """Remove the nodes of ``g`` (in place) that no tensor in ``needed`` depends on (kept whole when a
    node holds a subgraph, which may read any tensor)."""
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in g.node for a in n.attribute):
        return
    need = set(needed)
    keep = []
    for node in reversed(g.node):
        if any(o in need for o in node.output):
            keep.append(node)
            need.update(i for i in node.input if i)
    if len(keep) == len(g.node):
        return
    keep.reverse()
    del g.node[:]
    g.node.extend(keep)
    used = {i for n in keep for i in n.input} | set(needed)
    dropped = {i.name for i in g.initializer if i.name not in used}
    inits = [i for i in g.initializer if i.name not in dropped]
    del g.initializer[:]
    g.initializer.extend(inits)
    inputs = [i for i in g.input if i.name not in dropped]      # an old-IR initializer listed as an input
    del g.input[:]
    g.input.extend(inputs)


def iter_tensors(model: onnx.ModelProto, names: list[str], samples: np.ndarray | dict[str, np.ndarray],
                 batch: int = 16, feeds: dict[str, np.ndarray] | None = None, sess=None,
                 fixed_batch: int | None = None) -> Iterator[dict[str, np.ndarray]]:
    """Yield {name: value} for each batch of ``samples``: an array fed to the model's first input, or
    {input name: array} all sliced along their first axis. ``feeds`` go whole into every run. A model
    whose first input has a fixed batch size (or ``fixed_batch``) gets exactly that many per run, a
    short tail padded with its last sample (the padding's outputs are dropped)."""
    per_sample = samples if isinstance(samples, dict) else None
    as_float = per_sample is None     # an image array goes in as float32; named feeds keep their dtypes
    total = len(next(iter(per_sample.values()))) if per_sample else (0 if samples is None else len(samples))
    if total == 0:
        raise EdgeInferError("pruning needs calibration samples here: pass --calib DIR")
    sess = sess or session(with_outputs(model, names))
    if per_sample is None:
        per_sample = {sess.get_inputs()[0].name: samples}
    fixed = fixed_batch
    if fixed is None:
        shape = sess.get_inputs()[0].shape
        fixed = shape[0] if shape and isinstance(shape[0], int) and shape[0] > 0 else None
    if fixed:
        batch = fixed
    extra = feeds or {}
    for s in range(0, total, batch):
        run = {}
        for k, v in per_sample.items():
            x = np.ascontiguousarray(v[s:s + batch], dtype=np.float32 if as_float else None)
            if fixed and len(x) < fixed:
                x = np.concatenate([x, np.repeat(x[-1:], fixed - len(x), axis=0)])
            run[k] = x
        n = min(batch, total - s)
        outs = sess.run(names, {**run, **extra})
        yield {k: v[:n] for k, v in zip(names, outs)}


_PROGRESS = {"enabled": True}


def set_progress(enabled: bool) -> None:
    """Turn the [prune] progress lines on stderr on or off (the CLI's --quiet)."""
    _PROGRESS["enabled"] = bool(enabled)


@contextmanager
def quiet():
    """No [prune] progress lines inside the block (e.g. a refit repeated for every sensitivity point)."""
    was = _PROGRESS["enabled"]
    _PROGRESS["enabled"] = False
    try:
        yield
    finally:
        _PROGRESS["enabled"] = was


def progress_enabled() -> bool:
    """Whether [prune] progress (lines and bars) is shown."""
    return _PROGRESS["enabled"]


def progress(msg: str) -> None:
    if _PROGRESS["enabled"]:
        print(f"[prune] {msg}", file=sys.stderr, flush=True)


class SuffixRuns:
    """Graph outputs of models that differ from ``original`` in some nodes or initializers, on fixed
    ``samples``: only the changed nodes and the nodes after them run; the tensors they read from
    unchanged nodes are the original model's, fetched once and kept while the next model reads the
    same ones (a sensitivity scan cuts each group at several ratios). A model whose nodes do not
    line up with the original's, or that would read a tensor without a batch axis, runs whole."""

    def __init__(self, original: onnx.ModelProto, samples: np.ndarray):
        self.original = original
        self.samples = samples
        g = original.graph
        self._nodes = [n.SerializeToString() for n in g.node]
        self._inits = {i.name: i.SerializeToString() for i in g.initializer}
        dims = g.input[0].type.tensor_type.shape.dim
        self._batch_dim = dims[0] if dims else None
        self._batched = {vi.name for vi in list(g.input) + list(g.value_info) + list(g.output) if self._has_batch_axis(vi)}
        self._kept: dict[str, np.ndarray] = {g.input[0].name: samples}
        self.nodes_run = 0                    # of the last call, for the record

    def _has_batch_axis(self, vi) -> bool:
        dims = vi.type.tensor_type.shape.dim
        b = self._batch_dim
        if b is None or not dims:
            return False
        d = dims[0]
        return (b.dim_value > 0 and d.dim_value == b.dim_value) or (bool(b.dim_param) and d.dim_param == b.dim_param)

    def _changed(self, model: onnx.ModelProto) -> list[bool] | None:
        """Per node of ``model``: does it, or a tensor it reads, differ from the original (None: not comparable)."""
        g = model.graph
        if len(g.node) != len(self._nodes) or [o.name for o in g.output] != [o.name for o in self.original.graph.output] \
                or any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in g.node for a in n.attribute):
            return None
        changed_init = {i.name for i in g.initializer if self._inits.get(i.name) != i.SerializeToString()}
        dirty: set[str] = set()
        out = []
        for node, before in zip(g.node, self._nodes):
            d = node.SerializeToString() != before or any(i in changed_init or i in dirty for i in node.input)
            if d:
                dirty.update(node.output)
            out.append(d)
        return out

    def outputs(self, model: onnx.ModelProto) -> list[np.ndarray]:
        """Every graph output of ``model`` on the samples, float64, as a whole run gives them."""
        g = model.graph
        names = [o.name for o in g.output]
        changed = self._changed(model)
        run_nodes = [n for n, c in zip(g.node, changed) if c] if changed is not None else []
        made = {o for n in run_nodes for o in n.output}
        consts = {i.name for i in g.initializer}
        frontier = sorted({i for n in run_nodes for i in n.input if i and i not in made and i not in consts})
        wanted = frontier + [o for o in names if o not in made]
        if changed is None or not all(t in self._batched for t in wanted):
            self.nodes_run = len(g.node)
            return [v.astype(np.float64) for v in self._run(model, {g.input[0].name: self.samples}, names)]
        self.nodes_run = len(run_nodes)
        x_name = self.original.graph.input[0].name
        self._kept = {k: v for k, v in self._kept.items() if k in wanted or k == x_name}
        missing = [t for t in wanted if t not in self._kept]
        if missing:
            got = self._run(self.original, {self.original.graph.input[0].name: self.samples}, missing)
            self._kept.update(zip(missing, got))
        values = {o: self._kept[o] for o in names if o not in made}
        outs = [o for o in names if o in made]
        if outs:
            used = {x for n in run_nodes for x in n.input}
            sub = helper.make_graph(
                run_nodes, "suffix",
                [helper.make_tensor_value_info(t, helper.np_dtype_to_tensor_dtype(self._kept[t].dtype), None)
                 for t in frontier],
                [helper.make_tensor_value_info(o, onnx.TensorProto.FLOAT, None) for o in outs],
                [i for i in g.initializer if i.name in used])
            m = helper.make_model(sub, opset_imports=model.opset_import, ir_version=model.ir_version)
            values.update(zip(outs, self._run(m, {t: self._kept[t] for t in frontier}, outs)))
        return [values[o].astype(np.float64) for o in names]

    def _run(self, model: onnx.ModelProto, feeds: dict[str, np.ndarray], names: list[str]) -> list[np.ndarray]:
        """``names`` of ``model`` fed ``feeds`` (arrays along the samples) in batches of 8, or of the
        original's fixed batch size (its graph may reshape to it)."""
        fixed = self._batch_dim.dim_value if self._batch_dim is not None else 0
        parts = list(iter_tensors(model, names, feeds, batch=8, fixed_batch=fixed or None))
        return [np.concatenate([p[k] for p in parts]) for k in names]
