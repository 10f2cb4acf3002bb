"""Detection post-processing: the manifest's ``postprocess`` dict -> detections in image pixels.

Postprocess config (``manifest["postprocess"]`` when ``task == "detect"``)::

    kind              "detect"                                   (required)
    decoder           "yolov8" | "yolov5" | "ssd"                 (required; see ``decoders``)
    score_threshold   0.25    keep candidates with score > this (0..1)
    iou_threshold     0.45    NMS suppresses IoU > this (0..1)
    max_detections    100     per image, after NMS
    top_k             1000    best candidates fed to NMS (null: all)
    nms               "hard" | "soft-linear" | "soft-gaussian" | "weighted"   (default "hard")
    sigma             0.5     soft-gaussian decay exp(-iou^2 / sigma)
    class_agnostic    false   true: boxes of different classes suppress each other
    num_classes       null    class columns of the head (null: all remaining columns)
    apply_sigmoid     null    scores are logits (null: decoder default; yolo false, ssd true)
    layout            null    yolo heads: "channels_first" | "channels_last" (null: auto)
    normalized_boxes  false   yolo heads give 0..1 boxes; needs input_size
    input_size        null    [height, width] of the model input
    anchors           {...}   yolov5 raw heads: {"strides": [...], "sizes": [[w, h, ...], ...]};
                              ssd: MediaPipe SsdAnchorsCalculator options
    box_coding        {...}   ssd only: scales, box order, keypoints (``decoders.SSD_CODING_DEFAULTS``)
    keep_keypoints    false   ssd: decode keypoints and return them with each detection

``DetectPostprocessor(config, labels)(outputs, transform)`` decodes one image's outputs, runs NMS
and maps boxes through ``Transform.to_original`` (clipped to the image).
``build_detect_postprocess(...)`` makes a validated config from the converter's flags.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import EdgeInferError
from ..preprocess import is_choice
from .anchors import anchor_preset, is_preset_name
from .decoders import DECODERS, SSD_ANCHOR_DEFAULTS, SSD_CODING_DEFAULTS, decode_ssd, get_decoder
from .nms import METHODS, select

DEFAULTS: dict[str, Any] = {
    "kind": "detect", "decoder": None, "score_threshold": 0.25, "iou_threshold": 0.45, "max_detections": 100,
    "top_k": 1000, "nms": "hard", "sigma": 0.5, "class_agnostic": False, "num_classes": None,
    "apply_sigmoid": None, "layout": None, "normalized_boxes": False, "input_size": None, "anchors": None,
    "box_coding": None, "keep_keypoints": False,
}


def _fail(key: str, msg: str) -> EdgeInferError:
    return EdgeInferError(f"postprocess {key}: {msg}")


def _num(cfg, key, lo, hi, integer=False, allow_none=False):
    v = cfg[key]
    if v is None and allow_none:
        return
    ok = isinstance(v, int) if integer else isinstance(v, (int, float))
    if isinstance(v, bool) or not ok or not (lo <= v <= hi):
        kind = "an integer" if integer else "a number"
        raise _fail(key, f"{v!r} must be {kind} in [{lo}, {hi}]")


def validate_config(config: dict[str, Any]) -> dict[str, Any]:
    """Fill defaults and check every key; returns a new dict. One-line errors naming the key."""
    if not isinstance(config, dict):
        raise EdgeInferError("postprocess config must be a JSON object; re-run `edgeinfer convert --task detect`")
    unknown = sorted(set(config) - set(DEFAULTS))
    if unknown:
        raise _fail(unknown[0], f"unknown key; known keys: {', '.join(DEFAULTS)}")
    cfg = {**DEFAULTS, **config}
    if cfg["kind"] != "detect":
        raise _fail("kind", f"{cfg['kind']!r} is not 'detect'")
    if not is_choice(cfg["decoder"], DECODERS):
        raise _fail("decoder", f"{cfg['decoder']!r} is not one of {', '.join(DECODERS)}; pass --decoder")
    _num(cfg, "score_threshold", 0.0, 1.0)
    _num(cfg, "iou_threshold", 0.0, 1.0)
    _num(cfg, "max_detections", 1, 10**6, integer=True)
    _num(cfg, "top_k", 1, 10**7, integer=True, allow_none=True)
    _num(cfg, "sigma", 1e-6, 1e6)
    _num(cfg, "num_classes", 1, 10**6, integer=True, allow_none=True)
    if not is_choice(cfg["nms"], METHODS):
        raise _fail("nms", f"{cfg['nms']!r} is not one of {', '.join(METHODS)}")
    for key in ("class_agnostic", "normalized_boxes", "keep_keypoints"):
        if not isinstance(cfg[key], bool):
            raise _fail(key, f"{cfg[key]!r} must be true or false")
    if cfg["apply_sigmoid"] is not None and not isinstance(cfg["apply_sigmoid"], bool):
        raise _fail("apply_sigmoid", f"{cfg['apply_sigmoid']!r} must be true, false or null")
    if cfg["layout"] not in (None, "channels_first", "channels_last"):
        raise _fail("layout", f"{cfg['layout']!r} must be channels_first, channels_last or null")
    size = cfg["input_size"]
    if size is not None and not (isinstance(size, (list, tuple)) and len(size) == 2
                                 and all(isinstance(v, int) and v > 0 for v in size)):
        raise _fail("input_size", f"{size!r} must be [height, width]")
    if cfg["normalized_boxes"] and size is None:
        raise _fail("input_size", "normalized_boxes needs the model input size [height, width]")
    _validate_anchors(cfg)
    if cfg["apply_sigmoid"] is None:
        cfg.pop("apply_sigmoid")  # decoder default
    return cfg


def _validate_anchors(cfg: dict[str, Any]) -> None:
    dec, anchors = cfg["decoder"], cfg["anchors"]
    if anchors is not None and not isinstance(anchors, dict):
        raise _fail("anchors", "must be a JSON object")
    if dec == "ssd":
        if not anchors:
            raise _fail("anchors", "the ssd decoder needs SSD anchor options; pass --anchors FILE or a preset name (e.g. blazeface-front-128)")
        bad = sorted(set(anchors) - set(SSD_ANCHOR_DEFAULTS))
        if bad:
            raise _fail("anchors", f"unknown SSD anchor option {bad[0]!r}")
        coding = cfg["box_coding"] or {}
        bad = sorted(set(coding) - set(SSD_CODING_DEFAULTS))
        if bad:
            raise _fail("box_coding", f"unknown option {bad[0]!r}; known: {', '.join(SSD_CODING_DEFAULTS)}")
        if coding.get("box_order", "xywh") not in ("xywh", "yxhw"):
            raise _fail("box_coding", "box_order must be xywh or yxhw")
        from .decoders import ssd_anchors
        ssd_anchors(anchors)  # raises a one-line error for missing options
    elif cfg["box_coding"]:
        raise _fail("box_coding", f"only the ssd decoder reads box_coding, not {dec}")
    if dec == "yolov5" and anchors:
        sizes, strides = anchors.get("sizes"), anchors.get("strides")
        if set(anchors) - {"sizes", "strides"} or not sizes or not strides or len(sizes) != len(strides):
            raise _fail("anchors", "yolov5 anchors must be {\"strides\": [8, 16, 32], \"sizes\": [[w, h, ...] per stride]}")
        for s in sizes:
            if not isinstance(s, list) or not s or len(s) % 2:
                raise _fail("anchors", f"yolov5 anchor sizes {s!r} must be a flat list of w, h pairs")
    if dec == "yolov8" and anchors:
        raise _fail("anchors", "yolov8 is anchor-free; drop --anchors")


# ----------------------------------------------------------------------------- results


@dataclass
class Detection:
    box: tuple[float, float, float, float]   # x1, y1, x2, y2 in original-image pixels, clipped
    score: float
    class_id: int
    label: str
    keypoints: list[tuple[float, float]] | None = None

    def to_dict(self) -> dict[str, Any]:
        d = {"box": [round(v, 2) for v in self.box], "score": round(self.score, 5), "class_id": self.class_id,
             "label": self.label}
        if self.keypoints is not None:
            d["keypoints"] = [[round(x, 2), round(y, 2)] for x, y in self.keypoints]
        return d


@dataclass
class DetectionResult:
    detections: list[Detection] = field(default_factory=list)
    image_size: tuple[int, int] | None = None   # (width, height) of the original image
    source: str | None = None                  # image path, when the caller sets it

    def __len__(self) -> int:
        return len(self.detections)

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "image_size": list(self.image_size) if self.image_size else None,
                "detections": [d.to_dict() for d in self.detections]}

    def format_lines(self) -> list[str]:
        """One human-readable line per detection: label, score, box."""
        width = max([len(d.label) for d in self.detections] + [5])
        return [f"{d.label:<{width}}  {d.score:.3f}  box=({d.box[0]:.1f}, {d.box[1]:.1f}, {d.box[2]:.1f}, {d.box[3]:.1f})"
                for d in self.detections]

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(boxes xyxy [M, 4], scores [M], class_ids [M]) for metrics."""
        if not self.detections:
            return np.zeros((0, 4), np.float64), np.zeros(0), np.zeros(0, np.int64)
        return (np.array([d.box for d in self.detections], np.float64), np.array([d.score for d in self.detections]),
                np.array([d.class_id for d in self.detections], np.int64))


class DetectPostprocessor:
    """Callable: (outputs of one image, Transform) -> DetectionResult."""

    def __init__(self, config: dict[str, Any], labels: list[str] | None = None):
        self.config = validate_config(config)
        self.labels = list(labels) if labels else None
        self._decode = get_decoder(self.config["decoder"])
        if self.labels and self.config["num_classes"] and len(self.labels) < self.config["num_classes"]:
            raise EdgeInferError(f"labels file has {len(self.labels)} names but the detector has "
                                 f"{self.config['num_classes']} classes; fix --labels")

    def with_overrides(self, **changes: Any) -> "DetectPostprocessor":
        """A copy with some config keys changed (e.g. a low score_threshold for mAP evaluation)."""
        return DetectPostprocessor({k: v for k, v in {**self.config, **changes}.items()}, self.labels)

    def label_of(self, class_id: int) -> str:
        if self.labels and 0 <= class_id < len(self.labels):
            return self.labels[class_id]
        return str(class_id)

    def __call__(self, outputs: list[np.ndarray], transform) -> DetectionResult:
        c = self.config
        kp = None
        if c["decoder"] == "ssd" and c["keep_keypoints"]:
            boxes, scores, ids, kp = decode_ssd(outputs, c, with_keypoints=True)
        else:
            boxes, scores, ids = self._decode(outputs, c)
        sel = select(boxes, scores, ids, method=c["nms"], iou_threshold=c["iou_threshold"],
                     score_threshold=c["score_threshold"], top_k=c["top_k"], max_detections=c["max_detections"],
                     class_agnostic=c["class_agnostic"], sigma=c["sigma"], extra=kp)
        orig = transform.to_original(sel.boxes)
        kps = None
        if sel.extra is not None and sel.extra.shape[1]:
            pts = sel.extra.reshape(-1, 2)
            kps = transform.to_original(np.concatenate([pts, pts], 1))[:, :2].reshape(len(sel.boxes), -1, 2)
        dets = [Detection(tuple(float(v) for v in orig[i]), float(sel.scores[i]), int(sel.class_ids[i]),
                          self.label_of(int(sel.class_ids[i])),
                          None if kps is None else [(float(x), float(y)) for x, y in kps[i]])
                for i in range(len(sel.boxes))]
        return DetectionResult(dets, tuple(int(v) for v in transform.orig_size))


# ----------------------------------------------------------------------------- convert-time builder


def load_anchors_file(path: str | Path, decoder: str) -> dict[str, Any]:
    """Read an anchors JSON file -> {"anchors": ..., "box_coding": ...} config entries.

    ``path`` may also name a preset of ``anchors.ANCHOR_PRESETS`` (e.g. blazeface-front-128).
    ssd: MediaPipe SsdAnchorsCalculator options, optionally mixed with box-coding keys
    (x_scale, ..., num_keypoints), or {"anchors": {...}, "box_coding": {...}}.
    yolov5: {"strides": [8, 16, 32], "sizes": [[w, h, ...], ...]} (or "anchors" for "sizes"), or a
    bare list of per-level size lists (strides 8, 16, 32, ...).
    """
    p = Path(path)
    if decoder not in ("ssd", "yolov5"):
        raise EdgeInferError(f"the {decoder} decoder is anchor-free and takes no anchors file; drop --anchors")
    if not p.exists() and (is_preset_name(str(path)) or decoder == "ssd" and not p.suffix):
        if decoder != "ssd":
            raise EdgeInferError(f"--anchors {path}: named presets are MediaPipe SSD anchor sets; use --decoder ssd")
        return anchor_preset(str(path))
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        raise EdgeInferError(f"anchors file not found: {p}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EdgeInferError(f"anchors file {p} is not valid JSON: {exc}") from None
    if decoder == "ssd":
        if not isinstance(data, dict):
            raise EdgeInferError(f"anchors file {p}: expected a JSON object of SSD anchor options")
        if "anchors" in data and isinstance(data["anchors"], dict):
            return {"anchors": data["anchors"], "box_coding": data.get("box_coding")}
        coding = {k: v for k, v in data.items() if k in SSD_CODING_DEFAULTS}
        return {"anchors": {k: v for k, v in data.items() if k not in SSD_CODING_DEFAULTS}, "box_coding": coding or None}
    if isinstance(data, list):  # yolov5
        data = {"sizes": data, "strides": [8 * 2 ** i for i in range(len(data))]}
    if not isinstance(data, dict):
        raise EdgeInferError(f"anchors file {p}: expected {{\"strides\": [...], \"sizes\": [[...], ...]}}")
    data = dict(data)
    if "anchors" in data and "sizes" not in data:
        data["sizes"] = data.pop("anchors")
    return {"anchors": data}


def build_detect_postprocess(decoder: str, anchors_file: str | Path | None = None, *,
                             score_threshold: float | None = None, iou_threshold: float | None = None,
                             max_detections: int | None = None, top_k: int | None = None, nms: str | None = None,
                             class_agnostic: bool | None = None, num_classes: int | None = None,
                             input_size: tuple[int, int] | None = None, **extra: Any) -> dict[str, Any]:
    """The converter's flags -> a validated postprocess dict for the manifest.

    Any argument left ``None`` (flag not given) takes its ``DEFAULTS`` value; ``nms`` defaults to
    "weighted" for ssd (as MediaPipe's BlazeFace graphs) and "hard" otherwise. ``extra`` passes
    any other config key (e.g. apply_sigmoid, layout, keep_keypoints, anchors, box_coding).
    """
    given = {"score_threshold": score_threshold, "iou_threshold": iou_threshold, "max_detections": max_detections,
             "top_k": top_k, "class_agnostic": class_agnostic, "num_classes": num_classes,
             "input_size": list(input_size) if input_size else None, **extra}
    cfg: dict[str, Any] = {"kind": "detect", "decoder": decoder, "nms": nms or ("weighted" if decoder == "ssd" else "hard"),
                           **{k: v for k, v in given.items() if v is not None}}
    if not is_choice(decoder, DECODERS):
        raise _fail("decoder", f"{decoder!r} is not one of {', '.join(DECODERS)}; pass --decoder")
    if anchors_file is not None:
        for k, v in load_anchors_file(anchors_file, decoder).items():
            if v is not None and given.get(k) is None:  # a preset's score threshold yields to --score-threshold
                cfg[k] = v
    out = validate_config(cfg)
    return {k: v for k, v in out.items() if v is not None or k == "top_k"}
