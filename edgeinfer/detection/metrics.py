"""Detection and classification metrics (numpy only).

``coco_map(gt, predictions)`` follows the COCO bbox evaluation (pycocotools ``COCOeval``) for
area "all" and maxDets 100: per category, detections sorted by score (stable) and cut to the 100
best per image; greedy matching at IoU thresholds 0.50:0.05:0.95 to the best-IoU unmatched
ground truth (crowd boxes: IoU = intersection / detection area; they may absorb many detections
and count as ignored); 101-point interpolated precision (monotone envelope sampled at recall
0:0.01:1); categories without ground truth are left out of the mean.

``gt`` is a COCO-style dict: {"images": [{"id", ...}], "annotations": [{"image_id",
"category_id", "bbox": [x, y, w, h], "area"?, "iscrowd"?}], "categories": [{"id", "name"}]};
``predictions`` are COCO result dicts {"image_id", "category_id", "bbox": [x, y, w, h], "score"}.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any, Iterable, Sequence

import numpy as np

from ..errors import EdgeInferError
from .boxes import xyxy_to_xywh

IOU_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1)
RECALL_POINTS = np.linspace(0.0, 1.0, 101)
_EPS = np.spacing(1)


def _bbox_iou_coco(dt: np.ndarray, gt: np.ndarray, crowd: np.ndarray) -> np.ndarray:
    """IoU [D, G] of xywh boxes; for crowd ground truth the union is the detection's area."""
    dx1, dy1 = dt[:, 0:1], dt[:, 1:2]
    dx2, dy2 = dx1 + dt[:, 2:3], dy1 + dt[:, 3:4]
    gx1, gy1 = gt[None, :, 0], gt[None, :, 1]
    gx2, gy2 = gx1 + gt[None, :, 2], gy1 + gt[None, :, 3]
    iw = np.maximum(np.minimum(dx2, gx2) - np.maximum(dx1, gx1), 0)
    ih = np.maximum(np.minimum(dy2, gy2) - np.maximum(dy1, gy1), 0)
    inter = iw * ih
    da = dt[:, 2:3] * dt[:, 3:4]
    ga = gt[None, :, 2] * gt[None, :, 3]
    union = np.where(crowd[None, :], da, da + ga - inter)
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _match_image(dts: list[dict], gts: list[dict], max_dets: int):
    """COCO evaluateImg for one (image, category): (scores [D], matched [T, D], ignored [T, D], n_gt)."""
    g_ignore = np.array([bool(g.get("iscrowd", 0)) or not (0 <= g["_area"] <= 1e10) for g in gts], bool)
    g_order = np.argsort(g_ignore, kind="mergesort")
    gts = [gts[i] for i in g_order]
    g_ignore = g_ignore[g_order]
    crowd = np.array([bool(g.get("iscrowd", 0)) for g in gts], bool)
    d_order = np.argsort([-d["score"] for d in dts], kind="mergesort")[:max_dets]
    dts = [dts[i] for i in d_order]
    T = len(IOU_THRESHOLDS)
    matched = np.zeros((T, len(dts)), bool)
    d_ignore = np.zeros((T, len(dts)), bool)
    if dts and gts:
        ious = _bbox_iou_coco(np.array([d["bbox"] for d in dts], np.float64).reshape(-1, 4),
                              np.array([g["bbox"] for g in gts], np.float64).reshape(-1, 4), crowd)
        for t, thr in enumerate(IOU_THRESHOLDS):
            g_taken = np.zeros(len(gts), bool)
            for d in range(len(dts)):
                best, m = min(thr, 1 - 1e-10), -1
                for g in range(len(gts)):
                    if g_taken[g] and not crowd[g]:
                        continue
                    if m > -1 and not g_ignore[m] and g_ignore[g]:
                        break
                    if ious[d, g] < best:
                        continue
                    best, m = ious[d, g], g
                if m == -1:
                    continue
                d_ignore[t, d] = g_ignore[m]
                matched[t, d] = True
                g_taken[m] = True
    # unmatched detections outside the area range are ignored (area "all": none are)
    d_area = np.array([d["bbox"][2] * d["bbox"][3] for d in dts], np.float64)
    d_ignore |= ~matched & ((d_area < 0) | (d_area > 1e10))[None, :]
    scores = np.array([d["score"] for d in dts], np.float64)
    return scores, matched, d_ignore, int((~g_ignore).sum())


def _category_precision(per_image: list[tuple]) -> np.ndarray | None:
    """Accumulate one category over images: precision [T, R], or None without ground truth."""
    n_gt = sum(p[3] for p in per_image)
    if n_gt == 0:
        return None
    T, R = len(IOU_THRESHOLDS), len(RECALL_POINTS)
    scores = np.concatenate([p[0] for p in per_image]) if per_image else np.zeros(0)
    order = np.argsort(-scores, kind="mergesort")
    matched = np.concatenate([p[1] for p in per_image], axis=1)[:, order] if per_image else np.zeros((T, 0), bool)
    ignored = np.concatenate([p[2] for p in per_image], axis=1)[:, order] if per_image else np.zeros((T, 0), bool)
    tp = np.cumsum(matched & ~ignored, axis=1).astype(np.float64)
    fp = np.cumsum(~matched & ~ignored, axis=1).astype(np.float64)
    out = np.zeros((T, R))
    for t in range(T):
        if tp.shape[1] == 0:
            continue
        rc = tp[t] / n_gt
        pr = tp[t] / (fp[t] + tp[t] + _EPS)
        pr = np.maximum.accumulate(pr[::-1])[::-1]
        idx = np.searchsorted(rc, RECALL_POINTS, side="left")
        ok = idx < len(pr)
        out[t, ok] = pr[idx[ok]]
    return out


def coco_map(gt: dict[str, Any], predictions: Iterable[dict[str, Any]], max_dets: int = 100) -> dict[str, Any]:
    """COCO bbox mAP: {"map50_95", "map50", "map75", "per_category": {cat_id: {"ap50", "ap50_95"}}, ...}."""
    try:
        image_ids = sorted({int(im["id"]) for im in gt["images"]})
        cat_ids = sorted({int(c["id"]) for c in gt["categories"]})
        anns = list(gt["annotations"])
    except (KeyError, TypeError) as exc:
        raise EdgeInferError(f"ground truth is not COCO-style (missing {exc}); it needs images, annotations, categories") from None
    known = set(image_ids)
    gts: dict[tuple[int, int], list[dict]] = defaultdict(list)
    for a in anns:
        w, h = a["bbox"][2], a["bbox"][3]
        gts[(int(a["image_id"]), int(a["category_id"]))].append({**a, "_area": a.get("area", w * h)})
    dts: dict[tuple[int, int], list[dict]] = defaultdict(list)
    for p in predictions:
        if int(p["image_id"]) not in known:
            raise EdgeInferError(f"prediction for image id {p['image_id']} which the ground truth does not list")
        dts[(int(p["image_id"]), int(p["category_id"]))].append(p)
    per_cat: dict[int, np.ndarray] = {}
    for c in cat_ids:
        per_image = [_match_image(dts[(i, c)], gts[(i, c)], max_dets) for i in image_ids if dts.get((i, c)) or gts.get((i, c))]
        prec = _category_precision(per_image)
        if prec is not None:
            per_cat[c] = prec
    if not per_cat:
        return {"map50_95": -1.0, "map50": -1.0, "map75": -1.0, "per_category": {}, "images": len(image_ids),
                "categories": 0}
    stack = np.stack(list(per_cat.values()))  # [K, T, R]
    return {"map50_95": float(stack.mean()), "map50": float(stack[:, 0].mean()), "map75": float(stack[:, 5].mean()),
            "per_category": {c: {"ap50": float(p[0].mean()), "ap50_95": float(p.mean())} for c, p in per_cat.items()},
            "images": len(image_ids), "categories": len(per_cat)}


# ----------------------------------------------------------------------------- results <-> COCO


def results_to_predictions(results: Sequence[Any], image_ids: Sequence[int],
                           class_to_category: dict[int, int] | None = None) -> list[dict[str, Any]]:
    """DetectionResults (one per image, aligned with ``image_ids``) -> COCO result dicts."""
    out = []
    for res, img in zip(results, image_ids, strict=True):
        boxes, scores, ids = res.arrays()
        for b, s, c in zip(xyxy_to_xywh(boxes).tolist(), scores.tolist(), ids.tolist()):
            cat = c if class_to_category is None else class_to_category.get(c)
            if cat is not None:
                out.append({"image_id": int(img), "category_id": int(cat), "bbox": b, "score": float(s)})
    return out


def results_as_ground_truth(results: Sequence[Any], extra_classes: Iterable[int] = ()) -> dict[str, Any]:
    """Detections (e.g. the fp32 model's) as a COCO ground truth over images 0..n-1."""
    anns, cats = [], set(extra_classes)
    for i, res in enumerate(results):
        boxes, _, ids = res.arrays()
        for b, c in zip(xyxy_to_xywh(boxes).tolist(), ids.tolist()):
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": int(c), "bbox": b,
                         "area": b[2] * b[3], "iscrowd": 0})
            cats.add(int(c))
    return {"images": [{"id": i} for i in range(len(results))], "annotations": anns,
            "categories": [{"id": c, "name": str(c)} for c in sorted(cats)]}


def map_agreement(ref_results: Sequence[Any], test_results: Sequence[Any], gt: dict[str, Any] | None = None,
                  image_ids: Sequence[int] | None = None, class_to_category: dict[int, int] | None = None,
                  score_threshold: float | None = None) -> dict[str, Any]:
    """How well ``test_results`` reproduce ``ref_results`` (the fp32 model's), as mAP.

    ``map50_agreement`` / ``map50_95_agreement``: COCO mAP of the test detections scored against
    the reference detections as ground truth (1.0 when both found nothing, 0.0 when only the
    test found something at or above ``score_threshold``, the reference's own threshold when the
    test side is ranked further down). With ``gt`` (COCO dict; ``image_ids`` aligned with the results) it
    adds the plain mAP of both and their difference.
    """
    if len(ref_results) != len(test_results):
        raise EdgeInferError(f"map_agreement got {len(ref_results)} reference and {len(test_results)} test results")
    n_ref = sum(len(r.arrays()[2]) for r in ref_results)
    n_test = sum(len(r.arrays()[2]) for r in test_results)
    if n_ref == 0:
        found = n_test if score_threshold is None else sum(
            int((np.asarray(r.arrays()[1]) >= score_threshold).sum()) for r in test_results)
        a50 = a5095 = 1.0 if found == 0 else 0.0
    else:
        pseudo = results_as_ground_truth(ref_results)
        m = coco_map(pseudo, results_to_predictions(test_results, range(len(test_results))))
        a50, a5095 = m["map50"], m["map50_95"]
    out: dict[str, Any] = {"map50_agreement": a50, "map50_95_agreement": a5095,
                           "ref_detections": n_ref, "test_detections": n_test}
    if gt is not None:
        ids = list(image_ids) if image_ids is not None else [im["id"] for im in gt["images"]]
        ref = coco_map(gt, results_to_predictions(ref_results, ids, class_to_category))
        test = coco_map(gt, results_to_predictions(test_results, ids, class_to_category))
        out.update(map50_ref=ref["map50"], map50_95_ref=ref["map50_95"], map50_test=test["map50"],
                   map50_95_test=test["map50_95"], map50_delta=test["map50"] - ref["map50"])
    return out


def topk_accuracy(ranked: Sequence[Sequence[int]], truth: Sequence[int], ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Top-k accuracy for ranked class lists (best first): {"top1": ..., "top5": ...}."""
    if len(ranked) != len(truth):
        raise EdgeInferError(f"topk_accuracy got {len(ranked)} predictions for {len(truth)} labels")
    if not truth:
        return {f"top{k}": 0.0 for k in ks}
    return {f"top{k}": float(np.mean([t in list(r)[:k] for r, t in zip(ranked, truth)])) for k in ks}
