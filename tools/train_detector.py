"""Train the sample shapes detector and write ``samples/detector/`` (dev tool; needs torch==2.13.0).

    .venv/bin/python tools/train_detector.py --out samples/detector

Renders its own synthetic data (``tools/shapes_data.py``), reads every training image through
``edgeinfer.preprocess`` (letterbox 128, pad 114, /255, RGB) exactly as the runtime does, trains a
small anchor-free YOLOv8-style detector (ReLU conv/BN backbone, top-down FPN over strides
8/16/32, decoupled box and class heads, task-aligned assignment, GIoU + BCE), and exports ONNX
(opset 17) whose single output ``output0`` is the YOLOv8 export form [1, 4+C, A]: cxcywh in
input pixels, then sigmoid class scores. Writes val/ (COCO json), calib/, images/, labels.txt and
measures mAP with pycocotools. Deterministic (seeds, deterministic algorithms, 2 threads).
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from detector_eval import evaluate, load_split, progress, run_onnx  # noqa: E402
from shapes_data import CLASSES, render_scene  # noqa: E402

from edgeinfer.preprocess import PreprocessConfig, preprocess_pil  # noqa: E402

SIZE = 128
STRIDES = (8, 16, 32)
MAX_DIST = 8.0  # a box side reaches at most MAX_DIST strides from its anchor point
PREPROCESS = {"color": "rgb", "resize_mode": "letterbox", "letterbox": {"size": SIZE, "pad_value": 114, "stride": None},
              "scale": 1 / 255, "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0], "interpolation": "bilinear"}
POSTPROCESS = {"kind": "detect", "decoder": "yolov8", "score_threshold": 0.25, "iou_threshold": 0.45,
               "max_detections": 100}


# ----------------------------------------------------------------------------------- data
def render_split(n: int, seed: int, sizes=None):
    """n scenes -> (PIL images, boxes xyxy per image in original pixels, labels per image)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        size = sizes[i % len(sizes)] if sizes else None
        out.append(render_scene(rng, size))
    return out


def to_training_arrays(scenes):
    """Scenes -> uint8 model inputs [N,3,S,S] (via the runtime preprocessing) + boxes in input pixels."""
    cfg = PreprocessConfig.from_dict(PREPROCESS)
    xs, gts = [], []
    for im, boxes, labels in scenes:
        x, t = preprocess_pil(im, cfg, (SIZE, SIZE))
        u8 = np.round(x * 255.0).astype(np.uint8)
        assert np.array_equal(u8.astype(np.float32) * np.float32(1 / 255), x)  # exact round trip
        b = boxes.copy()
        b[:, [0, 2]] = b[:, [0, 2]] * t.scale[0] + t.pad[0]
        b[:, [1, 3]] = b[:, [1, 3]] * t.scale[1] + t.pad[1]
        xs.append(u8)
        gts.append((b, labels))
    return np.stack(xs), gts


def collate(gts, idx):
    m = max(1, max(len(gts[i][1]) for i in idx))
    boxes = torch.zeros(len(idx), m, 4)
    labels = torch.zeros(len(idx), m, dtype=torch.long)
    valid = torch.zeros(len(idx), m, dtype=torch.bool)
    for j, i in enumerate(idx):
        b, lab = gts[i]
        boxes[j, :len(lab)] = torch.from_numpy(b)
        labels[j, :len(lab)] = torch.from_numpy(lab)
        valid[j, :len(lab)] = True
    return boxes, labels, valid


# ----------------------------------------------------------------------------------- model
def cbr(cin: int, cout: int, k: int = 3, s: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, s, k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class ShapesDetector(nn.Module):
    """Backbone (strides 2..32) + top-down FPN + decoupled heads; forward -> raw box/cls maps."""

    def __init__(self, num_classes: int, width: int = 48, head: int = 32):
        super().__init__()
        self.nc = num_classes
        self.stem = nn.Sequential(cbr(3, 16, 3, 2), cbr(16, 32, 3, 2))
        self.c3 = nn.Sequential(cbr(32, 48, 3, 2), cbr(48, 48))
        self.c4 = nn.Sequential(cbr(48, 64, 3, 2), cbr(64, 64))
        self.c5 = nn.Sequential(cbr(64, 96, 3, 2), cbr(96, 96))
        self.lat = nn.ModuleList([cbr(48, width, 1), cbr(64, width, 1), cbr(96, width, 1)])
        self.smooth = nn.ModuleList([cbr(width, width), cbr(width, width)])
        self.box = nn.ModuleList([nn.Sequential(cbr(width, head), nn.Conv2d(head, 4, 1)) for _ in STRIDES])
        self.cls = nn.ModuleList([nn.Sequential(cbr(width, head), nn.Conv2d(head, num_classes, 1)) for _ in STRIDES])
        prior = -float(np.log((1 - 0.01) / 0.01))
        for h in self.cls:
            nn.init.constant_(h[-1].bias, prior)

    def forward(self, x):
        c3 = self.c3(self.stem(x))
        c4 = self.c4(c3)
        c5 = self.c5(c4)
        p5 = self.lat[2](c5)
        p4 = self.smooth[1](self.lat[1](c4) + F.interpolate(p5, scale_factor=2.0, mode="nearest"))
        p3 = self.smooth[0](self.lat[0](c3) + F.interpolate(p4, scale_factor=2.0, mode="nearest"))
        feats = (p3, p4, p5)
        box = torch.cat([h(f).flatten(2) for h, f in zip(self.box, feats)], 2)  # [B,4,A]
        cls = torch.cat([h(f).flatten(2) for h, f in zip(self.cls, feats)], 2)  # [B,C,A]
        return box, cls


def anchor_grid(size: int = SIZE):
    """Anchor points [A,2] (pixel centres of each cell) and their strides [A]."""
    pts, strides = [], []
    for s in STRIDES:
        n = size // s
        yy, xx = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
        pts.append(torch.stack([xx.flatten(), yy.flatten()], 1).float() * s + s / 2)
        strides.append(torch.full((n * n,), float(s)))
    return torch.cat(pts), torch.cat(strides)


def decode_xyxy(box_raw, anchors, strides):
    """Raw box map [B,4,A] (l,t,r,b) -> xyxy [B,A,4] in input pixels."""
    dist = torch.sigmoid(box_raw) * (MAX_DIST * strides)  # [B,4,A]
    x1y1 = anchors.T[None] - dist[:, :2]
    x2y2 = anchors.T[None] + dist[:, 2:]
    return torch.cat([x1y1, x2y2], 1).transpose(1, 2)


class Exported(nn.Module):
    """Export wrapper: raw maps -> [1, 4+C, A] = cx, cy, w, h (input pixels), sigmoid scores."""

    def __init__(self, net: ShapesDetector):
        super().__init__()
        self.net = net
        a, s = anchor_grid()
        self.register_buffer("anchors", a.T[None].contiguous())          # [1,2,A]
        self.register_buffer("scale", (MAX_DIST * s)[None, None].contiguous())  # [1,1,A]

    def forward(self, images):
        box_raw, cls_raw = self.net(images)
        dist = torch.sigmoid(box_raw) * self.scale
        lt, rb = dist[:, :2], dist[:, 2:]
        cxcy = self.anchors + (rb - lt) * 0.5
        wh = lt + rb
        return torch.cat([cxcy, wh, torch.sigmoid(cls_raw)], 1)


# ----------------------------------------------------------------------------------- loss
def box_iou(a, b):
    """Pairwise IoU for broadcastable xyxy tensors [...,4]."""
    lt = torch.maximum(a[..., :2], b[..., :2])
    rb = torch.minimum(a[..., 2:], b[..., 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area_a = (a[..., 2:] - a[..., :2]).clamp(min=0).prod(-1)
    area_b = (b[..., 2:] - b[..., :2]).clamp(min=0).prod(-1)
    return inter / (area_a + area_b - inter + 1e-9)


def giou(a, b):
    iou = box_iou(a, b)
    lt = torch.minimum(a[..., :2], b[..., :2])
    rb = torch.maximum(a[..., 2:], b[..., 2:])
    hull = (rb - lt).clamp(min=0).prod(-1)
    lt_i = torch.maximum(a[..., :2], b[..., :2])
    rb_i = torch.minimum(a[..., 2:], b[..., 2:])
    inter = (rb_i - lt_i).clamp(min=0).prod(-1)
    union = (a[..., 2:] - a[..., :2]).prod(-1) + (b[..., 2:] - b[..., :2]).prod(-1) - inter
    return iou - (hull - union) / (hull + 1e-9)


@torch.no_grad()
def assign(pred_boxes, pred_scores, anchors, gt_boxes, gt_labels, gt_valid, topk=10, alpha=0.5, beta=6.0):
    """Task-aligned assignment (lite). Returns target boxes [B,A,4], target scores [B,A,C], fg [B,A]."""
    B, A, C = pred_scores.shape
    ap = anchors[None, None]  # [1,1,A,2]
    gb = gt_boxes[:, :, None]  # [B,M,1,4]
    inside = ((ap[..., 0] > gb[..., 0]) & (ap[..., 0] < gb[..., 2]) & (ap[..., 1] > gb[..., 1]) &
              (ap[..., 1] < gb[..., 3]) & gt_valid[:, :, None])  # [B,M,A]
    iou = box_iou(gb, pred_boxes[:, None])  # [B,M,A]
    score = torch.gather(pred_scores.transpose(1, 2), 1, gt_labels[:, :, None].expand(-1, -1, A))  # [B,M,A]
    align = score.pow(alpha) * iou.pow(beta) * inside
    k = min(topk, A)
    top = align.topk(k, dim=2).indices
    sel = torch.zeros_like(inside).scatter_(2, top, True) & inside
    # an anchor claimed by several objects goes to the one it overlaps most
    multi = sel.sum(1, keepdim=True) > 1
    best = torch.zeros_like(sel).scatter_(1, (iou * sel).argmax(1, keepdim=True), True)
    sel = torch.where(multi, best & sel, sel)
    fg = sel.any(1)  # [B,A]
    gt_idx = sel.float().argmax(1)  # [B,A]
    tgt_boxes = torch.gather(gt_boxes, 1, gt_idx[..., None].expand(-1, -1, 4))
    tgt_labels = torch.gather(gt_labels, 1, gt_idx)
    align = align * sel
    norm = (align * (iou * sel).amax(2, keepdim=True) / (align.amax(2, keepdim=True) + 1e-9)).amax(1)  # [B,A]
    tgt_scores = F.one_hot(tgt_labels, C).float() * (norm * fg)[..., None]
    return tgt_boxes, tgt_scores, fg


def detection_loss(box_raw, cls_raw, anchors, strides, gt_boxes, gt_labels, gt_valid):
    pred_boxes = decode_xyxy(box_raw, anchors, strides)
    logits = cls_raw.transpose(1, 2)  # [B,A,C]
    tb, ts, fg = assign(pred_boxes.detach(), logits.detach().sigmoid(), anchors, gt_boxes, gt_labels, gt_valid)
    norm = ts.sum().clamp(min=1.0)
    l_cls = F.binary_cross_entropy_with_logits(logits, ts, reduction="sum") / norm
    w = ts.sum(-1)[fg]
    l_box = ((1.0 - giou(pred_boxes[fg], tb[fg])) * w).sum() / norm
    return l_cls + 5.0 * l_box, l_cls.detach(), l_box.detach()


# ----------------------------------------------------------------------------------- export
def fuse_bn(net: nn.Module) -> nn.Module:
    """Fold every Conv+BN pair of the eval-mode net (the exported graph has no BatchNormalization)."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    for m in net.modules():
        if isinstance(m, nn.Sequential) and len(m) >= 2 and isinstance(m[0], nn.Conv2d) and isinstance(m[1], nn.BatchNorm2d):
            m[0] = fuse_conv_bn_eval(m[0], m[1])
            m[1] = nn.Identity()
    return net


def export_onnx(net: ShapesDetector, path: Path, labels: list[str], probe: np.ndarray) -> None:
    import onnx
    import onnxruntime as ort

    net = fuse_bn(net.eval())
    wrapped = Exported(net).eval()
    dummy = torch.zeros(1, 3, SIZE, SIZE)
    torch.onnx.export(wrapped, (dummy,), str(path), input_names=["images"], output_names=["output0"],
                      opset_version=17, dynamo=False, do_constant_folding=True)
    model = onnx.load(str(path))
    meta = {"edgeinfer.preprocess": json.dumps(PREPROCESS), "edgeinfer.labels": json.dumps(labels),
            "edgeinfer.task": "detect", "edgeinfer.postprocess": json.dumps(POSTPROCESS)}
    del model.metadata_props[:]
    for k, v in meta.items():
        model.metadata_props.add(key=k, value=v)
    model.producer_name = "edgeinfer tools/train_detector.py"
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.from_numpy(probe)
    with torch.no_grad():
        ref = wrapped(x).numpy()
    got = np.concatenate([sess.run(None, {"images": probe[i:i + 1]})[0] for i in range(len(probe))])
    err = float(np.abs(got - ref).max())
    progress(f"export: ORT vs torch max abs diff {err:.2e} over {len(probe)} images")
    if not np.allclose(got, ref, atol=1e-4, rtol=1e-4):
        raise SystemExit(f"ORT output differs from torch by {err}")


# ----------------------------------------------------------------------------------- files
def write_coco_split(folder: Path, scenes, prefix: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    for i, (im, boxes, labels) in enumerate(scenes):
        name = f"{prefix}_{i:03d}.jpg"
        im.save(folder / name, "JPEG", quality=95)
        images.append({"id": i + 1, "file_name": name, "width": im.size[0], "height": im.size[1]})
        for b, lab in zip(boxes, labels):
            w, h = float(b[2] - b[0]), float(b[3] - b[1])
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": int(lab) + 1,
                         "bbox": [float(b[0]), float(b[1]), w, h], "area": w * h, "iscrowd": 0})
    cats = [{"id": i + 1, "name": n, "supercategory": "shape"} for i, n in enumerate(CLASSES)]
    (folder / "annotations.json").write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))


def write_images(folder: Path, scenes, prefix: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, (im, _, _) in enumerate(scenes):
        im.save(folder / f"{prefix}_{i:03d}.jpg", "JPEG", quality=95)


# ----------------------------------------------------------------------------------- main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="samples/detector")
    ap.add_argument("--train-images", type=int, default=6000)
    ap.add_argument("--iters", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(2)
    out = Path(args.out)

    t0 = time.time()
    progress(f"rendering {args.train_images} training scenes ...")
    xs, gts = to_training_arrays(render_split(args.train_images, seed=1000 + args.seed))
    progress(f"  done in {time.time() - t0:.0f}s")

    net = ShapesDetector(len(CLASSES))
    anchors, strides = anchor_grid()
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.iters,
                                                pct_start=max(0.1, 3 / args.iters))
    gen = np.random.default_rng(args.seed)
    net.train()
    t1 = time.time()
    for it in range(args.iters):
        idx = gen.choice(len(xs), args.batch, replace=False)
        x = torch.from_numpy(xs[idx]).float() * (1 / 255)
        if gen.random() < 0.5:  # horizontal flip (shapes are symmetric up to their random rotation)
            x = x.flip(3)
            boxes, labels, valid = collate(gts, idx)
            boxes = torch.stack([SIZE - boxes[..., 2], boxes[..., 1], SIZE - boxes[..., 0], boxes[..., 3]], -1)
        else:
            boxes, labels, valid = collate(gts, idx)
        box_raw, cls_raw = net(x)
        loss, l_cls, l_box = detection_loss(box_raw, cls_raw, anchors, strides, boxes, labels, valid)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if it % 50 == 0 or it == args.iters - 1:
            el = time.time() - t1
            progress(f"iter {it:5d}/{args.iters}  loss {loss.item():.3f} (cls {l_cls:.3f} box {l_box:.3f})  "
                     f"{el:.0f}s elapsed, ~{el / (it + 1) * (args.iters - it - 1):.0f}s left")

    out.mkdir(parents=True, exist_ok=True)
    progress("writing val / calib / images ...")
    val_sizes = [(200, 150), (128, 128), (150, 200), (200, 150), (160, 120)]
    write_coco_split(out / "val", render_split(100, seed=7, sizes=val_sizes), "val")
    write_images(out / "calib", render_split(64, seed=8), "calib")
    write_images(out / "images", render_split(3, seed=9, sizes=[(200, 150), (128, 128), (150, 200)]), "sample")
    (out / "labels.txt").write_text("\n".join(CLASSES) + "\n")

    val_x, val_t, val_gt, val_ids = load_split(out / "val", PREPROCESS)
    onnx_path = out / "shapes_det.onnx"
    export_onnx(net, onnx_path, CLASSES, val_x[:8])
    res = evaluate(run_onnx(onnx_path, val_x), val_t, val_gt, val_ids)
    progress(f"fp32 ONNX on val: mAP@0.5 {res['map50']:.4f}  mAP@0.5:0.95 {res['map50_95']:.4f}  "
             f"(total {time.time() - t0:.0f}s)")
    print(json.dumps({"map50": round(res["map50"], 4), "map50_95": round(res["map50_95"], 4),
                      "train_seconds": round(time.time() - t1), "iters": args.iters}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
