"""Float islands in full-int8 TFLite: a node kept in float (``nodes_to_exclude``) whose output is a graph
output must stay float32, like ORT's QDQ model does, instead of being requantized to one int8 scale.

The graph is a miniature YOLOv8 head: box pixels (-100..500) and sigmoid scores (0..1) joined by a
Concat. With one int8 scale for the Concat (~2.3) every score rounds to 0 or 2.3.
"""
from __future__ import annotations

import numpy as np
import pytest
from onnx import helper
from tflite_util import convert, make_model, ort_run, run_tflite

from converters.calibrate import calibrate
from converters.quantize_onnx import quantize_int8
from edgeinfer.backends import BackendOptions, open_backend

N = 64


def _head(with_int8_consumer: bool):
    r = np.random.default_rng(5)
    inits = {
        "w": r.normal(0, 0.8, (8, 4, 1, 1)).astype(np.float32), "b": r.normal(0, 0.2, 8).astype(np.float32),
        "shape": np.array([1, 8, N], np.int64), "stride": np.array([50.0], np.float32),
        "anchors": np.tile(np.linspace(0, 400, N, dtype=np.float32), (1, 4, 1)),
        "s0": np.array([0], np.int64), "s4": np.array([4], np.int64), "s8": np.array([8], np.int64),
        "ax1": np.array([1], np.int64), "half": np.array([0.5], np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["h"], name="conv"),
        helper.make_node("Reshape", ["h", "shape"], ["flat"], name="flat"),
        helper.make_node("Slice", ["flat", "s0", "s4", "ax1"], ["raw_box"], name="slice_box"),
        helper.make_node("Slice", ["flat", "s4", "s8", "ax1"], ["raw_cls"], name="slice_cls"),
        helper.make_node("Mul", ["raw_box", "stride"], ["scaled"], name="mul"),
        helper.make_node("Add", ["scaled", "anchors"], ["boxes"], name="add"),
        helper.make_node("Sigmoid", ["raw_cls"], ["scores"], name="sig"),
        helper.make_node("Concat", ["boxes", "scores"], ["out"], name="cat", axis=1),
    ]
    outputs = [("out", [1, 8, N])]
    if with_int8_consumer:
        nodes.append(helper.make_node("Mul", ["out", "half"], ["out_half"], name="after"))
        outputs.append(("out_half", [1, 8, N]))
    model = make_model(nodes, [("x", [1, 4, 8, 8])], outputs, inits)
    x = np.random.default_rng(1).uniform(-1, 1, (48, 4, 8, 8)).astype(np.float32)
    return model, calibrate(model, x[:32], progress=False), x[32:]


def _runs(model, x, feeds_out=0):
    return np.concatenate([ort_run(model, {"x": s[None]})[feeds_out] for s in x])


@pytest.mark.parametrize("with_int8_consumer", [False, True])
def test_kept_float_concat_output_matches_ort_qdq(tmp_path, with_int8_consumer):
    model, calib, x = _head(with_int8_consumer)
    ref32 = _runs(model, x)
    ref8 = _runs(quantize_int8(model, calib, nodes_to_exclude=["cat"]), x)
    art = convert(model, tmp_path, "int8", calib=calib, layout="NCHW", nodes_to_exclude=["cat"])
    out = np.concatenate([run_tflite(art.path, s[None])[0] for s in x])
    box_step = (calib.ranges["boxes"][1] - calib.ranges["boxes"][0]) / 255
    # scores keep their own 1/256 grid: close to fp32 and to ORT's QDQ model (a shared int8 scale
    # for the Concat would make them 0 or ~2.3 apart)
    assert np.abs(out[:, 4:] - ref32[:, 4:]).max() < 0.02
    if not with_int8_consumer:   # (ORT's QDQ model also rounds the output to the Concat scale when an int8 op reads it)
        # (3 steps: both apply bias correction, but TFLite's integer requantization rounds on its own)
        assert np.abs(out[:, 4:] - ref8[:, 4:]).max() <= 3 / 256 + 1e-6
    assert len(np.unique(out[:, 4:])) > 50
    assert np.abs(out[:, :4] - ref8[:, :4]).max() <= 2 * box_step
    be = open_backend("tflite", art.path, BackendOptions(threads=1))
    dtypes = {d["name"]: d["dtype"] for d in be.interp.get_output_details()}
    assert dtypes["out"] == np.float32
    if with_int8_consumer:                 # the int8 consumer gets a QUANTIZEd copy; the output stays float
        assert art.details["op_counts"]["QUANTIZE"] >= 2
        half = np.concatenate([run_tflite(art.path, s[None])[1] for s in x])
        half_step = (calib.ranges["out_half"][1] - calib.ranges["out_half"][0]) / 255
        half8 = _runs(quantize_int8(model, calib, nodes_to_exclude=["cat"]), x, 1)
        assert np.abs(half - half8).max() <= 3 * half_step


def test_chained_float_nodes_pass_float_between_them_and_int8_io(tmp_path):
    model, calib, x = _head(False)
    art = convert(model, tmp_path, "int8", calib=calib, layout="NCHW", nodes_to_exclude=["sig", "cat"], io_dtype="int8")
    be = open_backend("tflite", art.path, BackendOptions(threads=1))
    names = {d["name"] for d in be.interp.get_tensor_details()}
    assert "scores_q" not in names                       # Sigmoid -> Concat stays float, no QUANTIZE in between
    assert be.interp.get_input_details()[0]["dtype"] == np.int8
    assert be.interp.get_output_details()[0]["dtype"] == np.float32
    assert any("stays float32" in n for n in art.notes)
    out = np.concatenate([be.run(s[None])[0] for s in x])
    ref32 = _runs(model, x)
    assert np.abs(out[:, 4:] - ref32[:, 4:]).max() < 0.02
