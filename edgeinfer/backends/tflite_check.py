"""Structural check of a ``.tflite`` file before any engine sees it (standard library only).

Interpreters trust the flatbuffer they are given: a truncated or crafted file can make them read
out of bounds or allocate without limit. ``check_tflite`` walks the parts an engine reads and
refuses, in one line, a file where

- a table, vtable, vector or string lies outside the file, or the file identifier is not ``TFL3``;
- a buffer's data (inline, or ``offset``/``size`` past the flatbuffer) lies outside the file;
- an index (opcode, tensor, buffer, subgraph input/output, metadata buffer) is out of range;
- a tensor's shape is negative or holds more than ``MAX_TENSOR_BYTES``, or its constant data
  does not have the size its shape and type need;
- quantization parameters disagree (scale/zero-point counts, quantized dimension);
- weights live in external buffers (files outside the model), which edgeinfer does not load.

Field numbers follow LiteRT's ``schema.fbs`` (tests compare them with ``schema_py_generated``).
"""
from __future__ import annotations

import struct
from pathlib import Path

from ..errors import EdgeInferError

MAX_TENSOR_BYTES = 1 << 31   # one tensor over 2 GiB is refused (engines index tensors with 32-bit sizes)

# TensorType -> bytes per element (None: variable-size or opaque; "int4": two per byte)
ITEMSIZE: dict[int, object] = {0: 4, 1: 2, 2: 4, 3: 1, 4: 8, 5: None, 6: 1, 7: 2, 8: 8, 9: 1, 10: 8, 11: 16,
                               12: 8, 13: None, 14: None, 15: 4, 16: 2, 17: "int4", 18: 2, 19: None, 20: "int4",
                               21: 1, 22: 1}

# field numbers (schema.fbs)
MODEL_VERSION, MODEL_OPCODES, MODEL_SUBGRAPHS, MODEL_BUFFERS, MODEL_METADATA_BUFFER, MODEL_METADATA = 0, 1, 2, 4, 5, 6
MODEL_EXT_GROUPS, MODEL_EXT_BUFFERS = 8, 9
SG_TENSORS, SG_INPUTS, SG_OUTPUTS, SG_OPERATORS = 0, 1, 2, 3
T_SHAPE, T_TYPE, T_BUFFER, T_QUANT, T_SPARSITY, T_SHAPE_SIGNATURE, T_EXTERNAL = 0, 1, 2, 4, 6, 7, 10
OP_OPCODE, OP_INPUTS, OP_OUTPUTS, OP_OPTIONS, OP_CUSTOM, OP_INTERMEDIATES, OP_LARGE_OFF, OP_LARGE_SIZE = 0, 1, 2, 4, 5, 8, 9, 10
BUF_DATA, BUF_OFFSET, BUF_SIZE = 0, 1, 2
Q_SCALE, Q_ZERO_POINT, Q_DIM = 2, 3, 6
META_BUFFER = 1


class Malformed(Exception):
    """A structural fault; ``check_tflite`` turns it into a one-line EdgeInferError."""


class _Table:
    """A flatbuffer table whose every read is bounds-checked against the whole file."""

    def __init__(self, buf: bytes, pos: int, what: str, budget: list[int] | None = None):
        self.buf, self.pos, self.what = buf, pos, what
        # bytes left to read: offsets that alias one region many times would otherwise cost quadratic time
        self.budget = budget if budget is not None else [4 * len(buf) + (1 << 16)]
        self._spend(16)
        _need(buf, pos, 4, what)
        self.vt = pos - struct.unpack_from("<i", buf, pos)[0]
        _need(buf, self.vt, 4, f"{what} vtable")
        self.vsize, self.tsize = struct.unpack_from("<HH", buf, self.vt)
        if self.vsize < 4 or self.vsize % 2:
            raise Malformed(f"{what} has a vtable of {self.vsize} bytes")
        _need(buf, self.vt, self.vsize, f"{what} vtable")
        _need(buf, pos, max(self.tsize, 4), what)

    def _spend(self, n: int) -> None:
        self.budget[0] -= n
        if self.budget[0] < 0:
            raise Malformed(f"{self.what}: the file's offsets refer to the same bytes over and over")

    def _off(self, i: int, size: int) -> int:
        o = 4 + 2 * i
        if o + 2 > self.vsize:
            return 0
        off = struct.unpack_from("<H", self.buf, self.vt + o)[0]
        if off and off + size > self.tsize:
            raise Malformed(f"{self.what} field {i} lies past the table")
        return off

    def scalar(self, i: int, fmt: str, default: int = 0) -> int:
        off = self._off(i, struct.calcsize(fmt))
        return struct.unpack_from(fmt, self.buf, self.pos + off)[0] if off else default

    def vector(self, i: int, elem: int) -> tuple[int, int]:
        """(first element position, length) of a vector field of ``elem``-byte elements; (0, 0) if absent."""
        off = self._off(i, 4)
        if not off:
            return 0, 0
        ref = self.pos + off
        start = ref + struct.unpack_from("<I", self.buf, ref)[0]
        _need(self.buf, start, 4, f"{self.what} field {i}")
        n = struct.unpack_from("<I", self.buf, start)[0]
        _need(self.buf, start + 4, n * elem, f"{self.what} field {i} ({n} elements)")
        self._spend(n * elem)
        return start + 4, n

    def ints(self, i: int, fmt: str = "<i") -> list[int]:
        size = struct.calcsize(fmt)
        start, n = self.vector(i, size)
        return [v[0] for v in struct.iter_unpack(fmt, self.buf[start:start + n * size])] if n else []

    def tables(self, i: int, what: str) -> list["_Table"]:
        start, n = self.vector(i, 4)
        out = []
        for k in range(n):
            p = start + 4 * k
            out.append(_Table(self.buf, p + struct.unpack_from("<I", self.buf, p)[0], f"{what} #{k}", self.budget))
        return out

    def table(self, i: int, what: str) -> "_Table | None":
        off = self._off(i, 4)
        if not off:
            return None
        ref = self.pos + off
        return _Table(self.buf, ref + struct.unpack_from("<I", self.buf, ref)[0], what, self.budget)


def _need(buf: bytes, pos: int, size: int, what: str) -> None:
    if pos < 0 or size < 0 or pos + size > len(buf):
        raise Malformed(f"{what} lies outside the file (bytes {pos}..{pos + size} of {len(buf)})")


def _index(v: int, n: int, what: str, optional: bool = False) -> None:
    if not (0 <= v < n or (optional and v == -1)):
        raise Malformed(f"{what} refers to #{v} of {n}")


def _buffer_size(buf: bytes, b: _Table, k: int) -> int:
    start, n = b.vector(BUF_DATA, 1)
    if n:
        return n
    offset, size = b.scalar(BUF_OFFSET, "<Q"), b.scalar(BUF_SIZE, "<Q")
    if offset > 1:
        _need(buf, offset, size, f"buffer #{k} data")
        return size
    return 0


def _check_tensor(t: _Table, where: str, buffer_sizes: list[int]) -> None:
    shape = t.ints(T_SHAPE)
    t.ints(T_SHAPE_SIGNATURE)
    if any(d < 0 for d in shape):
        raise Malformed(f"{where} has a negative dimension {shape}")
    count = 1
    for d in shape:
        count *= d
    ttype = t.scalar(T_TYPE, "<b")
    item = ITEMSIZE.get(ttype)
    nbytes = (count + 1) // 2 if item == "int4" else count * item if isinstance(item, int) else 0
    if nbytes > MAX_TENSOR_BYTES:
        raise Malformed(f"{where} of shape {shape} needs {nbytes} bytes (limit {MAX_TENSOR_BYTES})")
    if t.scalar(T_EXTERNAL, "<I"):
        raise Malformed(f"{where} keeps its data in an external buffer")
    bi = t.scalar(T_BUFFER, "<I")
    _index(bi, len(buffer_sizes), f"{where} buffer")
    sparse = t.table(T_SPARSITY, f"{where} sparsity") is not None
    have = buffer_sizes[bi]
    if have and not sparse and item is not None and have != nbytes:
        raise Malformed(f"{where} of shape {shape} needs {nbytes} bytes of data but its buffer holds {have}")
    q = t.table(T_QUANT, f"{where} quantization")
    if q is not None:
        scale, zp = q.vector(Q_SCALE, 4)[1], q.vector(Q_ZERO_POINT, 8)[1]
        q.vector(0, 4)
        q.vector(1, 4)
        dim = q.scalar(Q_DIM, "<i")
        if zp and zp != scale:
            raise Malformed(f"{where} has {scale} scales but {zp} zero points")
        if scale > 1 and not (0 <= dim < len(shape) and shape[dim] == scale):
            raise Malformed(f"{where} has {scale} per-channel scales on dimension {dim} of shape {shape}")


def _check_subgraph(sg: _Table, k: int, n_opcodes: int, buffer_sizes: list[int]) -> None:
    tensors = sg.tables(SG_TENSORS, f"subgraph {k} tensor")
    for i, t in enumerate(tensors):
        _check_tensor(t, f"subgraph {k} tensor #{i}", buffer_sizes)
    n = len(tensors)
    for field, what in ((SG_INPUTS, "input"), (SG_OUTPUTS, "output")):
        for v in sg.ints(field):
            _index(v, n, f"subgraph {k} {what}")
    for j, op in enumerate(sg.tables(SG_OPERATORS, f"subgraph {k} operator")):
        where = f"subgraph {k} operator #{j}"
        _index(op.scalar(OP_OPCODE, "<I"), n_opcodes, f"{where} opcode")
        for field in (OP_INPUTS, OP_OUTPUTS, OP_INTERMEDIATES):
            for v in op.ints(field):
                _index(v, n, f"{where} tensor", optional=True)
        op.table(OP_OPTIONS, f"{where} options")
        op.vector(OP_CUSTOM, 1)
        large_off, large_size = op.scalar(OP_LARGE_OFF, "<Q"), op.scalar(OP_LARGE_SIZE, "<Q")
        if large_size:
            _need(op.buf, large_off, large_size, f"{where} custom options")


def check_tflite_bytes(buf: bytes) -> None:
    """Raise ``Malformed`` naming the first structural fault of a TFLite flatbuffer."""
    if len(buf) < 8 or buf[4:8] != b"TFL3":
        raise Malformed("no TFL3 file identifier (not a TFLite flatbuffer, or truncated)")
    model = _Table(buf, struct.unpack_from("<I", buf, 0)[0], "model")
    version = model.scalar(MODEL_VERSION, "<I")
    if version != 3:
        raise Malformed(f"schema version {version} (TFLite files are version 3)")
    if model.vector(MODEL_EXT_GROUPS, 4)[1] or model.vector(MODEL_EXT_BUFFERS, 4)[1]:
        raise Malformed("weights live in external buffers (files outside the model)")
    opcodes = model.tables(MODEL_OPCODES, "operator code")
    for oc in opcodes:
        oc.vector(1, 1)
    buffer_sizes = [_buffer_size(buf, b, k) for k, b in enumerate(model.tables(MODEL_BUFFERS, "buffer"))]
    subgraphs = model.tables(MODEL_SUBGRAPHS, "subgraph")
    if not subgraphs:
        raise Malformed("no subgraph")
    for k, sg in enumerate(subgraphs):
        _check_subgraph(sg, k, len(opcodes), buffer_sizes)
    for v in model.ints(MODEL_METADATA_BUFFER):
        _index(v, len(buffer_sizes), "metadata_buffer")
    for k, meta in enumerate(model.tables(MODEL_METADATA, "metadata")):
        meta.vector(0, 1)
        _index(meta.scalar(META_BUFFER, "<I"), len(buffer_sizes), f"metadata #{k} buffer")


def check_tflite(path: Path) -> None:
    """One-line ``EdgeInferError`` unless ``path`` is a structurally sound TFLite file."""
    path = Path(path)
    try:
        check_tflite_bytes(path.read_bytes())
    except (Malformed, struct.error) as exc:
        raise EdgeInferError(f"{path.name} is not a well-formed TFLite model ({exc}); refusing to load it: "
                             "re-convert or copy the bundle again") from None


def describe_tflite(path: Path) -> dict:
    """What ``inspect`` shows of a .tflite file, read without any engine (checked structurally first)."""
    from ..bundle import sha256_of
    from .tflite_metadata import read_metadata
    path = Path(path)
    check_tflite(path)
    buf = path.read_bytes()
    model = _Table(buf, struct.unpack_from("<I", buf, 0)[0], "model")
    subgraphs = []
    for sg in model.tables(MODEL_SUBGRAPHS, "subgraph"):
        tensors = sg.tables(SG_TENSORS, "tensor")

        def spec(i: int) -> dict:
            t = tensors[i]
            start, n = t.vector(3, 1)
            return {"name": buf[start:start + n].decode("utf-8", "replace"), "shape": t.ints(T_SHAPE),
                    "type": t.scalar(T_TYPE, "<b")}
        subgraphs.append({"tensors": len(tensors), "operators": len(sg.tables(SG_OPERATORS, "operator")),
                          "inputs": [spec(i) for i in sg.ints(SG_INPUTS)], "outputs": [spec(i) for i in sg.ints(SG_OUTPUTS)]})
    return {"file": path.name, "format": "tflite", "sha256": sha256_of(path), "size": len(buf),
            "structure": "ok", "subgraphs": subgraphs, "metadata": sorted(read_metadata(path))}
