"""Box decoders: a detector's raw outputs for ONE image -> candidate boxes.

``DECODERS[name](outputs, config) -> (boxes_xyxy float32 [M, 4] in model-input pixels,
scores float32 [M], class_ids int64 [M])``, already filtered by ``score > score_threshold`` and cut
to the ``top_k`` best (best first). ``outputs`` is the list of model outputs with or without the
leading batch axis of 1. Keys read from ``config`` (the manifest's postprocess dict; see
``postprocess`` for the full schema):

yolov8  anchor-free, one output [1, 4+C(+extra), N] or [1, N, 4+C(+extra)] (auto-detected; force
        with ``layout``: "channels_first" | "channels_last"), or split boxes [1, N, 4] + scores [1, N, C]
        (either orientation); boxes cx, cy, w, h in input pixels;
        class scores already sigmoid'ed unless ``apply_sigmoid``. ``num_classes`` limits the class
        columns (pose/segmentation heads carry extra columns after them).
yolov5  exported form [1, N, 5+C]: cx, cy, w, h (pixels), objectness, class scores; score =
        objectness x class score. Raw per-level form (several outputs [1, A*(5+C), H, W] or
        [1, A, H, W, 5+C], logits): needs ``anchors`` = {"strides": [8, 16, 32], "sizes":
        [[w0, h0, w1, h1, ...] per level]} in input pixels; decoded as YOLOv5 v6:
        xy = (2*sig - 0.5 + grid) * stride, wh = (2*sig)^2 * anchor.
ssd     MediaPipe-style SSD (BlazeFace family): boxes [1, A, V] (V >= 4) and scores [1, A, C], each
        possibly split over several outputs per feature-map level (concatenated in output order); ``anchors`` = MediaPipe SsdAnchorsCalculator options (see ``ssd_anchors``);
        ``box_coding`` = {"x_scale", "y_scale", "w_scale", "h_scale" (default 1.0), "box_order":
        "xywh" | "yxhw", "exponential": false, "num_keypoints": 0, "keypoint_offset": 4,
        "values_per_keypoint": 2, "score_clipping": null, "background_class": false}; scores are
        sigmoid'ed unless ``apply_sigmoid`` is false. Boxes come out normalised and are scaled by
        the anchors' input size.

Boxes marked ``normalized_boxes: true`` (yolo decoders) are multiplied by ``input_size`` [h, w].
"""
from __future__ import annotations

import json
import math
from functools import lru_cache
from typing import Any, Callable

import numpy as np

from ..errors import EdgeInferError
from .boxes import cxcywh_to_xyxy
from .nms import prefilter

Decoded = tuple[np.ndarray, np.ndarray, np.ndarray]


def _logit(p: float) -> float:
    if p <= 0:
        return -math.inf
    if p >= 1:
        return math.inf
    return math.log(p / (1 - p))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-x.astype(np.float32)))).astype(np.float32)


def _squeeze_batch(x: np.ndarray, ndim: int, what: str) -> np.ndarray:
    x = np.asarray(x)
    while x.ndim > ndim and x.shape[0] == 1:
        x = x[0]
    if x.ndim != ndim:
        raise EdgeInferError(f"{what}: expected a {ndim}-D output (plus batch 1), got shape {list(np.shape(x))}; "
                             "check the bundle's postprocess decoder")
    return x


def _empty() -> Decoded:
    return np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64)


def _scale_normalized(boxes: np.ndarray, config: dict[str, Any]) -> np.ndarray:
    if not config.get("normalized_boxes"):
        return boxes
    size = config.get("input_size")
    if not size:
        raise EdgeInferError("postprocess normalized_boxes needs input_size [height, width]; re-convert with it")
    h, w = size
    return boxes * np.array([w, h, w, h], np.float32)


def _channels_first(x: np.ndarray, fixed: int, config: dict[str, Any]) -> bool:
    """Whether a 2-D head is [channels, N]; ``fixed`` = non-class columns (4 or 5)."""
    layout = config.get("layout")
    if layout in ("channels_first", "channels_last"):
        return layout == "channels_first"
    nc = config.get("num_classes")
    if nc:
        want = fixed + int(nc)
        if x.shape[0] == want != x.shape[1]:
            return True
        if x.shape[1] == want != x.shape[0]:
            return False
    return x.shape[0] < x.shape[1]


def _class_block(x: np.ndarray, first: int, config: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(box columns [4, N], class scores [C, N]) of a channels-first head."""
    nc = config.get("num_classes")
    end = first + int(nc) if nc else x.shape[0]
    if end > x.shape[0] or end <= first:
        raise EdgeInferError(f"an output with {x.shape[0]} box/class rows does not fit this decoder (num_classes={nc}): "
                             "is the model a detector of this --decoder kind? (a classifier takes no --decoder)")
    return x[:4], x[first:end]


def _yolov8_joined(outputs: list[np.ndarray], config: dict[str, Any]) -> np.ndarray:
    """The [4+C, N] head; split exports (boxes [1, N, 4] or [1, 4, N] + scores [1, N, C] or
    [1, C, N]) are joined in that order."""
    if len(outputs) == 1:
        x = _squeeze_batch(outputs[0], 2, "yolov8 decoder")
        return x if _channels_first(x, 4, config) else x.T  # a view
    if len(outputs) != 2:
        raise EdgeInferError(f"yolov8 decoder takes one head output or boxes + scores, got {len(outputs)} outputs")
    a, b = (_squeeze_batch(o, 2, "yolov8 decoder") for o in outputs)
    if 4 not in a.shape and 4 in b.shape:
        a, b = b, a
    box = a if a.shape[0] == 4 and a.shape[1] != 4 else a.T
    if 4 not in box.shape or box.shape[0] != 4:
        raise EdgeInferError(f"yolov8 split outputs {list(a.shape)} and {list(b.shape)}: none is the [N, 4] boxes tensor")
    n = box.shape[1]
    cls = b if b.shape[1] == n and b.shape[0] != n else b.T
    if cls.shape[1] != n:
        raise EdgeInferError(f"yolov8 split outputs: boxes for {n} candidates but scores of shape {list(b.shape)}")
    return np.concatenate([box, cls], axis=0)


def decode_yolov8(outputs: list[np.ndarray], config: dict[str, Any]) -> Decoded:
    x = _yolov8_joined(outputs, config)
    box, cls = _class_block(x, 4, config)
    thr = float(config.get("score_threshold", 0.25))
    sig = bool(config.get("apply_sigmoid", False))
    best = cls.max(axis=0)
    keep = prefilter(best, _logit(thr) if sig else thr, config.get("top_k", 1000))
    if keep.size == 0:
        return _empty()
    scores = best[keep]
    ids = cls[:, keep].argmax(axis=0).astype(np.int64)
    scores = _sigmoid(scores) if sig else scores.astype(np.float32)
    boxes = cxcywh_to_xyxy(box[:, keep].T.astype(np.float32))
    return _scale_normalized(boxes, config).astype(np.float32), scores, ids


def _yolov5_levels(outputs: list[np.ndarray], config: dict[str, Any]) -> np.ndarray:
    """Raw per-level YOLOv5 heads -> the exported form [N, 5+C] (pixels, probabilities)."""
    anchors = config.get("anchors") or {}
    sizes, strides = anchors.get("sizes"), anchors.get("strides")
    if not sizes or not strides or len(sizes) != len(outputs) or len(strides) != len(outputs):
        raise EdgeInferError(f"yolov5 raw head has {len(outputs)} outputs: postprocess anchors needs that many "
                             "'strides' and 'sizes'; pass --anchors FILE")
    levels = []
    for out in outputs:  # -> [A*(5+C), H, W] or [A, H, W, 5+C]
        o = np.asarray(out)
        if o.ndim in (4, 5) and o.shape[0] == 1:
            o = o[0]
        if o.ndim not in (3, 4):
            raise EdgeInferError(f"yolov5 raw head output of shape {list(np.shape(out))} is not [1, A*(5+C), H, W] "
                                 "or [1, A, H, W, 5+C]")
        levels.append(o)
    # largest grid = smallest stride; both layouts keep H, W on axes 1 and 2
    order = sorted(range(len(levels)), key=lambda i: -levels[i].shape[1] * levels[i].shape[2])
    rows = []
    for lvl, i in enumerate(order):
        o = levels[i]
        a = np.asarray(sizes[lvl], np.float32).reshape(-1, 2)
        na = a.shape[0]
        if o.ndim == 3:  # [A*(5+C), H, W]
            c, h, w = o.shape
            if c % na:
                raise EdgeInferError(f"yolov5 level with {c} channels is not {na} anchors x (5+C)")
            o = o.reshape(na, c // na, h, w).transpose(0, 2, 3, 1)
        na_, h, w, v = o.shape
        if na_ != na:
            raise EdgeInferError(f"yolov5 level has {na_} anchors but anchors sizes give {na}")
        p = _sigmoid(o) if config.get("apply_sigmoid", True) else o.astype(np.float32)
        gy, gx = np.meshgrid(np.arange(h, dtype=np.float32), np.arange(w, dtype=np.float32), indexing="ij")
        s = float(strides[lvl])
        xy = (p[..., 0:2] * 2 - 0.5 + np.stack([gx, gy], -1)) * s
        wh = (p[..., 2:4] * 2) ** 2 * a[:, None, None, :]
        rows.append(np.concatenate([xy, wh, p[..., 4:]], axis=-1).reshape(-1, v))
    return np.concatenate(rows, axis=0)


def decode_yolov5(outputs: list[np.ndarray], config: dict[str, Any]) -> Decoded:
    raw = len(outputs) > 1 or np.asarray(outputs[0]).ndim >= 4
    if raw:
        x = _yolov5_levels(outputs, config)  # [N, 5+C], probabilities
        sig = False
    else:
        x = _squeeze_batch(outputs[0], 2, "yolov5 decoder")
        if _channels_first(x, 5, config):
            x = x.T
        sig = bool(config.get("apply_sigmoid", False))
    nc = config.get("num_classes")
    end = 5 + int(nc) if nc else x.shape[1]
    if x.shape[1] < 6 or end > x.shape[1]:
        raise EdgeInferError(f"yolov5 output has {x.shape[1]} columns; expected 5 + num_classes")
    thr = float(config.get("score_threshold", 0.25))
    obj = _sigmoid(x[:, 4]) if sig else x[:, 4]
    cand = np.flatnonzero(obj > thr)  # class scores <= 1, so score <= objectness
    cls = x[cand, 5:end]
    cls = _sigmoid(cls) if sig else cls.astype(np.float32)
    conf = cls * obj[cand, None]
    ids = conf.argmax(axis=1)
    best = conf[np.arange(len(cand)), ids]
    keep = prefilter(best, thr, config.get("top_k", 1000))
    if keep.size == 0:
        return _empty()
    boxes = cxcywh_to_xyxy(x[cand[keep], :4].astype(np.float32))
    return _scale_normalized(boxes, config).astype(np.float32), best[keep].astype(np.float32), ids[keep].astype(np.int64)


# ----------------------------------------------------------------------------- SSD

SSD_ANCHOR_DEFAULTS: dict[str, Any] = {
    "num_layers": None, "min_scale": None, "max_scale": None, "input_size_height": None, "input_size_width": None,
    "anchor_offset_x": 0.5, "anchor_offset_y": 0.5, "strides": None, "aspect_ratios": [1.0],
    "feature_map_width": [], "feature_map_height": [], "reduce_boxes_in_lowest_layer": False,
    "interpolated_scale_aspect_ratio": 1.0, "fixed_anchor_size": False,
}
SSD_CODING_DEFAULTS: dict[str, Any] = {
    "x_scale": 1.0, "y_scale": 1.0, "w_scale": 1.0, "h_scale": 1.0, "box_order": "xywh", "exponential": False,
    "num_keypoints": 0, "keypoint_offset": 4, "values_per_keypoint": 2, "score_clipping": None,
    "background_class": False,
}


def _layer_scale(lo: float, hi: float, i: int, n: int) -> float:
    return (lo + hi) * 0.5 if n == 1 else lo + (hi - lo) * i / (n - 1.0)


def ssd_anchors(options: dict[str, Any]) -> np.ndarray:
    """MediaPipe SsdAnchorsCalculator: anchors [A, 4] as (x_center, y_center, w, h), normalised.

    Layers with equal consecutive strides share one feature map and stack their anchors; per
    cell the order is (y, x, anchor). Scales interpolate linearly between min_scale and
    max_scale over the layers; ``interpolated_scale_aspect_ratio`` > 0 adds one anchor of scale
    sqrt(scale * next_scale) per layer; ``fixed_anchor_size`` makes every w, h 1.0.
    """
    key = json.dumps(options, sort_keys=True, default=float)
    return _ssd_anchors_cached(key).copy()


@lru_cache(maxsize=8)
def _ssd_anchors_cached(key: str) -> np.ndarray:
    o = {**SSD_ANCHOR_DEFAULTS, **json.loads(key)}
    missing = [k for k in ("num_layers", "min_scale", "max_scale", "input_size_height", "input_size_width", "strides")
               if o.get(k) is None]
    if missing:
        raise EdgeInferError(f"SSD anchors config lacks {', '.join(missing)}; add them to the anchors file")
    strides, n = list(o["strides"]), int(o["num_layers"])
    if len(strides) != n:
        raise EdgeInferError(f"SSD anchors: num_layers={n} but {len(strides)} strides given")
    out = []
    layer = 0
    while layer < n:
        ratios, scales = [], []
        last = layer
        while last < n and strides[last] == strides[layer]:
            scale = _layer_scale(o["min_scale"], o["max_scale"], last, n)
            if last == 0 and o["reduce_boxes_in_lowest_layer"]:
                ratios += [1.0, 2.0, 0.5]
                scales += [0.1, scale, scale]
            else:
                for r in o["aspect_ratios"]:
                    ratios.append(float(r))
                    scales.append(scale)
                if o["interpolated_scale_aspect_ratio"] > 0:
                    nxt = 1.0 if last == n - 1 else _layer_scale(o["min_scale"], o["max_scale"], last + 1, n)
                    scales.append(math.sqrt(scale * nxt))
                    ratios.append(float(o["interpolated_scale_aspect_ratio"]))
            last += 1
        sq = np.sqrt(np.asarray(ratios, np.float64))
        aw, ah = np.asarray(scales) * sq, np.asarray(scales) / sq
        if o["feature_map_height"]:
            fh, fw = int(o["feature_map_height"][layer]), int(o["feature_map_width"][layer])
        else:
            fh = math.ceil(o["input_size_height"] / strides[layer])
            fw = math.ceil(o["input_size_width"] / strides[layer])
        yy, xx, kk = np.meshgrid(np.arange(fh), np.arange(fw), np.arange(len(ratios)), indexing="ij")
        xc = (xx + o["anchor_offset_x"]) / fw
        yc = (yy + o["anchor_offset_y"]) / fh
        w = np.ones_like(xc, dtype=np.float64) if o["fixed_anchor_size"] else aw[kk]
        h = np.ones_like(yc, dtype=np.float64) if o["fixed_anchor_size"] else ah[kk]
        out.append(np.stack([xc, yc, w, h], -1).reshape(-1, 4))
        layer = last
    return np.concatenate(out).astype(np.float32)


def _ssd_split(outputs: list[np.ndarray], n_anchors: int, box_width: int) -> tuple[np.ndarray, np.ndarray]:
    """(boxes [A, V], scores [A, C]) from the outputs: one tensor of each, or each kind split over
    several tensors (per feature-map level, in anchor order). Outputs are grouped by their column
    count; the group ``box_width`` wide (4 + keypoint values) holds the boxes."""
    arrs = [_squeeze_batch(o, 2, "ssd decoder") for o in outputs]
    groups: dict[int, list[np.ndarray]] = {}
    for a in arrs:
        groups.setdefault(a.shape[1], []).append(a)
    full = {cols: np.concatenate(g) if len(g) > 1 else g[0] for cols, g in groups.items()}
    full = {cols: a for cols, a in full.items() if a.shape[0] == n_anchors}
    if len(full) != 2:
        raise EdgeInferError(f"ssd decoder needs box and score outputs with {n_anchors} rows in all, got shapes "
                             f"{[list(np.shape(o)) for o in outputs]}; check the anchors config (--anchors)")
    (ca, a), (cb, b) = full.items()
    if box_width in (ca, cb):
        return (a, b) if ca == box_width else (b, a)
    return (a, b) if ca >= cb and ca >= 4 else (b, a)


def decode_ssd(outputs: list[np.ndarray], config: dict[str, Any], with_keypoints: bool = False):
    """SSD decoding; with ``with_keypoints`` also returns keypoints [M, 2K] (x, y pairs, pixels)."""
    anchors = ssd_anchors(config.get("anchors") or {})
    c = {**SSD_CODING_DEFAULTS, **(config.get("box_coding") or {})}
    opts = {**SSD_ANCHOR_DEFAULTS, **config["anchors"]}
    nk = int(c["num_keypoints"])
    width = int(c["keypoint_offset"]) + nk * int(c["values_per_keypoint"]) if nk else 4
    raw_boxes, raw_scores = _ssd_split(outputs, len(anchors), width)
    if c["background_class"]:
        raw_scores = raw_scores[:, 1:]
    thr = float(config.get("score_threshold", 0.5))
    sig = bool(config.get("apply_sigmoid", True))
    best = raw_scores.max(axis=1).astype(np.float32)
    if c["score_clipping"]:
        best = best.clip(-c["score_clipping"], c["score_clipping"])
    keep = prefilter(best, _logit(thr) if sig else thr, config.get("top_k", 1000))
    if keep.size == 0:
        b, s, i = _empty()
        return (b, s, i, np.zeros((0, 2 * nk), np.float32)) if with_keypoints else (b, s, i)
    ids = raw_scores[keep].argmax(axis=1).astype(np.int64)
    scores = _sigmoid(best[keep]) if sig else best[keep]
    r = raw_boxes[keep].astype(np.float32)
    an = anchors[keep]
    xi, yi, wi, hi = (0, 1, 2, 3) if c["box_order"] == "xywh" else (1, 0, 3, 2)
    xc = r[:, xi] / c["x_scale"] * an[:, 2] + an[:, 0]
    yc = r[:, yi] / c["y_scale"] * an[:, 3] + an[:, 1]
    if c["exponential"]:
        w = np.exp(r[:, wi] / c["w_scale"]) * an[:, 2]
        h = np.exp(r[:, hi] / c["h_scale"]) * an[:, 3]
    else:
        w = r[:, wi] / c["w_scale"] * an[:, 2]
        h = r[:, hi] / c["h_scale"] * an[:, 3]
    W, H = float(opts["input_size_width"]), float(opts["input_size_height"])
    boxes = np.stack([(xc - w / 2) * W, (yc - h / 2) * H, (xc + w / 2) * W, (yc + h / 2) * H], 1).astype(np.float32)
    if not with_keypoints:
        return boxes, scores.astype(np.float32), ids
    kp = np.zeros((len(keep), 2 * nk), np.float32)
    for k in range(nk):
        o = int(c["keypoint_offset"]) + k * int(c["values_per_keypoint"])
        kx, ky = (r[:, o], r[:, o + 1]) if c["box_order"] == "xywh" else (r[:, o + 1], r[:, o])
        kp[:, 2 * k] = (kx / c["x_scale"] * an[:, 2] + an[:, 0]) * W
        kp[:, 2 * k + 1] = (ky / c["y_scale"] * an[:, 3] + an[:, 1]) * H
    return boxes, scores.astype(np.float32), ids, kp


DECODERS: dict[str, Callable[[list[np.ndarray], dict[str, Any]], Decoded]] = {
    "yolov5": decode_yolov5,
    "yolov8": decode_yolov8,
    "ssd": decode_ssd,
}


def get_decoder(name: str) -> Callable[[list[np.ndarray], dict[str, Any]], Decoded]:
    try:
        return DECODERS[name]
    except KeyError:
        raise EdgeInferError(f"unknown detection decoder {name!r}; use one of {', '.join(DECODERS)}") from None
