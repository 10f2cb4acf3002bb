"""Synthetic shapes detection data: renders images with ground-truth boxes (dev tool, numpy + PIL).

``render_scene(rng)`` -> (PIL RGB image, boxes xyxy float32 [K, 4] in image pixels, labels int [K]).
Deterministic for a given ``numpy.random.Generator`` state. Scenes have textured / gradient /
noisy backgrounds, 1-5 shapes of random size and colour (later shapes may partly cover earlier
ones), occluding bars, pixel noise, and a JPEG round trip (what the runtime reads from disk).
Each labelled shape keeps at least ``MIN_VISIBLE`` of its pixels visible.
"""
from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ["circle", "square", "triangle", "cross"]
SIZES = [(128, 128), (160, 120), (200, 150), (120, 160), (150, 200), (176, 176), (224, 168)]
MIN_VISIBLE = 0.6
JPEG_QUALITY = 88


def _rot(points: np.ndarray, angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return points @ np.array([[c, s], [-s, c]], dtype=np.float64)


def _shape_mask(kind: int, w: int, h: int, cx: float, cy: float, r: float, angle: float) -> np.ndarray:
    """Boolean mask [h, w] of one shape of 'radius' r centred at (cx, cy)."""
    m = Image.new("L", (w, h), 0)
    d = ImageDraw.Draw(m)
    name = CLASSES[kind]
    if name == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    else:
        if name == "square":
            pts = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=np.float64) * (r * 0.85)
        elif name == "triangle":
            pts = np.array([[math.cos(a), math.sin(a)] for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]) * r
        else:  # cross: plus sign with arm thickness 0.36 r
            t, L = 0.36 * r, r
            pts = np.array([[-t, -L], [t, -L], [t, -t], [L, -t], [L, t], [t, t], [t, L], [-t, L],
                            [-t, t], [-L, t], [-L, -t], [-t, -t]], dtype=np.float64)
        pts = _rot(pts, angle) + np.array([cx, cy])
        d.polygon([tuple(p) for p in pts], fill=255)
    return np.asarray(m) > 127


def _background(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    kind = rng.integers(0, 3)
    c1 = rng.uniform(0, 255, 3)
    if kind == 0:  # flat
        bg = np.broadcast_to(c1, (h, w, 3)).astype(np.float64)
    elif kind == 1:  # linear gradient at a random angle
        c2 = rng.uniform(0, 255, 3)
        a = rng.uniform(0, 2 * math.pi)
        yy, xx = np.mgrid[0:h, 0:w]
        t = (xx * math.cos(a) + yy * math.sin(a))
        t = (t - t.min()) / max(t.max() - t.min(), 1e-6)
        bg = c1 * (1 - t[..., None]) + c2 * t[..., None]
    else:  # smooth blotchy texture: upsampled low-res noise
        lo = rng.uniform(-60, 60, (int(rng.integers(3, 9)), int(rng.integers(3, 9)), 3))
        tex = np.asarray(Image.fromarray(np.uint8(lo + 128)).resize((w, h), Image.BICUBIC), dtype=np.float64) - 128
        bg = np.clip(c1 + tex, 0, 255)
    img = Image.fromarray(np.uint8(np.clip(bg, 0, 255)))
    d = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(0, 10))):  # clutter: thin lines
        p = rng.uniform(0, 1, 4) * [w, h, w, h]
        d.line(list(p), fill=tuple(int(v) for v in rng.integers(0, 256, 3)), width=1)
    return np.asarray(img, dtype=np.float64)


def _contrasting_colour(rng: np.random.Generator, under: np.ndarray) -> np.ndarray:
    ref = under.reshape(-1, 3).mean(0)
    for _ in range(20):
        c = rng.uniform(0, 255, 3)
        if np.abs(c - ref).sum() > 150:
            return c
    return 255.0 - ref


def render_scene(rng: np.random.Generator, size: tuple[int, int] | None = None,
                 max_objects: int = 5) -> tuple[Image.Image, np.ndarray, np.ndarray]:
    """One image with its boxes (xyxy, pixels, tight around each full shape) and class ids."""
    w, h = size or SIZES[int(rng.integers(0, len(SIZES)))]
    img = _background(rng, w, h)
    owner = np.full((h, w), -1, dtype=np.int32)  # which object is visible at each pixel
    full: list[int] = []
    boxes, labels = [], []
    n_obj = int(rng.integers(1, max_objects + 1))
    s = min(w, h)
    for _ in range(n_obj):
        for _try in range(15):
            kind = int(rng.integers(0, len(CLASSES)))
            r = rng.uniform(0.07, 0.24) * s
            cx, cy = rng.uniform(r * 0.6, w - r * 0.6), rng.uniform(r * 0.6, h - r * 0.6)
            mask = _shape_mask(kind, w, h, cx, cy, r, rng.uniform(-0.35, 0.35))
            if mask.sum() < 40:
                continue
            new_owner = np.where(mask, len(full), owner)
            if all((new_owner == i).sum() >= MIN_VISIBLE * full[i] for i in range(len(full))):
                break
        else:
            continue
        ys, xs = np.nonzero(mask)
        colour = _contrasting_colour(rng, img[mask])
        shade = 1.0 + rng.uniform(-0.25, 0.25) * (ys - ys.mean()) / max(np.ptp(ys), 1)  # soft lighting
        img[ys, xs] = np.clip(colour[None, :] * shade[:, None], 0, 255)
        owner = new_owner
        full.append(int(mask.sum()))
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        labels.append(kind)
    for _ in range(int(rng.integers(0, 3))):  # occluding bars
        bar = Image.new("L", (w, h), 0)
        p = rng.uniform(0, 1, 4) * [w, h, w, h]
        ImageDraw.Draw(bar).line(list(p), fill=255, width=int(rng.integers(2, max(3, s // 25))))
        bm = np.asarray(bar) > 127
        new_owner = np.where(bm, -2, owner)
        if all((new_owner == i).sum() >= MIN_VISIBLE * full[i] for i in range(len(full))):
            img[bm] = rng.uniform(0, 255, 3)
            owner = new_owner
    img = img + rng.normal(0, rng.uniform(0, 10), img.shape)
    pil = Image.fromarray(np.uint8(np.clip(np.round(img), 0, 255)))
    return jpeg_roundtrip(pil), np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(labels, np.int64)


def jpeg_roundtrip(im: Image.Image, quality: int = JPEG_QUALITY) -> Image.Image:
    """Encode + decode as JPEG, so training sees the same artefacts as images read from disk."""
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)
    buf.seek(0)
    with Image.open(buf) as out:
        return out.convert("RGB")
