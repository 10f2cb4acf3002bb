"""Named SSD anchor presets: the published MediaPipe anchor and box-coding options.

``--anchors NAME`` takes one of ``ANCHOR_PRESETS`` instead of a JSON file. Each preset holds the
options of MediaPipe's ``SsdAnchorsCalculator`` (``anchors``; the anchors themselves are generated
by ``decoders.ssd_anchors``) and of its ``TensorsToDetectionsCalculator`` (``box_coding``), as the
MediaPipe graphs publish them for each model. ``reverse_output_order: true`` in those graphs is
``box_order: "xywh"`` here; ``ignore_classes: 0`` is ``background_class: true``.
"""
from __future__ import annotations

from typing import Any

from ..errors import EdgeInferError


def _blaze(size: int, strides: list[int], min_scale: float, keypoints: int, interpolated: float = 1.0,
           min_score: float = 0.5) -> dict[str, Any]:
    """A BlazeFace/BlazePalm/BlazePose anchor set: fixed-size anchors, coordinates in input pixels."""
    return {
        "score_threshold": min_score,
        "anchors": {"num_layers": len(strides), "min_scale": min_scale, "max_scale": 0.75,
                    "input_size_height": size, "input_size_width": size, "anchor_offset_x": 0.5,
                    "anchor_offset_y": 0.5, "strides": strides, "aspect_ratios": [1.0],
                    "fixed_anchor_size": True, "interpolated_scale_aspect_ratio": interpolated},
        "box_coding": {"x_scale": float(size), "y_scale": float(size), "w_scale": float(size),
                       "h_scale": float(size), "box_order": "xywh", "num_keypoints": keypoints,
                       "keypoint_offset": 4, "values_per_keypoint": 2, "score_clipping": 100.0},
    }


ANCHOR_PRESETS: dict[str, dict[str, Any]] = {
    # face_detection_front.tflite and face_detection_short_range.tflite: 128x128, 896 anchors
    "blazeface-front-128": _blaze(128, [8, 16, 16, 16], 0.1484375, 6),
    "blazeface-short-range-128": _blaze(128, [8, 16, 16, 16], 0.1484375, 6),
    # face_detection_back.tflite: 256x256, 896 anchors
    "blazeface-back-256": _blaze(256, [16, 32, 32, 32], 0.15625, 6),
    # face_detection_full_range(.sparse).tflite: 192x192, one 48x48 layer, 2304 anchors
    "blazeface-full-range-192": _blaze(192, [4], 0.1484375, 6, interpolated=0.0, min_score=0.6),
    # palm_detection_(lite|full).tflite: 192x192, 2016 anchors, 7 keypoints
    "blazepalm-192": _blaze(192, [8, 16, 16, 16], 0.1484375, 7),
    # pose_detection.tflite (BlazePose detector): 224x224, 2254 anchors, 4 keypoints
    "blazepose-224": _blaze(224, [8, 16, 32, 32, 32], 0.1484375, 4),
    # MediaPipe object detection, SSD MobileNetV2 COCO 320x320: 2034 anchors, 91 classes (0 = background)
    "ssd-mobilenet-v2-320": {
        "score_threshold": 0.6,
        "anchors": {"num_layers": 6, "min_scale": 0.2, "max_scale": 0.95, "input_size_height": 320,
                    "input_size_width": 320, "anchor_offset_x": 0.5, "anchor_offset_y": 0.5,
                    "strides": [16, 32, 64, 128, 256, 512], "aspect_ratios": [1.0, 2.0, 0.5, 3.0, 0.3333],
                    "reduce_boxes_in_lowest_layer": True},
        "box_coding": {"x_scale": 10.0, "y_scale": 10.0, "w_scale": 5.0, "h_scale": 5.0, "box_order": "yxhw",
                       "exponential": True, "background_class": True},
    },
}
ALIASES = {"blazeface-front": "blazeface-front-128", "blazeface-short-range": "blazeface-short-range-128",
           "blazeface-back": "blazeface-back-256", "blazeface-full-range": "blazeface-full-range-192"}


def anchor_preset(name: str) -> dict[str, Any]:
    """{"anchors", "box_coding", "score_threshold"} of a named preset (copies; the threshold is the
    graph's min_score_thresh, a default that --score-threshold overrides); unknown names: one-line error."""
    key = ALIASES.get(name.lower(), name.lower())
    if key not in ANCHOR_PRESETS:
        raise EdgeInferError(f"--anchors {name!r} is neither a file nor a known preset; presets: "
                             f"{', '.join(ANCHOR_PRESETS)}")
    p = ANCHOR_PRESETS[key]
    return {"anchors": dict(p["anchors"]), "box_coding": dict(p["box_coding"]), "score_threshold": p["score_threshold"]}


def is_preset_name(value: str) -> bool:
    return value.lower() in ANCHOR_PRESETS or value.lower() in ALIASES
