"""Read the metadata entries of a .tflite file (name -> bytes) with the standard library only.

The runtime may not import flatbuffers, so this walks the few flatbuffer tables it needs:
Model.metadata (field 6) -> Metadata{name, buffer} -> Model.buffers (field 4) -> Buffer.data.
"""
from __future__ import annotations

import struct
from pathlib import Path


class _Table:
    def __init__(self, buf: bytes, pos: int):
        self.buf, self.pos = buf, pos
        self.vtable = pos - struct.unpack_from("<i", buf, pos)[0]
        self.vsize = struct.unpack_from("<H", buf, self.vtable)[0]

    def _field(self, i: int) -> int:
        o = 4 + 2 * i
        return struct.unpack_from("<H", self.buf, self.vtable + o)[0] if o < self.vsize else 0

    def _ref(self, off: int) -> int:
        p = self.pos + off
        return p + struct.unpack_from("<I", self.buf, p)[0]

    def uint(self, i: int, fmt: str = "<I") -> int:
        off = self._field(i)
        return struct.unpack_from(fmt, self.buf, self.pos + off)[0] if off else 0

    def vector(self, i: int) -> tuple[int, int]:
        """(start of elements, length) of a vector field, (0, 0) when absent."""
        off = self._field(i)
        if not off:
            return 0, 0
        v = self._ref(off)
        return v + 4, struct.unpack_from("<I", self.buf, v)[0]

    def table_at(self, elem_pos: int) -> "_Table":
        return _Table(self.buf, elem_pos + struct.unpack_from("<I", self.buf, elem_pos)[0])

    def string(self, i: int) -> str:
        start, n = self.vector(i)
        return self.buf[start:start + n].decode("utf-8", "replace")


def read_metadata(path: Path) -> dict[str, bytes]:
    """All ``Model.metadata`` entries of a .tflite file; {} for files without any (or unreadable)."""
    buf = Path(path).read_bytes()
    try:
        if buf[4:8] != b"TFL3":
            return {}
        model = _Table(buf, struct.unpack_from("<I", buf, 0)[0])
        bstart, bcount = model.vector(4)
        mstart, mcount = model.vector(6)
        out = {}
        for k in range(mcount):
            meta = model.table_at(mstart + 4 * k)
            idx = meta.uint(1)
            if idx >= bcount:
                continue
            b = model.table_at(bstart + 4 * idx)
            dstart, dlen = b.vector(0)
            if dlen:
                out[meta.string(0)] = bytes(buf[dstart:dstart + dlen])
            else:
                off, size = b.uint(1, "<Q"), b.uint(2, "<Q")
                out[meta.string(0)] = bytes(buf[off:off + size]) if size else b""
        return out
    except (struct.error, IndexError):
        return {}
