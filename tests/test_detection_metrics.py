"""COCO mAP against pycocotools on the same predictions; agreement and top-k helpers."""
from __future__ import annotations

import contextlib
import copy
import io

import numpy as np
import pytest

from edgeinfer.detection.metrics import coco_map, map_agreement, topk_accuracy
from edgeinfer.detection.postprocess import Detection, DetectionResult


def _random_set(seed, n_images=12, n_cats=4, crowd=True):
    rng = np.random.default_rng(seed)
    images = [{"id": 100 + i, "width": 320, "height": 240} for i in range(n_images)]
    cats = [{"id": c * 3 + 1, "name": f"c{c}"} for c in range(n_cats + 1)]  # last category never annotated
    anns, preds = [], []
    for im in images:
        for _ in range(rng.integers(0, 7)):
            c = cats[rng.integers(0, n_cats)]["id"]
            x, y = rng.uniform(0, 250), rng.uniform(0, 180)
            w, h = rng.uniform(2, 70), rng.uniform(2, 60)
            iscrowd = int(crowd and rng.random() < 0.08)
            anns.append({"id": len(anns) + 1, "image_id": im["id"], "category_id": c, "bbox": [x, y, w, h],
                         "area": w * h * rng.uniform(0.5, 1.0), "iscrowd": iscrowd})
            for _ in range(rng.integers(0, 3)):  # near-duplicates and localisation errors
                j = rng.normal(0, rng.choice([1.0, 5.0, 15.0]), 4)
                score = float(rng.choice([0.5, 0.7, rng.random()]))  # ties on purpose
                preds.append({"image_id": im["id"], "category_id": c, "score": score,
                              "bbox": [x + j[0], y + j[1], max(w + j[2], 0.5), max(h + j[3], 0.5)]})
        for _ in range(rng.integers(0, 5)):  # false positives, sometimes of the unannotated category
            c = cats[rng.integers(0, n_cats + 1)]["id"]
            preds.append({"image_id": im["id"], "category_id": c, "score": float(rng.random()),
                          "bbox": [rng.uniform(0, 250), rng.uniform(0, 180), rng.uniform(2, 60), rng.uniform(2, 60)]})
    # one image with more than 100 detections of a category: the per-image cap matters
    im = images[0]["id"]
    anns.append({"id": len(anns) + 1, "image_id": im, "category_id": 1, "bbox": [10, 10, 30, 30], "area": 900, "iscrowd": 0})
    for k in range(130):
        preds.append({"image_id": im, "category_id": 1, "score": float(rng.random() * 0.5),
                      "bbox": [10 + rng.normal(0, 3), 10 + rng.normal(0, 3), 30, 30]})
    return {"images": images, "annotations": anns, "categories": cats}, preds


def _pycoco(gt, preds):
    pytest.importorskip("pycocotools", reason="pycocotools (dev dependency) is not installed: mAP cross-check skipped")
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    with contextlib.redirect_stdout(io.StringIO()):
        g = COCO()
        g.dataset = copy.deepcopy(gt)
        g.createIndex()
        d = g.loadRes(copy.deepcopy(preds))
        e = COCOeval(g, d, "bbox")
        e.evaluate()
        e.accumulate()
        e.summarize()
    return e.stats


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_coco_map_equals_pycocotools(seed):
    gt, preds = _random_set(seed)
    stats = _pycoco(gt, preds)
    ours = coco_map(gt, preds)
    assert ours["map50_95"] == pytest.approx(stats[0], abs=1e-3)
    assert ours["map50"] == pytest.approx(stats[1], abs=1e-3)
    assert ours["map75"] == pytest.approx(stats[2], abs=1e-3)
    assert 0 < ours["map50"] < 1  # the case is not trivial


def test_perfect_and_empty_predictions():
    gt, _ = _random_set(5, crowd=False)
    perfect = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
               for a in gt["annotations"]]
    assert coco_map(gt, perfect)["map50_95"] == pytest.approx(1.0)
    assert coco_map(gt, [])["map50"] == 0.0


def _res(boxes, ids, scores=None):
    scores = scores or [0.9] * len(ids)
    return DetectionResult([Detection(tuple(map(float, b)), s, c, str(c)) for b, c, s in zip(boxes, ids, scores)])


def test_map_agreement_identical_and_degraded():
    ref = [_res([[10, 10, 50, 50], [60, 60, 90, 100]], [0, 1]), _res([[5, 5, 20, 20]], [1]), _res([], [])]
    same = map_agreement(ref, ref)
    assert same["map50_agreement"] == pytest.approx(1.0) and same["map50_95_agreement"] == pytest.approx(1.0)
    shifted = [_res([[14, 10, 54, 50], [60, 60, 90, 100]], [0, 1]), _res([], []), _res([[0, 0, 5, 5]], [0])]
    worse = map_agreement(ref, shifted)
    assert worse["map50_agreement"] < 1.0 and worse["map50_95_agreement"] < worse["map50_agreement"]
    assert map_agreement([_res([], [])], [_res([], [])])["map50_agreement"] == 1.0
    assert map_agreement([_res([], [])], [_res([[0, 0, 1, 1]], [0])])["map50_agreement"] == 0.0
    # the reference found nothing; the test side, ranked below the reference's threshold, found only
    # boxes under it: the same answer at that threshold (the fp32 artifact of a bundle got 0.0 here)
    low = [_res([[0, 0, 1, 1]], [0], [0.01])]
    assert map_agreement([_res([], [])], low, score_threshold=0.25)["map50_agreement"] == 1.0
    assert map_agreement([_res([], [])], low, score_threshold=0.005)["map50_agreement"] == 0.0


def test_map_agreement_with_ground_truth():
    gt = {"images": [{"id": 7}], "categories": [{"id": 1, "name": "a"}],
          "annotations": [{"id": 1, "image_id": 7, "category_id": 1, "bbox": [10, 10, 40, 40], "area": 1600}]}
    ref = [_res([[10, 10, 50, 50]], [0])]
    test = [_res([[30, 10, 70, 50]], [0])]
    out = map_agreement(ref, test, gt, image_ids=[7], class_to_category={0: 1})
    assert out["map50_ref"] == pytest.approx(1.0) and out["map50_test"] == 0.0 and out["map50_delta"] == pytest.approx(-1.0)


def test_topk_accuracy():
    ranked = [[3, 1, 2], [0, 5, 4], [9, 8, 7, 6, 1]]
    assert topk_accuracy(ranked, [3, 5, 1]) == {"top1": pytest.approx(1 / 3), "top5": pytest.approx(1.0)}

