"""Core ML weight-only int8 with the GPTQ plan (``converters.int4.plan_int8``): the package stores the
plan's integers (constexpr_affine_dequantize before iOS18, blockwise after) and computes closer to
fp32 than coremltools' round-to-nearest; the layer with folded input scaling stays fp16 where the
affine op cannot hold its scales."""
import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from coreml_helpers import ort_run, pixel_batch, tiny_convnet

from converters.clean import clean_model
from converters.emitters import get_emitter
from converters.emitters.api import EmitRequest
from converters.emitters.coreml.verify import run_mlpackage
from converters.int4 import plan_int8
from edgeinfer.preprocess import PreprocessConfig, preprocess_image

DIGITS = Path(__file__).resolve().parents[1] / "samples" / "digits"
PRE = {"color": "rgb", "scale": 1 / 255, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def _images(folder: str, cfg: PreprocessConfig) -> np.ndarray:
    files = sorted((DIGITS / folder).rglob("*.png"))
    return np.stack([preprocess_image(f, cfg, (32, 32))[0] for f in files]).astype(np.float32)


@pytest.fixture(scope="module")
def digits():
    model = onnx.load(DIGITS / "digits.onnx")
    pre = json.loads({p.key: p.value for p in model.metadata_props}["edgeinfer.preprocess"])
    cfg = PreprocessConfig.from_dict(pre)
    return clean_model(model), pre, _images("calib", cfg), _images("heldout", cfg)


@pytest.mark.slow
@pytest.mark.parametrize("target,op", [("iOS17", "constexpr_affine_dequantize"), ("iOS18", "constexpr_blockwise_shift_scale")])
def test_gptq_int8_weights_are_stored_and_beat_round_to_nearest(digits, target, op, tmp_path):
    model, pre, calib, held = digits
    plan = plan_int8(model, calib, progress=False)
    ref = ort_run(model, held)[0]
    errors = {}
    for name, weights in (("nearest", None), ("gptq", plan)):
        art = get_emitter("coreml")(EmitRequest(
            model=model, precision="int8", out_path=tmp_path / f"{name}.mlpackage", preprocess=pre, task="classify",
            profile={"runtime": {"coreml_target": target}}, int8_weights=weights))
        errors[name] = float(((run_mlpackage(art.path, held)[0] - ref) ** 2).mean())
        if weights is not None:
            d = art.details["int8_weights"]
            assert d["same_as_plan"] and d["layers"] + len(d["kept_fp16"]) == len(plan.layers) and d["layers"] > 0
            assert any(op in n for n in art.notes)
    assert errors["gptq"] < errors["nearest"], errors


def test_affine_storage_keeps_the_layer_with_folded_std_in_fp16(tmp_path):
    model = clean_model(tiny_convnet())
    x = pixel_batch(PRE, n=16)
    plan = plan_int8(model, x, progress=False)
    art = get_emitter("coreml")(EmitRequest(model=model, precision="int8", out_path=tmp_path / "t.mlpackage",
                                            preprocess=PRE, task="classify", profile={"runtime": {"coreml_target": "iOS17"}},
                                            int8_weights=plan, options={"weight_threshold": 0}))
    kept = art.details["int8_weights"]["kept_fp16"]
    assert kept == ["conv1"] and any("1 layers stay fp16" in n for n in art.notes)
    ref, got = ort_run(model, x)[0], run_mlpackage(art.path, x)[0]
    assert np.abs(got - ref).max() <= 0.05 * np.abs(ref).max()


def test_weight_only_coreml_int8_convert_computes_no_activation_ranges(tmp_path, monkeypatch):
    import converters.pipeline as pipeline
    from converters.pipeline import ConvertOptions, convert

    def refuse(*_a, **_k):
        raise AssertionError("activation ranges calibrated for a weight-only artifact")
    monkeypatch.setattr(pipeline, "calibrate", refuse)
    res = convert(ConvertOptions(model=str(DIGITS / "digits.onnx"), profiles=["iphone-15-pro"], out_dir=str(tmp_path),
                                 quant=["int8"], formats=["coreml"], calib_dir=str(DIGITS / "calib"), progress=False))
    m = res.manifests[0]
    assert m["calibration"]["images"] > 0 and m["calibration"]["method"] is None
    assert any("GPTQ" in n for n in m["artifacts"][0]["notes"])
