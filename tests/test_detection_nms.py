"""NMS against straightforward slow references written here (hypothesis property tests)."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from edgeinfer.detection import nms

# ---------------------------------------------------------------- slow references (pure python)


def ref_iou(a, b):
    ax1, ay1, ax2, ay2 = (float(v) for v in a)
    bx1, by1, bx2, by2 = (float(v) for v in b)
    iw = min(ax2, bx2) - max(ax1, bx1)
    ih = min(ay2, by2) - max(ay1, by1)
    inter = max(iw, 0.0) * max(ih, 0.0)
    area_a = max(ax2 - ax1, 0.0) * max(ay2 - ay1, 0.0)
    area_b = max(bx2 - bx1, 0.0) * max(by2 - by1, 0.0)
    union = area_a + area_b - inter
    return inter / union if union > 0 else 0.0


def ref_order(scores):
    return sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))


def same(cls, i, j):
    return cls is None or cls[i] == cls[j]


def ref_hard(boxes, scores, thr, cls=None):
    keep = []
    for i in ref_order(scores):
        if all(not (same(cls, i, k) and ref_iou(boxes[i], boxes[k]) > thr) for k in keep):
            keep.append(i)
    return keep


def ref_soft(boxes, scores, thr, cls=None, method="linear", sigma=0.5, score_thr=0.001):
    s = [float(v) for v in scores]
    alive = [v > score_thr for v in s]
    keep, ks = [], []
    while any(alive):
        best = None
        for j in range(len(s)):
            if alive[j] and (best is None or s[j] > s[best]):
                best = j
        keep.append(best)
        ks.append(s[best])
        alive[best] = False
        ious = [ref_iou(boxes[best], boxes[j]) if same(cls, best, j) else 0.0 for j in range(len(s))]
        if method == "gaussian":  # same exp routine as the implementation, elementwise
            decay = list(np.exp(-(np.asarray(ious) ** 2) / sigma))
        for j in range(len(s)):
            if not alive[j]:
                continue
            if method == "linear":
                w = 1.0 - ious[j] if ious[j] > thr else 1.0
            else:
                w = float(decay[j])
            s[j] = s[j] * w
            alive[j] = s[j] > score_thr
    return keep, ks


def ref_weighted(boxes, scores, thr, cls=None):
    remaining = ref_order(scores)
    keep, out = [], []
    while remaining:
        top = remaining[0]
        group = [top] + [j for j in remaining[1:] if same(cls, top, j) and ref_iou(boxes[top], boxes[j]) > thr]
        remaining = [j for j in remaining if j not in group]
        total = sum(float(scores[j]) for j in group)
        if total > 0:
            out.append([sum(float(scores[j]) * float(boxes[j][c]) for j in group) / total for c in range(4)])
        else:
            out.append([float(v) for v in boxes[top]])
        keep.append(top)
    return keep, out


# ---------------------------------------------------------------- strategies

coord = st.sampled_from([0.0, 1.0, 2.0, 5.0, 10.0]) | st.floats(0, 20, width=32)


@st.composite
def box_sets(draw, max_n=25):
    n = draw(st.integers(0, max_n))
    raw = draw(hnp.arrays(np.float32, (n, 4), elements=coord))
    kind = draw(st.sampled_from(["sorted", "raw"]))
    if kind == "sorted":  # mostly proper boxes; zero-area ones when coords tie
        x1, x2 = np.minimum(raw[:, 0], raw[:, 2]), np.maximum(raw[:, 0], raw[:, 2])
        y1, y2 = np.minimum(raw[:, 1], raw[:, 3]), np.maximum(raw[:, 1], raw[:, 3])
        raw = np.stack([x1, y1, x2, y2], axis=1)
    if n and draw(st.booleans()):  # exact duplicates
        dup = draw(st.integers(0, n - 1))
        raw[: max(1, n // 3)] = raw[dup]
    scores = draw(hnp.arrays(np.float32, (n,), elements=st.sampled_from([0.0, 0.1, 0.5, 0.5, 0.9, 1.0]) | st.floats(0, 1, width=32)))
    cls = draw(hnp.arrays(np.int64, (n,), elements=st.integers(0, 2)))
    return raw, scores, cls


thresholds = st.sampled_from([0.0, 0.3, 0.5, 0.7, 1.0]) | st.floats(0, 1)

# ---------------------------------------------------------------- properties


@settings(max_examples=300, deadline=None)
@given(box_sets(), thresholds, st.booleans(), st.sampled_from([None, 0]))
def test_hard_nms_matches_reference(data, thr, aware, limit):
    b, s, c = data
    cls = c if aware else None
    got = nms.hard_nms(b, s, thr, cls, matrix_limit=limit).tolist()
    assert got == ref_hard(b, s, thr, cls)


@settings(max_examples=200, deadline=None)
@given(box_sets(), thresholds, st.booleans(), st.sampled_from(["linear", "gaussian"]),
       st.sampled_from([0.001, 0.3]))
def test_soft_nms_matches_reference(data, thr, aware, method, score_thr):
    b, s, c = data
    cls = c if aware else None
    keep, ks = nms.soft_nms(b, s, thr, cls, method=method, sigma=0.5, score_threshold=score_thr)
    rkeep, rks = ref_soft(b, s, thr, cls, method, 0.5, score_thr)
    assert keep.tolist() == rkeep
    assert ks.tolist() == rks


@settings(max_examples=200, deadline=None)
@given(box_sets(), thresholds, st.booleans())
def test_weighted_nms_matches_reference(data, thr, aware):
    b, s, c = data
    cls = c if aware else None
    keep, out, _ = nms.weighted_nms(b, s, thr, cls)
    rkeep, rout = ref_weighted(b, s, thr, cls)
    assert keep.tolist() == rkeep
    if rout:
        np.testing.assert_allclose(out, np.asarray(rout), rtol=1e-12, atol=1e-12)


@settings(max_examples=100, deadline=None)
@given(box_sets(), st.sampled_from([0.0, 0.2, 0.5]), st.sampled_from([None, 1, 3]), st.sampled_from([None, 2, 100]))
def test_select_pipeline_is_threshold_topk_nms_maxdet(data, score_thr, top_k, max_det):
    b, s, c = data
    sel = nms.select(b, s, c, method="hard", iou_threshold=0.5, score_threshold=score_thr, top_k=top_k,
                     max_detections=max_det, class_agnostic=False)
    pre = [i for i in ref_order(s) if s[i] > score_thr][: top_k or None]
    keep = [pre[k] for k in ref_hard(b[pre], s[pre], 0.5, c[pre])] if pre else []
    keep = keep[: max_det or None]
    assert sel.index.tolist() == keep
    np.testing.assert_array_equal(sel.boxes, b[keep].reshape(-1, 4))
    np.testing.assert_array_equal(sel.class_ids, c[keep])


def test_empty_input_everywhere():
    e = np.zeros((0, 4), np.float32)
    z = np.zeros(0, np.float32)
    assert nms.hard_nms(e, z, 0.5).shape == (0,)
    assert nms.soft_nms(e, z, 0.5)[0].shape == (0,)
    assert nms.weighted_nms(e, z, 0.5)[0].shape == (0,)
    for m in nms.METHODS:
        sel = nms.select(e, z, z.astype(np.int64), method=m)
        assert sel.boxes.shape == (0, 4) and sel.scores.shape == (0,)


def test_class_aware_keeps_overlapping_boxes_of_other_classes():
    b = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [0, 0, 10, 10]], np.float32)
    s = np.array([0.9, 0.8, 0.7], np.float32)
    c = np.array([0, 0, 1])
    assert nms.hard_nms(b, s, 0.5, c).tolist() == [0, 2]
    assert nms.hard_nms(b, s, 0.5, None).tolist() == [0]


def test_weighted_blends_by_score():
    b = np.array([[0, 0, 10, 10], [2, 2, 12, 12], [50, 50, 60, 60]], np.float32)
    s = np.array([0.75, 0.25, 0.5], np.float32)
    keep, out, ex = nms.weighted_nms(b, s, 0.3, None, extra=np.array([[0.0], [4.0], [1.0]]))
    assert keep.tolist() == [0, 2]
    np.testing.assert_allclose(out[0], [0.5, 0.5, 10.5, 10.5])
    np.testing.assert_allclose(ex[:, 0], [1.0, 1.0])


def test_soft_linear_decays_instead_of_removing():
    b = np.array([[0, 0, 10, 10], [0, 0, 10, 5]], np.float32)
    s = np.array([0.9, 0.8], np.float32)
    keep, ks = nms.soft_nms(b, s, 0.3, method="linear", score_threshold=0.01)
    assert keep.tolist() == [0, 1]
    assert math.isclose(ks[1], float(np.float32(0.8)) * 0.5)


def test_unknown_method_rejected():
    with pytest.raises(ValueError, match="NMS method"):
        nms.select(np.zeros((1, 4)), np.ones(1), np.zeros(1), method="fast")
