"""Unsupported ops, attributes and dynamic shapes: one-line EdgeInferError naming node and op; nothing written."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import helper
from tflite_util import convert, make_model

from edgeinfer.errors import EdgeInferError

X = [("x", [1, 4, 8, 8])]


def _expect_error(model, tmp_path, *fragments, **kw):
    with pytest.raises(EdgeInferError) as info:
        convert(model, tmp_path, **kw)
    msg = str(info.value)
    assert "\n" not in msg
    for f in fragments:
        assert f in msg, msg
    assert list(tmp_path.iterdir()) == []            # nothing written, not even a temp file
    return msg


def test_unsupported_op_names_node_op_and_supported_list(tmp_path):
    m = make_model([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Erf", ["r"], ["y"], name="the_erf")],
                   X, [("y", [1, 4, 8, 8])])
    msg = _expect_error(m, tmp_path, "the_erf", "'Erf'", "supported:", "Conv")
    assert "Resize" in msg


def test_unsupported_attribute(tmp_path):
    m = make_model([helper.make_node("Resize", ["x", "", "", "s"], ["y"], mode="cubic", name="up")],
                   X, [("y", [1, 4, 16, 16])], {"s": np.array([1, 4, 16, 16], np.int64)})
    _expect_error(m, tmp_path, "'up'", "(Resize)", "cubic", "supported: nearest, linear")


def test_dynamic_spatial_dimension(tmp_path):
    m = make_model([helper.make_node("Relu", ["x"], ["y"])], [("x", [1, 4, "h", 8])], [("y", [1, 4, "h", 8])])
    _expect_error(m, tmp_path, "'x'", "dynamic dimension 2", "only the batch dimension")


def test_int8_without_calibration(tmp_path):
    m = make_model([helper.make_node("Relu", ["x"], ["y"])], X, [("y", [1, 4, 8, 8])])
    _expect_error(m, tmp_path, "calibration", precision="int8")


def test_unknown_precision_and_layout(tmp_path):
    m = make_model([helper.make_node("Relu", ["x"], ["y"])], X, [("y", [1, 4, 8, 8])])
    _expect_error(m, tmp_path, "'int2'", "fp32, fp16, int8, int4", precision="int2")
    _expect_error(m, tmp_path, "'CHWN'", layout="CHWN")
