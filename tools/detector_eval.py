"""Evaluate a YOLOv8-form ONNX detector on a COCO-style folder with pycocotools (dev tool).

``evaluate(outputs, transforms, coco_gt)`` turns raw model outputs [1, 4+C, A] into COCO
detections (decode + class-aware NMS, boxes mapped back through the letterbox) and returns
{"map50": ..., "map50_95": ...}. Decoding/NMS are the runtime's (``edgeinfer.detection``); the
mAP is pycocotools' (the reference the runtime's own ``edgeinfer.detection.metrics`` is checked against).
"""
from __future__ import annotations

import contextlib
import io
import json
import sys
from pathlib import Path

import numpy as np

from edgeinfer.detection.postprocess import DetectPostprocessor
from edgeinfer.preprocess import PreprocessConfig, preprocess_image

EVAL_SCORE_THRESHOLD = 0.001   # COCO-style evaluation keeps low-score boxes
EVAL_IOU_THRESHOLD = 0.6
EVAL_MAX_DET = 100


def detect(out: np.ndarray, transform, score_thr: float = EVAL_SCORE_THRESHOLD,
           iou_thr: float = EVAL_IOU_THRESHOLD, max_det: int = EVAL_MAX_DET):
    """One image's [1,4+C,A] output -> (xyxy in original pixels, scores, classes), decoded by the
    runtime's own post-processor (``edgeinfer.detection``: yolov8 decoder, class-aware hard NMS)."""
    post = DetectPostprocessor({"kind": "detect", "decoder": "yolov8", "score_threshold": score_thr,
                                "iou_threshold": iou_thr, "max_detections": max_det, "layout": "channels_first"})
    dets = post([out], transform).detections
    if not dets:
        return np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64)
    return (np.array([d.box for d in dets], np.float32), np.array([d.score for d in dets], np.float32),
            np.array([d.class_id for d in dets], np.int64))


def load_split(folder: str | Path, preprocess: dict):
    """Read a COCO-style split from disk with the runtime preprocessing.

    Returns (inputs float32 [N,3,S,S], transforms, coco_gt dict, image ids).
    """
    folder = Path(folder)
    gt = json.loads((folder / "annotations.json").read_text())
    cfg = PreprocessConfig.from_dict(preprocess)
    hw = cfg.output_hw()
    xs, ts, ids = [], [], []
    for im in gt["images"]:
        x, t = preprocess_image(folder / im["file_name"], cfg, hw)
        xs.append(x)
        ts.append(t)
        ids.append(im["id"])
    return np.stack(xs), ts, gt, ids


def coco_map(dets: list[dict], coco_gt: dict) -> dict[str, float]:
    """pycocotools mAP@0.5 and mAP@0.5:0.95 of detections [{image_id, category_id, bbox xywh, score}]."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = json.loads(json.dumps(coco_gt))
        gt.createIndex()
        if not dets:
            return {"map50": 0.0, "map50_95": 0.0}
        dt = gt.loadRes(dets)
        ev = COCOeval(gt, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {"map50": float(ev.stats[1]), "map50_95": float(ev.stats[0])}


def evaluate(outputs: list[np.ndarray], transforms, coco_gt: dict, image_ids) -> dict[str, float]:
    """mAP of raw [1,4+C,A] outputs (one per image) against the split's ground truth."""
    cat_ids = [c["id"] for c in coco_gt["categories"]]
    dets = []
    for out, t, iid in zip(outputs, transforms, image_ids):
        boxes, scores, classes = detect(np.asarray(out, np.float32), t)
        for b, s, c in zip(boxes, scores, classes):
            dets.append({"image_id": iid, "category_id": cat_ids[int(c)],
                         "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])],
                         "score": float(s)})
    return coco_map(dets, coco_gt)


def run_onnx(model, inputs: np.ndarray) -> list[np.ndarray]:
    """Run an ONNX model (path or ModelProto) on each input [3,S,S]; returns output0 per image."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    src = model.SerializeToString() if hasattr(model, "SerializeToString") else str(model)
    sess = ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return [sess.run(None, {name: x[None]})[0] for x in inputs]


def progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def load_images(folder: str | Path, preprocess: dict):
    """Every .jpg/.png of ``folder`` (sorted) -> (inputs float32 [N,3,S,S], transforms)."""
    cfg = PreprocessConfig.from_dict(preprocess)
    hw = cfg.output_hw()
    paths = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    pairs = [preprocess_image(p, cfg, hw) for p in paths]
    return np.stack([x for x, _ in pairs]), [t for _, t in pairs]
