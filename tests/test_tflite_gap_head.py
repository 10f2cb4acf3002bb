"""GlobalAveragePool -> Flatten/Reshape([N, C]) heads become one MEAN(keep_dims=False) feeding FULLY_CONNECTED."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from ai_edge_litert import schema_py_generated as fb
from onnx import helper
from PIL import Image
from tflite_util import calibration, convert, make_model, ort_run, run_tflite

from converters.clean import clean_model
from converters.quant_math import qparams_from_range

DIGITS = Path(__file__).resolve().parents[1] / "samples" / "digits"
OP_NAMES = {v: k for k, v in vars(fb.BuiltinOperator).items() if not k.startswith("_")}


def _ops(path) -> tuple[fb.SubGraphT, list[tuple[str, fb.OperatorT]]]:
    """(subgraph, [(op name, operator)]) of the single-subgraph .tflite at ``path``."""
    m = fb.ModelT.InitFromPackedBuf(Path(path).read_bytes(), 0)
    codes = [OP_NAMES[max(c.builtinCode, c.deprecatedBuiltinCode)] for c in m.operatorCodes]
    sg = m.subgraphs[0]
    return sg, [(codes[op.opcodeIndex], op) for op in sg.operators]


def _digits_batch(n: int, folder: str = "heldout") -> np.ndarray:
    """``n`` digits images spread over ``folder`` in the model's preprocessing: gray, 32x32, (x/255 - 0.5)/0.5, NCHW."""
    files = sorted((DIGITS / folder).rglob("*.png"))
    files = files[::max(1, len(files) // n)][:n]            # spread over the classes
    x = [np.asarray(Image.open(f).convert("L").resize((32, 32), Image.BILINEAR), np.float32) for f in files]
    return ((np.stack(x)[:, None] / 255.0 - 0.5) / 0.5).astype(np.float32)


def _mean_feeds_fc(path) -> fb.OperatorT:
    """Assert MEAN(keep_dims=False)'s output is FULLY_CONNECTED's input with no RESHAPE; return the MEAN."""
    sg, ops = _ops(path)
    names = [n for n, _ in ops]
    assert "RESHAPE" not in names, names
    (mean,) = [op for n, op in ops if n == "MEAN"]
    (fc,) = [op for n, op in ops if n == "FULLY_CONNECTED"]
    assert not mean.builtinOptions.keepDims
    assert fc.inputs[0] == mean.outputs[0]
    assert list(sg.tensors[mean.outputs[0]].shape) == [1, 128]
    return mean


def test_digits_head_is_mean_then_fully_connected_and_matches_ort(tmp_path):
    model = clean_model(onnx.load(DIGITS / "digits.onnx"))
    art = convert(model, tmp_path)
    _mean_feeds_fc(art.path)
    assert art.details["op_versions"]["MEAN"] == 1
    x = _digits_batch(4)
    got = run_tflite(art.path, x)[0]                        # batch 4: the pinned batch is resized
    np.testing.assert_allclose(got, ort_run(model, {"input": x})[0], rtol=1e-5, atol=1e-5)


def test_digits_int8_mean_takes_the_flatten_range(tmp_path):
    model = clean_model(onnx.load(DIGITS / "digits.onnx"))
    calib = calibration(model, _digits_batch(16, "calib"))
    art = convert(model, tmp_path, "int8", calib=calib)
    mean = _mean_feeds_fc(art.path)
    sg, _ = _ops(art.path)
    flat = next(n.output[0] for n in model.graph.node if n.op_type == "Flatten")
    q = sg.tensors[mean.outputs[0]].quantization
    s, z = qparams_from_range(*calib.ranges[flat], "int8")
    assert np.isclose(q.scale[0], s) and q.zeroPoint[0] == z
    assert art.details["op_versions"]["MEAN"] == 2
    x = _digits_batch(16)
    ref = ort_run(model, {"input": x})[0]
    got = run_tflite(art.path, x)[0]
    assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.9
    assert np.abs(got - ref).max() < 0.1 * np.abs(ref).max()


def _gap_head(head: str, extra_reader: bool) -> onnx.ModelProto:
    r = np.random.default_rng(3)
    inits = {"w": r.standard_normal((6, 3, 3, 3)).astype(np.float32), "fc": r.standard_normal((4, 6)).astype(np.float32),
             "shp": np.array([1, 6], np.int64)}
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("GlobalAveragePool", ["c"], ["g"]),
             helper.make_node("Flatten", ["g"], ["f"]) if head == "Flatten" else helper.make_node("Reshape", ["g", "shp"], ["f"]),
             helper.make_node("Gemm", ["f", "fc"], ["y"], transB=1)]
    outputs = [("y", [1, 4])]
    if extra_reader:
        nodes.append(helper.make_node("Relu", ["g"], ["g2"]))
        outputs.append(("g2", [1, 6, 1, 1]))
    return make_model(nodes, [("x", [1, 3, 8, 8])], outputs, inits)


def test_reshape_head_is_folded_and_a_shared_gap_is_not(tmp_path):
    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)
    folded = _gap_head("Reshape", extra_reader=False)
    art = convert(folded, tmp_path, name="folded.tflite")
    assert "RESHAPE" not in art.details["op_counts"]
    np.testing.assert_allclose(run_tflite(art.path, x)[0], ort_run(folded, {"x": x})[0], rtol=1e-5, atol=1e-5)

    shared = _gap_head("Flatten", extra_reader=True)
    art = convert(shared, tmp_path, name="shared.tflite")
    _, ops = _ops(art.path)
    (mean,) = [op for n, op in ops if n == "MEAN"]
    assert mean.builtinOptions.keepDims and "RESHAPE" in art.details["op_counts"]
    for got, ref in zip(run_tflite(art.path, x), ort_run(shared, {"x": x})):
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_float_island_head_keeps_its_own_op(tmp_path):
    model = _gap_head("Flatten", extra_reader=False)
    xs = np.random.default_rng(1).standard_normal((8, 3, 8, 8)).astype(np.float32)
    art = convert(model, tmp_path, "int8", calib=calibration(model, xs), nodes_to_exclude=["f"])
    assert "RESHAPE" in art.details["op_counts"]
    got, ref = run_tflite(art.path, xs[:1])[0], ort_run(model, {"x": xs[:1]})[0]
    assert np.abs(got - ref).max() < 0.1 * np.abs(ref).max()
