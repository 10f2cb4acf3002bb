"""Box arithmetic in numpy: format conversions, pairwise IoU, clipping.

Formats (last axis of length 4, any leading shape):
    xyxy    x1, y1, x2, y2       corners
    xywh    x1, y1, w, h         top-left corner + size (COCO)
    cxcywh  cx, cy, w, h         centre + size (YOLO)

Area and IoU treat a box with x2 < x1 or y2 < y1 as empty (area 0); the IoU of two boxes whose
union is 0 is 0. IoU is computed in float64 so every caller (NMS, metrics, the tests'
references) gets the same numbers for the same boxes.
"""
from __future__ import annotations

import numpy as np

FORMATS = ("xyxy", "xywh", "cxcywh")


def _split(b: np.ndarray):
    return b[..., 0], b[..., 1], b[..., 2], b[..., 3]


def xywh_to_xyxy(b: np.ndarray) -> np.ndarray:
    x, y, w, h = _split(np.asarray(b))
    return np.stack([x, y, x + w, y + h], axis=-1)


def xyxy_to_xywh(b: np.ndarray) -> np.ndarray:
    x1, y1, x2, y2 = _split(np.asarray(b))
    return np.stack([x1, y1, x2 - x1, y2 - y1], axis=-1)


def cxcywh_to_xyxy(b: np.ndarray) -> np.ndarray:
    cx, cy, w, h = _split(np.asarray(b))
    hw, hh = w * 0.5, h * 0.5
    return np.stack([cx - hw, cy - hh, cx + hw, cy + hh], axis=-1)


def xyxy_to_cxcywh(b: np.ndarray) -> np.ndarray:
    x1, y1, x2, y2 = _split(np.asarray(b))
    return np.stack([(x1 + x2) * 0.5, (y1 + y2) * 0.5, x2 - x1, y2 - y1], axis=-1)


_TO_XYXY = {"xyxy": lambda b: np.asarray(b), "xywh": xywh_to_xyxy, "cxcywh": cxcywh_to_xyxy}
_FROM_XYXY = {"xyxy": lambda b: np.asarray(b), "xywh": xyxy_to_xywh, "cxcywh": xyxy_to_cxcywh}


def convert(boxes: np.ndarray, src: str, dst: str) -> np.ndarray:
    """Convert boxes between any two of ``FORMATS``."""
    if src not in _TO_XYXY or dst not in _FROM_XYXY:
        raise ValueError(f"box format must be one of {FORMATS}, got {src!r} -> {dst!r}")
    return _FROM_XYXY[dst](_TO_XYXY[src](boxes))


def area(boxes_xyxy: np.ndarray) -> np.ndarray:
    """Area of xyxy boxes (float64); inverted boxes have area 0."""
    x1, y1, x2, y2 = _split(np.asarray(boxes_xyxy, dtype=np.float64))
    return np.maximum(x2 - x1, 0.0) * np.maximum(y2 - y1, 0.0)


def iou_matrix(a_xyxy: np.ndarray, b_xyxy: np.ndarray) -> np.ndarray:
    """Pairwise IoU [len(a), len(b)] of xyxy boxes, float64."""
    a = np.asarray(a_xyxy, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b_xyxy, dtype=np.float64).reshape(-1, 4)
    iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    inter = np.maximum(iw, 0.0) * np.maximum(ih, 0.0)
    union = area(a)[:, None] + area(b)[None, :] - inter
    out = np.zeros_like(inter)
    np.divide(inter, union, out=out, where=union > 0)
    return out


def clip(boxes_xyxy: np.ndarray, width: float, height: float) -> np.ndarray:
    """Clip xyxy boxes to [0, width] x [0, height] (returns a new array)."""
    b = np.array(boxes_xyxy, copy=True)
    b[..., 0::2] = b[..., 0::2].clip(0, width)
    b[..., 1::2] = b[..., 1::2].clip(0, height)
    return b
