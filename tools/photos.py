"""Real photos for benchmarks and calibration, from scikit-learn's bundled sample images.

``write_photo_folder(dir, n, size)`` writes ``n`` random crops (flipped / rescaled) of the two
sample photos as JPEG files; deterministic for a given seed.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def sample_photos() -> list[Image.Image]:
    from sklearn.datasets import load_sample_images
    return [Image.fromarray(a) for a in load_sample_images().images]


def write_photo_folder(folder: Path, n: int = 64, size: tuple[int, int] = (640, 480), seed: int = 0) -> list[Path]:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    photos = sample_photos()
    paths = []
    for i in range(n):
        im = photos[i % len(photos)]
        scale = rng.uniform(0.5, 1.0)
        w, h = int(im.width * scale), int(im.height * scale)
        x, y = rng.integers(0, im.width - w + 1), rng.integers(0, im.height - h + 1)
        crop = im.crop((x, y, x + w, y + h)).resize(size, Image.BILINEAR)
        if rng.random() < 0.5:
            crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
        p = folder / f"photo_{i:03d}.jpg"
        crop.save(p, quality=90)
        paths.append(p)
    return paths
