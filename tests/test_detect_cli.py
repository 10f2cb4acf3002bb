"""Detection end to end: convert the sample detector, run it, draw it, evaluate it."""
import json

import pytest
from PIL import Image

from edgeinfer.bundle import read_manifest

from conftest import ROOT, edgeinfer_cli

DET = ROOT / "samples" / "detector"


@pytest.fixture(scope="module")
def det_bundle(tmp_path_factory):
    out = tmp_path_factory.mktemp("det")
    edgeinfer_cli("convert", DET / "shapes_det.onnx", "--profile", "generic-x86-64", "--formats", "onnx,tflite",
                  "--quant", "int8,fp32", "--calib", DET / "calib", "--verify-data", DET / "val", "-o", out, "--quiet",
                  check=True)
    return out / "shapes_det-generic-x86-64"


def test_manifest_records_detector_config_and_mixed_precision(det_bundle):
    m = read_manifest(det_bundle)
    assert m["task"] == "detect" and m["postprocess"]["decoder"] == "yolov8"
    assert m["preprocess"]["resize_mode"] == "letterbox"
    assert m["postprocess"]["input_size"] == [128, 128]
    kept = m["mixed_precision"]["kept_float"]
    assert kept, "the sensitivity search should keep the head's concat in float"
    assert m["mixed_precision"]["final"] > m["mixed_precision"]["naive_int8"]
    int8 = [a for a in m["artifacts"] if a["precision"] == "int8"]
    assert sorted(a["format"] for a in int8) == ["onnx", "tflite"]
    for a in int8:
        assert a["verification"]["map50_agreement"] >= 0.97, a["file"]


def test_run_json_and_visualization(det_bundle, tmp_path):
    images = sorted((DET / "images").iterdir())
    data = json.loads(edgeinfer_cli("run", det_bundle, *images, "--json", "--save-vis", tmp_path, check=True).stdout)
    assert len(data["results"]) == len(images)
    labels = set((DET / "labels.txt").read_text().split())
    for img, res in zip(images, data["results"]):
        w, h = Image.open(img).size
        assert res["detections"], f"nothing detected in {img.name}"
        for d in res["detections"]:
            x1, y1, x2, y2 = d["box"]
            assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h
            assert d["label"] in labels and 0.25 < d["score"] <= 1.0
        assert (tmp_path / f"{img.stem}_det.png").is_file()


def test_eval_reports_map_per_artifact(det_bundle):
    report = json.loads(edgeinfer_cli("eval", det_bundle, DET / "val", "--json", check=True).stdout)
    by_file = {a["artifact"]: a for a in report["artifacts"]}
    fp32 = by_file["shapes_det-fp32.onnx"]
    assert fp32["map50"] >= 0.9
    for name in ("shapes_det-int8.onnx", "shapes_det-int8.tflite"):
        assert by_file[name]["map50"] >= fp32["map50"] - 0.01, name
