"""The committed digits sample model and the tools/model_zoo.py builders (no torch needed)."""
from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from PIL import Image

from edgeinfer.preprocess import PreprocessConfig, preprocess_image

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "samples" / "digits"
sys.path.insert(0, str(ROOT / "tools"))

import model_zoo  # noqa: E402


def _session(model) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def digits_model() -> onnx.ModelProto:
    return onnx.load(str(DIGITS / "digits.onnx"))


@pytest.fixture(scope="module")
def digits_meta(digits_model) -> dict[str, str]:
    return {p.key: p.value for p in digits_model.metadata_props}


def _predict(paths: list[Path], meta: dict[str, str]) -> np.ndarray:
    cfg = PreprocessConfig.from_dict(json.loads(meta["edgeinfer.preprocess"]))
    x = np.stack([preprocess_image(p, cfg, (32, 32))[0] for p in paths])
    return _session(DIGITS / "digits.onnx").run(None, {"input": x})[0].argmax(1)


# ---------------------------------------------------------------- digits sample


def test_digits_graph_keeps_batchnorm_and_io(digits_model):
    onnx.checker.check_model(digits_model, full_check=True)
    ops = Counter(n.op_type for n in digits_model.graph.node)
    assert ops["BatchNormalization"] >= 5 and ops["Conv"] == ops["BatchNormalization"]
    assert any(a.name == "group" and a.i > 1 for n in digits_model.graph.node if n.op_type == "Conv"
               for a in n.attribute), "no depthwise convolution"
    assert {o.version for o in digits_model.opset_import if o.domain in ("", "ai.onnx")} == {17}
    (inp,), (out,) = digits_model.graph.input, digits_model.graph.output
    assert inp.name == "input" and out.name == "logits"
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert dims == ["N", 1, 32, 32]
    assert [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim] == ["N", 10]


def test_digits_metadata_is_valid_json(digits_meta):
    cfg = PreprocessConfig.from_dict(json.loads(digits_meta["edgeinfer.preprocess"]))
    assert (cfg.color, cfg.resize_mode, cfg.resize, cfg.mean, cfg.std) == ("gray", "stretch", 32, [0.5], [0.5])
    assert cfg.scale == pytest.approx(1 / 255)
    labels = json.loads(digits_meta["edgeinfer.labels"])
    assert labels == (DIGITS / "labels.txt").read_text().split() == [str(i) for i in range(10)]
    assert digits_meta["edgeinfer.task"] == "classify"


def test_digits_heldout_accuracy_at_least_95():
    paths = sorted((DIGITS / "heldout").glob("*/*.png"))
    assert len(paths) > 300 and {p.parent.name for p in paths} == {str(i) for i in range(10)}
    meta = {p.key: p.value for p in onnx.load(str(DIGITS / "digits.onnx")).metadata_props}
    pred = _predict(paths, meta)
    truth = np.array([int(p.parent.name) for p in paths])
    acc = float((pred == truth).mean())
    assert acc >= 0.95, f"held-out top-1 {acc:.4f}"


def test_digits_batch_dim_is_dynamic():
    x = np.random.default_rng(0).standard_normal((5, 1, 32, 32)).astype(np.float32)
    sess = _session(DIGITS / "digits.onnx")
    batched = sess.run(None, {"input": x})[0]
    single = np.concatenate([sess.run(None, {"input": x[i:i + 1]})[0] for i in range(5)])
    assert batched.shape == (5, 10)
    np.testing.assert_allclose(batched, single, rtol=1e-5, atol=1e-5)


def test_digits_sample_images_named_by_label_and_resized(digits_meta):
    names = {n: i for i, n in enumerate(
        ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"])}
    paths = sorted((DIGITS / "images").glob("*.png"))
    assert 4 <= len(paths) <= 10
    assert any(Image.open(p).size[0] > 32 for p in paths), "no image exercises resizing"
    pred = _predict(paths, digits_meta)
    assert [int(p) for p in pred] == [names[p.stem.split("_")[0]] for p in paths]


def test_digits_calib_comes_from_training_split():
    calib = {p.name for p in (DIGITS / "calib").glob("*.png")}
    heldout = {p.name for p in (DIGITS / "heldout").glob("*/*.png")}
    assert 50 <= len(calib) <= 200
    assert not calib & heldout


def test_digits_pngs_are_reproducible_from_load_digits():
    """The committed held-out PNGs are exactly what tools/train_digits.py makes from load_digits."""
    pytest.importorskip("sklearn")
    from sklearn.datasets import load_digits
    import train_digits  # torch is imported lazily there, only for training

    images = load_digits().images
    for p in sorted((DIGITS / "heldout").glob("*/*.png"))[::37]:
        index = int(p.stem.split("_")[1])
        expected = np.asarray(train_digits.digit_to_image(images[index], 32))
        np.testing.assert_array_equal(np.asarray(Image.open(p)), expected)
        assert load_digits().target[index] == int(p.parent.name)


# ---------------------------------------------------------------- model zoo


@pytest.mark.parametrize("build, shape, out_shape", [
    (lambda: model_zoo.build_tiny_cnn(), (2, 3, 16, 16), (2, 10)),
    (lambda: model_zoo.build_tiny_cnn(num_classes=4, channels=4, resolution=12, batch=1), (1, 3, 12, 12), (1, 4)),
    (lambda: model_zoo.build_mlp(hidden=64, layers=2, in_features=32), (3, 32), (3, 10)),
    (lambda: model_zoo.build_mlp(hidden=64, layers=2, in_features=32, use_gemm=False), (3, 32), (3, 10)),
    (lambda: model_zoo.build_mobilenetv2(width=0.35, resolution=64, num_classes=7), (2, 3, 64, 64), (2, 7)),
])
def test_zoo_builders_check_and_run(build, shape, out_shape):
    model = build()
    onnx.checker.check_model(model, full_check=True)
    assert [i.name for i in model.graph.input] == ["input"]
    assert [o.name for o in model.graph.output] == ["logits"]
    y = _session(model).run(None, {"input": np.random.default_rng(0).standard_normal(shape).astype(np.float32)})[0]
    assert y.shape == out_shape and np.isfinite(y).all() and y.std() > 0


def test_zoo_mobilenetv2_architecture():
    model = model_zoo.build_mobilenetv2()
    assert 3.4e6 <= model_zoo.count_parameters(model) <= 3.6e6
    ops = Counter(n.op_type for n in model.graph.node)
    assert ops["Conv"] == ops["BatchNormalization"] == 52
    assert ops["Clip"] == 35 and ops["Add"] == 10 and ops["Gemm"] == 1 and ops["GlobalAveragePool"] == 1
    depthwise = [n for n in model.graph.node if n.op_type == "Conv"
                 and next(a.i for a in n.attribute if a.name == "group") > 1]
    assert len(depthwise) == 17
    assert {o.version for o in model.opset_import} == {17}
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["N", 3, 224, 224]
    y = _session(model).run(None, {"input": np.random.default_rng(0).standard_normal((1, 3, 224, 224))
                                    .astype(np.float32)})[0]
    assert y.shape == (1, 1000) and np.isfinite(y).all()


def test_zoo_mlp_gemm_and_matmul_variants_agree():
    x = np.random.default_rng(1).standard_normal((4, 48)).astype(np.float32)
    gemm = model_zoo.build_mlp(hidden=96, layers=3, in_features=48, seed=3)
    matmul = model_zoo.build_mlp(hidden=96, layers=3, in_features=48, seed=3, use_gemm=False)
    assert Counter(n.op_type for n in gemm.graph.node)["Gemm"] == 4
    assert Counter(n.op_type for n in matmul.graph.node)["MatMul"] == 4
    np.testing.assert_allclose(_session(gemm).run(None, {"input": x})[0],
                               _session(matmul).run(None, {"input": x})[0], rtol=1e-5, atol=1e-5)


def test_zoo_is_seeded():
    a, b = model_zoo.build_tiny_cnn(seed=5), model_zoo.build_tiny_cnn(seed=5)
    assert a.SerializeToString() == b.SerializeToString()
    assert a.SerializeToString() != model_zoo.build_tiny_cnn(seed=6).SerializeToString()


def test_zoo_main_writes_file(tmp_path):
    out = tmp_path / "mlp.onnx"
    assert model_zoo.main(["mlp", str(out), "--hidden", "32", "--layers", "1", "--matmul", "--batch", "2"]) == 0
    model = onnx.load(str(out))
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 2
    assert "MatMul" in {n.op_type for n in model.graph.node}
    with pytest.raises(SystemExit):
        model_zoo.main(["tiny_cnn", str(out), "--width", "2"])
