"""Decoders (yolov8, yolov5 exported + raw, ssd/MediaPipe anchors) against hand-built heads."""
from __future__ import annotations

import math

import numpy as np
import pytest

from edgeinfer.detection import decoders
from edgeinfer.detection.boxes import iou_matrix
from edgeinfer.errors import EdgeInferError

RNG = np.random.default_rng(0)


def _yolov8_head(n=8400, nc=80, boxes=(), seed=0):
    """[4+nc, n] head with low random scores and the given (col, cx, cy, w, h, cls, score) rows."""
    rng = np.random.default_rng(seed)
    x = np.zeros((4 + nc, n), np.float32)
    x[:4] = rng.uniform(10, 600, (4, n))
    x[4:] = rng.uniform(0, 0.2, (nc, n))
    for col, cx, cy, w, h, c, s in boxes:
        x[:4, col] = (cx, cy, w, h)
        x[4 + c, col] = s
    return x


def test_yolov8_both_layouts_and_top_k():
    head = _yolov8_head(boxes=[(5, 100, 100, 20, 40, 3, 0.9), (77, 300, 200, 50, 50, 7, 0.6), (900, 10, 10, 4, 4, 0, 0.3)])
    cfg = {"score_threshold": 0.25, "top_k": 1000}
    for out in (head[None], np.ascontiguousarray(head.T)[None]):
        b, s, c = decoders.decode_yolov8([out], cfg)
        np.testing.assert_allclose(s, [0.9, 0.6, 0.3], rtol=1e-6)
        assert c.tolist() == [3, 7, 0]
        np.testing.assert_allclose(b[0], [90, 80, 110, 120])
    b, s, c = decoders.decode_yolov8([head[None]], {**cfg, "top_k": 2})
    assert len(s) == 2


def test_yolov8_sigmoid_and_num_classes_with_extra_columns():
    head = _yolov8_head(n=300, nc=3, boxes=[(1, 50, 50, 10, 10, 2, 0.8)])
    logits = head.copy()
    logits[4:] = np.log(head[4:] / (1 - head[4:]))
    extra = np.full((5, 300), 50.0, np.float32)  # e.g. mask coefficients: must not be read as classes
    out = np.concatenate([logits, extra])[None]
    b, s, c = decoders.decode_yolov8([out], {"score_threshold": 0.5, "apply_sigmoid": True, "num_classes": 3})
    np.testing.assert_allclose(s, [0.8], rtol=1e-5)
    assert c.tolist() == [2]


def test_yolov8_normalized_boxes_need_input_size():
    head = _yolov8_head(n=50, nc=2, boxes=[(0, 0.5, 0.5, 0.25, 0.5, 1, 0.9)])
    b, _, _ = decoders.decode_yolov8([head], {"normalized_boxes": True, "input_size": [100, 200]})
    np.testing.assert_allclose(b[0], [75, 25, 125, 75], rtol=1e-6)
    with pytest.raises(EdgeInferError, match="input_size"):
        decoders.decode_yolov8([head], {"normalized_boxes": True})


def test_yolov5_exported_objectness_times_class():
    n, nc = 500, 4
    x = np.zeros((n, 5 + nc), np.float32)
    x[:, :4] = RNG.uniform(5, 100, (n, 4))
    x[:, 4] = RNG.uniform(0, 0.2, n)
    x[:, 5:] = RNG.uniform(0, 1, (n, nc))
    x[10, :5] = (50, 60, 10, 20, 0.9)
    x[10, 5:] = (0.1, 0.2, 0.95, 0.1)
    x[20, :5] = (20, 20, 4, 4, 0.5)
    x[20, 5:] = (0.3, 0.2, 0.1, 0.45)  # 0.5*0.45 = 0.225 < 0.25: dropped
    b, s, c = decoders.decode_yolov5([x[None]], {"score_threshold": 0.25})
    np.testing.assert_allclose(s, [0.9 * 0.95], rtol=1e-6)
    assert c.tolist() == [2]
    np.testing.assert_allclose(b[0], [45, 50, 55, 70])
    # same through a reference of the definition
    conf = x[:, 4:5] * x[:, 5:]
    assert (conf.max(1) > 0.25).sum() == 1


def _logit(p):
    return math.log(p / (1 - p))


@pytest.mark.parametrize("five_d", [False, True])
def test_yolov5_raw_levels_recover_boxes(five_d):
    anchors = {"strides": [8, 16], "sizes": [[10, 13, 16, 30], [33, 23, 30, 61]]}
    nc, na = 2, 2
    levels = {8: np.full((na, 8, 8, 5 + nc), -8.0, np.float32), 16: np.full((na, 4, 4, 5 + nc), -8.0, np.float32)}
    # level stride 16, anchor 1 (30x61), cell (gy=2, gx=1): sig targets
    t = levels[16][1, 2, 1]
    sx, sy, sw, sh = 0.6, 0.4, 0.5, 0.75
    t[:4] = [_logit(v) for v in (sx, sy, sw, sh)]
    t[4], t[5 + 1] = _logit(0.9), _logit(0.8)
    cx, cy = (sx * 2 - 0.5 + 1) * 16, (sy * 2 - 0.5 + 2) * 16
    w, h = (sw * 2) ** 2 * 30, (sh * 2) ** 2 * 61
    outs = []
    for s in (16, 8):  # order scrambled on purpose: matched by grid size
        a = levels[s]
        outs.append(a[None] if five_d else a.transpose(0, 3, 1, 2).reshape(1, na * (5 + nc), a.shape[1], a.shape[2]))
    b, sc, c = decoders.decode_yolov5(outs, {"score_threshold": 0.5, "anchors": anchors})
    assert c.tolist() == [1]
    np.testing.assert_allclose(sc, [0.72], rtol=1e-5)
    np.testing.assert_allclose(b[0], [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], rtol=1e-5)


def test_yolov5_raw_without_anchors_is_a_one_line_error():
    with pytest.raises(EdgeInferError, match="anchors"):
        decoders.decode_yolov5([np.zeros((1, 21, 8, 8)), np.zeros((1, 21, 4, 4))], {})


BLAZEFACE = {"num_layers": 4, "min_scale": 0.1484375, "max_scale": 0.75, "input_size_height": 128,
             "input_size_width": 128, "anchor_offset_x": 0.5, "anchor_offset_y": 0.5, "strides": [8, 16, 16, 16],
             "aspect_ratios": [1.0], "fixed_anchor_size": True, "interpolated_scale_aspect_ratio": 1.0,
             "reduce_boxes_in_lowest_layer": False}


def test_ssd_anchors_blazeface_layout():
    a = decoders.ssd_anchors(BLAZEFACE)
    assert a.shape == (896, 4)  # 16*16*2 + 8*8*6
    np.testing.assert_allclose(a[0], [0.5 / 16, 0.5 / 16, 1, 1])
    np.testing.assert_allclose(a[1], a[0])           # two anchors per cell on the 16x16 map
    np.testing.assert_allclose(a[2], [1.5 / 16, 0.5 / 16, 1, 1])
    np.testing.assert_allclose(a[512], [0.5 / 8, 0.5 / 8, 1, 1])
    assert np.all(a[512:518] == a[512])              # six anchors per cell on the 8x8 map
    np.testing.assert_allclose(a[-1], [7.5 / 8, 7.5 / 8, 1, 1])


def test_ssd_anchor_scales_by_hand():
    o = {"num_layers": 2, "min_scale": 0.2, "max_scale": 0.8, "input_size_height": 32, "input_size_width": 16,
         "strides": [8, 16], "aspect_ratios": [1.0, 2.0], "interpolated_scale_aspect_ratio": 1.0}
    a = decoders.ssd_anchors(o)
    assert a.shape == (4 * 2 * 3 + 2 * 1 * 3, 4)  # layer0: 4x2 cells, layer1: 2x1 cells; 3 anchors each
    r2 = math.sqrt(2)
    np.testing.assert_allclose(a[:3], [[0.25, 0.125, 0.2, 0.2], [0.25, 0.125, 0.2 * r2, 0.2 / r2],
                                       [0.25, 0.125, 0.4, 0.4]], rtol=1e-6)
    np.testing.assert_allclose(a[-1], [0.5, 0.75, math.sqrt(0.8), math.sqrt(0.8)], rtol=1e-6)  # next scale 1.0
    red = decoders.ssd_anchors({**o, "reduce_boxes_in_lowest_layer": True})
    np.testing.assert_allclose(red[:3, 2], [0.1, 0.2 * r2, 0.2 / r2], rtol=1e-6)


def test_ssd_decode_blazeface_coding_with_keypoints():
    a = decoders.ssd_anchors(BLAZEFACE)
    boxes = np.zeros((896, 16), np.float32)
    scores = np.full((896, 1), -10.0, np.float32)
    i = 600
    boxes[i, :4] = [12.8, -6.4, 32.0, 25.6]  # /128: dx=0.1, dy=-0.05, w=0.25, h=0.2
    boxes[i, 4:6] = [6.4, 0.0]
    scores[i, 0] = 2.0
    cfg = {"anchors": BLAZEFACE, "score_threshold": 0.5,
           "box_coding": {"x_scale": 128, "y_scale": 128, "w_scale": 128, "h_scale": 128, "num_keypoints": 6,
                          "score_clipping": 100}}
    b, s, c, kp = decoders.decode_ssd([boxes[None], scores[None]], cfg, with_keypoints=True)
    xc, yc = a[i, 0] + 0.1, a[i, 1] - 0.05
    np.testing.assert_allclose(b[0], np.array([xc - 0.125, yc - 0.1, xc + 0.125, yc + 0.1]) * 128, rtol=1e-5)
    np.testing.assert_allclose(s, [1 / (1 + math.exp(-2))], rtol=1e-6)
    np.testing.assert_allclose(kp[0, :2], [(a[i, 0] + 0.05) * 128, a[i, 1] * 128], rtol=1e-5)
    # output order does not matter; yxhw order swaps the columns
    b2, _, _ = decoders.decode_ssd([scores[None], boxes[None]], cfg)
    np.testing.assert_allclose(b2, b)
    sw = boxes.copy()
    sw[:, [0, 1, 2, 3]] = boxes[:, [1, 0, 3, 2]]
    b3, _, _ = decoders.decode_ssd([sw, scores], {**cfg, "box_coding": {**cfg["box_coding"], "box_order": "yxhw"}})
    np.testing.assert_allclose(b3, b, rtol=1e-6)


def test_ssd_missing_anchor_option_names_it():
    bad = {k: v for k, v in BLAZEFACE.items() if k != "min_scale"}
    with pytest.raises(EdgeInferError, match="min_scale"):
        decoders.ssd_anchors(bad)


def test_unknown_decoder():
    with pytest.raises(EdgeInferError, match="unknown detection decoder 'detr'"):
        decoders.get_decoder("detr")


def test_decoded_boxes_are_consistent_with_iou():
    head = _yolov8_head(n=100, nc=1, boxes=[(0, 50, 50, 10, 10, 0, 0.9), (1, 51, 50, 10, 10, 0, 0.8)])
    b, _, _ = decoders.decode_yolov8([head], {})
    assert iou_matrix(b[:1], b[1:2])[0, 0] == pytest.approx(90 / 110)
