"""Read back the integer filters a written ``.tflite`` stores, for the int4 plan check.

``read_integers(path)`` -> ``{onnx node name: (bits, integers [out, K])}`` for every CONV_2D,
DEPTHWISE_CONV_2D and FULLY_CONNECTED with an INT4 or INT8 constant filter, in the plan's matrix
order (ONNX kernel order: input channel, kernel row, column). Filters are named
``<node>_weights`` by the emitter (``<node>_g<i>_weights`` for the pieces of a grouped conv).
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from ai_edge_litert import schema_py_generated as fb

_TO_MATRIX = {
    "CONV_2D": lambda q: q.transpose(0, 3, 1, 2).reshape(q.shape[0], -1),             # OHWI -> [O, I*kh*kw]
    "DEPTHWISE_CONV_2D": lambda q: q[0].transpose(2, 0, 1).reshape(q.shape[3], -1),   # [1,kh,kw,C] -> [C, kh*kw]
    "FULLY_CONNECTED": lambda q: q,                                                   # [N, K]
}


def _unpack_int4(raw: np.ndarray, count: int) -> np.ndarray:
    lo = (raw & 0x0F).astype(np.int8)
    hi = (raw >> 4).astype(np.int8)
    v = np.stack([lo, hi], axis=-1).reshape(-1)[:count]
    return np.where(v > 7, v - 16, v).astype(np.int8)


def read_integers(path: Path) -> dict[str, tuple[int, np.ndarray]]:
    m = fb.ModelT.InitFromPackedBuf(Path(path).read_bytes(), 0)
    codes = {v: k for k, v in vars(fb.BuiltinOperator).items() if not k.startswith("_")}
    g = m.subgraphs[0]
    pieces: dict[str, list[tuple[int, int, np.ndarray]]] = {}
    for op in g.operators:
        name = codes.get(max(m.operatorCodes[op.opcodeIndex].builtinCode, m.operatorCodes[op.opcodeIndex].deprecatedBuiltinCode))
        if name not in _TO_MATRIX or len(op.inputs) < 2:
            continue
        t = g.tensors[op.inputs[1]]
        data = m.buffers[t.buffer].data if t.buffer else None
        if data is None or t.type not in (fb.TensorType.INT4, fb.TensorType.INT8):
            continue
        tname = t.name.decode() if isinstance(t.name, bytes) else t.name
        if not tname.endswith("_weights"):
            continue
        shape = [int(d) for d in t.shape]
        raw = np.asarray(data, np.uint8)
        if t.type == fb.TensorType.INT4:
            q, bits = _unpack_int4(raw, int(np.prod(shape))).reshape(shape), 4
        else:
            q, bits = raw.view(np.int8).reshape(shape), 8
        node = tname[: -len("_weights")]
        grp = re.fullmatch(r"(.*)_g(\d+)", node)
        key, part = (grp.group(1), int(grp.group(2))) if grp else (node, 0)
        pieces.setdefault(key, []).append((part, bits, _TO_MATRIX[name](q)))
    out = {}
    for key, parts in pieces.items():
        parts.sort(key=lambda p: p[0])
        out[key] = (parts[0][1], np.concatenate([p[2] for p in parts], axis=0))
    return out
