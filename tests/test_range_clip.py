"""MSE clipping of activation ranges (the ``mse`` calibration method, the detector default)."""
import numpy as np

from converters.calibrate import calibrate
from converters.range_clip import mse_range, sample_count
from tests.test_sensitivity import _tiny_head


def _quant_mse(v, lo, hi):
    scale = (hi - lo) / 255
    zp = np.round(-lo / scale)
    return float(np.mean(((np.clip(np.round(v / scale) + zp, 0, 255) - zp) * scale - v) ** 2))


def test_heavy_tail_is_clipped_and_error_drops():
    # a sample of the bulk, and the min/max of the whole population (rare values the sample missed)
    v = np.random.default_rng(0).normal(0, 1, 60000).astype(np.float32)
    lo, hi = mse_range(v, -6.0, 80.0)
    assert 3.0 < hi < 10.0 and -6.0 <= lo < 0.0
    assert _quant_mse(v, lo, hi) < 0.2 * _quant_mse(v, -6.0, 80.0)


def test_uniform_values_keep_their_range():
    v = np.random.default_rng(1).uniform(0, 6, 50000).astype(np.float32)
    lo, hi = mse_range(v, 0.0, 6.0)
    assert lo == 0.0 and hi > 5.7


def test_ranges_only_shrink_and_graph_ends_keep_min_max():
    model = _tiny_head()
    calib = np.random.default_rng(2).uniform(0, 1, (8, 3, 64, 64)).astype(np.float32)
    mm = calibrate(model, calib, "minmax", progress=False).ranges
    ms = calibrate(model, calib, "mse", progress=False).ranges
    assert set(ms) == set(mm)
    for t, (lo, hi) in ms.items():
        assert mm[t][0] - 1e-6 <= lo <= hi <= mm[t][1] + 1e-6, t
    assert ms["y"] == mm["y"] and ms["x"] == mm["x"]


def test_sampled_images_follow_the_pixel_budget():
    assert sample_count(np.zeros((64, 3, 640, 640), np.float32)) == 16
    assert sample_count(np.zeros((40, 3, 224, 224), np.float32)) == 40
