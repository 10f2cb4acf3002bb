"""DetectPostprocessor end to end, config validation, builder, letterbox + inverse mapping."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image, ImageDraw

from edgeinfer.detection.postprocess import DetectPostprocessor, build_detect_postprocess, validate_config
from edgeinfer.errors import EdgeInferError
from edgeinfer.preprocess import PreprocessConfig, Transform, preprocess_pil

# ---------------------------------------------------------------- letterbox + inverse mapping


def _lb(size, stride=None, pad=114):
    return PreprocessConfig.from_dict({"resize_mode": "letterbox", "letterbox": {"size": size, "pad_value": pad, "stride": stride},
                                       "scale": 1.0})


def _find_box(chw, channel=0, value=255):
    ys, xs = np.nonzero(chw[channel] >= value - 1)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)


@pytest.mark.parametrize("wh", [(200, 100), (100, 200), (640, 480), (333, 111), (64, 64)])
def test_letterbox_geometry_and_inverse(wh):
    w0, h0 = wh
    im = Image.new("RGB", wh, (0, 0, 0))
    rect = (w0 * 0.25, h0 * 0.5, w0 * 0.75, h0 * 0.9)
    ImageDraw.Draw(im).rectangle([rect[0], rect[1], rect[2] - 1, rect[3] - 1], fill=(255, 0, 0))
    x, t = preprocess_pil(im, _lb(64), (64, 64))
    assert x.shape == (3, 64, 64)
    s = min(64 / w0, 64 / h0)
    w, h = round(w0 * s), round(h0 * s)
    left, top = (64 - w) // 2, (64 - h) // 2
    assert t.pad == (left, top)
    # padding is the pad value, content is not
    if top:
        assert np.all(x[:, :top] == 114) and np.all(x[:, top + h:] == 114)
    if left:
        assert np.all(x[:, :, :left] == 114) and np.all(x[:, :, left + w:] == 114)
    # the whole canvas content region maps back to the whole image
    np.testing.assert_allclose(t.to_original(np.array([[left, top, left + w, top + h]]))[0], [0, 0, w0, h0], atol=1e-3)
    # the drawn rectangle found in the model input maps back to where it was drawn (within a model pixel)
    found = t.to_original(_find_box(x)[None])[0]
    np.testing.assert_allclose(found, rect, atol=1.5 / s)


def test_letterbox_stride_alignment_pads_to_multiple():
    im = Image.new("RGB", (200, 90), (255, 0, 0))
    x, t = preprocess_pil(im, _lb(64, stride=32), (64, 64))
    # 200x90 -> 64x29 (s=0.32), padded to the next multiple of 32 in height only
    assert x.shape == (3, 32, 64)
    assert t.pad == (0.0, 1.0)
    np.testing.assert_allclose(t.to_original(np.array([[0, 1, 64, 30]]))[0], [0, 0, 200, 90], atol=1e-3)


def test_letterbox_inverse_clips_outside_boxes():
    t = Transform((200, 100), (0.32, 0.32), (0.0, 16.0))
    out = t.to_original(np.array([[-10, 0, 70, 64]], np.float32))[0]
    np.testing.assert_allclose(out, [0, 0, 200, 100])


# ---------------------------------------------------------------- postprocessor


def _head(n=400, nc=3, rows=()):
    x = np.zeros((4 + nc, n), np.float32)
    x[:4] = 5
    x[4:] = 0.01
    for col, box, c, s in rows:
        x[:4, col] = box
        x[4 + c, col] = s
    return x[None]


def test_postprocessor_end_to_end_letterboxed():
    # original 200x100 letterboxed to 64: scale 0.32, pad top 16
    t = Transform((200, 100), (0.32, 0.32), (0.0, 16.0))
    rows = [(3, (32, 32, 16, 16), 1, 0.9),     # -> x 24..40, y 24..40 in model px
            (4, (33, 32, 16, 16), 1, 0.8),     # overlaps: suppressed
            (5, (33, 32, 16, 16), 2, 0.7),     # other class: kept (class-aware)
            (6, (60, 60, 10, 10), 0, 0.5)]     # partly outside: clipped
    post = DetectPostprocessor({"kind": "detect", "decoder": "yolov8"}, ["a", "b", "c"])
    res = post([_head(rows=rows)], t)
    assert [d.label for d in res.detections] == ["b", "c", "a"]
    np.testing.assert_allclose(res.detections[0].box, [24 / 0.32, 8 / 0.32, 40 / 0.32, 24 / 0.32], rtol=1e-5)
    assert res.detections[2].box[2] == 200 and res.detections[2].box[3] == 100
    assert len(post.with_overrides(class_agnostic=True)([_head(rows=rows)], t)) == 2
    json.dumps(res.to_dict())
    lines = res.format_lines()
    assert len(lines) == 3 and lines[0].startswith("b") and "0.900" in lines[0]
    assert res.to_dict()["image_size"] == [200, 100]


def test_postprocessor_max_detections_and_unlabelled():
    rows = [(i, (10 + 30 * i, 10, 8, 8), 0, 0.3 + i * 0.05) for i in range(10)]
    post = DetectPostprocessor({"kind": "detect", "decoder": "yolov8", "max_detections": 4})
    res = post([_head(rows=rows)], Transform((400, 400)))
    assert len(res) == 4 and res.detections[0].label == "0"
    assert [round(d.score, 2) for d in res.detections] == [0.75, 0.7, 0.65, 0.6]


def test_ssd_keypoints_kept_through_weighted_nms():
    from test_detection_decoders import BLAZEFACE
    boxes = np.zeros((896, 16), np.float32)
    scores = np.full((896, 1), -10.0, np.float32)
    boxes[600:602, :4] = [0, 0, 16, 16]
    boxes[600:602, 4:6] = [[0, 0], [2.56, 0]]
    scores[600:602, 0] = [3.0, 3.0]  # equal weights: the blended keypoint sits halfway
    cfg = build_detect_postprocess("ssd", None, score_threshold=0.5, iou_threshold=0.3,
                                   anchors=BLAZEFACE, keep_keypoints=True,
                                   box_coding={"x_scale": 128, "y_scale": 128, "w_scale": 128, "h_scale": 128,
                                               "num_keypoints": 6})
    assert cfg["nms"] == "weighted"
    res = DetectPostprocessor(cfg)([boxes, scores], Transform((256, 256), (0.5, 0.5)))
    assert len(res) == 1
    kp = res.detections[0].keypoints
    assert len(kp) == 6
    assert kp[0][0] == pytest.approx((res.detections[0].box[0] + res.detections[0].box[2]) / 2 + 1.28 / 0.5, rel=1e-4)


@pytest.mark.parametrize("bad,key", [
    ({"decoder": "yolo"}, "decoder"), ({"score_threshold": 2}, "score_threshold"),
    ({"iou_threshold": "x"}, "iou_threshold"), ({"max_detections": 0}, "max_detections"),
    ({"nms": "fast"}, "nms"), ({"class_agnostic": "yes"}, "class_agnostic"), ({"iou_treshold": 0.5}, "iou_treshold"),
    ({"layout": "nchw"}, "layout"), ({"normalized_boxes": True}, "input_size"), ({"anchors": {"strides": [8]}}, "anchors"),
    ({"decoder": "ssd"}, "anchors"), ({"decoder": "yolov5", "anchors": {"strides": [8], "sizes": [[1, 2, 3]]}}, "anchors"),
])
def test_validation_names_the_key(bad, key):
    cfg = {"kind": "detect", "decoder": "yolov8", **bad}
    with pytest.raises(EdgeInferError) as e:
        validate_config(cfg)
    msg = str(e.value)
    assert key in msg and "\n" not in msg


def test_builder_reads_anchor_files(tmp_path):
    f = tmp_path / "a.json"
    f.write_text(json.dumps([[10, 13, 16, 30], [30, 61, 62, 45]]))
    cfg = build_detect_postprocess("yolov5", f, score_threshold=0.3, num_classes=2)
    assert cfg["anchors"] == {"sizes": [[10, 13, 16, 30], [30, 61, 62, 45]], "strides": [8, 16]}
    assert cfg["nms"] == "hard" and cfg["score_threshold"] == 0.3
    json.dumps(cfg)
    validate_config(cfg)
    from test_detection_decoders import BLAZEFACE
    f.write_text(json.dumps({**BLAZEFACE, "x_scale": 128.0, "num_keypoints": 6}))
    cfg = build_detect_postprocess("ssd", f)
    assert cfg["box_coding"] == {"x_scale": 128.0, "num_keypoints": 6} and cfg["anchors"]["num_layers"] == 4
    f.write_text("{not json")
    with pytest.raises(EdgeInferError, match="not valid JSON"):
        build_detect_postprocess("ssd", f)
    with pytest.raises(EdgeInferError, match="not found"):
        build_detect_postprocess("ssd", tmp_path / "missing.json")
    with pytest.raises(EdgeInferError, match="anchor-free|no anchors"):
        build_detect_postprocess("yolov8", f)
