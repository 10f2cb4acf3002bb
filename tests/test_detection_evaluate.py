"""run_eval end to end on hand-made ONNX bundles (detect: constant head; classify: colour means)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from edgeinfer.evaluate import format_report, load_image_folder, run_eval  # noqa: E402


def _save_model(path, out_array=None, classify=False):
    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 64, 64])
    if classify:  # logits = per-channel mean
        nodes = [helper.make_node("ReduceMean", ["images"], ["m"], axes=[2, 3], keepdims=0)]
        out = helper.make_tensor_value_info("m", TensorProto.FLOAT, [1, 3])
        inits = []
    else:  # constant head, tied to the input by adding 0 * mean(input)
        nodes = [helper.make_node("ReduceMean", ["images"], ["m"], keepdims=1),
                 helper.make_node("Mul", ["m", "zero"], ["z"]),
                 helper.make_node("Add", ["head", "z"], ["out"])]
        out = helper.make_tensor_value_info("out", TensorProto.FLOAT, list(out_array.shape))
        inits = [numpy_helper.from_array(out_array.astype(np.float32), "head"),
                 numpy_helper.from_array(np.zeros((1, 1, 1), np.float32), "zero")]
    g = helper.make_graph(nodes, "g", [x], [out], initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    onnx.save(m, path)


def _manifest(task, post, artifacts, labels="labels.txt"):
    pre = ({"resize_mode": "letterbox", "letterbox": {"size": 64, "pad_value": 114, "stride": None}} if task == "detect"
           else {"resize_mode": "stretch", "resize": 64})
    return {"schema": 1, "task": task, "input": {"name": "images", "shape": [1, 3, 64, 64], "layout": "NCHW", "dtype": "float32"},
            "preprocess": pre, "postprocess": post, "labels": labels,
            "artifacts": [{"file": f, "format": "onnx", "precision": p, "input_layout": "NCHW"} for f, p in artifacts]}


def _head(box, shift=0.0):
    h = np.zeros((1, 6, 20), np.float32)
    h[0, :4] = 1.0
    h[0, :4, 3] = [box[0] + shift, box[1], box[2], box[3]]
    h[0, 5, 3] = 0.9  # class 1 ("b")
    return h


def test_run_eval_detect(tmp_path):
    b = tmp_path / "bundle"
    b.mkdir()
    _save_model(b / "fp32.onnx", _head((20, 28, 16, 16)))
    _save_model(b / "int8.onnx", _head((20, 28, 16, 16), shift=4.0))
    (b / "labels.txt").write_text("a\nb\n")
    post = {"kind": "detect", "decoder": "yolov8", "score_threshold": 0.25}
    (b / "manifest.json").write_text(json.dumps(_manifest("detect", post, [("fp32.onnx", "fp32"), ("int8.onnx", "int8")])))
    data = tmp_path / "val"
    (data / "images").mkdir(parents=True)
    for i in (1, 2):
        Image.new("RGB", (128, 96), (0, 0, 0)).save(data / "images" / f"{i}.png")
    # letterbox 128x96 -> 64x48, pad top 8: model box (12, 20, 28, 36) -> original (24, 24, 56, 56)
    gt = {"images": [{"id": 1, "file_name": "1.png"}, {"id": 2, "file_name": "2.png"}],
          "categories": [{"id": 5, "name": "a"}, {"id": 9, "name": "b"}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 9, "bbox": [24, 24, 32, 32], "area": 1024, "iscrowd": 0},
                          {"id": 2, "image_id": 2, "category_id": 9, "bbox": [80, 10, 30, 30], "area": 900, "iscrowd": 0}]}
    (data / "annotations.json").write_text(json.dumps(gt))
    rep = run_eval(b, data, progress=False)
    fp32, int8 = rep["artifacts"]
    assert rep["images"] == 2 and fp32["precision"] == "fp32"
    assert fp32["map50"] == pytest.approx(51 / 101)  # 1 TP then 1 FP (equal scores, image order), 1 of 2 found
    assert fp32["per_class_ap50"] == {"b": pytest.approx(51 / 101)}
    assert int8["map50"] == pytest.approx(51 / 101)   # IoU 0.6 at x-shift 8 px: still a match at 0.5
    assert int8["map50_95"] < fp32["map50_95"]
    assert int8["agreement_with"] == "fp32.onnx" and int8["map50_agreement"] == pytest.approx(1.0)
    assert int8["map50_95_agreement"] < 1.0
    lines = format_report(rep)
    assert "mAP@0.5=0.5050" in lines[1]
    one = run_eval(b, data / "annotations.json", artifact="int8.onnx", progress=False)
    assert len(one["artifacts"]) == 1


def test_run_eval_classify_top1_top5(tmp_path):
    b = tmp_path / "bundle"
    b.mkdir()
    _save_model(b / "m.onnx", classify=True)
    (b / "labels.txt").write_text("red\ngreen\nblue\n")
    (b / "manifest.json").write_text(json.dumps(_manifest("classify", {"kind": "classify", "softmax": True, "top_k": 5},
                                                          [("m.onnx", "fp32")])))
    data = tmp_path / "imgs"
    colours = {"red": (250, 10, 10), "green": (10, 250, 10), "blue": (10, 10, 250)}
    for name, c in colours.items():
        (data / name).mkdir(parents=True)
        for k in range(2):
            Image.new("RGB", (40, 30), c).save(data / name / f"{k}.png")
    Image.new("RGB", (40, 30), (10, 10, 250)).save(data / "red" / "wrong.png")  # a blue image labelled red
    rep = run_eval(b, data, progress=False)
    r = rep["artifacts"][0]
    assert r["top1"] == pytest.approx(6 / 7) and r["top5"] == 1.0
    assert "top-1=0.8571" in format_report(rep)[1]


def test_image_folder_rejects_unknown_label(tmp_path):
    (tmp_path / "cat").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "cat" / "a.png")
    from edgeinfer.errors import EdgeInferError
    with pytest.raises(EdgeInferError, match="'cat' .* not a label"):
        load_image_folder(tmp_path, ["dog"])
