"""Each ONNX op handler: a small emitted model run in ai-edge-litert vs onnxruntime (fp32)."""
from __future__ import annotations

import numpy as np
import pytest
from tflite_util import convert, op_cases, ort_run, run_tflite

CASES = op_cases()


def _input(model, seed=1):
    inp = model.graph.input[0]
    shape = [d.dim_value for d in inp.type.tensor_type.shape.dim]
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32) * 2


@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_op_matches_onnxruntime(name, layout, tmp_path):
    model = CASES[name]
    x = _input(model)
    refs = ort_run(model, {"x": x})
    art = convert(model, tmp_path, layout=layout)
    outs = run_tflite(art.path, x)
    assert len(outs) == len(refs)
    for out, ref in zip(outs, refs):
        assert out.shape == ref.shape
        np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
