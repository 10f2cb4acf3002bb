"""Deterministic mutators for the CLI fuzz test: ONNX files, TFLite files, manifests, labels, images.

Every mutator takes the valid bytes (or object) and a ``random.Random`` and returns
``(mutated bytes, short description)``. Seeds are fixed by the caller, so a failing case can be
re-made from its (kind, index).
"""
from __future__ import annotations

import io
import json
import random
import struct
import zlib
from typing import Any, Callable

import numpy as np

EXTREME_INTS = (0, 1, -1, 2**31 - 1, -2**31, 2**30, 65535, 1 << 24)


# ------------------------------------------------------------------ generic byte mutations


def bit_flips(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    b = bytearray(data)
    n = rng.choice((1, 2, 4, 16, 64))
    for _ in range(n):
        b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
    return bytes(b), f"{n} bit flips"


def truncate(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    cut = rng.choice((0, 1, 4, 8, 16, rng.randrange(len(data)), len(data) - 1))
    return data[:cut], f"truncated to {cut} bytes"


def extreme_int(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    b = bytearray(data)
    pos = rng.randrange(0, max(1, len(b) - 4)) & ~3
    v = rng.choice(EXTREME_INTS)
    b[pos:pos + 4] = struct.pack("<i", v)
    return bytes(b), f"int32 {v} at {pos}"


def chunk_swap(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    n = len(data)
    size = rng.randint(1, max(1, n // 8))
    a, c = rng.randrange(n - size + 1), rng.randrange(n - size + 1)
    b = bytearray(data)
    b[a:a + size], b[c:c + size] = data[c:c + size], data[a:a + size]
    return bytes(b), f"swapped {size} bytes at {a} and {c}"


def splice(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    a = rng.randrange(len(data))
    junk = bytes(rng.randrange(256) for _ in range(rng.choice((1, 7, 64, 1000))))
    return data[:a] + junk + data[a:], f"inserted {len(junk)} bytes at {a}"


BYTE_MUTATORS = (bit_flips, truncate, extreme_int, chunk_swap, splice)


def any_bytes(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    return rng.choice(BYTE_MUTATORS)(data, rng)


# ------------------------------------------------------------------ ONNX


def onnx_mutation(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """Structured edits of a valid ONNX model (NaN/Inf weights, wrong dtypes, huge dims, swapped fields),
    or a byte-level mutation."""
    import onnx
    from onnx import TensorProto

    kind = rng.choice(("bytes", "bytes", "nan", "dtype", "dims", "swap", "op", "opset", "drop"))
    if kind == "bytes":
        return any_bytes(data, rng)
    m = onnx.load_from_string(data)
    g = m.graph
    inits = list(g.initializer)
    if kind == "nan" and inits:
        t = rng.choice(inits)
        a = onnx.numpy_helper.to_array(t).copy()
        if a.dtype.kind == "f" and a.size:
            a.flat[rng.randrange(a.size)] = rng.choice((np.nan, np.inf, -np.inf))
            if rng.random() < 0.5:
                a[...] = rng.choice((np.nan, np.inf, 3e38))
            t.CopyFrom(onnx.numpy_helper.from_array(a, t.name))
    elif kind == "dtype" and inits:
        t = rng.choice(inits)
        t.data_type = rng.choice((TensorProto.DOUBLE, TensorProto.INT8, TensorProto.FLOAT16, TensorProto.STRING,
                                  TensorProto.BOOL, 0, 99))
    elif kind == "dims":
        target = rng.choice(list(g.input) + list(g.output))
        dims = target.type.tensor_type.shape.dim
        if dims:
            d = rng.choice(dims)
            d.dim_value = rng.choice((0, 1, 3, 2**31 - 1, 2**40))
        if inits and rng.random() < 0.5:
            t = rng.choice(inits)
            if t.dims:
                t.dims[rng.randrange(len(t.dims))] = rng.choice((0, 2**31 - 1, 7))
    elif kind == "swap" and len(g.node) > 1:
        a, b = rng.sample(range(len(g.node)), 2)
        na, nb = g.node[a], g.node[b]
        ins_a, ins_b = list(na.input), list(nb.input)
        na.ClearField("input")
        nb.ClearField("input")
        na.input.extend(ins_b)
        nb.input.extend(ins_a)
    elif kind == "op" and g.node:
        rng.choice(g.node).op_type = rng.choice(("Relu", "Conv", "Gemm", "NoSuchOp", "Loop", "Reshape", "Softmax"))
    elif kind == "opset":
        m.opset_import[0].version = rng.choice((1, 7, 11, 17, 22, 99))
    elif kind == "drop" and g.node:
        del g.node[rng.randrange(len(g.node))]
    return m.SerializeToString(), f"onnx {kind}"


# ------------------------------------------------------------------ TFLite


def _float_buffers(data: bytes) -> list[tuple[int, int]]:
    """(start, length) of buffers holding float32 constants in a .tflite file (stdlib reader)."""
    from edgeinfer.backends.tflite_check import _Table
    model = _Table(data, struct.unpack_from("<I", data, 0)[0], "model")
    buffers = model.tables(4, "buffer")
    out = []
    for t in model.tables(2, "sg")[0].tables(0, "tensor"):
        bi = t.scalar(2, "<I")
        if bi and t.scalar(1, "<b") == 0:
            start, n = buffers[bi].vector(0, 1)
            if n:
                out.append((start, n))
    return out


def _shape_vectors(data: bytes) -> list[tuple[int, int]]:
    from edgeinfer.backends.tflite_check import _Table
    model = _Table(data, struct.unpack_from("<I", data, 0)[0], "model")
    return [t.vector(0, 4) for t in model.tables(2, "sg")[0].tables(0, "tensor") if t.vector(0, 4)[1]]


def tflite_mutation(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """NaN/Inf weights, huge/zero dims, wrong tensor types, or byte-level mutations of a valid .tflite."""
    kind = rng.choice(("bytes", "bytes", "bytes", "nan", "dims", "dtype"))
    b = bytearray(data)
    if kind == "nan":
        bufs = _float_buffers(data)
        if bufs:
            start, n = rng.choice(bufs)
            value = struct.pack("<f", rng.choice((float("nan"), float("inf"), -float("inf"), 3e38)))
            count = n // 4 if rng.random() < 0.3 else 1
            for k in rng.sample(range(n // 4), count):
                b[start + 4 * k:start + 4 * k + 4] = value
        return bytes(b), "tflite nan/inf weights"
    if kind == "dims":
        start, n = rng.choice(_shape_vectors(data))
        k = rng.randrange(n)
        v = rng.choice((0, 2**16, 2**31 - 1, 7, -1))
        b[start + 4 * k:start + 4 * k + 4] = struct.pack("<i", v)
        return bytes(b), f"tflite dim {v}"
    if kind == "dtype":
        from edgeinfer.backends.tflite_check import _Table
        model = _Table(data, struct.unpack_from("<I", data, 0)[0], "model")
        tensors = model.tables(2, "sg")[0].tables(0, "tensor")
        t = rng.choice(tensors)
        off = t._off(1, 1)
        if off:
            v = rng.choice((1, 2, 3, 4, 5, 9, 13, 17, 100, -1))
            b[t.pos + off] = v & 0xFF
            return bytes(b), f"tflite tensor type {v}"
    return any_bytes(data, rng)


# ------------------------------------------------------------------ manifests


def _paths(obj: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _paths(v, prefix + (i,))
    return out


def _get(obj: Any, path: tuple) -> Any:
    for p in path:
        obj = obj[p]
    return obj


WEIRD_VALUES = (None, 0, -1, 2**31 - 1, 2**63, 1e308, -1e308, float("nan"), float("inf"), "", "x" * 300, "../../etc/passwd",
                "/etc/passwd", [], {}, [None], {"size": -1}, True, [1, 2, 3, 4, 5], [2**31, 3, 2**31, 2**31])


def manifest_mutation(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """Field swaps, deletions, wrong types, huge numbers, hostile paths, or byte-level edits of manifest.json."""
    if rng.random() < 0.2:
        return any_bytes(data, rng)
    m = json.loads(data)
    paths = [p for p in _paths(m) if p]
    op = rng.choice(("set", "set", "delete", "swap"))
    target = rng.choice(paths)
    parent, key = _get(m, target[:-1]), target[-1]
    if op == "set":
        parent[key] = rng.choice(WEIRD_VALUES)
    elif op == "delete":
        del parent[key]
    else:
        other = rng.choice(paths)
        try:
            a, b = _get(m, target), _get(m, other)
            parent[key] = b
            _get(m, other[:-1])[other[-1]] = a
        except (KeyError, IndexError, TypeError):
            pass
    return json.dumps(m, allow_nan=True).encode(), f"manifest {op} {'/'.join(map(str, target))}"


# ------------------------------------------------------------------ labels


def labels_mutation(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    kind = rng.choice(("bytes", "latin1", "empty", "many", "long", "nul", "few", "crlf", "bom"))
    lines = data.decode().splitlines()
    if kind == "bytes":
        return any_bytes(data, rng)
    made = {
        "latin1": lambda: "\n".join(lines).encode("utf-8") + b"\n\xe9\xff\xfe",
        "empty": lambda: b"" if rng.random() < 0.5 else b"\n\n  \n",
        "many": lambda: "\n".join(f"class{i}" for i in range(rng.choice((11, 1000, 100_000)))).encode(),
        "long": lambda: ("y" * rng.choice((10_000, 1_000_000)) + "\n").encode() * 10,
        "nul": lambda: b"\x00".join(x.encode() for x in lines),
        "few": lambda: "\n".join(lines[: rng.randrange(len(lines))]).encode(),
        "crlf": lambda: "\r\n".join(lines).encode(),
        "bom": lambda: "\ufeff".encode() + data,
    }[kind]()
    return made, f"labels {kind}"


# ------------------------------------------------------------------ images


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def huge_png(rng: random.Random) -> bytes:
    """A small PNG whose header claims a huge image (decompression bomb), CRC valid or not."""
    w, h = rng.choice(((100_000, 100_000), (2**31 - 1, 1), (30_000, 30_000), (9_500, 9_500), (0, 10)))
    ihdr = struct.pack(">IIBBBBB", w, h, 8, rng.choice((0, 2, 6)), 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1000)
    png = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")
    return png


def image_variants(rng: random.Random) -> tuple[bytes, str]:
    """A valid image in another format / mode / bit depth (these must be accepted)."""
    from PIL import Image
    arr = np.asarray(np.random.default_rng(rng.randrange(2**32)).integers(0, 256, (40, 30, 3)), np.uint8)
    im = Image.fromarray(arr)
    mode, fmt = rng.choice((("RGB", "PNG"), ("L", "JPEG"), ("RGBA", "PNG"), ("P", "GIF"), ("CMYK", "TIFF"),
                            ("I;16", "PNG"), ("1", "BMP"), ("RGB", "WEBP"), ("LA", "PNG"), ("F", "TIFF")))
    im = im.convert("L").convert(mode) if mode in ("I;16", "F") else im.convert(mode)
    buf = io.BytesIO()
    im.save(buf, fmt)
    return buf.getvalue(), f"image {mode} {fmt}"


def image_mutation(base: dict[str, bytes], rng: random.Random) -> tuple[bytes, str]:
    kind = rng.choice(("bytes", "bytes", "bytes", "huge", "variant", "header"))
    if kind == "huge":
        return huge_png(rng), "image huge header"
    if kind == "variant":
        return image_variants(rng)
    name = rng.choice(sorted(base))
    data = base[name]
    if kind == "header":   # another format's magic bytes in front of this file's body
        magic = rng.choice((b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"GIF89a", b"BM", b"RIFF\x00\x00\x00\x00WEBP", b"II*\x00"))
        return magic + data[len(magic):], f"image {name} header swap"
    mutated, what = any_bytes(data, rng)
    return mutated, f"image {name} {what}"


Mutator = Callable[[Any, random.Random], tuple[bytes, str]]
