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


def iter_tensors(model: onnx.ModelProto, names: list[str], samples: np.ndarray, batch: int = 16,
                 feeds: dict[str, np.ndarray] | None = None, sess=None) -> Iterator[dict[str, np.ndarray]]:
    """Yield {name: value} for each batch of ``samples`` (fed to the model's first input)."""
    if samples is None or len(samples) == 0:
        raise EdgeInferError("pruning needs calibration samples here: pass --calib DIR")
    sess = sess or session(with_outputs(model, names))
    in_name = sess.get_inputs()[0].name
    fixed = sess.get_inputs()[0].shape[0] if sess.get_inputs()[0].shape else None
    if isinstance(fixed, int) and fixed > 0:
        batch = fixed   # static batch: feed exactly that many (the tail is padded below)
    extra = feeds or {}
    for s in range(0, len(samples), batch):
        x = np.ascontiguousarray(samples[s:s + batch], dtype=np.float32)
        n = len(x)
        if isinstance(fixed, int) and n < fixed:
            x = np.concatenate([x, np.repeat(x[-1:], fixed - n, axis=0)])
        outs = sess.run(names, {in_name: x, **extra})
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


def progress(msg: str) -> None:
    if _PROGRESS["enabled"]:
        print(f"[prune] {msg}", file=sys.stderr, flush=True)
