"""prune_model end to end: config validation, report, params/MACs counting, FLOPs target,
MobileNetV2 at ratio 0.3."""
import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from numpy.testing import assert_array_equal

from converters.prune import PruneConfig, keep_count, prune_model
from converters.prune.flops import count
from edgeinfer.errors import EdgeInferError
from prune_helpers import G, inputs, run, weight_shape

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))


def small_net():
    g = G()
    a = g.relu(g.bn(g.conv("input", 3, 16), 16))
    b = g.relu(g.bn(g.conv(a, 16, 32, stride=2), 32))
    f = g.op("Flatten", [g.op("GlobalAveragePool", [b])], axis=1)
    return g.model(g.gemm(f, 32, 10))


@pytest.mark.parametrize("kwargs,field", [
    ({}, "ratio"), ({"ratio": 0.3, "flops_target": 0.3}, "ratio"), ({"ratio": 1.0}, "ratio"),
    ({"ratio": -0.1}, "ratio"), ({"flops_target": 1.5}, "flops_target"), ({"ratio": 0.3, "criterion": "l3"}, "criterion"),
    ({"ratio": 0.3, "channel_multiple": 0}, "channel_multiple"), ({"ratio": 0.3, "min_channels": 2.5}, "min_channels"),
    ({"ratio": 0.3, "recover": "yes"}, "recover"), ({"ratio": 0.3, "allocation": "even"}, "allocation"), ({"ratio": 0.3, "exclude": "conv1"}, "exclude"),
])
def test_bad_config_names_the_field(kwargs, field):
    with pytest.raises(EdgeInferError, match=field):
        PruneConfig(**kwargs).validate()


def test_clear_errors_for_missing_data_bn_and_unknown_exclude():
    g = G()
    m = g.model(g.conv(g.relu(g.conv("input", 3, 16)), 16, 4))
    with pytest.raises(EdgeInferError, match="criterion 'bn'.*no"):
        prune_model(m, PruneConfig(ratio=0.3, criterion="bn", recover="none", allocation="uniform"), None)
    with pytest.raises(EdgeInferError, match="calibration"):
        prune_model(m, PruneConfig(ratio=0.3, criterion="activation", recover="none", allocation="uniform"), None)
    with pytest.raises(EdgeInferError, match="--recover none"):
        prune_model(m, PruneConfig(ratio=0.3, criterion="l1", allocation="uniform"), None)
    with pytest.raises(EdgeInferError, match="exclude.*nope"):
        prune_model(m, PruneConfig(ratio=0.3, criterion="l1", recover="none", allocation="uniform", exclude=("nope",)), None)


@pytest.mark.parametrize("c,ratio,mult,mn,expected", [
    (32, 0.3, 1, 1, 22), (32, 0.3, 8, 1, 24), (16, 0.3, 8, 1, 8), (16, 0.5, 1, 12, 12), (4, 0.5, 8, 1, 4),
    (96, 0.0, 8, 1, 96), (10, 0.95, 1, 1, 1),
])
def test_keep_count_rounding(c, ratio, mult, mn, expected):
    assert keep_count(c, ratio, mult, mn) == expected


def test_params_and_macs_match_a_hand_count():
    m = small_net()
    c = count(m)
    # conv 3->16 3x3 on 8x8 (+bias), BN(16) x4, conv 16->32 3x3 stride 2 -> 4x4, BN(32) x4, Gemm 32->10
    params = (16 * 3 * 9 + 16) + 4 * 16 + (32 * 16 * 9 + 32) + 4 * 32 + (10 * 32 + 10)
    macs = 16 * 8 * 8 * 3 * 9 + 32 * 4 * 4 * 16 * 9 + 32 * 10
    assert (c.params, c.macs) == (params, macs)
    assert c.size_bytes == m.ByteSize() and c.unknown == []


def test_report_and_ratio_zero_identity():
    m = small_net()
    x = inputs()
    same, rep0 = prune_model(m, PruneConfig(ratio=0.0, criterion="bn", allocation="uniform"), x)
    assert_array_equal(run(same, x), run(m, x))
    assert rep0.params[0] == rep0.params[1] and rep0.reconstruction == []
    pruned, rep = prune_model(m, PruneConfig(ratio=0.5, criterion="l2", recover="none", allocation="uniform"), None)
    d = json.loads(json.dumps(rep.to_dict()))
    assert d["params"]["after"] == count(pruned).params < d["params"]["before"]
    assert d["macs"]["after"] == count(pruned).macs
    kept = {g["name"]: (g["channels"], g["kept"]) for g in d["groups"]}
    assert kept["conv3"] == (16, 8)
    assert any("logits" in r or "graph output" in r for u in d["unprunable"] for r in u["reasons"])
    text = rep.format()
    assert "params" in text and "MACs" in text and "left whole" in text
    assert run(pruned, x).shape == (4, 10)


def test_channel_multiple_and_min_channels():
    m = small_net()
    pruned, _ = prune_model(m, PruneConfig(ratio=0.6, criterion="l1", recover="none", allocation="uniform", channel_multiple=8), None)
    assert weight_shape(pruned, "conv3")[0] == 8 and weight_shape(pruned, "conv12")[0] == 16
    pruned, _ = prune_model(m, PruneConfig(ratio=0.9, criterion="l1", recover="none", allocation="uniform", min_channels=6), None)
    assert weight_shape(pruned, "conv3")[0] == 6


def test_flops_target_is_reached():
    m = small_net()
    pruned, rep = prune_model(m, PruneConfig(flops_target=0.4, criterion="l1", recover="none", allocation="uniform"), None)
    assert 1 - rep.macs[1] / rep.macs[0] >= 0.4
    assert 0 < rep.ratio < 0.95
    with pytest.raises(EdgeInferError, match="at most"):
        prune_model(m, PruneConfig(flops_target=0.99, criterion="l1", recover="none", allocation="uniform", min_channels=8), None)


def test_mobilenetv2_ratio_03_shrinks_params_macs_and_file():
    from model_zoo import build_mobilenetv2

    m = build_mobilenetv2(resolution=64, num_classes=1000)
    pruned, rep = prune_model(m, PruneConfig(ratio=0.3, criterion="l1", recover="none", allocation="uniform"), None)
    onnx.checker.check_model(pruned, full_check=True)
    assert 1 - rep.params[1] / rep.params[0] >= 0.40
    assert 1 - rep.macs[1] / rep.macs[0] >= 0.40
    assert len(pruned.SerializeToString()) < 0.65 * len(m.SerializeToString())
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    assert run(pruned, x).shape == run(m, x).shape == (2, 1000)
    assert not rep.unprunable[0]["layers"].startswith("conv")   # only the classifier's outputs stay whole


def test_scan_image_counts_follow_the_input_pixels():
    from converters.prune.api import pixel_scaled
    assert pixel_scaled(32, (224, 224), 8) == 32 and pixel_scaled(64, (32, 32), 16) == 64
    assert pixel_scaled(32, (640, 640), 8) == 8 and pixel_scaled(64, (640, 640), 16) == 16
    assert pixel_scaled(32, (320, 320), 8) == 16
    assert pixel_scaled(4, (640, 640), 8) == 4          # fewer asked than the least: as asked
