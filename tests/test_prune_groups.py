"""One test per channel-dependency pattern: the pruned graph is valid, runs, has the expected
shapes, computes exactly what the original computes with the removed channels zeroed, and
with ratio 0 is numerically identical to the original."""
import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

from prune_helpers import G, group_of, inputs, prune_parts, run, weight_shape, zeroed_reference


def nm(out: str) -> str:
    return out[:-4]   # node name from its "<name>_out" output


def check_equivalent(model, ratio=0.5, x=None, **cfg):
    """Prune at ``ratio`` and at 0; returns (analysis, pruned, kept)."""
    x = inputs() if x is None else x
    y = run(model, x)
    _, same, kept0 = prune_parts(model, 0.0, **cfg)
    assert kept0 == {}
    assert_array_equal(run(same, x), y)
    an, pruned, kept = prune_parts(model, ratio, **cfg)
    assert kept, "nothing was pruned"
    yp = run(pruned, x)
    assert yp.shape == y.shape
    assert_allclose(yp, run(zeroed_reference(model, kept), x), rtol=1e-4, atol=1e-4)
    return an, pruned, kept


def test_conv_relu_conv_chain():
    g = G()
    c1 = g.conv("input", 3, 16)
    out = g.conv(g.relu(c1), 16, 4)
    an, pruned, _ = check_equivalent(g.model(out))
    assert nm(c1) == "conv3"
    assert weight_shape(pruned, nm(c1)) == (8, 3, 3, 3)
    assert weight_shape(pruned, nm(out)) == (4, 8, 3, 3)
    assert group_of(an, "conv3").size == 16


def test_conv_bn_relu_chain_cuts_bn_params_and_bn_criterion():
    g = G()
    c1 = g.conv("input", 3, 16)
    b = g.bn(c1, 16)
    out = g.conv(g.relu(b), 16, 4)
    m = g.model(out)
    x = inputs()
    _, same, _ = prune_parts(m, 0.0, criterion="bn")
    assert_array_equal(run(same, x), run(m, x))
    an, pruned, kept = prune_parts(m, 0.5, criterion="bn")
    bn_node = next(n for n in pruned.graph.node if n.op_type == "BatchNormalization")
    for name in bn_node.input[1:]:
        assert next(i for i in pruned.graph.initializer if i.name == name).dims == [8]
    # "bn" keeps the channels with the largest |gamma|
    gamma = next(i for i in m.graph.initializer if i.name == bn_node.input[1])
    from onnx import numpy_helper
    gv = np.abs(numpy_helper.to_array(gamma))
    assert set(kept[c1].tolist()) == set(np.argsort(-gv)[:8].tolist())
    assert run(pruned, x).shape == (4, 4, 8, 8)


def test_depthwise_follows_its_producer():
    g = G()
    a = g.relu(g.conv("input", 3, 16, k=1))
    d = g.conv(a, 16, 16, k=3, group=16)
    out = g.conv(g.relu(d), 16, 4, k=1)
    an, pruned, kept = check_equivalent(g.model(out))
    dw = next(n for n in pruned.graph.node if n.name == nm(d))
    assert [at.i for at in dw.attribute if at.name == "group"] == [8]
    assert weight_shape(pruned, nm(d)) == (8, 1, 3, 3)
    assert nm(d) in group_of(an, "conv3").producers         # one group: producer + depthwise


def test_residual_add_ties_all_members():
    g = G()
    a = g.relu(g.conv("input", 3, 16))
    b = g.relu(g.conv(a, 16, 16))
    c = g.conv(b, 16, 16)
    s = g.op("Add", [a, c])
    out = g.conv(g.relu(s), 16, 4)
    an, pruned, kept = check_equivalent(g.model(out))
    grp = group_of(an, "conv3")
    assert nm(c) in grp.producers and grp.size == 16
    assert weight_shape(pruned, "conv3")[0] == weight_shape(pruned, nm(c))[0] == 8
    assert_array_equal(kept["conv3_out"], kept[nm(c) + "_out"])


def test_squeeze_excitation_mul():
    g = G()
    x = g.relu(g.conv("input", 3, 16))
    p = g.op("GlobalAveragePool", [x])
    s = g.op("Sigmoid", [g.conv(g.relu(g.conv(p, 16, 8, k=1)), 8, 16, k=1)])
    out = g.conv(g.op("Mul", [x, s]), 16, 4)
    an, pruned, kept = check_equivalent(g.model(out))
    assert len(kept["conv3_out"]) == 8


def test_mul_add_with_per_channel_constants():
    g = G()
    x = g.relu(g.conv("input", 3, 16))
    sc = g.const(np.linspace(0.5, 2, 16, dtype=np.float32).reshape(1, 16, 1, 1))
    sh = g.const(np.linspace(-0.1, 0.1, 16, dtype=np.float32).reshape(16, 1, 1))
    y = g.op("Mul", [x, sc])
    out = g.conv(g.op("Add", [y, g.const(np.float32(0.0))]), 16, 4)
    m = g.model(out)
    x_in = inputs()
    _, same, _ = prune_parts(m, 0.0)
    assert_array_equal(run(same, x_in), run(m, x_in))
    an, pruned, kept = prune_parts(m, 0.5)
    mul = next(n for n in pruned.graph.node if n.op_type == "Mul")
    assert next(i for i in pruned.graph.initializer if i.name == mul.input[1]).dims == [1, 8, 1, 1]
    assert run(pruned, x_in).shape == (4, 4, 8, 8)
    del sh


def test_concat_on_channels_uses_offsets():
    g = G()
    a = g.relu(g.conv("input", 3, 16))
    b = g.relu(g.conv("input", 3, 8))
    cat = g.op("Concat", [a, b], axis=1)
    out = g.conv(cat, 24, 4)
    an, pruned, kept = check_equivalent(g.model(out))
    assert weight_shape(pruned, nm(out)) == (4, 12, 3, 3)
    assert group_of(an, "conv3").size == 16 and group_of(an, "conv7").size == 8
    assert_array_equal(kept[cat], np.concatenate([kept["conv3_out"], 16 + kept["conv7_out"]]))


def test_split_on_channels_rewrites_sizes():
    g = G()
    a = g.relu(g.conv("input", 3, 16))
    s1, s2 = g.op("Split", [a, g.const(np.array([8, 8], dtype=np.int64))], n_out=2, axis=1)
    out = g.op("Add", [g.conv(s1, 8, 4), g.conv(s2, 8, 4)])
    an, pruned, kept = check_equivalent(g.model(out))
    sp = next(n for n in pruned.graph.node if n.op_type == "Split")
    from onnx import numpy_helper
    sizes = numpy_helper.to_array(next(i for i in pruned.graph.initializer if i.name == sp.input[1]))
    assert sizes.tolist() == [4, 4]
    assert len([gr for gr in an.groups if "conv3" in gr.producers]) == 2   # two halves, two groups


def test_slice_on_channels_rewrites_bounds():
    g = G()
    a = g.relu(g.conv("input", 3, 16))
    i64 = lambda v: g.const(np.array(v, dtype=np.int64))
    s = g.op("Slice", [a, i64([4]), i64([12]), i64([1])])
    out = g.conv(s, 8, 4)
    an, pruned, kept = check_equivalent(g.model(out))
    assert weight_shape(pruned, nm(out))[1] == len(kept[s]) < 8


def test_gemm_after_flatten_with_spatial_features():
    g = G()
    a = g.relu(g.conv("input", 3, 16, stride=2))            # [N, 16, 4, 4]
    f = g.op("Flatten", [a], axis=1)                          # 256 features: channel c -> c*16 .. c*16+15
    hidden = g.gemm(f, 256, 32)
    out = g.gemm(g.relu(hidden), 32, 10)
    an, pruned, kept = check_equivalent(g.model(out))
    assert weight_shape(pruned, nm(hidden)) == (16, 8 * 16)
    assert len(kept[f]) == 128
    assert group_of(an, nm(hidden)).size == 32                 # hidden Gemm features pruned too


def test_gemm_after_global_pool_and_matmul():
    g = G()
    a = g.relu(g.conv("input", 3, 16))
    f = g.op("Flatten", [g.op("GlobalAveragePool", [a])], axis=1)
    w = g.const((g.rng.standard_normal((16, 12)) * 0.3).astype(np.float32))
    h = g.relu(g.op("MatMul", [f, w]))
    out = g.gemm(h, 12, 5)
    an, pruned, kept = check_equivalent(g.model(out))
    mm = next(n for n in pruned.graph.node if n.op_type == "MatMul")
    assert next(i for i in pruned.graph.initializer if i.name == mm.input[1]).dims == [8, 6]


def test_unknown_pattern_is_left_whole_and_listed():
    g = G()
    a = g.relu(g.conv("input", 3, 16))
    t = g.op("LRN", [a], size=3)                             # mixes neighbouring channels
    c2 = g.conv(t, 16, 16)
    out = g.conv(g.relu(c2), 16, 4)
    an, pruned, kept = check_equivalent(g.model(out))
    assert weight_shape(pruned, "conv3")[0] == 16            # left whole
    blocked = group_of(an, "conv3")
    assert not blocked.prunable and any("LRN" in r for r in blocked.reasons)
    assert weight_shape(pruned, nm(c2)) == (8, 16, 3, 3)    # the rest is still pruned


def test_channel_moving_transpose_and_shape_read_block():
    g = G()
    a = g.relu(g.conv("input", 3, 16))
    t = g.op("Transpose", [a], perm=[0, 2, 3, 1])
    out = g.op("Transpose", [t], perm=[0, 3, 1, 2])
    an, pruned, kept = prune_parts(g.model(out), 0.5)
    assert kept == {} and not group_of(an, "conv3").prunable


def test_graph_input_and_output_channels_are_never_pruned():
    g = G()
    out = g.conv(g.relu(g.conv("input", 3, 16)), 16, 6)
    an, pruned, kept = check_equivalent(g.model(out))
    assert weight_shape(pruned, nm(out)) == (6, 8, 3, 3)
    assert not group_of(an, nm(out)).prunable
    assert "input" not in kept and out not in kept


def test_exclude_leaves_the_layer_whole():
    g = G()
    a = g.relu(g.conv("input", 3, 16))
    b = g.relu(g.conv(a, 16, 16))
    out = g.conv(b, 16, 4)
    an, pruned, kept = prune_parts(g.model(out), 0.5, exclude=("conv3",))
    assert weight_shape(pruned, "conv3") == (16, 3, 3, 3)
    assert weight_shape(pruned, "conv7") == (8, 16, 3, 3)
    assert any("excluded" in r for r in group_of(an, "conv3").reasons)


def test_grouped_non_depthwise_conv_blocks():
    g = G()
    a = g.relu(g.conv("input", 3, 16))
    b = g.relu(g.conv(a, 16, 16, group=4))
    out = g.conv(b, 16, 4)
    an, pruned, kept = prune_parts(g.model(out), 0.5)
    assert kept == {} and weight_shape(pruned, "conv3")[0] == 16
    assert any("group=4" in r for r in group_of(an, "conv3").reasons)


@pytest.mark.parametrize("ratio,expected", [(0.3, 11), (0.5, 8), (0.0, 16)])
def test_ratio_sets_width_multiplier(ratio, expected):
    g = G()
    out = g.conv(g.relu(g.conv("input", 3, 16)), 16, 4)
    _, pruned, _ = prune_parts(g.model(out), ratio)
    assert weight_shape(pruned, "conv3")[0] == expected
