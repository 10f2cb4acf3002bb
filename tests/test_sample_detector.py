"""The committed sample detector (samples/detector, made by tools/train_detector.py) is a real,
well-formed detector: bundle metadata, YOLOv8 export form, and mAP on its labelled val split."""
import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "samples" / "detector"
sys.path.insert(0, str(ROOT / "tools"))
from detector_eval import evaluate, load_split, run_onnx  # noqa: E402

pytestmark = pytest.mark.skipif(not (SAMPLE / "shapes_det.onnx").exists(), reason="sample detector not built")


@pytest.fixture(scope="module")
def model():
    return onnx.load(str(SAMPLE / "shapes_det.onnx"))


def test_metadata_describes_the_bundle(model):
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["edgeinfer.task"] == "detect"
    labels = json.loads(meta["edgeinfer.labels"])
    assert labels == (SAMPLE / "labels.txt").read_text().split()
    post = json.loads(meta["edgeinfer.postprocess"])
    assert post["decoder"] == "yolov8" and post["kind"] == "detect"
    pre = json.loads(meta["edgeinfer.preprocess"])
    assert pre["resize_mode"] == "letterbox" and pre["letterbox"]["pad_value"] == 114
    assert not any(n.op_type == "BatchNormalization" for n in model.graph.node)


def test_output_is_yolov8_export_form(model):
    meta = {p.key: p.value for p in model.metadata_props}
    size = json.loads(meta["edgeinfer.preprocess"])["letterbox"]["size"]
    nc = len(json.loads(meta["edgeinfer.labels"]))
    x = np.random.default_rng(0).uniform(0, 1, (1, 3, size, size)).astype(np.float32)
    out = run_onnx(model, x)[0]
    assert out.shape[:2] == (1, 4 + nc) and out.shape[2] == sum((size // s) ** 2 for s in (8, 16, 32))
    assert (out[0, 4:] >= 0).all() and (out[0, 4:] <= 1).all()          # sigmoid scores
    assert (out[0, 2:4] > 0).all() and (out[0, :2] >= -size).all()        # cx, cy, w, h in pixels


def test_fp32_map_on_val(model):
    meta = {p.key: p.value for p in model.metadata_props}
    xs, ts, gt, ids = load_split(SAMPLE / "val", json.loads(meta["edgeinfer.preprocess"]))
    assert len(xs) >= 100 and any(im["width"] != im["height"] for im in gt["images"])
    res = evaluate(run_onnx(model, xs), ts, gt, ids)
    assert res["map50"] >= 0.9          # measured 0.966 (README)
    assert res["map50_95"] >= 0.6
