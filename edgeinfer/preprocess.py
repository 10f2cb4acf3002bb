"""Image preprocessing: decode, colour, geometry (resize / crop / letterbox), normalize, layout.

One implementation, used by the runtime on the device AND by the converter for calibration
and verification. The configuration is the bundle manifest's ``preprocess`` dict:

    color        "rgb" | "bgr" | "gray"
    resize_mode  "stretch"   resize to (size, size)           (``resize``)
                 "shorter"   shorter side to ``resize``, then center crop ``crop`` (if set)
                 "letterbox" keep aspect into ``letterbox.size`` square, pad with ``pad_value``
    resize       int        target of "stretch"/"shorter"
    crop         int|None   center-crop size after "shorter"/"stretch"
    letterbox    {"size": N, "pad_value": 114, "stride": None}
    scale        float      raw pixel (0..255) multiplier applied first (default 1/255)
    mean, std    per-channel lists applied after ``scale``: (x*scale - mean) / std
    interpolation "bilinear" | "nearest" | "bicubic"

``preprocess_image`` returns a float32 CHW array and a ``Transform`` that maps boxes in the
model input back to original-image pixels.
"""
from __future__ import annotations

import struct
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import EdgeInferError

PRESETS: dict[str, dict[str, Any]] = {
    "imagenet": {"color": "rgb", "resize_mode": "shorter", "resize": 256, "crop": 224,
                 "scale": 1 / 255, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
    "inception": {"color": "rgb", "resize_mode": "shorter", "resize": 256, "crop": 224,
                  "scale": 1 / 255, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]},
    "yolo": {"color": "rgb", "resize_mode": "letterbox", "letterbox": {"size": 640, "pad_value": 114, "stride": None},
             "scale": 1 / 255, "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]},
    "raw": {"color": "rgb", "resize_mode": "stretch", "scale": 1.0, "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]},
}

DEFAULTS: dict[str, Any] = {
    "color": "rgb", "resize_mode": "stretch", "resize": None, "crop": None, "letterbox": None,
    "scale": 1 / 255, "mean": None, "std": None, "interpolation": "bilinear",
}

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff", ".ppm", ".pgm"})

_INTERP = {"bilinear": Image.BILINEAR, "nearest": Image.NEAREST, "bicubic": Image.BICUBIC}
_MODES = {"rgb": "RGB", "bgr": "RGB", "gray": "L"}


def is_choice(value: Any, choices) -> bool:
    """``value in choices`` for JSON values of any type (lists and objects are never a choice)."""
    return isinstance(value, str) and value in choices


@dataclass
class Transform:
    """Maps model-input pixel coordinates back to original-image pixels.

    original = (model - pad) / scale + offset, then clipped to the original size.
    """

    orig_size: tuple[int, int]                # (width, height) of the decoded image
    scale: tuple[float, float] = (1.0, 1.0)   # (sx, sy) original -> resized
    pad: tuple[float, float] = (0.0, 0.0)     # (left, top) padding added after resize
    offset: tuple[float, float] = (0.0, 0.0)  # (x, y) crop origin in resized coordinates / scale

    def to_original(self, boxes: np.ndarray) -> np.ndarray:
        """xyxy boxes [N, 4] in model-input pixels -> original-image pixels, clipped."""
        b = np.asarray(boxes, dtype=np.float32).reshape(-1, 4).copy()
        b[:, [0, 2]] = (b[:, [0, 2]] - self.pad[0]) / self.scale[0] + self.offset[0]
        b[:, [1, 3]] = (b[:, [1, 3]] - self.pad[1]) / self.scale[1] + self.offset[1]
        b[:, [0, 2]] = b[:, [0, 2]].clip(0, self.orig_size[0])
        b[:, [1, 3]] = b[:, [1, 3]].clip(0, self.orig_size[1])
        return b


@dataclass
class PreprocessConfig:
    color: str = "rgb"
    resize_mode: str = "stretch"
    resize: int | None = None
    crop: int | None = None
    letterbox: dict[str, Any] | None = None
    scale: float = 1 / 255
    mean: list[float] | None = None
    std: list[float] | None = None
    interpolation: str = "bilinear"
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PreprocessConfig":
        if not isinstance(d, dict):
            raise EdgeInferError(f"preprocess config must be a JSON object, not {type(d).__name__}")
        known = {k: d[k] for k in DEFAULTS if k in d}
        cfg = cls(**known, extra={k: v for k, v in d.items() if k not in DEFAULTS})
        cfg.validate()
        return cfg

    def to_dict(self) -> dict[str, Any]:
        return {"color": self.color, "resize_mode": self.resize_mode, "resize": self.resize, "crop": self.crop,
                "letterbox": self.letterbox, "scale": self.scale, "mean": self.mean, "std": self.std,
                "interpolation": self.interpolation}

    @property
    def channels(self) -> int:
        return 1 if self.color == "gray" else 3

    def validate(self) -> None:
        if not is_choice(self.color, _MODES):
            raise EdgeInferError(f"preprocess color {self.color!r} is not one of rgb, bgr, gray")
        if not is_choice(self.resize_mode, GEOMETRY):
            raise EdgeInferError(f"preprocess resize_mode {self.resize_mode!r} is not one of {', '.join(GEOMETRY)}")
        if not is_choice(self.interpolation, _INTERP):
            raise EdgeInferError(f"preprocess interpolation {self.interpolation!r} is not one of {', '.join(_INTERP)}")
        for name in ("resize", "crop"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise EdgeInferError(f"preprocess {name} {v!r} must be a positive integer (pixels)")
        if isinstance(self.scale, bool) or not isinstance(self.scale, (int, float)):
            raise EdgeInferError(f"preprocess scale {self.scale!r} must be a number, e.g. 0.00392 (1/255)")
        if self.letterbox is not None and not (isinstance(self.letterbox, dict) and isinstance(self.letterbox.get("size"), int)
                                               and self.letterbox["size"] > 0):
            raise EdgeInferError(f"preprocess letterbox {self.letterbox!r} must be an object like {{\"size\": 640}}")
        if self.resize_mode == "letterbox" and not self.letterbox:
            raise EdgeInferError("letterbox preprocessing needs a size: pass --letterbox N")
        for name in ("mean", "std"):
            v = getattr(self, name)
            if v is not None and not (isinstance(v, list) and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)):
                raise EdgeInferError(f"preprocess {name} {v!r} must be a list of numbers, e.g. [0.485, 0.456, 0.406]")
            if v is not None and len(v) not in (1, self.channels):
                raise EdgeInferError(f"--{name} has {len(v)} values but color {self.color!r} has {self.channels} channel(s)")
        if self.std is not None and any(s == 0 for s in self.std):
            raise EdgeInferError("--std values must be non-zero")

    def output_hw(self) -> tuple[int, int] | None:
        """(height, width) of the model input this config produces, when it is fixed."""
        if self.resize_mode == "letterbox":
            s = int(self.letterbox["size"])
            return s, s
        if self.crop:
            return int(self.crop), int(self.crop)
        if self.resize and self.resize_mode == "stretch":
            return int(self.resize), int(self.resize)
        return None


MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485   # larger images are refused (decompression bombs)
REDUCE_ABOVE = 4096 * 4096                          # larger images are reduced while decoding ...
REDUCE_TO = 4                                       # ... to about this many times the model input
# edgeinfer refuses images over MAX_PIXELS itself, in one line; Pillow's own warning would only repeat it
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


class ImageTooLarge(EdgeInferError):
    """An image over ``MAX_PIXELS`` (refused before decoding; calibration skips and counts it)."""


def load_image(path: str | Path, color: str = "rgb", size_hw: tuple[int, int] | None = None) -> Image.Image:
    """Decode an image file into a PIL image in the colour mode the model needs.

    Images over ``MAX_PIXELS`` are refused (named, with the limit) before their pixels are decoded.
    With ``size_hw`` (the model input), images over ``REDUCE_ABOVE`` pixels are reduced early (JPEG
    while decoding, others right after) to about ``REDUCE_TO`` times the input; the original size is
    kept in ``info["edgeinfer_original_size"]`` so boxes still map to original pixels.
    16-bit images are scaled to 8 bits (not clipped)."""
    try:
        with Image.open(path) as im:
            w0, h0 = im.size
            if w0 * h0 > MAX_PIXELS:
                raise ImageTooLarge(f"image {path} has {w0}x{h0} = {w0 * h0} pixels, over the limit of {MAX_PIXELS} "
                                     "(decompression bomb?); downscale it first")
            huge = size_hw is not None and w0 * h0 > REDUCE_ABOVE
            if im.format == "JPEG":
                im.draft(_MODES[color], (REDUCE_TO * size_hw[1], REDUCE_TO * size_hw[0]) if huge else None)
            out = _to_8bit(_reduce(im, size_hw) if huge else im).convert(_MODES[color])
            if im.getexif().get(_EXIF_ORIENTATION, 1) != 1:  # phone photos: pixels as the user sees them
                out = ImageOps.exif_transpose(out)
                if im.getexif().get(_EXIF_ORIENTATION) in (5, 6, 7, 8):
                    w0, h0 = h0, w0
            if out.size != (w0, h0):
                out.info["edgeinfer_original_size"] = (w0, h0)
            return out
    except FileNotFoundError:
        raise EdgeInferError(f"image not found: {path}") from None
    except IsADirectoryError:
        raise EdgeInferError(f"{path} is a folder, not an image; pass image files") from None
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(f"image {path} is over the pixel limit of {MAX_PIXELS} ({exc}); downscale it first") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, struct.error, EOFError) as exc:
        raise EdgeInferError(f"cannot read image {path} ({exc.__class__.__name__}: {exc}); "
                             "is it a complete PNG/JPEG/... file?") from None


_EXIF_ORIENTATION = 0x0112
_WIDE_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I"}


def _reduce(im: Image.Image, size_hw: tuple[int, int]) -> Image.Image:
    """A huge image box-reduced by an integer factor, keeping at least ``REDUCE_TO`` x the model input."""
    factor = min(im.size[0] // (REDUCE_TO * size_hw[1]), im.size[1] // (REDUCE_TO * size_hw[0]))
    if factor < 2:
        return im
    if im.mode.startswith("I;16"):
        return im.convert("I").reduce(factor)   # keeps 16-bit values; _to_8bit scales them afterwards
    if im.mode not in ("L", "LA", "RGB", "RGBA", "CMYK", "I", "F"):
        im = im.convert("RGBA" if "transparency" in im.info or im.mode in ("PA", "RGBa") else "RGB")
    return im.reduce(factor)


def _to_8bit(im: Image.Image) -> Image.Image:
    """16-bit grayscale (mode I;16 / I) scaled to 0..255; Pillow's own convert would clip it to white."""
    if im.mode not in _WIDE_MODES:
        return im
    a = np.asarray(im, dtype=np.float32)
    if im.mode != "I" or a.max() > 255:
        a = a / 257.0  # 0..65535 -> 0..255
    return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L")


def _geom_stretch(im: Image.Image, cfg: PreprocessConfig, size_hw: tuple[int, int]) -> tuple[Image.Image, Transform]:
    w0, h0 = im.size
    h, w = (int(cfg.resize), int(cfg.resize)) if cfg.resize else size_hw
    out = im.resize((w, h), _INTERP[cfg.interpolation]) if (w, h) != im.size else im
    t = Transform((w0, h0), (w / w0, h / h0))
    return _center_crop(out, cfg.crop, t)


def _geom_shorter(im: Image.Image, cfg: PreprocessConfig, size_hw: tuple[int, int]) -> tuple[Image.Image, Transform]:
    w0, h0 = im.size
    target = int(cfg.resize or min(size_hw))
    s = target / min(w0, h0)
    w, h = max(1, round(w0 * s)), max(1, round(h0 * s))
    sx, sy = w / w0, h / h0
    crop = cfg.crop or min(size_hw)
    left, top = (w - crop) // 2, (h - crop) // 2
    if left >= 0 and top >= 0:  # resize only the cropped region: same pixels, less work
        box = (left / sx, top / sy, (left + crop) / sx, (top + crop) / sy)
        out = im.resize((crop, crop), _INTERP[cfg.interpolation], box=box)
        return out, Transform((w0, h0), (sx, sy), (0.0, 0.0), (left / sx, top / sy))
    out = im.resize((w, h), _INTERP[cfg.interpolation]) if (w, h) != im.size else im
    return _center_crop(out, crop, Transform((w0, h0), (sx, sy)))


def _center_crop(im: Image.Image, crop: int | None, t: Transform) -> tuple[Image.Image, Transform]:
    if not crop or im.size == (crop, crop):
        return im, t
    w, h = im.size
    left, top = (w - crop) // 2, (h - crop) // 2
    if left < 0 or top < 0:  # smaller than the crop: pad by resizing up (keeps contract simple)
        im = im.resize((max(w, crop), max(h, crop)), Image.BILINEAR)
        t = Transform(t.orig_size, (t.scale[0] * im.size[0] / w, t.scale[1] * im.size[1] / h))
        w, h = im.size
        left, top = (w - crop) // 2, (h - crop) // 2
    out = im.crop((left, top, left + crop, top + crop))
    return out, Transform(t.orig_size, t.scale, (0.0, 0.0), (left / t.scale[0], top / t.scale[1]))


def _geom_letterbox(im: Image.Image, cfg: PreprocessConfig, size_hw: tuple[int, int]) -> tuple[Image.Image, Transform]:
    lb = cfg.letterbox or {}
    size = int(lb.get("size") or max(size_hw))
    pad_value = int(lb.get("pad_value", 114))
    stride = lb.get("stride")
    w0, h0 = im.size
    s = min(size / w0, size / h0)
    if not lb.get("scaleup", True):
        s = min(s, 1.0)
    w, h = max(1, round(w0 * s)), max(1, round(h0 * s))
    out_w = out_h = size
    if stride:  # minimal rectangle: pad only up to the next multiple of stride
        out_w = int(np.ceil(w / stride) * stride)
        out_h = int(np.ceil(h / stride) * stride)
    resized = im.resize((w, h), _INTERP[cfg.interpolation]) if (w, h) != im.size else im
    left, top = (out_w - w) // 2, (out_h - h) // 2
    fill = pad_value if im.mode == "L" else (pad_value,) * 3
    canvas = Image.new(im.mode, (out_w, out_h), fill)
    canvas.paste(resized, (left, top))
    return canvas, Transform((w0, h0), (w / w0, h / h0), (float(left), float(top)))


GEOMETRY: dict[str, Callable[[Image.Image, PreprocessConfig, tuple[int, int]], tuple[Image.Image, Transform]]] = {
    "stretch": _geom_stretch,
    "shorter": _geom_shorter,
    "letterbox": _geom_letterbox,
}


def normalize(pixels: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """uint8 HWC (or HW) pixels -> float32 CHW: (pixel * scale - mean) / std, in one fused pass."""
    x = pixels[:, :, None] if pixels.ndim == 2 else pixels
    if cfg.color == "bgr":
        x = x[:, :, ::-1]
    chw = x.transpose(2, 0, 1).astype(np.float32, order="C")
    c = chw.shape[0]
    mean = np.asarray(cfg.mean if cfg.mean is not None else [0.0], dtype=np.float32)
    std = np.asarray(cfg.std if cfg.std is not None else [1.0], dtype=np.float32)
    mul = (np.float32(cfg.scale) / std).reshape(-1, 1, 1) * np.ones((c, 1, 1), np.float32)
    chw *= mul
    if cfg.mean is not None:
        chw -= (mean / std).reshape(-1, 1, 1)
    return chw


def preprocess_pil(im: Image.Image, cfg: PreprocessConfig, size_hw: tuple[int, int]) -> tuple[np.ndarray, Transform]:
    """A decoded PIL image -> (float32 CHW array of ``size_hw``, Transform)."""
    original = im.info.get("edgeinfer_original_size")
    if im.mode != _MODES[cfg.color]:
        im = im.convert(_MODES[cfg.color])
    out, t = GEOMETRY[cfg.resize_mode](im, cfg, size_hw)
    if original and tuple(original) != im.size:   # reduced while decoding: map boxes to the original pixels
        rx, ry = original[0] / im.size[0], original[1] / im.size[1]
        t = Transform(tuple(original), (t.scale[0] / rx, t.scale[1] / ry), t.pad, (t.offset[0] * rx, t.offset[1] * ry))
    if out.size != (size_hw[1], size_hw[0]) and cfg.resize_mode != "letterbox":
        raise EdgeInferError(
            f"preprocessing produced {out.size[0]}x{out.size[1]} but the model takes {size_hw[1]}x{size_hw[0]}; "
            "fix --resize/--crop")
    return normalize(np.asarray(out), cfg), t


def preprocess_image(path: str | Path, cfg: PreprocessConfig, size_hw: tuple[int, int]) -> tuple[np.ndarray, Transform]:
    """An image file -> (float32 CHW array, Transform)."""
    return preprocess_pil(load_image(path, cfg.color, size_hw), cfg, size_hw)


def to_layout(batch_nchw: np.ndarray, layout: str) -> np.ndarray:
    """NCHW float batch -> the artifact's input layout ("NCHW" or "NHWC")."""
    if layout == "NCHW":
        return batch_nchw
    if layout == "NHWC":
        return np.ascontiguousarray(batch_nchw.transpose(0, 2, 3, 1))
    raise EdgeInferError(f"unknown input layout {layout!r}; expected NCHW or NHWC")
