"""Real photos that a bare machine gets from the dev extra's packages (no network, no fetched data).

    photos = real_photos()                # list[RealPhoto], 22 photos, deterministic order
    paths = write_real_photos(tmp_path)   # the same photos as files, e.g. for ``--calib``

Sources: scikit-image's bundled ``skimage/data`` (colour and grey photos; the ones fetched on
demand are not used), scikit-learn's ``load_sample_images`` (china.jpg, flower.jpg) and matplotlib's
``sample_data/grace_hopper.jpg``. ``imagenet`` holds the ImageNet-1k class indices a person would
accept for the photo (a few near-synonym classes), or is empty when the photo shows no ImageNet
class (a retina scan, a galaxy field, stained tissue, ...). The sets were checked by eye.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

# skimage/data file -> acceptable ImageNet-1k indices (empty: no ImageNet class in the photo)
SKIMAGE = {
    "astronaut.png": (),
    "chelsea.png": (281, 282, 285),             # tabby, tiger cat, Egyptian cat
    "coffee.png": (504, 967, 968),              # coffee mug, espresso, cup
    "hubble_deep_field.jpg": (),
    "ihc.png": (),
    "motorcycle_left.png": (665, 670),          # moped, motor scooter
    "motorcycle_right.png": (665, 670),
    "retina.jpg": (),
    "rocket.jpg": (657, 744, 812),              # missile, projectile, space shuttle
    "camera.png": (759, 872),                  # reflex camera, tripod (the cameraman)
    "moon.png": (),
    "coins.png": (),
    "page.png": (),
    "text.png": (),
    "clock_motion.png": (),
    "brick.png": (),
    "grass.png": (),
    "gravel.png": (),
    "cell.png": (),
}
SKLEARN = {"china.jpg": (663, 698), "flower.jpg": ()}  # monastery, palace; a dahlia is no ImageNet class
GRACE_HOPPER = (652,)                           # military uniform


@dataclass
class RealPhoto:
    name: str
    image: Image.Image                          # RGB or L, as shipped
    imagenet: tuple[int, ...] = field(default_factory=tuple)
    source: str = ""


def _skimage_dir() -> Path:
    import skimage
    return Path(skimage.__file__).parent / "data"


def real_photos() -> list[RealPhoto]:
    """Every photo listed above, loaded from the installed packages (ImportError if one is absent)."""
    out = []
    data = _skimage_dir()
    for name, classes in SKIMAGE.items():
        with Image.open(data / name) as im:
            out.append(RealPhoto(name, _photo_mode(im), tuple(classes), "scikit-image"))
    from sklearn.datasets import load_sample_images
    bunch = load_sample_images()
    for fname, arr in zip(bunch.filenames, bunch.images):
        base = os.path.basename(fname)
        out.append(RealPhoto(base, Image.fromarray(arr), tuple(SKLEARN.get(base, ())), "scikit-learn"))
    import matplotlib
    with Image.open(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg") as im:
        out.append(RealPhoto("grace_hopper.jpg", im.convert("RGB"), GRACE_HOPPER, "matplotlib"))
    return out


def _photo_mode(im: Image.Image) -> Image.Image:
    if im.mode in ("RGB", "L"):
        return im.copy()
    if im.mode in ("RGBA", "P", "LA"):
        return im.convert("RGB")
    return Image.fromarray(np.asarray(im).astype(np.uint8)).convert("L") if im.mode.startswith("I") else im.convert("RGB")


def labelled(photos: list[RealPhoto] | None = None) -> list[RealPhoto]:
    """The photos that show an ImageNet class."""
    return [p for p in (photos or real_photos()) if p.imagenet]


def write_real_photos(folder: Path, color: bool | None = None) -> list[Path]:
    """Write the photos as PNG files (colour only when ``color`` is True, grey only when False)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for p in real_photos():
        if color is not None and (p.image.mode == "RGB") != color:
            continue
        path = folder / (Path(p.name).stem + ".png")
        p.image.save(path)
        paths.append(path)
    return paths
