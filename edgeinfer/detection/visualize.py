"""Draw detections on the original image with Pillow (boxes, label and score)."""
from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from ..errors import EdgeInferError
from ..preprocess import load_image

# distinct, readable colours; class k uses PALETTE[k % len]
PALETTE = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
           (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (170, 110, 40), (128, 0, 0)]


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def draw_detections(image_path: str | Path | Image.Image, result, out_path: str | Path) -> Path:
    """Write ``image_path`` with ``result`` (a DetectionResult, boxes in its pixels) drawn to ``out_path``."""
    im = image_path.convert("RGB") if isinstance(image_path, Image.Image) else load_image(image_path, "rgb")
    draw = ImageDraw.Draw(im)
    line = max(1, round(min(im.size) / 200))
    font = _font(max(10, round(min(im.size) / 30)))
    for d in result.detections:
        color = PALETTE[d.class_id % len(PALETTE)]
        x1, y1, x2, y2 = d.box
        draw.rectangle([x1, y1, max(x1, x2 - 1), max(y1, y2 - 1)], outline=color, width=line)
        text = f"{d.label} {d.score:.2f}"
        l, t, r, b = draw.textbbox((0, 0), text, font=font)
        tw, th = r - l, b - t
        ty = y1 - th - 2 * line if y1 - th - 2 * line >= 0 else y1
        draw.rectangle([x1, ty, x1 + tw + 2 * line, ty + th + 2 * line], fill=color)
        draw.text((x1 + line - l, ty + line - t), text, fill=(255, 255, 255), font=font)
        for x, y in d.keypoints or []:
            draw.ellipse([x - 2 * line, y - 2 * line, x + 2 * line, y + 2 * line], fill=color)
    out = Path(out_path)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        im.save(out)
    except (OSError, ValueError) as exc:
        raise EdgeInferError(f"cannot write {out}: {exc}") from None
    return out
