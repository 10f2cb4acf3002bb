"""The input resolution as a pruning dimension (``PruneConfig.resolution`` / ``--prune-resolution``)."""
import json

import numpy as np
import pytest

from converters.prune import PruneConfig, prune_model
from converters.prune.resolution import at_size, candidates, fixed_hw, resample, resize_input, scaled_preprocess
from edgeinfer.errors import EdgeInferError
from prune_helpers import G, run


def _gap_net(size=64, seed=0):
    """conv -> conv (stride 2) -> global pooling -> Gemm: runs at any input size."""
    g = G(seed)
    a = g.relu(g.conv("input", 3, 16))
    b = g.relu(g.conv(a, 16, 24, stride=2))
    f = g.op("Flatten", [g.op("GlobalAveragePool", [b])], axis=1)
    return g.model(g.gemm(f, 24, 10), in_shape=(None, 3, size, size))


def _smooth(n, size=64, seed=1):
    """Images with no detail finer than size/4 px: a smaller input loses little of them."""
    lo = np.random.default_rng(seed).standard_normal((n, 3, 4, 4)).astype(np.float32)
    return resample(lo, (size, size))


def test_candidates_scale_both_sides_in_steps():
    assert candidates((224, 224), 8, 0.8) == [(216, 216), (208, 208), (200, 200), (192, 192), (184, 184)]
    assert candidates((64, 96), 16, 0.5) == [(48, 64), (32, 48)]


def test_scaled_preprocess_keeps_the_field_of_view():
    pre = {"resize_mode": "shorter", "resize": 256, "crop": 224, "mean": [0.5] * 3}
    assert scaled_preprocess(pre, (224, 224), (200, 200)) == {"resize_mode": "shorter", "resize": 229, "crop": 200,
                                                              "mean": [0.5] * 3}
    assert scaled_preprocess({"resize_mode": "stretch", "resize": 64}, (64, 64), (48, 48))["resize"] == 48
    assert scaled_preprocess({"resize_mode": "stretch"}, (64, 64), (48, 48)) == {"resize_mode": "stretch"}
    with pytest.raises(EdgeInferError, match="letterbox"):
        scaled_preprocess({"resize_mode": "letterbox", "letterbox": {"size": 640}}, (640, 640), (512, 512))


def test_a_model_whose_output_depends_on_the_input_size_is_refused():
    g = G(0)
    f = g.op("Flatten", [g.relu(g.conv("input", 3, 4))], axis=1)      # flattened feature map: size-bound
    m = g.model(f, in_shape=(1, 3, 16, 16))
    with pytest.raises(EdgeInferError) as exc:
        resize_input(m, (8, 8))
    assert "\n" not in str(exc.value) and "classifiers with global pooling" in str(exc.value)


def test_resolution_joins_the_budget_when_it_costs_less_than_channels():
    m = _gap_net()
    import onnx
    onnx.helper.set_model_props(m, {"edgeinfer.preprocess": json.dumps({"resize_mode": "shorter", "resize": 73, "crop": 64})})
    calib, x = _smooth(96), _smooth(32, seed=7)
    y = run(m, x)
    err = lambda p: float(np.linalg.norm(run(p, at_size(x, slice(None), fixed_hw(p))) - y) / np.linalg.norm(y))
    channels, rep_c = prune_model(m, PruneConfig(flops_target=0.3, recover="none"), calib, progress_bar=False)
    both, rep = prune_model(m, PruneConfig(flops_target=0.3, recover="none", resolution=True), calib,
                            progress_bar=False)
    assert rep_c.input_hw is None
    (h0, w0), (h1, w1) = rep.input_hw
    assert (h0, w0) == (64, 64) and h1 == w1 < 64 and h1 % 8 == 0
    assert [d.dim_value for d in both.graph.input[0].type.tensor_type.shape.dim][2:] == [h1, w1]
    assert 1 - rep.macs[1] / rep.macs[0] >= 0.3
    assert err(both) < 0.5 * err(channels)
    d = json.loads(json.dumps(rep.to_dict()))
    assert d["input_size"] == {"before": [64, 64], "after": [h1, w1]}
    curve = d["resolution_sensitivity"]
    assert curve["sizes"][0] == [56, 56] and curve["error"] == sorted(curve["error"])
    plans = curve["joint_plans"]            # the shortlisted size + channel plans, built and measured
    assert len(plans) >= 2 and {tuple(p["size"]) for p in plans} >= {(h1, w1)}
    assert min(plans, key=lambda p: p["measured_error"])["size"] == [h1, w1]
    assert fixed_hw(rep.cut_at(0.3)) == (h1, w1)   # the floor's cut at the run's target is the run's own plan
    rep.cut_at(0.1)                         # the floor's bisection re-plans (measuring its plans) ...
    assert rep.to_dict()["resolution_sensitivity"]["joint_plans"] == plans   # ... and leaves the report as it was
    assert f"input      64x64 -> {h1}x{w1}" in rep.format()
    meta = json.loads({p.key: p.value for p in both.metadata_props}["edgeinfer.preprocess"])
    assert meta == {"resize_mode": "shorter", "resize": round(73 * h1 / 64), "crop": h1}


def test_at_size_reads_the_images_again_or_resamples():
    x = _smooth(10)
    calls = []

    def read(hw, n):
        calls.append((hw, n))
        return np.full((n, 3, *hw), 7.0, np.float32)
    assert at_size(x, slice(2, 5), (64, 64), read).shape == (3, 3, 64, 64) and not calls   # already at that size
    got = at_size(x, slice(2, 5), (48, 48), read)
    assert calls == [((48, 48), 5)] and got.shape == (3, 3, 48, 48) and np.all(got == 7.0)
    assert at_size(x, slice(None), (48, 48), read).shape[0] == 10 and calls[-1] == ((48, 48), 10)
    np.testing.assert_allclose(at_size(x, slice(0, 4), (48, 48)), resample(x[:4], (48, 48)))


def test_smaller_sizes_are_measured_and_refit_on_the_images_read_at_them():
    """With ``read_at`` the sizes, the plans and the refit see images read at each size (here: a
    reader whose images are 0.2 % brighter than the resampled ones), never a resample of the full-size ones."""
    m = _gap_net()
    calib = _smooth(96)
    calls = []

    def read_at(hw, n):
        calls.append((hw, n))
        return 1.002 * resample(calib[:n], hw)
    cfg = PruneConfig(flops_target=0.3, recover="lsq", resolution=True)
    pruned, rep = prune_model(m, cfg, calib, progress_bar=False, read_at=read_at)
    plain, rep0 = prune_model(m, cfg, calib, progress_bar=False)
    curve = rep.to_dict()["resolution_sensitivity"]
    read_sizes = {hw for hw, _ in calls}
    assert {tuple(s) for s in curve["sizes"]} <= read_sizes
    h = rep.input_hw[1]
    assert h != (64, 64) and (h, 96) in calls                    # the refit: every calibration image at that size
    assert curve["error"] != rep0.to_dict()["resolution_sensitivity"]["error"]


def test_resolution_is_kept_when_the_images_have_fine_detail():
    """White noise at full size: shrinking the input destroys it, so channels pay the whole cut."""
    m = _gap_net()
    rng = np.random.default_rng(3)
    calib = rng.standard_normal((96, 3, 64, 64)).astype(np.float32)
    _, rep = prune_model(m, PruneConfig(flops_target=0.2, recover="lsq", resolution=True), calib,
                         progress_bar=False)
    assert rep.input_hw == ((64, 64), (64, 64)), rep.to_dict()["resolution_sensitivity"]
    assert "kept: a smaller size measured costlier" in rep.format()


def test_resolution_needs_the_sensitivity_allocation():
    with pytest.raises(EdgeInferError, match="--prune-allocation uniform"):
        PruneConfig(flops_target=0.2, resolution=True, allocation="uniform").validate()


def test_cli_bundle_runs_at_the_pruned_resolution(tmp_path):
    """End to end: the bundle's input, preprocessing and every artifact are at the chosen size,
    verified against the unpruned model at full size, and `edgeinfer run` reads photos at it."""
    import onnx
    from PIL import Image
    from conftest import edgeinfer_cli
    m = _gap_net(size=64)
    pre = {"color": "rgb", "resize_mode": "shorter", "resize": 73, "crop": 64, "scale": 1 / 255,
           "mean": [0.5] * 3, "std": [0.25] * 3}
    onnx.helper.set_model_props(m, {"edgeinfer.preprocess": json.dumps(pre), "edgeinfer.task": "classify"})
    model_path = tmp_path / "gap.onnx"
    onnx.save(m, model_path)
    calib = tmp_path / "calib"
    calib.mkdir()
    for i, img in enumerate(_smooth(48, size=80, seed=11)):
        px = np.clip(128 + 60 * img.transpose(1, 2, 0), 0, 255).astype(np.uint8)
        Image.fromarray(px[:, :72]).save(calib / f"im{i:02d}.png")
    out = tmp_path / "out"
    proc = edgeinfer_cli("convert", model_path, "--profile", "generic-x86-64", "--formats", "onnx,tflite",
                         "--quant", "fp32,int8", "--calib", calib, "--prune-flops", "0.3", "--prune-resolution",
                         "--recover", "lsq", "--min-agreement", "0.5", "-o", out, "--quiet")
    assert proc.returncode == 0, proc.stderr
    bundle = out / "gap-generic-x86-64"
    man = json.loads((bundle / "manifest.json").read_text())
    h = man["pruning"]["input_size"]["after"][0]
    assert h < 64 and man["input"]["shape"][2:] == [h, h]
    assert man["preprocess"]["crop"] == h and man["preprocess"]["resize"] == round(73 * h / 64)
    assert man["pruning"]["macs"]["drop"] >= 0.3
    for art in man["artifacts"]:
        assert art["verification"]["top1_agreement"] >= 0.5, art
    # the floor judged the pruned model on the held-out photos read at its own size, as the fp32 artifact is verified
    fp32 = next(a for a in man["artifacts"] if a["file"] == "gap-fp32.onnx")
    assert man["pruning"]["agreement_floor"]["value"] == round(fp32["verification"]["top1_agreement"], 4)
    onnx_fp32 = onnx.load(bundle / "gap-fp32.onnx")
    assert [d.dim_value for d in onnx_fp32.graph.input[0].type.tensor_type.shape.dim][2:] == [h, h]
    run = edgeinfer_cli("run", bundle, calib / "im00.png", "--json")
    assert run.returncode == 0, run.stderr
    proc = edgeinfer_cli("convert", model_path, "--profile", "generic-x86-64", "--prune-resolution", "-o", out / "x")
    assert proc.returncode == 2 and "pass --prune-flops" in proc.stderr and "Traceback" not in proc.stderr


def test_distillation_teaches_the_smaller_input_from_the_full_size_teacher():
    pytest.importorskip("torch")
    from converters.prune.distill import DistillConfig
    m = _gap_net()
    calib = _smooth(64)
    cfg = PruneConfig(flops_target=0.3, recover="distill", resolution=True,
                      distill=DistillConfig(epochs=3, batch=16, threads=1, time_budget=60, lr=3e-3))
    pruned, rep = prune_model(m, cfg, calib, progress_bar=False)
    h = rep.input_hw[1][0]
    assert h < 64 and [d.dim_value for d in pruned.graph.input[0].type.tensor_type.shape.dim][2:] == [h, h]
    d = rep.distillation
    assert any(f"student sees each view at {h}x{h}, the teacher at 64x64" in n for n in d["notes"]), d["notes"]
    held = d["held_out"]
    assert held["images"] > 0 and (held["kl_after"] <= held["kl_before"] or held["reverted"])
    assert f"held-out KL {held['kl_before']:.4f} -> {held['kl_after']:.4f}" in rep.format()


def test_images_read_again_are_kept_for_the_last_sizes(monkeypatch, tmp_path):
    """The convert's reader decodes each size's files once while it stays among the last
    READ_AGAIN_SIZES sizes (plans and floor steps ask again), and hands out copies."""
    from types import SimpleNamespace

    from converters import pipeline
    from edgeinfer.preprocess import PreprocessConfig
    decoded = []

    def fake_read(files, root, cfg, hw, what, progress):
        decoded.append((tuple(hw), len(files)))
        return SimpleNamespace(samples=np.full((len(files), 3, *hw), float(len(decoded)), np.float32))
    monkeypatch.setattr(pipeline.image_io, "read_images", fake_read)
    cfg = PreprocessConfig.from_dict({"resize": 72, "crop": 64})
    read = pipeline.read_again([tmp_path / f"{i}.png" for i in range(10)], cfg, (64, 64))
    a = read((48, 48), 8)
    a[:] = -1.0                                              # the caller's copy, not the cache
    assert np.all(read((48, 48), 5) == 1.0) and decoded == [((48, 48), 8)]
    read((48, 48), 10)                                       # more images than were read: read again
    read((40, 40), 4)
    read((56, 56), 4)                                        # a third size pushes out the oldest (48)
    read((40, 40), 4)
    read((48, 48), 4)
    assert decoded == [((48, 48), 8), ((48, 48), 10), ((40, 40), 4), ((56, 56), 4), ((48, 48), 4)]


def test_a_plan_that_only_shrinks_the_input_says_its_recovery_did_not_run():
    m = _gap_net()
    _, rep = prune_model(m, PruneConfig(flops_target=0.2, recover="distill", resolution=True), _smooth(96),
                         progress_bar=False)
    assert rep.input_hw[1] < (64, 64) and not rep.kept         # smooth images: the size alone takes the cut
    assert rep.distillation is None
    assert "distill recovery not run: the plan cut no channels, only the input size" in rep.notes


def test_plans_are_measured_on_the_scan_images_and_ones_no_refit_saw():
    from converters.prune.api import _plan_parts
    assert _plan_parts(32, slice(32, 96), 200, 128) == [slice(0, 32), slice(96, 192)]
    assert _plan_parts(32, slice(32, 96), 100, 128) == [slice(0, 32), slice(96, 100)]   # as many as there are
    assert _plan_parts(32, slice(32, 96), 96, 128) == [slice(0, 32)]
    assert _plan_parts(32, slice(0, 32), 40, 128) == [slice(0, 32)]    # few images: the refit used the scan's
    assert _plan_parts(32, slice(32, 96), 200, 32) == [slice(0, 32)]


def _computed_pad(g, x):
    """``x`` padded by 1 px on each side of H and W, the amounts computed at run time (ConstantOfShape ->
    Concat -> Pad) as torch exports them."""
    from onnx import TensorProto, helper
    ones = g.op("ConstantOfShape", [g.const(np.array([2], np.int64))],
                value=helper.make_tensor("v", TensorProto.INT64, [1], [1]))
    return g.op("Pad", [x, g.op("Concat", [g.const(np.array([0, 0, 1, 1, 0, 0], np.int64)), ones], axis=0)])


def test_pruning_sees_exported_pad_chains_folded_and_batchnorm_kept():
    """An exporter's computed Pad (ConstantOfShape/Concat -> Pad) folds into the conv before pruning;
    BatchNormalization stays for the ``bn`` criterion (``clean_model(keep_batchnorm=True)``)."""
    from converters.clean import clean_model
    from converters.prune import flops
    from tests.prune_helpers import G
    g = G()
    x = _computed_pad(g, "input")
    y = g.relu(g.bn(g.conv(x, 3, 8), 8))
    model = g.model(g.op("GlobalAveragePool", [y]), in_shape=(1, 3, 8, 8))
    assert flops.count(model).unknown                      # the raw graph: the Pad's output size is unknown
    folded = clean_model(model, keep_batchnorm=True)
    ops = [n.op_type for n in folded.graph.node]
    assert "Pad" not in ops and "BatchNormalization" in ops
    assert flops.count(folded).macs == 8 * 10 * 10 * 3 * 9 and not flops.count(folded).unknown


def test_cli_prunes_an_export_whose_pads_are_computed(tmp_path):
    """A torch-style export (Pad amounts from ConstantOfShape/Concat) is pruned and refit end to end
    (it died with an internal error when pruning ran on the unfolded graph)."""
    import onnx
    from PIL import Image
    from conftest import edgeinfer_cli
    g = G(3)
    a = g.relu(g.conv("input", 3, 16))
    w = g.const((g.rng.standard_normal((24, 16, 3, 3)) * 0.4).astype(np.float32), "w")
    b = g.relu(g.op("Conv", [_computed_pad(g, a), w], kernel_shape=[3, 3], strides=[2, 2]))
    c = g.relu(g.conv(b, 24, 32))
    f = g.op("Flatten", [g.op("GlobalAveragePool", [c])], axis=1)
    m = g.model(g.gemm(f, 32, 10), in_shape=(1, 3, 32, 32))
    onnx.helper.set_model_props(m, {"edgeinfer.preprocess": json.dumps(
        {"color": "rgb", "resize_mode": "stretch", "resize": 32, "scale": 1 / 255, "mean": [0.5] * 3, "std": [0.25] * 3}),
        "edgeinfer.task": "classify"})
    onnx.save(m, tmp_path / "padded.onnx")
    calib = tmp_path / "calib"
    calib.mkdir()
    for i, img in enumerate(_smooth(40, size=32, seed=5)):
        Image.fromarray(np.clip(128 + 60 * img.transpose(1, 2, 0), 0, 255).astype(np.uint8)).save(calib / f"i{i:02d}.png")
    proc = edgeinfer_cli("convert", tmp_path / "padded.onnx", "--profile", "generic-x86-64", "--formats", "onnx",
                         "--quant", "fp32", "--calib", calib, "--prune-flops", "0.25", "--min-agreement", "0.3",
                         "-o", tmp_path / "out", "--quiet")
    assert proc.returncode == 0, proc.stderr
    man = json.loads(next((tmp_path / "out").glob("*/manifest.json")).read_text())
    assert man["pruning"]["macs"]["drop"] >= 0.25
    assert any(gr["kept"] < gr["channels"] for gr in man["pruning"]["groups"])
