"""Image folders for calibration and verification, read through the runtime's preprocessing."""
from __future__ import annotations

import random
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeinfer.errors import EdgeInferError
from edgeinfer.preprocess import IMAGE_SUFFIXES, MAX_PIXELS, ImageTooLarge, PreprocessConfig, preprocess_image
from edgeinfer.progress import track



@dataclass
class ImageSet:
    samples: np.ndarray        # float32 NCHW
    paths: list[Path]          # the images that were read
    labels: list[str | None]   # folder name when the layout is DIR/<label>/img, else None
    skipped: list[Path]


def within_pixels(samples: np.ndarray, budget: int, least: int = 1, most: int | None = None) -> int:
    """How many leading images of ``samples`` (an NCHW batch) hold at most ``budget`` input pixels,
    clamped to [``least``, ``most``]: costly passes over large inputs use fewer of them."""
    pixels = int(np.prod(samples.shape[2:])) if samples.ndim >= 3 else 1
    n = budget // max(pixels, 1)
    return int(max(least, n if most is None else min(most, n)))


def list_images(folder: Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise EdgeInferError(f"image folder not found: {folder}")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise EdgeInferError(f"no images (.png/.jpg/...) in {folder}")
    return files


def read_images(paths: list[Path], root: Path | None, cfg: PreprocessConfig, size_hw: tuple[int, int],
                label: str, progress: bool = True) -> ImageSet:
    """Preprocess every image; unreadable ones (and ones over the pixel limit) are skipped, counted and
    warned about once."""
    arrays, ok, labels, skipped = [], [], [], []
    too_large = 0
    for p in track(paths, label, len(paths), progress):
        try:
            arr, _ = preprocess_image(p, cfg, size_hw)
        except EdgeInferError as exc:
            too_large += isinstance(exc, ImageTooLarge)
            skipped.append(p)
            continue
        arrays.append(arr)
        ok.append(p)
        rel = p.relative_to(root) if root else None
        labels.append(rel.parts[0] if rel is not None and len(rel.parts) > 1 else None)
    if skipped:
        large = f"; {too_large} over the pixel limit of {MAX_PIXELS}" if too_large else ""
        warnings.warn(f"skipped {len(skipped)} unreadable image(s) in {root or 'the image list'} "
                      f"(first: {skipped[0].name}{large})", stacklevel=2)
    if not arrays:
        raise EdgeInferError(f"none of the {len(paths)} images in {root} could be read")
    return ImageSet(np.stack(arrays).astype(np.float32), ok, labels, skipped)


def split_holdout(paths: list[Path], fraction: float, seed: int = 0) -> tuple[list[Path], list[Path]]:
    """Deterministic split into (calibration, held-out); held-out images never calibrate."""
    if len(paths) < 8:
        raise EdgeInferError(f"--calib has only {len(paths)} images; give at least 8 (or a separate --verify-data folder)")
    shuffled = list(paths)
    random.Random(seed).shuffle(shuffled)
    n_hold = max(4, int(round(len(paths) * fraction)))
    return sorted(shuffled[n_hold:]), sorted(shuffled[:n_hold])


def synthetic_inputs(cfg: PreprocessConfig, size_hw: tuple[int, int], count: int, seed: int = 0) -> np.ndarray:
    """Random-pixel images pushed through the same normalization (used only when the user asks)."""
    from edgeinfer.preprocess import normalize
    rng = np.random.default_rng(seed)
    shape = (size_hw[0], size_hw[1]) if cfg.channels == 1 else (size_hw[0], size_hw[1], 3)
    return np.stack([normalize(rng.integers(0, 256, shape, dtype=np.uint8), cfg) for _ in range(count)])
