"""The one-run int8 error ranking (converters.int8_error) that picks the keep-float search's candidates."""
import dataclasses

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from converters.activation_ranges import activation_floors
from converters.calibrate import calibrate
from converters.int8_error import node_error_ranking, tensor_sqnr
from converters.quantize_onnx import quantize_int8


def _conv_silu_conv() -> onnx.ModelProto:
    """x -> conv1 -> SiLU (Sigmoid * x) -> conv2 -> y, 8 channels at 16 x 16."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w1"),
             numpy_helper.from_array(np.full(8, -1.0, np.float32), "b1"),
             numpy_helper.from_array((rng.standard_normal((8, 8, 1, 1)) * 0.3).astype(np.float32), "w2"),
             numpy_helper.from_array(np.zeros(8, np.float32), "b2")]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Sigmoid", ["c1"], ["g"], name="sig"),
             helper.make_node("Mul", ["c1", "g"], ["a"], name="silu"),
             helper.make_node("Conv", ["a", "w2", "b2"], ["y"], name="conv2")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 16, 16])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture(scope="module")
def setup():
    model = _conv_silu_conv()
    x = np.random.default_rng(1).uniform(-3, 3, (8, 3, 16, 16)).astype(np.float32)
    calib = calibrate(model, x, progress=False)
    return model, x, calib


def test_a_raised_activation_low_end_is_not_counted_as_error(setup):
    model, x, calib = setup
    floors = activation_floors(model, calib.ranges)
    assert set(floors) == {"c1"} and floors["c1"] == calib.ranges["c1"][0] > -20
    q = quantize_int8(model, calib)
    plain = tensor_sqnr(model, q, x[:2])
    floored = tensor_sqnr(model, q, x[:2], floors=floors)
    assert floored["c1"] > plain["c1"] + 3     # the cut below the SiLU's flat end was most of the error
    assert floored["y"] == pytest.approx(plain["y"])


def test_the_first_layer_is_not_ranked_worst_for_reading_an_exact_input(setup):
    """conv2's output range is made 100x too wide (a real int8 failure); the ranking must put it
    first, not conv1, whose input (the image) has no quantization error at all."""
    model, x, calib = setup
    ranges = dict(calib.ranges)
    lo, hi = ranges["y"]
    ranges["y"] = (lo * 100, hi * 100)
    q = quantize_int8(model, dataclasses.replace(calib, ranges=ranges))
    ranking = node_error_ranking(model, q, x[:2], floors=activation_floors(model, ranges))
    assert ranking[0].nodes[0] == "conv2", [(r.nodes, round(r.lost_db, 1)) for r in ranking]
    assert ranking[0].lost_db > 10
