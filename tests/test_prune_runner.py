"""Fetching tensors for pruning: a cut model's outputs from the nodes it changed on equal a whole run."""
import numpy as np
import pytest
from numpy.testing import assert_allclose

from converters.prune import allocate, surgery
from converters.prune.graph import GraphView, prepare
from converters.prune.groups import analyze
from converters.prune.importance import class_scores
from converters.prune.runner import SuffixRuns
from prune_helpers import G


def _net(batch):
    g = G(seed=11)
    a = g.relu(g.conv("input", 3, 8))
    p = g.conv(g.relu(g.conv(a, 8, 12)), 12, 8, k=1)
    o = g.relu(g.conv(g.op("Add", [a, p]), 8, 6))
    t = g.relu(g.conv(o, 6, 10, k=1))
    return g.model(g.gemm(g.op("Flatten", [g.op("GlobalAveragePool", [t])], axis=1), 10, 5),
                   in_shape=(batch, 3, 8, 8))


@pytest.mark.parametrize("batch", [None, 1])
def test_suffix_runs_equal_whole_runs_for_every_single_group_cut(batch):
    base = prepare(_net(batch))
    an = analyze(GraphView(base), ())
    x = np.random.default_rng(4).standard_normal((11, 3, 8, 8)).astype(np.float32)
    scores, _ = class_scores(an, "activation", x)
    runs = SuffixRuns(base, x)
    ran = []
    for g in (g for g in an.groups if g.prunable):
        for keep in (g.size - 2, g.size // 2):
            cut, _ = surgery.apply(an, allocate.single_group_plan(an, scores, g.index, keep))
            whole = allocate.model_outputs(cut, x)
            got = runs.outputs(cut)
            assert len(got) == len(whole) and got[0].shape == whole[0].shape
            assert_allclose(got[0], whole[0], rtol=1e-5, atol=1e-5)
            ran.append(runs.nodes_run)
    assert min(ran) < len(base.graph.node) // 2        # a late cut runs only the end of the graph
    assert max(ran) <= len(base.graph.node)
    assert_allclose(runs.outputs(base)[0], allocate.model_outputs(base, x)[0])   # unchanged: nothing to run
    assert runs.nodes_run == 0
