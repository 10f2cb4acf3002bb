"""Bad input anywhere on the command line: one `error:` line, a non-zero exit, no traceback, nothing half-written."""
from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from conftest import DIGITS, ROOT, edgeinfer_cli
from edgeinfer.errors import EdgeInferError

PRE = {"color": "rgb", "resize": 8, "mean": [0.5] * 3, "std": [0.5] * 3}


def assert_one_error(proc, *words: str) -> str:
    """Non-zero exit, no traceback, exactly one stderr line and it is `error: ...` naming ``words``."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode not in (0, 3), proc.stderr  # 3 = internal error
    assert "Traceback" not in proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


def tiny_model(path, *, meta=None, op: str | None = None, out_4d: bool = False) -> str:
    """A 3x8x8 -> 4 conv classifier; ``op`` inserts one extra unary op, ``out_4d`` skips the pooling."""
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32), "W")
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1])]
    if op:
        nodes.append(helper.make_node(op, ["c"], ["c2"]))
    last = nodes[-1].output[0]
    if out_4d:
        nodes.append(helper.make_node("Identity", [last], ["y"]))
        out = [1, 4, 8, 8]
    else:
        nodes += [helper.make_node("GlobalAveragePool", [last], ["g"]), helper.make_node("Flatten", ["g"], ["y"])]
        out = [1, 4]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, out)], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for k, v in (meta if meta is not None else {"edgeinfer.preprocess": json.dumps(PRE)}).items():
        model.metadata_props.add(key=k, value=v)
    onnx.save(model, str(path))
    return str(path)


def leftovers(folder) -> list:
    return [p.name for p in folder.iterdir() if ".tmp-" in p.name or ".old-" in p.name] if folder.exists() else []


CONVERT = ("--profile", "generic-x86-64", "--formats", "onnx", "--quant", "fp32", "--quiet")


# ----------------------------------------------------------------------------- command line


def test_usage_errors_are_one_line():
    assert_one_error(edgeinfer_cli("run", "b", "x.png", "--top-k", "0"), "--top-k", "edgeinfer run --help")
    assert_one_error(edgeinfer_cli("frobnicate"), "frobnicate")
    assert_one_error(edgeinfer_cli("convert", "m.onnx"), "--profile")


# ----------------------------------------------------------------------------- convert


def test_convert_refuses_files_that_are_not_onnx(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "photo.png")
    (tmp_path / "m.tflite").write_bytes(b"\x1c\x00\x00\x00TFL3" + b"\0" * 64)
    assert_one_error(edgeinfer_cli("convert", tmp_path / "photo.png", *CONVERT, "-o", tmp_path / "o"), "an image")
    assert_one_error(edgeinfer_cli("convert", tmp_path / "m.tflite", *CONVERT, "-o", tmp_path / "o"), "TFLite")


def test_convert_output_path_is_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    assert_one_error(edgeinfer_cli("convert", DIGITS / "digits.onnx", *CONVERT, "-o", tmp_path / "f"), "is a file")
    assert (tmp_path / "f").read_text() == "x"


def test_convert_bad_metadata_and_labels(tmp_path):
    m = tiny_model(tmp_path / "m.onnx", meta={"edgeinfer.preprocess": "[1, 2]"})
    assert_one_error(edgeinfer_cli("convert", m, *CONVERT, "-o", tmp_path / "o"), "edgeinfer.preprocess", "JSON object")
    m = tiny_model(tmp_path / "m.onnx", meta={"edgeinfer.preprocess": json.dumps(dict(PRE, mean="x"))})
    assert_one_error(edgeinfer_cli("convert", m, *CONVERT, "-o", tmp_path / "o"), "mean")
    (tmp_path / "labels.txt").write_bytes(b"\xff\xfe\x00\x01")
    assert_one_error(edgeinfer_cli("convert", DIGITS / "digits.onnx", *CONVERT, "--labels", tmp_path / "labels.txt",
                                   "-o", tmp_path / "o"), "UTF-8")
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_convert_classifier_with_a_spatial_output(tmp_path):
    m = tiny_model(tmp_path / "m.onnx", out_4d=True)
    assert_one_error(edgeinfer_cli("convert", m, *CONVERT, "-o", tmp_path / "o"), "[1, 4, 8, 8]", "--task detect")


def test_convert_detection_flags_are_not_silently_ignored(tmp_path):
    digits = DIGITS / "digits.onnx"
    assert_one_error(edgeinfer_cli("convert", digits, *CONVERT, "--score-threshold", "0.5", "-o", tmp_path / "o"),
                     "--score-threshold", "classifier")
    assert_one_error(edgeinfer_cli("convert", digits, *CONVERT, "--anchors", tmp_path / "a.json", "-o", tmp_path / "o"),
                     "--decoder")
    det = ROOT / "samples" / "detector" / "shapes_det.onnx"   # decoder from the model's metadata
    assert_one_error(edgeinfer_cli("convert", det, *CONVERT, "--score-threshold", "5", "-o", tmp_path / "o"),
                     "score_threshold")


def test_convert_keep_float_names_a_missing_node(tmp_path):
    proc = edgeinfer_cli("convert", DIGITS / "digits.onnx", "--profile", "generic-x86-64", "--formats", "onnx",
                         "--quant", "int8", "--calib", DIGITS / "calib", "--keep-float", "no_such_node", "--quiet",
                         "-o", tmp_path / "o")
    assert_one_error(proc, "no_such_node")
    assert leftovers(tmp_path / "o") == [] and not (tmp_path / "o" / "digits-generic-x86-64").exists()


def test_convert_second_profile_failing_leaves_no_bundle_at_all(tmp_path):
    src = (ROOT / "device_profiles" / "generic-x86-64.toml").read_text()
    for name, fmt in (("p1", "onnx"), ("p2", "tflite")):
        text = src.replace('name = "generic-x86-64"', f'name = "{name}"')
        text = text.replace('preferred = ["onnx", "tflite"]', f'preferred = ["{fmt}"]')
        (tmp_path / f"{name}.toml").write_text(text)
    m = tiny_model(tmp_path / "erf.onnx", op="Erf")  # ONNX runs Erf, the TFLite emitter refuses it
    out = tmp_path / "o"
    proc = edgeinfer_cli("convert", m, "--profile", tmp_path / "p1.toml", "--profile", tmp_path / "p2.toml",
                         "--quant", "fp32", "--quiet", "-o", out)
    assert_one_error(proc, "Erf")
    assert list(out.iterdir()) == []  # p1's finished bundle is not left behind either


def test_ort_load_failure_names_the_op_not_a_temp_path():
    from converters.clean import optimize_basic
    w = numpy_helper.from_array(np.ones((1, 3, 1, 1), np.float32), "W")
    graph = helper.make_graph([helper.make_node("Conv", ["x", "W"], ["c"]),
                               helper.make_node("FancyOp", ["c"], ["y"], domain="com.microsoft")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8
    with pytest.raises(EdgeInferError, match="FancyOp") as exc:
        optimize_basic(model)
    assert "in.onnx" not in str(exc.value) and "\n" not in str(exc.value)


# ----------------------------------------------------------------------------- run / inspect on broken bundles


def _broken_copy(bundle, tmp_path, edit):
    dst = tmp_path / "b"
    shutil.copytree(bundle, dst)
    m = json.loads((dst / "manifest.json").read_text())
    edit(m, dst)
    (dst / "manifest.json").write_text(json.dumps(m))
    return dst


@pytest.mark.parametrize("edit, words", [
    (lambda m, d: m.clear() or m.update(schema=1) or None, ("lacks",)),
    (lambda m, d: m.update(artifacts={"a": 1}), ("artifacts", "list")),
    (lambda m, d: [a.pop("file") for a in m["artifacts"]], ("artifact #1",)),
    (lambda m, d: m["input"].update(shape=[1, 1]), ("[N, C, H, W]",)),
    (lambda m, d: m.update(postprocess=None), ("postprocess",)),
    (lambda m, d: m["preprocess"].update(mean="x"), ("mean",)),
    (lambda m, d: m["preprocess"].update(resize="big"), ("resize",)),
    (lambda m, d: m["postprocess"].update(top_k="x"), ("top_k",)),
    (lambda m, d: (d / "labels.txt").write_text("a\nb\n"), ("2 labels", "10 scores")),
    (lambda m, d: (d / "labels.txt").write_bytes(b"\xff\xfe\x00"), ("UTF-8",)),
], ids=["empty", "artifacts-dict", "no-file", "shape", "post-null", "mean", "resize", "top-k", "labels-count", "labels-bin"])
def test_run_on_a_broken_manifest(digits_bundle, tmp_path, edit, words):
    bundle = _broken_copy(digits_bundle, tmp_path, edit)
    assert_one_error(edgeinfer_cli("run", bundle, DIGITS / "images" / sorted((DIGITS / "images").iterdir())[0].name),
                     *words)


def test_inspect_manifest_that_is_not_an_object(digits_bundle, tmp_path):
    bundle = tmp_path / "b"
    shutil.copytree(digits_bundle, bundle)
    (bundle / "manifest.json").write_text("[1]")
    assert_one_error(edgeinfer_cli("inspect", bundle), "JSON object")


def test_run_delegate_on_an_onnx_artifact(digits_bundle):
    image = sorted((DIGITS / "images").iterdir())[0]
    assert_one_error(edgeinfer_cli("run", digits_bundle, image, "--delegate", "gpu"), "TFLite", "--formats tflite")


def test_run_image_that_is_a_folder(digits_bundle, tmp_path):
    assert_one_error(edgeinfer_cli("run", digits_bundle, tmp_path), "folder")


# ----------------------------------------------------------------------------- odd but valid images


def test_16bit_png_is_scaled_not_clipped(tmp_path):
    from edgeinfer.preprocess import load_image
    ramp = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "r.png")
    for color in ("gray", "rgb"):
        got = np.asarray(load_image(tmp_path / "r.png", color), np.float32)
        want = np.rint(ramp / 257.0)
        np.testing.assert_allclose(got if got.ndim == 2 else got[..., 0], want, atol=1)


def test_rgba_cmyk_palette_and_exif_rotation(tmp_path):
    from edgeinfer.preprocess import load_image
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 24, 3), dtype=np.uint8))
    rgb.convert("RGBA").save(tmp_path / "a.png")
    rgb.convert("CMYK").save(tmp_path / "c.jpg")
    rgb.convert("P").save(tmp_path / "p.png")
    for name in ("a.png", "c.jpg", "p.png"):
        assert load_image(tmp_path / name, "rgb").mode == "RGB" and load_image(tmp_path / name, "gray").mode == "L"
    np.testing.assert_array_equal(np.asarray(load_image(tmp_path / "a.png", "rgb")), np.asarray(rgb))
    exif = rgb.getexif()
    exif[0x0112] = 6  # rotate 90 clockwise to display
    rgb.save(tmp_path / "r.jpg", exif=exif)
    assert load_image(tmp_path / "r.jpg", "rgb").size == (16, 24)


# ----------------------------------------------------------------------------- eval data


@pytest.mark.parametrize("gt, words", [
    ({"images": [], "annotations": [], "categories": []}, "no images"),
    ({"images": [{"id": 1}], "annotations": [], "categories": []}, "file_name"),
    ({"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [{"image_id": 1, "category_id": 1, "bbox": "x"}],
      "categories": [{"id": 1, "name": "a"}]}, "bbox"),
    ({"images": {}, "annotations": [], "categories": []}, "COCO-style"),
])
def test_eval_bad_coco(tmp_path, gt, words):
    from edgeinfer.evaluate import load_coco_set
    (tmp_path / "ann.json").write_text(json.dumps(gt))
    with pytest.raises(EdgeInferError, match=words):
        load_coco_set(tmp_path / "ann.json")
