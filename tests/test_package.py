"""`edgeinfer package`: folders, metadata, graph edits, ORT Mobile, Core ML, bad input.

The platforms' own code (MediaPipe, tflite-support) checks the same packages in
tests/test_package_platforms.py.
"""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import ROOT, edgeinfer_cli, iou as _iou, square_detector_images as _square_images

from edgeinfer.bundle import sha256_of
from edgeinfer.predictor import Predictor

DIGITS = ROOT / "samples" / "digits"
DET = ROOT / "samples" / "detector"


# ---------------------------------------------------------------- folders and package.json

def test_folders_checksums_and_zips(app_packages):
    for key, root in app_packages.items():
        for target in ("android", "ios", "ort-mobile"):
            doc = json.loads((root / target / "package.json").read_text())
            assert doc["target"] == target and doc["schema"] == 1
            for f in doc["files"]:
                assert sha256_of(root / target / f["file"]) == f["sha256"], (key, target, f["file"])
            assert "README.md" in {f["file"] for f in doc["files"]}
            assert (root / f"{doc['name']}-{target}.zip").is_file()


# ---------------------------------------------------------------- android

def test_android_metadata_is_readable_with_the_schema(app_packages):
    from converters.emitters.tflite.metadata import METADATA_NAME, associated_files, read_model_metadata
    from edgeinfer.backends.tflite_metadata import read_metadata

    path = app_packages["digits"] / "android" / "digits-fp32.tflite"
    data = path.read_bytes()
    entries = read_metadata(path)
    assert entries["edgeinfer_layout"] == b"NHWC"          # the emitter's entry survives
    meta = read_model_metadata(entries[METADATA_NAME])
    assert meta.name == b"digits" and meta.minParserVersion == b"1.0.0"
    inp = meta.subgraphMetadata[0].inputTensorMetadata[0]
    props = inp.content.contentProperties
    assert props.colorSpace == 1 and (props.defaultSize.width, props.defaultSize.height) == (32, 32)   # RGB
    norm = inp.processUnits[0].options
    assert np.allclose(norm.mean, [127.5] * 3) and np.allclose(norm.std, [127.5] * 3)   # 0..255 units
    out = meta.subgraphMetadata[0].outputTensorMetadata[0]
    assert out.associatedFiles[0].name == b"labels.txt" and out.associatedFiles[0].type == 2   # TENSOR_AXIS_LABELS
    files = associated_files(data)
    assert files["labels.txt"].decode().split() == [str(i) for i in range(10)]
    import zipfile, io
    assert all(i.compress_type == zipfile.ZIP_STORED for i in zipfile.ZipFile(io.BytesIO(data)).infolist())


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_android_classifier_rgb_input_and_softmax(package_bundles, app_packages, precision):
    """RGB variant + SOFTMAX equal the bundle's gray model + runtime softmax on the same pixels."""
    from ai_edge_litert.interpreter import Interpreter

    from edgeinfer.postprocess import softmax

    rng = np.random.default_rng(3)
    gray = rng.integers(0, 256, size=(32, 32)).astype(np.float32)
    x_gray = (gray / 255 - 0.5) / 0.5

    def run(path, x):
        it = Interpreter(model_path=str(path))
        it.allocate_tensors()
        d = it.get_input_details()[0]
        it.set_tensor(d["index"], x.astype(np.float32))
        it.invoke()
        return [it.get_tensor(o["index"]) for o in it.get_output_details()]

    ref = softmax(run(package_bundles["digits"] / f"digits-{precision}.tflite", x_gray[None, :, :, None])[0])
    app = app_packages["digits"] / "android" / f"digits-{precision}.tflite"
    got = run(app, np.repeat(x_gray[None, :, :, None], 3, axis=3))
    assert len(got) == 1 and got[0].shape == (1, 10)
    np.testing.assert_allclose(got[0], ref, atol=1e-6)
    assert abs(float(got[0].sum()) - 1) < 1e-5
    # a colour pixel goes through the runtime's own luma weights (PIL "L")
    from edgeinfer.preprocess import normalize, PreprocessConfig
    rgb = rng.integers(0, 256, size=(32, 32, 3)).astype(np.uint8)
    from PIL import Image
    cfg = PreprocessConfig.from_dict(json.loads((package_bundles["digits"] / "manifest.json").read_text())["preprocess"])
    x_l = normalize(np.asarray(Image.fromarray(rgb).convert("L")), cfg)[0]
    ref_c = softmax(run(package_bundles["digits"] / f"digits-{precision}.tflite", x_l[None, :, :, None])[0])
    got_c = run(app, ((rgb.astype(np.float32) - 127.5) / 127.5)[None])[0]
    assert int(got_c.argmax()) == int(ref_c.argmax()) and np.abs(got_c - ref_c).max() < 0.02   # PIL rounds L to 8 bits


def test_android_detector_matches_runtime(package_bundles, app_packages):
    """The 4-output TFLite_Detection_PostProcess form (run in LiteRT) gives the runtime's detections."""
    from ai_edge_litert.interpreter import Interpreter

    app = app_packages["det"] / "android" / "shapes_det-fp32.tflite"
    it = Interpreter(model_path=str(app))
    it.allocate_tensors()
    assert [o["name"] for o in it.get_output_details()] == ["location", "category", "score", "number of detections"]
    pred = Predictor(package_bundles["det"], artifact="shapes_det-fp32.tflite")
    from PIL import Image
    total = 0
    for img in _square_images():
        px = np.asarray(Image.open(img).convert("RGB"), np.float32) / 255.0
        it.set_tensor(it.get_input_details()[0]["index"], px[None])
        it.invoke()
        outs = [it.get_tensor(o["index"]) for o in it.get_output_details()]
        n = int(outs[3][0])
        ref = pred.predict([img])[0].detections
        assert n == len(ref), img
        for k, d in enumerate(ref):
            y0, x0, y1, x1 = np.clip(outs[0][0, k], 0, 1) * 128     # apps clip to the image, like the runtime
            assert int(outs[1][0, k]) == d.class_id and abs(outs[2][0, k] - d.score) < 1e-4
            assert _iou((x0, y0, x1, y1), d.box) > 0.99
        total += n
    assert total > 0


# ---------------------------------------------------------------- ios

def test_bundle_coreml_records_postprocess(package_bundles):
    """The emitter writes the bundle's postprocess config (it used to be always {})."""
    from converters.package.common import lean_imports
    with lean_imports():
        import coremltools as ct
    for key, name in (("digits", "digits-fp32.mlpackage"), ("det", "shapes_det-fp32.mlpackage")):
        manifest = json.loads((package_bundles[key] / "manifest.json").read_text())
        m = ct.models.MLModel(str(package_bundles[key] / name), skip_model_load=True)
        assert json.loads(m.user_defined_metadata["edgeinfer.postprocess"]) == manifest["postprocess"]


def test_ios_classifier_preview_type_and_descriptions(app_packages):
    from converters.package.common import lean_imports
    with lean_imports():
        import coremltools as ct
    m = ct.models.MLModel(str(app_packages["digits"] / "ios" / "digits-fp32.mlpackage"), skip_model_load=True)
    assert m.user_defined_metadata["com.apple.coreml.model.preview.type"] == "imageClassifier"
    assert json.loads(m.user_defined_metadata["edgeinfer.postprocess"])["kind"] == "classify"
    spec = m.get_spec()
    assert spec.description.input[0].shortDescription and all(o.shortDescription for o in spec.description.output)


def test_ios_detector_pipeline_matches_runtime(package_bundles, app_packages):
    """Pipeline(ML Program, head ML Program, NonMaximumSuppression): MIL evaluator + the NMS stage's
    parameters give the runtime's detections."""
    from converters.package.common import lean_imports
    from converters.package.ios import evaluate_detector
    from edgeinfer.preprocess import PreprocessConfig, preprocess_image
    with lean_imports():
        import coremltools as ct

    pkg = app_packages["det"] / "ios" / "shapes_det-fp32.mlpackage"
    spec = ct.models.MLModel(str(pkg), skip_model_load=True).get_spec()
    stages = [s.WhichOneof("Type") for s in spec.pipeline.models]
    assert stages == ["mlProgram", "mlProgram", "nonMaximumSuppression"]
    nms = spec.pipeline.models[2].nonMaximumSuppression
    assert list(nms.stringClassLabels.vector) == ["circle", "square", "triangle", "cross"]
    assert nms.pickTop.perClass and abs(nms.iouThreshold - 0.45) < 1e-9 and abs(nms.confidenceThreshold - 0.25) < 1e-9
    assert [o.name for o in spec.description.output] == ["confidence", "coordinates"]
    assert spec.description.metadata.userDefined["com.apple.coreml.model.preview.type"] == "objectDetector"
    manifest = json.loads((package_bundles["det"] / "manifest.json").read_text())
    cfg = PreprocessConfig.from_dict(manifest["preprocess"])
    pred = Predictor(package_bundles["det"], artifact="shapes_det-fp32.onnx")
    imgs = _square_images(3)
    x = np.stack([preprocess_image(p, cfg, (128, 128))[0] for p in imgs])
    for img, (boxes, scores, ids) in zip(imgs, evaluate_detector(pkg, x, manifest["postprocess"])):
        ref = pred.predict([img])[0].detections
        assert len(ref) == len(boxes) > 0
        for d, b, s, c in zip(ref, boxes, scores, ids):
            assert int(c) == d.class_id and abs(float(s) - d.score) < 2e-3 and _iou(np.clip(b, 0, 128), d.box) > 0.98


# ---------------------------------------------------------------- ort-mobile

def test_ort_mobile_files_and_equality(package_bundles, app_packages):
    import onnxruntime as ort

    folder = app_packages["digits"] / "ort-mobile"
    doc = json.loads((folder / "package.json").read_text())
    assert doc["target_platform"] == "amd64"                     # x86-64 profile
    config = (folder / "required_operators_and_types.config").read_text()
    assert "ai.onnx;" in config and "Gemm" in config
    readme = (folder / "README.md").read_text()
    assert "NNAPI" in readme and "CoreML" in readme
    x = np.random.default_rng(0).uniform(-1, 1, (1, 1, 32, 32)).astype(np.float32)
    for p in ("fp32", "int8"):
        a = ort.InferenceSession(str(folder / f"digits-{p}.ort"), providers=["CPUExecutionProvider"])
        b = ort.InferenceSession(str(package_bundles["digits"] / f"digits-{p}.onnx"), providers=["CPUExecutionProvider"])
        ya = a.run(None, {a.get_inputs()[0].name: x})[0]
        yb = b.run(None, {b.get_inputs()[0].name: x})[0]
        assert np.abs(ya - yb).max() <= 1e-5
        assert doc["checks"][f"digits-{p}.ort"]["max_abs_diff_vs_onnx_artifact"] <= 1e-5
        assert set(doc["checks"][f"digits-{p}.ort"]["ep_usability"]) >= {"NNAPI", "CoreML MLProgram"}


def test_arm_profile_gets_arm_ort(package_bundles, tmp_path):
    from converters.package.common import Bundle
    from converters.package.ort_mobile import target_platform
    m = json.loads((package_bundles["digits"] / "manifest.json").read_text())
    m["profile"]["arch"] = "arm64"
    assert target_platform(Bundle(package_bundles["digits"], m)) == "arm"


# ---------------------------------------------------------------- bad input

def test_missing_artifact_is_one_line_and_writes_nothing(package_bundles, tmp_path):
    only_onnx = tmp_path / "b"
    shutil.copytree(package_bundles["digits"], only_onnx)
    m = json.loads((only_onnx / "manifest.json").read_text())
    m["artifacts"] = [a for a in m["artifacts"] if a["format"] == "onnx"]
    (only_onnx / "manifest.json").write_text(json.dumps(m))
    for target, fmt in (("android", "tflite"), ("ios", "coreml"), ("all", "tflite")):
        r = edgeinfer_cli("package", only_onnx, "--target", target, "-o", tmp_path / "out")
        assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
        assert f"needs a {fmt} artifact" in r.stderr and "--formats" in r.stderr
        assert not (tmp_path / "out").exists()


def test_existing_output_refused_without_force(package_bundles, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    r = edgeinfer_cli("package", package_bundles["digits"], "--target", "ort-mobile", "-o", out)
    assert r.returncode == 2 and "--force" in r.stderr and r.stderr.count("\n") == 1
    assert (out / "keep.txt").exists()
    r = edgeinfer_cli("package", package_bundles["digits"], "--target", "ort-mobile", "-o", out, "--force", "--quiet")
    assert r.returncode == 0, r.stderr
    assert not (out / "keep.txt").exists() and (out / "ort-mobile" / "package.json").exists()


def test_unknown_target_and_not_a_bundle(package_bundles, tmp_path):
    r = edgeinfer_cli("package", package_bundles["digits"], "--target", "windows", "-o", tmp_path / "o")
    assert r.returncode == 2 and "unknown package target 'windows'" in r.stderr
    r = edgeinfer_cli("package", tmp_path, "--target", "all", "-o", tmp_path / "o")
    assert r.returncode == 2 and "not an edgeinfer bundle" in r.stderr


def test_convert_package_flag(tmp_path):
    r = edgeinfer_cli("convert", DIGITS / "digits.onnx", "--profile", "generic-x86-64", "--formats", "onnx",
                      "--quant", "fp32", "-o", tmp_path, "--package", "android", "--quiet")
    assert r.returncode == 2 and "--package android needs the tflite format" in r.stderr
    assert not any(tmp_path.iterdir())
    r = edgeinfer_cli("convert", DIGITS / "digits.onnx", "--profile", "generic-x86-64", "--formats", "onnx,tflite",
                      "--quant", "fp32", "-o", tmp_path, "--package", "android,ort-mobile", "--quiet")
    assert r.returncode == 0, r.stderr
    pkg = tmp_path / "digits-generic-x86-64-package"
    assert (pkg / "android" / "digits-fp32.tflite").is_file() and (pkg / "ort-mobile" / "digits-fp32.ort").is_file()


def test_android_bgr_model_gets_rgb_input(tmp_path):
    """A BGR bundle: the packaged model takes RGB and swaps channels in the graph (exactly)."""
    from ai_edge_litert.interpreter import Interpreter

    edgeinfer_cli("convert", DET / "shapes_det.onnx", "--profile", "generic-x86-64", "--formats", "tflite", "--quant", "fp32",
                  "--color", "bgr", "-o", tmp_path, "--quiet", check=True)
    bundle = tmp_path / "shapes_det-generic-x86-64"
    edgeinfer_cli("package", bundle, "--target", "android", "-o", tmp_path / "pkg", "--quiet", check=True)
    doc = json.loads((tmp_path / "pkg" / "android" / "package.json").read_text())
    assert any("channel swap" in n for n in doc["notes"])

    def raw_head(path, x):
        it = Interpreter(model_path=str(path))
        it.allocate_tensors()
        it.set_tensor(it.get_input_details()[0]["index"], x)
        it.invoke()
        return [it.get_tensor(o["index"]) for o in it.get_output_details()]

    from PIL import Image
    rgb = np.asarray(Image.open(_square_images(1)[0]).convert("RGB"), np.float32)[None] / 255.0
    ref = raw_head(bundle / "shapes_det-fp32.tflite", np.ascontiguousarray(rgb[..., ::-1]))[0]   # the bundle takes BGR
    from converters.emitters.tflite.edit import EditableModel
    em = EditableModel((tmp_path / "pkg" / "android" / "shapes_det-fp32.tflite").read_bytes())
    assert em.shape(em.inputs[0]) == [1, 128, 128, 3]
    got = raw_head(tmp_path / "pkg" / "android" / "shapes_det-fp32.tflite", rgb)
    boxes, classes, scores, count = got
    pred_scores = ref[0, 4:].max(axis=0)
    top = np.sort(pred_scores[pred_scores > 0.25])[::-1]
    assert int(count[0]) > 0 and abs(float(scores[0, 0]) - float(top[0])) < 1e-6
