"""Block-wise recovery (``--recover blockwise``): blocks cut at the residual sums, each block's
error to the unpruned model falls, the whole model ends closer to the unpruned one than the
least-squares start, and the result is deterministic. Skips without PyTorch."""
import numpy as np
import onnx
import pytest

from converters.prune import PruneConfig, prune_model
from prune_helpers import G, kl_to

torch = pytest.importorskip("torch")

from converters.prune.blockwise import BlockwiseConfig, cut_points  # noqa: E402


def _inverted_residual_net(seed=3):
    """Stem conv, two inverted-residual blocks (expand 1x1 -> depthwise 3x3 -> project 1x1, + input), head."""
    g = G(seed)
    x = g.relu(g.bn(g.conv("input", 3, 16), 16))
    adds = []
    for _ in range(2):
        h = g.relu(g.bn(g.conv(x, 16, 48, k=1), 48))
        h = g.relu(g.bn(g.conv(h, 48, 48, k=3, group=48), 48))
        x = g.op("Add", [x, g.bn(g.conv(h, 48, 16, k=1), 16)])
        adds.append(x)
    f = g.op("Flatten", [g.op("GlobalAveragePool", [x])], axis=1)
    return g.model(g.gemm(f, 16, 10), in_shape=(None, 3, 8, 8)), adds


def _smooth(n, seed=1):
    rng = np.random.default_rng(seed)
    return np.repeat(np.repeat(rng.standard_normal((n, 3, 4, 4)), 2, axis=2), 2, axis=3).astype(np.float32)


@pytest.fixture(autouse=True)
def _torch_threads():
    """One torch thread (tiny tensors; several threads only spin on a loaded machine), restored after."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _prune(m, calib, recover, **kw):
    cfg = BlockwiseConfig(**{"time_budget": None, "epochs": 10, "lr": 1e-2, "threads": 1, **kw})
    return prune_model(m, PruneConfig(ratio=0.5, criterion="l1", allocation="uniform", recover=recover, blockwise=cfg),
                       calib, progress_bar=False)


def test_cut_points_are_the_residual_sums():
    m, adds = _inverted_residual_net()
    cuts = cut_points(m)
    assert set(adds) <= set(cuts)
    inside = {n.output[0] for n in m.graph.node if n.op_type == "BatchNormalization"}
    assert not any(t in cuts for t in inside - {m.graph.node[1].output[0]})   # only the stem's output precedes a fork


def test_blockwise_lowers_block_errors_beats_least_squares_and_is_deterministic():
    m, adds = _inverted_residual_net()
    calib, test = _smooth(200), _smooth(64, seed=3)
    kl = kl_to(m, test)                    # KL(unpruned || pruned)
    none, _ = _prune(m, calib, "none")
    lsq, _ = _prune(m, calib, "lsq")
    b1, rep = _prune(m, calib, "blockwise")
    b2, _ = _prune(m, calib, "blockwise")
    d = rep.to_dict()["distillation"]
    assert d["method"] == "blockwise" and [r["ends_at"] for r in d["per_block"]] == adds + ["logits"]
    for r in d["per_block"]:             # every block's held-out error to the unpruned model fell
        assert r["held_out_after"] < r["held_out_before"] and not r["reverted"], r
    assert d["per_block"][0]["held_out_after"] < 0.8 * d["per_block"][0]["held_out_before"]
    assert kl(b1) < 0.9 * kl(lsq) < kl(none), (kl(b1), kl(lsq), kl(none))
    assert not d["held_out"]["reverted"] and d["held_out"]["kl_after"] < d["held_out"]["kl_before"]
    assert all(np.array_equal(onnx.numpy_helper.to_array(a), onnx.numpy_helper.to_array(b))
               for a, b in zip(b1.graph.initializer, b2.graph.initializer))
    assert not any(n.op_type == "BatchNormalization" for n in b1.graph.node)    # returned cleaned
    onnx.checker.check_model(b1, full_check=True)


def test_blockwise_stops_at_its_time_budget():
    m, _ = _inverted_residual_net()
    _, rep = _prune(m, _smooth(64), "blockwise", epochs=100_000, time_budget=2.0)
    d = rep.distillation
    assert d["stopped_by_budget"] and d["seconds"] < 30 and 0 < d["steps"] < 3 * 100_000 * 4


def test_crops_train_local_blocks_and_whole_maps_where_a_global_op_mixes_the_map():
    """Feature-map crops are used where a crop's output equals the whole map's (away from the cut
    edges); a squeeze-excitation block (global pooling inside) is checked and trains whole."""
    g = G(seed=4)
    x = g.relu(g.bn(g.conv("input", 3, 16, stride=2), 16))
    h = g.relu(g.bn(g.conv(x, 16, 32, k=1), 32))
    h = g.relu(g.bn(g.conv(h, 32, 32, k=3, group=32, stride=2), 32))
    local = g.bn(g.conv(h, 32, 16, k=1), 16)            # feeds the pooling, the Mul and the Add
    s = g.op("Sigmoid", [g.conv(g.op("GlobalAveragePool", [local]), 16, 16, k=1)])
    h = g.relu(g.bn(g.conv(g.op("Mul", [local, s]), 16, 32, k=1), 32))
    se = g.op("Add", [local, g.bn(g.conv(h, 32, 16, k=1), 16)])
    m = g.model(g.gemm(g.op("Flatten", [g.op("GlobalAveragePool", [se])], axis=1), 16, 10), in_shape=(None, 3, 64, 64))
    calib = np.repeat(np.repeat(np.random.default_rng(0).standard_normal((64, 3, 16, 16)), 4, axis=2), 4,
                      axis=3).astype(np.float32)
    _, rep = _prune(m, calib, "blockwise", epochs=3)
    first, *rest = rep.distillation["per_block"]        # stem + expand + depthwise, then project + SE + add, head
    assert [r["ends_at"] for r in rest] == [se, "logits"]
    assert first["crop"] == [32, 4, 2]                   # 32 of 64 input pixels, stride 4, 2 output pixels of margin
    assert rest[0]["crop"] is None and rest[1]["crop"] is None
    assert first["held_out_after"] < first["held_out_before"]


def test_blockwise_then_end_to_end_pass_on_cached_logits_is_reported_and_kept_only_if_it_helps():
    from converters.prune.distill import DistillConfig
    m, _ = _inverted_residual_net()
    calib, test = _smooth(120), _smooth(64, seed=3)
    kl = kl_to(m, test)
    b, _ = _prune(m, calib, "blockwise")
    final = DistillConfig(time_budget=None, epochs=4, lr=1e-3, views=2, flip=True, crop_scale=(1.0, 1.0), threads=1)
    cfg = BlockwiseConfig(time_budget=None, epochs=10, lr=1e-2, threads=1)
    bd, rep = prune_model(m, PruneConfig(ratio=0.5, criterion="l1", allocation="uniform", recover="blockwise+distill",
                                         blockwise=cfg, distill=final), calib, progress_bar=False)
    f = rep.to_dict()["distillation"]["final_distillation"]
    assert f["augment"]["teacher_cached"] and f["augment"]["fixed_views"] == 2 and f["steps"] > 0
    held = f["held_out"]
    assert not held["reverted"] and held["kl_after"] < held["kl_before"], held
    assert kl(bd) < kl(b), (kl(bd), kl(b))
    assert "end-to-end pass" in rep.format()
    onnx.checker.check_model(bd, full_check=True)
