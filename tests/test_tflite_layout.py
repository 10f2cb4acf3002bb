"""Layout propagation: NHWC conv chains carry no TRANSPOSE; the input layout is recorded and honoured."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from tflite_util import convert, ort_run, tiny_cnn

from edgeinfer.backends import BackendOptions, open_backend

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from model_zoo import build_tiny_cnn  # noqa: E402

from converters.clean import clean_model  # noqa: E402


def test_conv_chain_has_no_transpose_with_nhwc_input(tmp_path):
    art = convert(tiny_cnn(), tmp_path)
    ops = art.details["op_counts"]
    assert "TRANSPOSE" not in ops
    assert ops["CONV_2D"] == 2 and ops["DEPTHWISE_CONV_2D"] == 1 and ops["ADD"] == 1
    assert "RELU" not in ops and "RELU6" not in ops          # fused into the convolutions


def test_nchw_input_costs_exactly_one_transpose_at_the_edge(tmp_path):
    model = tiny_cnn()
    art = convert(model, tmp_path, layout="NCHW")
    assert art.details["op_counts"].get("TRANSPOSE") == 1
    be = open_backend("tflite", art.path, BackendOptions(threads=1))
    assert be.input_layout == "NCHW" and be.input_shape == [1, 3, 16, 16]
    x = np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype(np.float32)
    np.testing.assert_allclose(be.run(x)[0], ort_run(model, {"x": x})[0], rtol=1e-5, atol=1e-5)


def test_nhwc_layout_is_read_back_from_metadata(tmp_path):
    art = convert(tiny_cnn(), tmp_path, layout="NHWC")
    be = open_backend("tflite", art.path)
    assert art.input_layout == "NHWC" and be.input_layout == "NHWC" and be.input_shape == [1, 16, 16, 3]


def test_zoo_model_with_bn_and_symbolic_batch_runs_larger_batches(tmp_path):
    model = clean_model(build_tiny_cnn())                      # batch "N", BN folded by the cleaner
    art = convert(model, tmp_path)
    assert "TRANSPOSE" not in art.details["op_counts"]
    x = np.random.default_rng(1).standard_normal((5, 3, 16, 16)).astype(np.float32)
    ref = ort_run(model, {"input": x})[0]
    be = open_backend("tflite", art.path, BackendOptions(threads=1))
    np.testing.assert_allclose(be.run(np.ascontiguousarray(x.transpose(0, 2, 3, 1)))[0], ref, rtol=1e-5, atol=1e-5)
    assert list(be._input["shape"]) == [5, 16, 16, 3]           # one resized call, not a loop
