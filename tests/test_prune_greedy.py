"""Greedy least-squares channel selection: its costs are the refit's, it sees redundancy that a
one-channel-at-a-time score cannot, and it runs through prune_model like any criterion."""
import numpy as np
import onnx
import pytest
from numpy.testing import assert_allclose

from converters.prune import PruneConfig, prune_model
from converters.prune.greedy import _Reader, _Solver
from converters.prune.graph import GraphView, prepare
from converters.prune.groups import analyze
from converters.prune.importance import CRITERIA, class_scores
from prune_helpers import G, run


def _duplicated_net():
    """conv 3->6 (no activation), then a 1x1 conv 6->4. Channels 0/1 and 2/3 carry the same signal
    (duplicate filters); 4 and 5 are unique but three times weaker, so a per-channel score drops them."""
    g = G(seed=4)
    f = g.rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    w = np.stack([f[0], f[0], f[1], f[1], 0.3 * f[2], 0.3 * f[3]])
    a = g.op("Conv", ["input", g.const(w), g.const(np.zeros(6, np.float32))], kernel_shape=[3, 3], pads=[1] * 4)
    return g.model(g.conv(a, 6, 4, k=1))


def test_greedy_removes_duplicates_where_a_per_channel_score_removes_unique_channels():
    m = _duplicated_net()
    rng = np.random.default_rng(0)
    calib = rng.standard_normal((64, 3, 8, 8)).astype(np.float32)
    test = rng.standard_normal((8, 3, 8, 8)).astype(np.float32)
    y = run(m, test)
    err = lambda p: np.linalg.norm(run(p, test) - y) / np.linalg.norm(y)
    cut = {}
    for crit in ("activation", "greedy"):
        pruned, rep = prune_model(m, PruneConfig(ratio=1 / 3, criterion=crit, allocation="uniform", ridge=1e-9), calib)
        kept = [v for v in rep.kept.values() if len(v) == 4]
        cut[crit] = (err(pruned), sorted(kept[0].tolist()) if kept else None)
        onnx.checker.check_model(pruned, full_check=True)
    assert cut["activation"][0] > 0.05            # the weak unique channels went: the refit cannot bring them back
    assert cut["greedy"][0] < 1e-3                # one of each duplicate went: the refit restores the output
    kept = cut["greedy"][1]
    assert kept is not None and {4, 5} <= set(kept) and len(kept) == 4


def _reader(rng, c=5, k=2, outputs=3, rows=200):
    x = rng.standard_normal((rows, c * k)) @ rng.standard_normal((c * k, c * k))     # correlated features
    a1 = np.concatenate([x, np.ones((rows, 1))], axis=1)
    w = rng.standard_normal((c * k + 1, outputs))
    r = _Reader(node=None, tensor="t", weight=w, col_class=np.repeat(np.arange(c), k))
    r.gram = a1.T @ a1
    return r, a1


def _direct_cost(r, a1, gone: list[int], ridge: float) -> float:
    """Ridge refit objective (towards the unpruned weights, bias free) with ``gone`` removed, relative."""
    y = a1 @ r.weight
    d = a1.shape[1] - 1
    lam = ridge * float(np.trace(r.gram[:d, :d])) / d + 1e-12
    keep = np.flatnonzero(~np.isin(np.append(r.col_class, -1), gone))
    reg = np.where(keep == d, 0.0, lam)
    lhs = a1[:, keep].T @ a1[:, keep] + np.diag(reg)
    w = np.linalg.solve(lhs, a1[:, keep].T @ y + reg[:, None] * r.weight[keep])
    dropped = np.flatnonzero(np.isin(r.col_class, gone))
    obj = ((y - a1[:, keep] @ w) ** 2).sum() + lam * ((w - r.weight[keep])[reg > 0] ** 2).sum() \
        + lam * (r.weight[dropped] ** 2).sum()
    return obj / (y ** 2).sum()


@pytest.mark.parametrize("k", [1, 2])                   # 1x1 conv / Gemm columns, and k x k patches
@pytest.mark.parametrize("ridge", [0.1, 2.0])           # the refit's ridge (PruneConfig.ridge) is the one ranked for
def test_costs_and_downdates_equal_a_direct_refit(k, ridge):
    rng = np.random.default_rng(7)
    r, a1 = _reader(rng, k=k)
    s = _Solver(r, set(range(5)), ridge)
    assert_allclose(s.costs(), [_direct_cost(r, a1, [c], ridge) for c in range(5)], rtol=1e-6)
    s.remove(3)
    s.remove(0)                                         # a quarter of the columns gone: p is compacted
    assert len(s.p) < len(a1[0])
    base = _direct_cost(r, a1, [3, 0], ridge)
    got = s.costs()
    assert np.isinf(got[[0, 3]]).all()
    assert_allclose(got[[1, 2, 4]], [_direct_cost(r, a1, [3, 0, c], ridge) - base for c in (1, 2, 4)], rtol=1e-5, atol=1e-12)


def test_scores_rank_every_class_of_mixed_groups_and_feed_a_sensitivity_cut():
    g = G(seed=5)
    a = g.relu(g.bn(g.conv("input", 3, 16), 16))
    b = g.relu(g.bn(g.conv(a, 16, 16, k=1), 16))
    d = g.relu(g.conv(b, 16, 16, k=3, group=16))               # depthwise: tied to b, read by the Gemm
    f = g.op("Flatten", [g.op("GlobalAveragePool", [d])], axis=1)
    m = g.model(g.gemm(f, 16, 10))
    calib = np.random.default_rng(3).standard_normal((40, 3, 8, 8)).astype(np.float32)
    an = analyze(GraphView(prepare(m)))
    scores, notes = class_scores(an, "greedy", calib)
    for grp in an.groups:
        if grp.prunable:
            assert sorted(scores[grp.classes].tolist()) == list(range(1, grp.size + 1)), grp.name
    assert not notes
    pruned, rep = prune_model(m, PruneConfig(flops_target=0.3, criterion="greedy", channel_multiple=1), calib)
    onnx.checker.check_model(pruned, full_check=True)
    assert rep.macs[1] <= 0.7 * rep.macs[0] + 1


def test_greedy_needs_images_and_is_a_cli_choice():
    from click.testing import CliRunner
    from edgeinfer.cli import main
    from edgeinfer.errors import EdgeInferError
    assert "greedy" in CRITERIA
    with pytest.raises(EdgeInferError, match="calibration images"):
        prune_model(_duplicated_net(), PruneConfig(ratio=0.3, criterion="greedy", recover="none", allocation="uniform"), None)
    out = CliRunner().invoke(main, ["convert", "--help"]).output
    assert "greedy" in out


def test_scores_are_computed_once_per_model_images_and_ridge(monkeypatch):
    calls = []
    real = CRITERIA["greedy"]
    monkeypatch.setitem(CRITERIA, "greedy", lambda an, x, ridge: calls.append(ridge) or real(an, x, ridge))
    m = _duplicated_net()
    calib = np.random.default_rng(1).standard_normal((32, 3, 8, 8)).astype(np.float32)
    cfg = dict(criterion="greedy", allocation="uniform", recover="none")
    prune_model(m, PruneConfig(ratio=1 / 3, ridge=0.2, **cfg), calib)
    prune_model(m, PruneConfig(ratio=0.5, ridge=0.2, **cfg), calib)             # another cut: same ranking
    assert calls == [0.2]
    prune_model(m, PruneConfig(ratio=0.5, ridge=0.3, **cfg), calib)             # the ranking depends on the ridge
    prune_model(m, PruneConfig(ratio=0.5, ridge=0.3, **cfg), calib[:16])        # and on the images
    assert calls == [0.2, 0.3, 0.3]
