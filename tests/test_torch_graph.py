"""ONNX graph -> trainable torch module: every handler against ONNX Runtime, write-back, refusals.
Skips cleanly without PyTorch (the optional [train] extra)."""
from pathlib import Path

import numpy as np
import onnx
import pytest
from numpy.testing import assert_allclose

from converters.clean import clean_model
from edgeinfer.errors import EdgeInferError
from prune_helpers import G, run

torch = pytest.importorskip("torch")
from converters.torch_graph import OPS, TorchGraph  # noqa: E402

SAMPLES = Path(__file__).resolve().parents[1] / "samples"


def _forward(model, x):
    with torch.no_grad():
        return [t.numpy() for t in TorchGraph(model)(torch.from_numpy(x))]


def _all_outputs(model, x):
    from converters.ort_session import cpu_session
    s = cpu_session(model, 1)
    return s.run(None, {model.graph.input[0].name: x})


@pytest.mark.parametrize("path,shape", [("digits/digits.onnx", (3, 1, 32, 32)), ("detector/shapes_det.onnx", (1, 3, 128, 128))])
@pytest.mark.parametrize("cleaned", [False, True])
def test_samples_match_onnx_runtime(path, shape, cleaned):
    m = onnx.load(SAMPLES / path)
    m = clean_model(m) if cleaned else m
    if not cleaned and "detector" in path:
        with pytest.raises(EdgeInferError, match="Shape"):
            TorchGraph(m)
        return
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    for ref, got in zip(_all_outputs(m, x), _forward(m, x)):
        assert_allclose(got, ref, rtol=1e-4, atol=1e-4)


def _op_zoo():
    """Ops the samples lack: asymmetric and SAME pads, pools, Reshape of a batch-1 export,
    Concat, Slice, Transpose, Squeeze/Unsqueeze, ReduceMean, Softmax, MatMul, the activations."""
    g = G(seed=3)
    a = g.conv("input", 3, 8)
    a = g.op("Conv", [a, g.const((g.rng.standard_normal((8, 8, 3, 3)) * 0.3).astype(np.float32))],
             kernel_shape=[3, 3], pads=[0, 1, 1, 0], strides=[2, 2])
    b = g.op("Conv", [a, g.const((g.rng.standard_normal((8, 1, 3, 3)) * 0.3).astype(np.float32))],
             kernel_shape=[3, 3], auto_pad="SAME_UPPER", group=8, strides=[2, 2])
    a = g.op("MaxPool", [a], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2])
    a = g.op("Concat", [g.op("HardSigmoid", [a]), g.op("LeakyRelu", [b], alpha=0.1)], axis=1)
    a = g.op("AveragePool", [a], kernel_shape=[2, 2], pads=[0, 0, 1, 1], strides=[1, 1])
    a = g.op("HardSwish", [g.op("Sigmoid", [a])])
    a = g.op("Slice", [a, g.const(np.array([1], np.int64)), g.const(np.array([15], np.int64)),
                       g.const(np.array([1], np.int64)), g.const(np.array([2], np.int64))])
    a = g.op("ReduceMean", [a], axes=[2, 3], keepdims=1)
    a = g.op("Reshape", [a, g.const(np.array([1, 7], np.int64))])
    a = g.op("Unsqueeze", [a, g.const(np.array([0], np.int64))])
    a = g.op("Squeeze", [a, g.const(np.array([0], np.int64))])
    a = g.op("MatMul", [a, g.const((g.rng.standard_normal((7, 5)) * 0.5).astype(np.float32))])
    a = g.op("Transpose", [g.op("Transpose", [a], perm=[1, 0])], perm=[1, 0])
    return g.model(g.op("Softmax", [g.op("Tanh", [a])], axis=1), in_shape=(1, 3, 16, 16))


def test_op_zoo_matches_onnx_runtime_and_reshape_follows_the_batch():
    m = _op_zoo()
    x = np.random.default_rng(1).standard_normal((1, 3, 16, 16)).astype(np.float32)
    assert_allclose(_forward(m, x)[0], run(m, x), rtol=1e-4, atol=1e-5)
    x4 = np.random.default_rng(2).standard_normal((4, 3, 16, 16)).astype(np.float32)
    got = _forward(m, x4)[0]       # the batch-1 export trains on batches
    for i in range(4):
        assert_allclose(got[i:i + 1], run(m, x4[i:i + 1]), rtol=1e-4, atol=1e-5)


def test_parameters_train_and_write_back_into_the_same_initializers():
    g = G()
    m = g.model(g.gemm(g.op("Flatten", [g.op("GlobalAveragePool", [g.relu(g.bn(g.conv("input", 3, 4), 4))])], axis=1), 4, 2))
    tg = TorchGraph(m)
    names = {i.name for i in m.graph.initializer}
    assert set(tg.param_names) <= names and len(tg.param_names) == 6   # conv W, b; BN scale, bias; gemm W, b
    with torch.no_grad():
        for p in tg.params:
            p.mul_(2.0)
    out = tg.write_back(m)
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    assert_allclose(run(out, x), _forward(out, x)[0], rtol=1e-4, atol=1e-5)
    assert not np.allclose(run(out, x), run(m, x))
    assert [i.name for i in out.graph.initializer] == [i.name for i in m.graph.initializer]


def test_unknown_op_is_refused_by_name():
    g = G()
    m = g.model(g.op("Einsum", [g.conv("input", 3, 4), g.conv("input", 3, 4)], equation="nchw,nchw->nchw"))
    assert "Einsum" not in OPS
    with pytest.raises(EdgeInferError, match="Einsum.*--recover lsq"):
        TorchGraph(m)
