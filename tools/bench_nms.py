"""Benchmark: YOLOv8-style decode + NMS in numpy (edgeinfer.detection) vs OpenCV's C++ NMS.

    .venv/bin/python tools/bench_nms.py [--reps 300] [--objects 25] [--seed 0]

Builds a realistic head [1, 84, 8400] (80 classes, 640x640 input): background scores mostly
near 0, ``--objects`` objects each lighting up a cluster of neighbouring anchors with jittered
boxes (a few hundred candidates above 0.25). Times, interleaved round-robin in one run (median
of ``--reps``, single thread):

  ours.full        edgeinfer: decode_yolov8 + select (threshold, top-k, class-aware hard NMS)
  cv2.full         numpy decode written the usual way + cv2.dnn.NMSBoxesBatched
  ours.nms         edgeinfer: select() on the already-decoded candidates, class-aware
  cv2.nms          cv2.dnn.NMSBoxesBatched (class-aware, C++) on the same candidates
  ours.nms.agn     edgeinfer: select(class_agnostic=True) on the same candidates
  cv2.nms.agn      cv2.dnn.NMSBoxes (class-agnostic, C++) on the same candidates

The cv2 NMS timings get their inputs as ready-made Python lists (OpenCV's fastest input here;
converting the numpy candidates to lists is not timed), so they are OpenCV's best case.
Checks that both sides keep the same detections, and prints the two ratios per case.
"""
from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from edgeinfer.detection.decoders import decode_yolov8  # noqa: E402
from edgeinfer.detection.nms import select  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from timing import interleaved_medians_ms  # noqa: E402

SCORE, IOU, TOPK, MAXDET = 0.25, 0.45, 1000, 300


def make_head(objects: int, seed: int, nc: int = 80, size: int = 640) -> np.ndarray:
    rng = np.random.default_rng(seed)
    grids = [(s, size // s) for s in (8, 16, 32)]
    cx = np.concatenate([(np.arange(g * g) % g + 0.5) * s for s, g in grids])
    cy = np.concatenate([(np.arange(g * g) // g + 0.5) * s for s, g in grids])
    stride = np.concatenate([np.full(g * g, s) for s, g in grids])
    n = cx.size  # 8400
    head = np.empty((4 + nc, n), np.float32)
    head[0], head[1] = cx, cy
    head[2:4] = stride * rng.uniform(1, 4, (2, n))
    head[4:] = rng.beta(0.3, 30, (nc, n))  # background: mostly ~0.01, rarely above 0.1
    for _ in range(objects):
        ox, oy = rng.uniform(40, size - 40, 2)
        ow, oh = rng.uniform(20, 300, 2)
        c = rng.integers(nc)
        near = np.flatnonzero((np.abs(cx - ox) < ow / 2) & (np.abs(cy - oy) < oh / 2)
                              & (stride == (8 if max(ow, oh) < 64 else 16 if max(ow, oh) < 160 else 32)))
        near = near[rng.permutation(near.size)[:rng.integers(5, 25)]]
        head[0, near] = ox + rng.normal(0, ow * 0.05, near.size)
        head[1, near] = oy + rng.normal(0, oh * 0.05, near.size)
        head[2, near] = ow * rng.uniform(0.85, 1.15, near.size)
        head[3, near] = oh * rng.uniform(0.85, 1.15, near.size)
        head[4 + c, near] = rng.uniform(0.3, 0.95, near.size)
        if rng.random() < 0.3:  # confusable second class on some anchors
            head[4 + (c + 1) % nc, near[: near.size // 2]] = rng.uniform(0.2, 0.5, near.size // 2)
    return head[None]


def numpy_decode_usual(out: np.ndarray):
    """The decode most YOLOv8 numpy examples use: transpose, full max/argmax, boolean mask."""
    p = out[0].T
    scores = p[:, 4:].max(1)
    keep = scores > SCORE
    p, scores = p[keep], scores[keep]
    ids = p[:, 4:].argmax(1)
    xywh = np.stack([p[:, 0] - p[:, 2] / 2, p[:, 1] - p[:, 3] / 2, p[:, 2], p[:, 3]], 1)
    return xywh, scores, ids


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=300)
    ap.add_argument("--objects", type=int, default=25)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    try:
        import cv2
    except ImportError:
        sys.exit("bench_nms needs opencv-python-headless (dev dependency): pip install opencv-python-headless")
    cv2.setNumThreads(1)
    head = make_head(args.objects, args.seed)
    cfg = {"score_threshold": SCORE, "top_k": TOPK}
    boxes, scores, ids = decode_yolov8([head], cfg)
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], 1)
    xywh_l, scores_l, ids_l = xywh.tolist(), scores.tolist(), ids.tolist()
    print(f"head {list(head.shape)}: {scores.size} candidates above {SCORE}, {args.objects} objects; "
          f"median of {args.reps} runs, 1 thread", file=sys.stderr)

    def ours_full():
        b, s, c = decode_yolov8([head], cfg)
        return select(b, s, c, method="hard", iou_threshold=IOU, score_threshold=SCORE, top_k=TOPK, max_detections=MAXDET)

    def ours_nms():
        return select(boxes, scores, ids, method="hard", iou_threshold=IOU, score_threshold=SCORE, top_k=TOPK,
                      max_detections=MAXDET)

    def ours_nms_agn():
        return select(boxes, scores, ids, method="hard", iou_threshold=IOU, score_threshold=SCORE, top_k=TOPK,
                      max_detections=MAXDET, class_agnostic=True)

    def cv2_nms():
        return cv2.dnn.NMSBoxesBatched(xywh_l, scores_l, ids_l, SCORE, IOU)

    def cv2_nms_agn():
        return cv2.dnn.NMSBoxes(xywh_l, scores_l, SCORE, IOU)

    def cv2_full():
        bx, sc, ci = numpy_decode_usual(head)
        return cv2.dnn.NMSBoxesBatched(bx.tolist(), sc.tolist(), ci.tolist(), SCORE, IOU)

    def same(mine, theirs) -> str:
        theirs = np.asarray(theirs).reshape(-1)
        return f"ours {len(mine.index)} / cv2 {theirs.size} kept, same: {sorted(mine.index.tolist()) == sorted(theirs.tolist())}"

    agree = {"class-aware": same(ours_full(), cv2_nms()), "class-agnostic": same(ours_nms_agn(), cv2_nms_agn())}
    t = interleaved_medians_ms({"ours.full": ours_full, "cv2.full": cv2_full, "ours.nms": ours_nms, "cv2.nms": cv2_nms,
                             "ours.nms.agn": ours_nms_agn, "cv2.nms.agn": cv2_nms_agn}, args.reps)
    for name, ms in t.items():
        print(f"{name:<13} {ms:8.3f} ms")
    for case, text in agree.items():
        print(f"{case:<15} {text}")
    print(f"class-aware    full pipeline: ours.full = {t['ours.full']:.3f} ms (target <= 3 ms), "
          f"ours.full / cv2.full = {t['ours.full'] / t['cv2.full']:.2f}x (target <= 2x)")
    print(f"class-aware    NMS alone:     ours.nms / cv2.nms (NMSBoxesBatched) = {t['ours.nms'] / t['cv2.nms']:.2f}x "
          f"(target <= 2x)")
    print(f"class-agnostic NMS alone:     ours.nms.agn / cv2.nms.agn (NMSBoxes) = "
          f"{t['ours.nms.agn'] / t['cv2.nms.agn']:.2f}x (target <= 2x)")


if __name__ == "__main__":
    main()
