import numpy as np
import pytest
from numpy.testing import assert_allclose
from PIL import Image

from edgeinfer.errors import EdgeInferError
from edgeinfer.preprocess import PreprocessConfig, Transform, normalize, preprocess_image, preprocess_pil, to_layout


def _img(w, h, seed=0, mode="RGB"):
    rng = np.random.default_rng(seed)
    shape = (h, w, 3) if mode == "RGB" else (h, w)
    return Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode)


def test_normalize_matches_numpy_formula():
    px = np.random.default_rng(1).integers(0, 256, (4, 5, 3), dtype=np.uint8)
    cfg = PreprocessConfig(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    want = ((px / 255.0 - np.array(cfg.mean)) / np.array(cfg.std)).transpose(2, 0, 1)
    assert_allclose(normalize(px, cfg), want, rtol=1e-5, atol=1e-5)


def test_bgr_swaps_channels():
    px = np.zeros((2, 2, 3), np.uint8)
    px[..., 0] = 255  # red
    out = normalize(px, PreprocessConfig(color="bgr", scale=1.0))
    assert out[2].max() == 255 and out[0].max() == 0


def test_shorter_side_resize_then_center_crop():
    cfg = PreprocessConfig.from_dict({"resize_mode": "shorter", "resize": 256, "crop": 224})
    arr, t = preprocess_pil(_img(640, 480), cfg, (224, 224))
    assert arr.shape == (3, 224, 224) and arr.dtype == np.float32
    # crop origin in original pixels: resized to 341x256, crop offset (58, 16) / scale
    assert t.scale == pytest.approx((341 / 640, 256 / 480))
    assert t.offset[0] == pytest.approx(58 / (341 / 640))


def test_center_crop_picks_the_center_pixels():
    im = _img(64, 32)
    cfg = PreprocessConfig.from_dict({"resize_mode": "shorter", "resize": 32, "crop": 32, "scale": 1.0})
    arr, _ = preprocess_pil(im, cfg, (32, 32))
    assert_allclose(arr, np.asarray(im)[:, 16:48].transpose(2, 0, 1).astype(np.float32))


def test_letterbox_keeps_aspect_and_maps_boxes_back():
    cfg = PreprocessConfig.from_dict({"resize_mode": "letterbox", "letterbox": {"size": 160, "pad_value": 114}, "scale": 1.0})
    arr, t = preprocess_pil(_img(200, 100), cfg, (160, 160))
    assert arr.shape == (3, 160, 160)
    assert (arr[:, :40, :] == 114).all() and (arr[:, 120:, :] == 114).all()  # 80 rows of image, centred
    box = np.array([[10, 20, 110, 70]], np.float32)  # original pixels
    model_box = box * 0.8 + np.array([0, 40, 0, 40])
    assert_allclose(t.to_original(model_box), box, atol=1e-4)


def test_transform_clips_to_image():
    t = Transform((100, 50))
    assert_allclose(t.to_original(np.array([[-5, -5, 150, 70]])), [[0, 0, 100, 50]])


def test_gray_and_layout():
    cfg = PreprocessConfig.from_dict({"color": "gray", "resize": 32, "mean": [0.5], "std": [0.5]})
    arr, _ = preprocess_pil(_img(96, 96), cfg, (32, 32))
    assert arr.shape == (1, 32, 32) and -1.0 <= arr.min() and arr.max() <= 1.0
    assert to_layout(arr[None], "NHWC").shape == (1, 32, 32, 1)


@pytest.mark.parametrize("bad", [{"color": "cmyk"}, {"resize_mode": "zoom"}, {"mean": [0.1, 0.2]}, {"std": [0, 1, 1]},
                                 {"resize_mode": "letterbox"}])
def test_bad_config_is_one_line_error(bad):
    with pytest.raises(EdgeInferError) as exc:
        PreprocessConfig.from_dict(bad)
    assert "\n" not in str(exc.value)


def test_unreadable_image(tmp_path):
    p = tmp_path / "x.png"
    p.write_text("not an image")
    with pytest.raises(EdgeInferError, match="cannot read image"):
        preprocess_image(p, PreprocessConfig(resize=8), (8, 8))
    with pytest.raises(EdgeInferError, match="not found"):
        preprocess_image(tmp_path / "missing.png", PreprocessConfig(resize=8), (8, 8))
