"""Load and validate a source model: one clear line for every way it can be wrong."""
from __future__ import annotations

import heapq
import os
from pathlib import Path
from typing import Iterator

import onnx
from google.protobuf.message import DecodeError

from edgeinfer.errors import EdgeInferError

MIN_OPSET = 11
MAX_OPSET = 22  # newest default-domain opset the emitters and ORT quantizer are tested with
ORT_MAX_IR = 10  # IR version of opset 21/22, which every ONNX Runtime >= 1.20 reads


def load_model(path: str | Path) -> onnx.ModelProto:
    """Read an ONNX file (with external data from its own folder) and validate it."""
    path = Path(path)
    if not path.exists():
        raise EdgeInferError(f"model not found: {path}")
    if path.is_dir():
        raise EdgeInferError(f"{path} is a directory; pass the .onnx file")
    if path.stat().st_size == 0:
        raise EdgeInferError(f"{path} is empty; re-export the model")
    with open(path, "rb") as fh:
        head = fh.read(8)
    if head.startswith(b"PK") or head.startswith(b"\x80"):
        raise EdgeInferError(f"{path} is not ONNX (looks like a PyTorch checkpoint); export it with torch.onnx.export first")
    for test, what in _NOT_ONNX:
        if test(head):
            raise EdgeInferError(f"{path} is {what}, not an ONNX model; pass the .onnx file of the trained model")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, RuntimeError, ValueError, UnicodeDecodeError) as exc:
        raise EdgeInferError(f"{path} is not a valid ONNX file (truncated or another format): {exc.__class__.__name__}") from None
    if not model.graph.node and not model.graph.output:
        raise EdgeInferError(f"{path} is not a valid ONNX file (no graph); is it truncated or another format?")
    _check_external_data(model, path)
    _check_opset(model, path)
    try:
        if any(_uses_external(t) for t in all_tensors(model)):
            onnx.load_external_data_for_model(model, str(path.parent))
    except (FileNotFoundError, OSError, onnx.checker.ValidationError) as exc:
        detail = getattr(exc, "filename", None) or str(exc).splitlines()[0]
        raise EdgeInferError(f"{path}: external weight file missing or unreadable ({detail})") from None
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        if "topologically sorted" not in str(exc) or not _sort_nodes(model):
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else "validation failed"
            raise EdgeInferError(f"{path} fails the ONNX checker: {first}") from None
    inputs = real_inputs(model)
    if len(inputs) != 1:
        names = ", ".join(f"{i.name!r}" for i in inputs)
        raise EdgeInferError(f"{path} has {len(inputs)} inputs ({names}); edgeinfer converts models with one image input")
    if model.ir_version > ORT_MAX_IR:
        model.ir_version = ORT_MAX_IR  # newer onnx writers stamp IR versions ONNX Runtime does not read yet
    return model


_NOT_ONNX = (  # (test on the first 8 bytes, what the file is): formats users pass by mistake
    (lambda h: h[4:8] == b"TFL3", "a TFLite model (edgeinfer converts ONNX to TFLite, not back)"),
    (lambda h: h.startswith(b"\x89HDF"), "a Keras/HDF5 file (export it to ONNX, e.g. with tf2onnx)"),
    (lambda h: h.startswith((b"\x89PNG", b"\xff\xd8\xff", b"GIF8")), "an image"),
)


def real_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    inits = {i.name for i in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def opset_of(model: onnx.ModelProto) -> int:
    for op in model.opset_import:
        if op.domain in ("", "ai.onnx"):
            return int(op.version)
    return 0


def _check_opset(model: onnx.ModelProto, path: Path) -> None:
    version = opset_of(model)
    if version < MIN_OPSET or version > MAX_OPSET:
        raise EdgeInferError(
            f"{path} uses ONNX opset {version}; supported opsets are {MIN_OPSET}..{MAX_OPSET}: "
            f"re-export with opset_version=17 or convert with onnx.version_converter")
    for op in model.opset_import:
        if op.domain not in ("", "ai.onnx", "ai.onnx.ml", "com.microsoft"):
            raise EdgeInferError(f"{path} uses the custom op domain {op.domain!r}, which edgeinfer cannot convert")


def all_tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Every TensorProto a model holds: initializers and sparse initializers of the main graph, of every
    subgraph (If/Loop/Scan bodies, at any depth) and of training graphs, and tensor attributes
    (single, lists, sparse) of nodes in graphs and in model-local functions."""
    graphs = [model.graph] + [g for ti in model.training_info for g in (ti.initialization, ti.algorithm)]
    nodes = [n for f in model.functions for n in f.node]
    while graphs or nodes:
        if graphs:
            g = graphs.pop()
            yield from g.initializer
            for sp in g.sparse_initializer:
                yield from (sp.values, sp.indices)
            nodes.extend(g.node)
            continue
        for attr in nodes.pop().attribute:
            yield from ([attr.t] if attr.HasField("t") else []) + list(attr.tensors)
            for sp in ([attr.sparse_tensor] if attr.HasField("sparse_tensor") else []) + list(attr.sparse_tensors):
                yield from (sp.values, sp.indices)
            graphs.extend(([attr.g] if attr.HasField("g") else []) + list(attr.graphs))


def sort_nodes(model: onnx.ModelProto) -> bool:
    """Put the nodes of the main graph in dependency order, in place (ONNX Runtime's quantizers and
    some fp16 converters append nodes at the end); False, untouched, on a cycle or a missing input."""
    g = model.graph
    ready = {i.name for i in g.input} | {t.name for t in g.initializer} | {""}
    nodes = list(g.node)
    missing = [sum(1 for i in set(n.input) if i not in ready) for n in nodes]
    waiting: dict[str, list[int]] = {}
    for k, n in enumerate(nodes):
        for i in set(n.input):
            if i not in ready:
                waiting.setdefault(i, []).append(k)
    heap = [k for k, m in enumerate(missing) if m == 0]   # Kahn's algorithm, original order among the ready
    heapq.heapify(heap)
    ordered = []
    while heap:
        k = heapq.heappop(heap)
        ordered.append(nodes[k])
        for o in nodes[k].output:
            if o in ready:
                continue
            ready.add(o)
            for c in waiting.pop(o, []):
                missing[c] -= 1
                if missing[c] == 0:
                    heapq.heappush(heap, c)
    if len(ordered) != len(nodes):
        return False
    copies = [onnx.NodeProto() for _ in ordered]
    for c, n in zip(copies, ordered):
        c.CopyFrom(n)
    del g.node[:]
    g.node.extend(copies)
    return True


def _sort_nodes(model: onnx.ModelProto) -> bool:
    """``sort_nodes``, then True only if the model passes the checker."""
    if not sort_nodes(model):
        return False
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError:
        return False
    return True


def _uses_external(t: onnx.TensorProto) -> bool:
    return t.data_location == onnx.TensorProto.EXTERNAL


def _check_external_data(model: onnx.ModelProto, path: Path) -> None:
    """External-data locations must stay inside the model's folder (no ../ or absolute paths)."""
    base = path.parent.resolve()
    for t in all_tensors(model):
        if not _uses_external(t):
            continue
        location = next((e.value for e in t.external_data if e.key == "location"), "")
        target = (base / location).resolve()
        if os.path.isabs(location) or base not in target.parents:
            raise EdgeInferError(
                f"{path}: tensor {t.name!r} points at external data {location!r} outside the model's folder; "
                "move the weight file next to the model")
