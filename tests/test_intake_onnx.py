"""Models as users have them, ONNX side: dynamic axes, NHWC inputs, fp16 weights, split detector
outputs and named SSD anchor presets. The models are built here with torch's exporter."""
from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import intake_models as im
from conftest import edgeinfer_cli
from converters.api import convert
from converters.intake.layout import nchw_view, nhwc_input
from edgeinfer import Predictor
from edgeinfer.detection.anchors import ANCHOR_PRESETS, anchor_preset
from edgeinfer.detection.decoders import decode_ssd, decode_yolov8, ssd_anchors
from edgeinfer.preprocess import PreprocessConfig, preprocess_image

PROFILE = "generic-x86-64"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("intake")
    im._seed(0)
    im.export_onnx(im.TinyYolo().eval(), (1, 3, 320, 320), d / "yolo_dyn.onnx", output_names=["out"],
                   dynamic_axes={"images": {0: "batch", 2: "height", 3: "width"}, "out": {0: "batch", 2: "anchors"}})
    im.export_onnx(im.NHWCNet().eval(), (1, 64, 64, 3), d / "nhwc.onnx")
    im.export_onnx(im.NHWCNet(normalize_first=True).eval(), (1, 64, 64, 3), d / "nhwc_norm.onnx")
    im.export_onnx(im.TinyBlazeFace().eval(), (1, 128, 128, 3), d / "blaze.onnx", output_names=["boxes", "scores"])
    im.export_onnx(im.tiny_net(), (1, 3, 64, 64), d / "cls_dyn.onnx", dynamic_axes={"images": {0: "batch", 2: "h", 3: "w"}})
    im.to_fp16(d / "cls_dyn.onnx", d / "cls16.onnx")
    im.images(d / "calib", 12, size=80)
    return d


def _run_source(path, x):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})


def _fp32(manifest, fmt="onnx"):
    return next(a for a in manifest["artifacts"] if a["precision"] == "fp32" and a["format"] == fmt)


# ----------------------------------------------------------------------------- dynamic shapes


def test_dynamic_yolo_fixed_from_letterbox_with_implied_yolo_preprocessing(models, tmp_path):
    res = convert(models / "yolo_dyn.onnx", profile=PROFILE, out=tmp_path, task="detect",
                  postprocess={"kind": "detect", "decoder": "yolov8"}, letterbox=320, calib_dir=models / "calib",
                  quant=["fp32", "int8"], formats=["onnx", "tflite"], auto_keep_float=False)
    m = res.manifests[0]
    assert m["input"]["shape"] == [1, 3, 320, 320]
    assert m["input"]["declared_shape"] == ["batch", 3, "height", "width"]
    assert m["source"]["fixed_input_shape"] == [1, 3, 320, 320]
    assert m["preprocess"]["mean"] == [0.0, 0.0, 0.0] and m["preprocess"]["letterbox"]["size"] == 320
    assert any("implied by the yolov8 decoder" in n for n in m["notes"])
    for a in m["artifacts"]:
        if a["precision"] == "fp32":
            assert a["verification"]["max_abs_error"] < 1e-3  # pixels, on boxes up to 320
    # the artifact is static and runs; the decoded boxes come out in original-image pixels
    det = Predictor(res.bundles[0], artifact="yolo_dyn-fp32.onnx").predict([models / "calib" / "img00.png"])[0]
    assert all(0 <= v <= 80 for d in det.detections for v in d.box)


def test_dynamic_without_a_size_is_one_line(models, tmp_path):
    proc = edgeinfer_cli("convert", models / "yolo_dyn.onnx", "--profile", PROFILE, "--task", "detect", "--decoder",
                         "yolov8", "-o", tmp_path, "--quant", "fp32", "--quiet")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "dynamic shape" in proc.stderr and "--input-shape 1,3,H,W" in proc.stderr
    assert not list(tmp_path.iterdir())


def test_input_shape_fixes_and_is_checked(models, tmp_path):
    res = convert(models / "cls_dyn.onnx", profile=PROFILE, out=tmp_path, input_shape=[1, 3, 64, 64],
                  preset="imagenet", resize=72, crop=64, quant=["fp32"], formats=["onnx", "tflite"])
    m = res.manifests[0]
    assert m["input"]["shape"] == [1, 3, 64, 64] and m["input"]["declared_shape"] == ["batch", 3, "h", "w"]
    assert all(a["verification"]["max_abs_error"] < 1e-4 for a in m["artifacts"])
    proc = edgeinfer_cli("convert", models / "cls_dyn.onnx", "--profile", PROFILE, "-o", tmp_path / "x",
                         "--input-shape", "1,1,64,64", "--preset", "imagenet")
    assert proc.returncode == 2 and "dimension 1 is fixed at 3" in proc.stderr
    proc = edgeinfer_cli("convert", models / "cls_dyn.onnx", "--profile", PROFILE, "-o", tmp_path / "x",
                         "--input-shape", "1,3,64", "--preset", "imagenet")
    assert proc.returncode == 2 and "four positive integers" in proc.stderr


# ----------------------------------------------------------------------------- NHWC


def test_nhwc_view_and_back_are_exact(models):
    src = onnx.load(str(models / "nhwc.onnx"))
    view = nchw_view(src)
    assert [n.op_type for n in view.graph.node].count("Transpose") == 0  # the export's transpose cancelled
    assert [d.dim_value for d in view.graph.input[0].type.tensor_type.shape.dim] == [1, 3, 64, 64]
    x = np.random.default_rng(0).standard_normal((1, 64, 64, 3)).astype(np.float32)
    ref = _run_source(models / "nhwc.onnx", x)[0]
    got = ort.InferenceSession(view.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"images": x.transpose(0, 3, 1, 2).copy()})[0]
    np.testing.assert_array_equal(got, ref)
    back = nhwc_input(view)
    again = ort.InferenceSession(back.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"images": x})[0]
    np.testing.assert_array_equal(again, ref)


@pytest.mark.parametrize("name", ["nhwc", "nhwc_norm"])
def test_nhwc_model_end_to_end(models, tmp_path, name):
    res = convert(models / f"{name}.onnx", profile=PROFILE, out=tmp_path, preset="imagenet", resize=72, crop=64,
                  calib_dir=models / "calib", quant=["fp32", "int8"], formats=["onnx", "tflite"])
    bundle, m = res.bundles[0], res.manifests[0]
    assert m["input"]["model_layout"] == "NHWC" and m["source"]["layout"] == "NHWC"
    assert {a["input_layout"] for a in m["artifacts"]} == {"NHWC"}
    for a in m["artifacts"]:
        if a["format"] == "tflite":
            assert "TRANSPOSE" not in a["details"]["op_counts"]
        else:  # exactly the one transpose the source itself had after its input
            assert a["details"]["op_counts"]["Transpose"] == 1
        if a["precision"] == "fp32":
            assert a["verification"]["max_abs_error"] < 1e-5
    art = onnx.load(str(bundle / f"{name}-fp32.onnx"))
    assert [d.dim_value for d in art.graph.input[0].type.tensor_type.shape.dim] == [1, 64, 64, 3]
    # the runtime feeds NHWC: same scores as the source model on the same preprocessed image
    img = models / "calib" / "img03.png"
    chw, _ = preprocess_image(img, PreprocessConfig.from_dict(m["preprocess"]), (64, 64))
    ref = _run_source(models / f"{name}.onnx", chw.transpose(1, 2, 0)[None].copy())[0][0]
    pred = Predictor(bundle, artifact=f"{name}-fp32.onnx")
    np.testing.assert_allclose(pred.run(chw[None])[0][0], ref, atol=1e-5)
    assert Predictor(bundle, artifact=f"{name}-fp32.tflite").predict([img])[0].top1 == int(np.argmax(ref))


def test_nhwc_model_prunes(models, tmp_path):
    from converters.prune import PruneConfig
    res = convert(models / "nhwc.onnx", profile=PROFILE, out=tmp_path, preset="imagenet", resize=72, crop=64,
                  calib_dir=models / "calib", quant=["fp32"], formats=["onnx"],
                  prune=PruneConfig(ratio=0.5, criterion="l1", recover="none", allocation="uniform"), min_agreement=0.0)
    m = res.manifests[0]
    assert m["pruning"]["params"]["after"] < m["pruning"]["params"]["before"]
    assert m["artifacts"][0]["input_layout"] == "NHWC"


# ----------------------------------------------------------------------------- fp16 sources


def test_fp16_weight_source(models, tmp_path):
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in onnx.load(str(models / "cls16.onnx")).graph.initializer)
    res = convert(models / "cls16.onnx", profile=PROFILE, out=tmp_path, preset="imagenet", resize=72, crop=64,
                  calib_dir=models / "calib", quant=["fp32", "int8"], formats=["onnx", "tflite"])
    m = res.manifests[0]
    assert m["source"]["weights_dtype"] == "float16"
    art = onnx.load(str(res.bundles[0] / "cls16-fp32.onnx"))
    assert not any(t.data_type == onnx.TensorProto.FLOAT16 for t in art.graph.initializer)
    for a in m["artifacts"]:
        assert a["verification"]["top1_agreement"] >= 0.75
        if a["precision"] == "fp32":
            assert a["verification"]["max_abs_error"] < 1e-3  # vs the fp16 source as given


# ----------------------------------------------------------------------------- detectors: presets, split outputs


def test_anchor_presets_have_the_published_counts():
    counts = {"blazeface-front-128": 896, "blazeface-short-range-128": 896, "blazeface-back-256": 896,
              "blazeface-full-range-192": 2304, "blazepalm-192": 2016, "blazepose-224": 2254,
              "ssd-mobilenet-v2-320": 2034}
    assert set(counts) == set(ANCHOR_PRESETS)
    for name, n in counts.items():
        a = ssd_anchors(ANCHOR_PRESETS[name]["anchors"])
        assert a.shape == (n, 4) and (a[:, :2] > 0).all() and (a[:, :2] < 1).all()
    front = ssd_anchors(anchor_preset("blazeface-front")["anchors"])
    # first cell of the 16x16 stride-8 map holds 2 anchors, centred at (0.5/16, 0.5/16); fixed size 1.0
    np.testing.assert_allclose(front[:2], [[1 / 32, 1 / 32, 1, 1]] * 2)
    np.testing.assert_allclose(front[512], [1 / 16, 1 / 16, 1, 1])  # first cell of the 8x8 maps


def test_ssd_decode_with_outputs_split_per_level():
    cfg = {"decoder": "ssd", **anchor_preset("blazeface-front-128"), "score_threshold": 0.5}
    rng = np.random.default_rng(0)
    boxes = rng.normal(0, 3, (1, 896, 16)).astype(np.float32)
    scores = rng.normal(-3, 2, (1, 896, 1)).astype(np.float32)
    joined = decode_ssd([boxes, scores], cfg)
    split = decode_ssd([boxes[:, :512], boxes[:, 512:], scores[:, :512], scores[:, 512:]], cfg)
    swapped = decode_ssd([scores, boxes], cfg)
    for a, b, c in zip(joined, split, swapped):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)
    assert len(joined[0]) > 0


def test_ssd_mobilenet_preset_picks_4_wide_boxes_not_91_classes():
    cfg = {"decoder": "ssd", **anchor_preset("ssd-mobilenet-v2-320"), "score_threshold": 0.5}
    rng = np.random.default_rng(1)
    boxes = rng.normal(0, 1, (1, 2034, 4)).astype(np.float32)
    scores = np.full((1, 2034, 91), -8.0, np.float32)
    scores[0, 7, 18] = 4.0  # one confident dog (class 18 after the background column)
    b, s, ids = decode_ssd([scores, boxes], cfg)
    assert list(ids) == [17] and s[0] > 0.9 and b.shape == (1, 4)


def test_yolov8_split_boxes_and_scores_decode_like_the_joined_head():
    rng = np.random.default_rng(2)
    head = np.concatenate([rng.uniform(10, 300, (1, 4, 2100)), rng.uniform(0, 1, (1, 3, 2100))], 1).astype(np.float32)
    cfg = {"score_threshold": 0.5, "top_k": 100}
    ref = decode_yolov8([head], cfg)
    for parts in ([head[:, :4], head[:, 4:]], [head[:, :4].transpose(0, 2, 1), head[:, 4:].transpose(0, 2, 1)],
                  [head[:, 4:], head[:, :4].transpose(0, 2, 1)]):
        for a, b in zip(ref, decode_yolov8(parts, cfg)):
            np.testing.assert_array_equal(a, b)


def test_nhwc_blazeface_with_a_named_preset_end_to_end(models, tmp_path):
    proc = edgeinfer_cli("convert", models / "blaze.onnx", "--profile", PROFILE, "--task", "detect", "--decoder", "ssd",
                         "--anchors", "blazeface-front-128", "--preset", "raw", "--scale", "0.0078431", "--mean", "1,1,1",
                         "--calib", models / "calib", "--quant", "fp32,int8", "--formats", "onnx,tflite",
                         "--no-auto-keep-float", "-o", tmp_path, "--quiet", "--json", check=True)
    m = json.loads(proc.stdout)[0]
    assert m["postprocess"]["anchors"]["strides"] == [8, 16, 16, 16] and m["postprocess"]["nms"] == "weighted"
    assert m["postprocess"]["score_threshold"] == 0.5  # the preset's min_score_thresh
    assert m["postprocess"]["box_coding"]["num_keypoints"] == 6
    assert m["input"]["model_layout"] == "NHWC"
    for a in m["artifacts"]:
        assert a["input_layout"] == "NHWC"
        if a["precision"] == "fp32":
            assert a["verification"]["max_abs_error"] < 1e-4
    bundle = tmp_path / "blaze-generic-x86-64"
    out = edgeinfer_cli("run", bundle, models / "calib" / "img01.png", "--json", check=True).stdout
    assert json.loads(out)["results"][0]["image_size"] == [80, 80]
    # the bundle's fp32 outputs equal the NHWC source's on the same input
    chw, _ = preprocess_image(models / "calib" / "img01.png", PreprocessConfig.from_dict(m["preprocess"]), (128, 128))
    ref = _run_source(models / "blaze.onnx", chw.transpose(1, 2, 0)[None].copy())
    got = Predictor(bundle, artifact="blaze-fp32.onnx").run(chw[None])
    for r, g in zip(ref, got):
        np.testing.assert_allclose(g, r, atol=1e-5)


def test_unknown_anchor_preset_lists_the_presets(models, tmp_path):
    proc = edgeinfer_cli("convert", models / "blaze.onnx", "--profile", PROFILE, "--task", "detect", "--decoder", "ssd",
                         "--anchors", "blazeface-sideways", "--preset", "raw", "-o", tmp_path, "--quiet")
    assert proc.returncode == 2 and "blazeface-front-128" in proc.stderr and len(proc.stderr.splitlines()) == 1


def test_two_input_model_is_refused_naming_the_inputs(tmp_path):
    from onnx import TensorProto, helper
    a = helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 8, 8])
    b = helper.make_tensor_value_info("mask", TensorProto.FLOAT, [1, 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 8, 8])
    g = helper.make_graph([helper.make_node("Add", ["image", "mask"], ["y"])], "g", [a, b], [y])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "two.onnx"))
    proc = edgeinfer_cli("convert", tmp_path / "two.onnx", "--profile", PROFILE, "--preset", "raw", "-o", tmp_path / "o")
    assert proc.returncode == 2 and "'image', 'mask'" in proc.stderr
