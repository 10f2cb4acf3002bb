"""Least-squares reconstruction: patch unfolding matches a real convolution, an exactly
representable cut is recovered exactly, and refitting reduces the error on held-out inputs."""
import numpy as np
import onnx
import pytest
from numpy.testing import assert_allclose
from onnx import TensorProto, helper, numpy_helper

from converters.prune import PruneConfig, prune_model
from converters.prune.reconstruct import unfold
from prune_helpers import G, inputs, run
from converters.prune.runner import session


@pytest.mark.parametrize("attrs", [
    {"pads": [1, 1, 1, 1], "strides": [2, 2]},
    {"pads": [0, 1, 2, 1], "strides": [1, 2], "dilations": [2, 1]},
    {"auto_pad": "SAME_UPPER", "strides": [2, 2]},
])
def test_unfold_matches_onnxruntime_conv(attrs):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 5, 9, 9)).astype(np.float32)
    w = rng.standard_normal((4, 5, 3, 3)).astype(np.float32)
    node = helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[3, 3], **attrs)
    g = helper.make_graph([node], "c", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [numpy_helper.from_array(w, "w")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    y = run(m, x)
    oy, ox = np.meshgrid(np.arange(y.shape[2]), np.arange(y.shape[3]), indexing="ij")
    patches = unfold(x, node, (3, 3), oy.ravel(), ox.ravel())
    got = (patches @ w.reshape(4, -1).T).reshape(2, y.shape[2], y.shape[3], 4).transpose(0, 3, 1, 2)
    assert_allclose(got, y, rtol=1e-4, atol=1e-4)


def _redundant_net(consumer: str):
    """conv 3->8 whose filters 4..7 are 0.3 x filters 0..3 (so l1 removes them and they are
    exact linear functions of the kept channels), then a linear consumer."""
    g = G(seed=3)
    w = g.rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    b = g.rng.standard_normal(4).astype(np.float32)
    wn = g.const(np.concatenate([w, 0.3 * w]))
    bn = g.const(np.concatenate([b, 0.3 * b]))
    a = g.op("Conv", ["input", wn, bn], kernel_shape=[3, 3], pads=[1] * 4)
    if consumer == "gemm":
        return g.model(g.gemm(g.op("Flatten", [g.op("GlobalAveragePool", [a])], axis=1), 8, 5))
    return g.model(g.conv(a, 8, 6, k=1 if consumer == "conv1x1" else 3))


@pytest.mark.parametrize("consumer", ["conv1x1", "conv3x3", "gemm"])
def test_exactly_representable_cut_is_recovered(consumer):
    m = _redundant_net(consumer)
    rng = np.random.default_rng(1)
    calib = rng.standard_normal((64, 3, 8, 8)).astype(np.float32)
    test = rng.standard_normal((8, 3, 8, 8)).astype(np.float32)
    y = run(m, test)
    cfg = dict(ratio=0.5, criterion="l1", ridge=1e-9)
    naive, _ = prune_model(m, PruneConfig(recover="none", allocation="uniform", **cfg), None)
    fitted, rep = prune_model(m, PruneConfig(allocation="uniform", **cfg), calib)
    err = lambda p: np.linalg.norm(run(p, test) - y) / np.linalg.norm(y)
    assert err(naive) > 0.05
    assert err(fitted) < 1e-3
    assert rep.reconstructed and rep.reconstruction[0].error_after < 1e-3
    onnx.checker.check_model(fitted, full_check=True)


def test_refit_reduces_error_on_held_out_inputs():
    g = G(seed=5)
    a = g.relu(g.bn(g.conv("input", 3, 24), 24))
    b = g.relu(g.bn(g.conv(a, 24, 24), 24))
    f = g.op("Flatten", [g.op("GlobalAveragePool", [b])], axis=1)
    m = g.model(g.gemm(f, 24, 10))
    rng = np.random.default_rng(2)

    def smooth(n):   # correlated inputs: upsampled 4x4 noise
        return np.repeat(np.repeat(rng.standard_normal((n, 3, 4, 4)), 2, axis=2), 2, axis=3).astype(np.float32)

    calib, test = smooth(128), smooth(32)
    y = run(m, test)
    err = lambda p: np.linalg.norm(run(p, test) - y) / np.linalg.norm(y)
    naive, _ = prune_model(m, PruneConfig(ratio=0.4, criterion="activation", recover="none", allocation="uniform"), calib)
    fitted, rep = prune_model(m, PruneConfig(ratio=0.4, criterion="activation", allocation="uniform"), calib)
    assert err(fitted) < 0.7 * err(naive)
    assert all(f.error_after <= f.error_before for f in rep.reconstruction)
    assert {f.layer for f in rep.reconstruction} == {n.name for n in m.graph.node if n.op_type in ("Conv", "Gemm")} - {"conv3"}


def _residual_net():
    """conv a -> [conv h (reads a), conv p] -> s = a + p -> conv o (reads s): cutting a's group refits
    h in the first wave and o in the second (o reads what the refit h feeds)."""
    g = G(seed=7)
    a = g.relu(g.conv("input", 3, 8))
    p = g.conv(g.relu(g.conv(a, 8, 12)), 12, 8, k=1)
    o = g.relu(g.conv(g.op("Add", [a, p]), 8, 6))
    return g.model(g.gemm(g.op("Flatten", [g.op("GlobalAveragePool", [o])], axis=1), 6, 5))


def test_refit_from_the_original_statistics_gives_the_same_weights(monkeypatch):
    from converters.prune import allocate, reconstruct as rc
    from converters.prune.graph import GraphView, prepare
    from converters.prune.groups import analyze
    from converters.prune.importance import class_scores
    from converters.prune import surgery
    base = prepare(_residual_net())
    an = analyze(GraphView(base), ())
    samples = np.random.default_rng(3).standard_normal((24, 3, 8, 8)).astype(np.float32)
    scores, _ = class_scores(an, "activation", samples)
    runs = []
    real = rc.iter_tensors
    monkeypatch.setattr(rc, "iter_tensors", lambda model, *a, **k: runs.append(model is base) or real(model, *a, **k))
    waves = set()
    for g in (g for g in an.groups if g.prunable):
        memo = rc.OriginalStats(base, samples)
        seen = False
        for k in (6, 4):
            cut, kept = surgery.apply(an, allocate.single_group_plan(an, scores, g.index, k))
            runs.clear()
            plain, fits, _ = rc.reconstruct(base, cut, kept, samples, ridge=0.05)
            plain_runs = list(runs)
            if not fits:
                continue
            runs.clear()
            fast, fast_fits, _ = rc.reconstruct(base, cut, kept, samples, ridge=0.05, memo=memo)
            weights = lambda m: {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
            wp, wf = weights(plain), weights(fast)
            assert wp.keys() == wf.keys()
            for name in wp:
                assert_allclose(wf[name], wp[name], rtol=1e-4, atol=1e-5)
            assert [f.layer for f in fits] == [f.layer for f in fast_fits]
            assert_allclose([f.error_after for f in fast_fits], [f.error_after for f in fits], rtol=1e-4, atol=1e-6)
            assert any(plain_runs) and not (seen and any(runs))   # a second cut of the group reads no original pass
            seen = True
            assert sum(not r for r in runs) < sum(not r for r in plain_runs)   # and fewer passes of the cut
            waves.add(len(fits))
    assert max(waves) >= 2                                  # the residual group's two-wave refit was covered


def test_fetching_an_early_tensor_runs_only_the_nodes_it_needs():
    from converters.prune.runner import with_outputs
    m = _residual_net()
    early = m.graph.node[0].output[0]
    sub = with_outputs(m, [early])
    assert [n.name for n in sub.graph.node] == [m.graph.node[0].name]
    assert {i.name for i in sub.graph.initializer} == set(m.graph.node[0].input[1:])
    x = inputs((2, 3, 8, 8))
    got = session(sub, threads=1).run([early], {"input": x})[0]
    assert got.shape == (2, 8, 8, 8)
