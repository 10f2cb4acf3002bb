"""Core ML W8A8: int8 weights + int8 activations whose ranges come from the SHARED calibration
(ONNX tensor names) and are handed to coremltools' own activation-quantization passes.
Checked with the numpy MIL evaluator against ONNX Runtime on the fp32 model."""
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper

from coreml_helpers import init, make_model, ort_run, pixel_batch, tiny_convnet, w

from converters.calibrate import calibrate
from converters.emitters import get_emitter
from converters.emitters.api import EmitRequest
from converters.emitters.coreml.activation_quant import program_stats
from converters.emitters.coreml.mil_eval import MilProgram
from converters.emitters.coreml.verify import check_structure, run_mlpackage
from edgeinfer.errors import EdgeInferError

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "samples" / "digits"
PRE = {"color": "rgb", "scale": 1 / 255, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
LABELS = [f"class_{i}" for i in range(10)]
IOS17 = {"coreml_target": "iOS17"}


def residual_net() -> onnx.ModelProto:
    """conv-relu -> conv-relu -> add (residual) -> maxpool -> concat(with 1x1 conv) -> avgpool -> GAP -> gemm."""
    n = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "wa", "ba"], ["ca"], pads=[1, 1, 1, 1], name="conva"),
        helper.make_node("Relu", ["ca"], ["ra"], name="relua"),
        helper.make_node("Add", ["r1", "ra"], ["s"], name="add"),
        helper.make_node("MaxPool", ["s"], ["p"], kernel_shape=[2, 2], strides=[2, 2], name="pool"),
        helper.make_node("Conv", ["p", "wb", "bb"], ["cb"], name="convb"),
        helper.make_node("Concat", ["p", "cb"], ["cat"], axis=1, name="cat"),
        helper.make_node("AveragePool", ["cat"], ["ap"], kernel_shape=[2, 2], strides=[2, 2], name="avg"),
        helper.make_node("GlobalAveragePool", ["ap"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "wfc", "bfc"], ["out"], transB=1, name="fc"),
    ]
    inits = [init("w1", w(32, 3, 3, 3)), init("b1", w(32, scale=0.1)), init("wa", w(32, 32, 3, 3)), init("ba", w(32, scale=0.1)),
             init("wb", w(32, 32, 1, 1)), init("bb", w(32, scale=0.1)), init("wfc", w(10, 64, scale=0.3)), init("bfc", w(10, scale=0.1))]
    return make_model(n, inits, (1, 3, 16, 16), out_shape=["N", 10])


@pytest.fixture(scope="module")
def batch():
    return pixel_batch(PRE, n=32, seed=7)


def _emit(model, out, calib=None, precision="int8", image=True, **options):
    return get_emitter("coreml")(EmitRequest(model=model, precision=precision, out_path=out, calibration=calib,
                                             preprocess=PRE, labels=None, task="classify",
                                             options={**IOS17, "image_input": image, **options}))


@pytest.fixture(scope="module")
def cases(batch, tmp_path_factory):
    """(model, calibration, W8A8 artifact) per test net and input kind."""
    d = tmp_path_factory.mktemp("w8a8")
    out = {}
    for name, model in (("tiny", tiny_convnet()), ("residual", residual_net())):
        cal = calibrate(model, batch[:16], "minmax", progress=False)
        for image in (True, False):
            key = f"{name}-{'image' if image else 'tensor'}"
            out[key] = (model, cal, _emit(model, d / f"{key}.mlpackage", cal, image=image, w8a8=True))
    return out


CASES = ["tiny-image", "tiny-tensor", "residual-image", "residual-tensor"]


@pytest.mark.parametrize("key", CASES)
def test_w8a8_matches_onnxruntime(cases, batch, key):
    model, _, art = cases[key]
    ref = ort_run(model, batch)[0]
    got = run_mlpackage(art.path, batch)[0]
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() <= 0.08 * np.abs(ref).max()
    assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.9


@pytest.mark.parametrize("key", CASES)
def test_w8a8_structure_int8_weights_and_activation_pairs(cases, key):
    _, _, art = cases[key]
    facts = check_structure(art.path)
    ops = facts["mil_ops"]
    n_quant = sum(ops.get(t, 0) for t in ("conv", "linear"))
    assert ops.get("quantize", 0) >= n_quant and ops.get("dequantize", 0) >= ops["quantize"]
    prog = MilProgram(art.path)
    made_by, const = _graph(prog)
    for o in prog.block.operations:
        if o.type == "dequantize":      # activation pairs: every dequantize reads an int8 quantize
            assert made_by[_arg(o, "input")].type == "quantize"
        if o.type == "quantize":
            assert str(const[_arg(o, "output_dtype")]) == "int8"
    assert ops.get("constexpr_affine_dequantize", 0) >= 2          # int8 weights (linear per-channel)
    assert facts["blob_bytes_by_dtype"].get("INT8", 0) > 0
    assert facts["spec_version"] >= 8 and art.details["activations"] == "int8"   # iOS17 program
    assert any(n.startswith("int8 activations") for n in art.notes) and "int8 linear per-channel weights" in art.notes


def test_w8a8_is_not_just_int8_weights(cases, batch, tmp_path):
    """The activation pairs change the numbers: the W8A8 output differs from weight-only int8."""
    model, cal, art = cases["residual-tensor"]
    plain = _emit(model, tmp_path / "w8.mlpackage", cal, image=False)
    assert "quantize" not in check_structure(plain.path)["mil_ops"]
    assert np.abs(run_mlpackage(art.path, batch)[0] - run_mlpackage(plain.path, batch)[0]).max() > 1e-3


def _graph(prog):
    """(var name -> producing op, const name -> value) of a saved program."""
    made_by = {out.name: o for o in prog.block.operations for out in o.outputs}
    const = {o.outputs[0].name: prog.value(o.attributes["val"]) for o in prog.block.operations if o.type == "const"}
    return made_by, const


def _arg(op, key: str) -> str:
    return op.inputs[key].arguments[0].name


def _stats_for(key, model, cal, art):
    """The activation stats handed to coremltools, taken (as the emitter does) on the float program ``art``."""
    from converters.emitters.coreml import emitter as em
    image = key.endswith("image")
    img = em.image_spec(EmitRequest(model=model, precision="int8", out_path=Path("x"), preprocess=PRE,
                                    options={"image_input": image}), 3)
    return program_stats(em.ct.models.MLModel(str(art.path), skip_model_load=True), cal.ranges, img)


@pytest.mark.parametrize("key", CASES)
def test_quantize_scales_follow_the_shared_ranges(cases, key, tmp_path):
    """Each activation pair's scale is coremltools' symmetric int8 scale of the calibrated range
    (coremltools re-expresses the operands of an int8 add relative to one another: those skipped)."""
    model, cal, art = cases[key]
    prog = MilProgram(art.path)
    made_by, const = _graph(prog)
    consumers: dict[str, list[str]] = {}
    for o in prog.block.operations:
        for a in o.inputs.values():
            for b in a.arguments:
                consumers.setdefault(b.name, []).append(o.type)
    stats = _stats_for(key, model, cal, _emit(model, tmp_path / "f.mlpackage", precision="fp16", image=key.endswith("image")))
    checked = 0
    for o in prog.block.operations:
        if o.type != "dequantize":
            continue
        q = made_by[_arg(o, "input")]
        src = _arg(q, "input")
        if src not in stats or made_by[src].type == "add" or "add" in consumers[o.outputs[0].name]:
            continue
        expect = max(abs(stats[src]["rmin"]), abs(stats[src]["rmax"])) / 127
        assert float(const[_arg(q, "scale")]) == pytest.approx(expect, rel=2e-3)
        assert float(const[_arg(o, "scale")]) == pytest.approx(expect, rel=2e-3)
        checked += 1
    assert checked >= 4


@pytest.mark.parametrize("key", ["tiny-image", "residual-image", "residual-tensor"])
def test_stats_equal_what_coremltools_would_measure(cases, batch, key, tmp_path):
    """coremltools' own calibration takes min/max of each var over MLModel.predict runs of the float
    program; emulated here with the evaluator on the fp16 package: the ranges handed over match."""
    model, cal, _ = cases[key]
    image = key.endswith("image")
    art = _emit(model, tmp_path / "fp16.mlpackage", precision="fp16", image=image)
    prog = MilProgram(art.path)
    feats = prog.spec.description.input[0]
    x = batch[:16]
    if image:
        from edgeinfer.backends.coreml_backend import pixels_from_normalized
        x = pixels_from_normalized(x, PRE)
    seen: dict[str, list[float]] = {}
    for i in range(len(x)):
        env = prog.run({feats.name: x[i:i + 1]}, keep=True)
        for k, v in env.items():
            if isinstance(v, np.ndarray) and v.dtype.kind == "f" and v.size > 1:
                lo, hi = seen.get(k, (np.inf, -np.inf))
                seen[k] = (min(lo, float(v.min())), max(hi, float(v.max())))
    stats = _stats_for(key, model, cal, art)
    compared = 0
    concat_vars = {"p_cast_fp16", "cb_cast_fp16", "cat_cast_fp16"}    # unified to the concat group's range
    for name, s in stats.items():
        if name not in seen or name in concat_vars:
            continue
        lo, hi = seen[name]
        tol = 1e-2 * max(abs(lo), abs(hi), 1e-3)
        # a HardSwish input's low end is raised to -3 on purpose (converters.activation_ranges)
        raised = s["rmin"] == pytest.approx(-3.0, abs=1e-6) and lo < -3.0
        assert (raised or s["rmin"] == pytest.approx(lo, abs=tol)) and s["rmax"] == pytest.approx(hi, abs=tol), name
        compared += 1
    assert compared >= 6
    if "residual" in key:
        group = [stats[n] for n in concat_vars]
        assert all(g == group[0] for g in group)


def test_w8a8_affine_mode_has_zero_points(cases, batch, tmp_path):
    """w8a8_mode="linear": asymmetric int8 activations (zero points), still close to ONNX Runtime."""
    model, cal, _ = cases["residual-tensor"]
    art = _emit(model, tmp_path / "aff.mlpackage", cal, image=False, w8a8=True, w8a8_mode="linear")
    prog = MilProgram(art.path)
    made_by, const = _graph(prog)
    zps = [const[_arg(o, "zero_point")] for o in prog.block.operations if o.type == "quantize" and "zero_point" in o.inputs]
    assert zps and any(int(z) != 0 for z in zps)
    ref, got = ort_run(model, batch)[0], run_mlpackage(art.path, batch)[0]
    assert np.abs(got - ref).max() <= 0.08 * np.abs(ref).max()


def test_w8a8_errors_are_one_line(cases, tmp_path):
    model, cal, _ = cases["tiny-tensor"]
    with pytest.raises(EdgeInferError, match="iOS16"):
        _emit(model, tmp_path / "a.mlpackage", cal, coreml_target="iOS16", w8a8=True)
    with pytest.raises(EdgeInferError, match="precision int8"):
        _emit(model, tmp_path / "b.mlpackage", cal, precision="fp16", w8a8=True)
    with pytest.raises(EdgeInferError, match="calibration"):
        _emit(model, tmp_path / "c.mlpackage", None, w8a8=True)
    with pytest.raises(EdgeInferError, match="mode"):
        _emit(model, tmp_path / "d.mlpackage", cal, w8a8=True, w8a8_mode="nonsense")
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
@pytest.mark.skipif(not (DIGITS / "digits.onnx").exists(), reason="digits sample missing")
def test_digits_heldout_w8a8(tmp_path):
    from converters.clean import clean_model
    from converters.images import list_images, read_images
    from edgeinfer.preprocess import PreprocessConfig

    model = onnx.load(DIGITS / "digits.onnx")
    meta = {p.key: p.value for p in model.metadata_props}
    pre, labels = json.loads(meta["edgeinfer.preprocess"]), json.loads(meta["edgeinfer.labels"])
    cfg = PreprocessConfig.from_dict(pre)
    model = clean_model(model)
    calib = read_images(list_images(DIGITS / "calib"), DIGITS / "calib", cfg, (32, 32), "calib", progress=False)
    held = read_images(list_images(DIGITS / "heldout"), DIGITS / "heldout", cfg, (32, 32), "heldout", progress=False)
    cal = calibrate(model, calib.samples, "minmax", progress=False)
    art = get_emitter("coreml")(EmitRequest(model=model, precision="int8", out_path=tmp_path / "d.mlpackage", calibration=cal,
                                            preprocess=pre, labels=labels, task="classify", options={**IOS17, "w8a8": True}))
    assert check_structure(art.path)["mil_ops"].get("quantize", 0) >= 14
    ref = ort_run(model, held.samples)[0]
    got = run_mlpackage(art.path, held.samples)[0]
    agree = (got.argmax(1) == ref.argmax(1)).mean()
    err = np.abs(got - ref).max()
    print(f"digits W8A8 held-out: top-1 agreement {agree:.4f}, max abs logit error {err:.3f} (|logits| <= {np.abs(ref).max():.1f})")
    assert agree >= 0.99
    assert err <= 0.15 * np.abs(ref).max()
