"""End to end on the ONNX path: convert the digits sample, inspect, run; and every refusal."""
import json

import pytest

from edgeinfer import Predictor
from edgeinfer.bundle import read_manifest, sha256_of

from conftest import DIGITS, edgeinfer_cli


def test_bundle_manifest_records_the_contract(digits_bundle):
    m = read_manifest(digits_bundle)
    assert m["schema"] == 1 and m["task"] == "classify"
    assert m["source"]["sha256"] == sha256_of(DIGITS / "digits.onnx")
    assert m["input"]["shape"][1:] == [1, 32, 32]
    assert m["preprocess"]["color"] == "gray" and m["preprocess"]["mean"] == [0.5]
    assert m["calibration"]["method"] == "minmax" and m["calibration"]["images"] >= 60
    assert m["verification_data"]["held_out_from_calibration"] is True
    assert [a["precision"] for a in m["artifacts"]] == ["int8", "fp32"]
    for a in m["artifacts"]:
        assert sha256_of(digits_bundle / a["file"]) == a["sha256"]
        v = a["verification"]
        assert v["inputs"] >= 10 and v["cosine"] > 0.99 and v["top1_agreement"] >= 0.95
    assert (digits_bundle / "labels.txt").read_text().split() == [str(i) for i in range(10)]
    assert not list(digits_bundle.parent.glob(".*tmp*")), "temp dirs left behind"


def test_int8_artifact_is_quantized(digits_bundle):
    import onnx
    q = onnx.load(str(digits_bundle / "digits-int8.onnx"))
    ops = {n.op_type for n in q.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    # per-channel weights: a DequantizeLinear with a vector scale
    inits = {t.name: t for t in q.graph.initializer}
    assert any(len(inits[n.input[1]].dims) == 1 and inits[n.input[1]].dims[0] > 1
               for n in q.graph.node if n.op_type == "DequantizeLinear" and n.input[1] in inits)


def test_predictor_runs_batches_and_names_labels(digits_bundle):
    pred = Predictor(digits_bundle)
    assert pred.artifact["precision"] == "int8"
    images = sorted((DIGITS / "images").glob("*.png"))
    results = pred.predict(images, top_k=3)
    names = {"zero": "0", "two": "2", "three": "3", "five": "5", "seven": "7", "nine": "9"}
    for path, res in zip(images, results):
        assert res.labels[0] == names[path.stem.split("_")[0]]
        assert len(res.scores) == 3 and res.scores[0] >= res.scores[1]
        assert sum(res.to_dict()["top_k"][i]["score"] for i in range(3)) <= 1.0 + 1e-6
    fp32 = Predictor(digits_bundle, artifact="digits-fp32.onnx")
    assert [r.top1 for r in fp32.predict(images)] == [r.top1 for r in results]


def test_cli_run_text_and_json(digits_bundle):
    img = DIGITS / "images" / "seven_0.png"
    out = edgeinfer_cli("run", digits_bundle, img, "--top-k", "2", check=True).stdout
    assert "seven_0.png" in out and out.splitlines()[2].strip().startswith("7")
    data = json.loads(edgeinfer_cli("run", digits_bundle, img, "--json", check=True).stdout)
    assert data["artifact"] == "digits-int8.onnx" and data["results"][0]["top_k"][0]["label"] == "7"


def test_inspect_bundle_and_model(digits_bundle, tmp_path):
    assert "digits-int8.onnx" in edgeinfer_cli("inspect", digits_bundle, check=True).stdout
    report = json.loads(edgeinfer_cli("inspect", digits_bundle, "--json", check=True).stdout)
    assert set(report["integrity"].values()) == {"ok"}
    import shutil
    copy = tmp_path / "copy"
    shutil.copytree(digits_bundle, copy)
    (copy / "digits-fp32.onnx").write_bytes((copy / "digits-int8.onnx").read_bytes())
    report = json.loads(edgeinfer_cli("inspect", copy, "--json", check=True).stdout)
    assert report["integrity"]["digits-fp32.onnx"] == "size mismatch"     # checked first, without hashing
    tampered = bytearray((copy / "digits-int8.onnx").read_bytes())
    tampered[-1] ^= 0x01                                                   # same size, different bytes
    (copy / "digits-int8.onnx").write_bytes(bytes(tampered))
    report = json.loads(edgeinfer_cli("inspect", copy, "--json", check=True).stdout)
    assert report["integrity"]["digits-int8.onnx"] == "sha256 mismatch"
    info = json.loads(edgeinfer_cli("inspect", DIGITS / "digits.onnx", "--json", check=True).stdout)
    assert info["op_counts"]["BatchNormalization"] >= 1 and info["edgeinfer_metadata"]["task"] == "classify"


def _fails(*args, expect: str):
    proc = edgeinfer_cli(*args)
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr
    assert expect in proc.stderr, proc.stderr
    assert len([l for l in proc.stderr.splitlines() if l.startswith("error:")]) == 1
    return proc


def test_existing_output_refused_without_force(digits_bundle):
    before = sha256_of(digits_bundle / "manifest.json")
    _fails("convert", DIGITS / "digits.onnx", "--profile", "generic-x86-64", "--formats", "onnx", "--quant", "fp32",
           "-o", digits_bundle.parent, expect="--force")
    assert sha256_of(digits_bundle / "manifest.json") == before


def test_int8_without_calibration_refused_then_allowed_and_recorded(tmp_path):
    _fails("convert", DIGITS / "digits.onnx", "--profile", "generic-x86-64", "--formats", "onnx", "--quant", "int8",
           "-o", tmp_path, expect="--calib")
    assert not any(tmp_path.iterdir()), "nothing may be written on failure"
    edgeinfer_cli("convert", DIGITS / "digits.onnx", "--profile", "generic-x86-64", "--formats", "onnx", "--quant", "int8",
                  "-o", tmp_path, "--calib-synthetic", "--quiet", check=True)
    m = read_manifest(tmp_path / "digits-generic-x86-64")
    assert m["calibration"]["synthetic"] is True
    assert any("RANDOM" in w for w in m["warnings"])


def test_min_agreement_failure_names_the_figure_and_writes_nothing(tmp_path):
    # int4 weights on this small net flip a few of the 360 held-out predictions (agreement ~0.997)
    _fails("convert", DIGITS / "digits.onnx", "--profile", "generic-x86-64", "--formats", "onnx", "--quant", "int4",
           "--calib", DIGITS / "calib", "--verify-data", DIGITS / "heldout", "-o", tmp_path, "--min-agreement", "0.9995",
           expect="top1_agreement")
    assert not list(tmp_path.iterdir())
    _fails("convert", DIGITS / "digits.onnx", "--profile", "generic-x86-64", "--formats", "onnx", "--quant", "fp32",
           "-o", tmp_path, "--min-agreement", "1.5", expect="between 0 and 1")


def test_unreadable_calibration_images_are_counted(tmp_path):
    calib = tmp_path / "calib"
    calib.mkdir()
    for p in sorted((DIGITS / "calib").glob("*.png"))[:20]:
        (calib / p.name).write_bytes(p.read_bytes())
    (calib / "broken.png").write_bytes(b"\x89PNG broken")
    proc = edgeinfer_cli("convert", DIGITS / "digits.onnx", "--profile", "generic-x86-64", "--formats", "onnx",
                         "--quant", "int8", "--calib", calib, "-o", tmp_path / "out", check=True)
    assert "skipped 1 unreadable image" in proc.stderr
    m = read_manifest(tmp_path / "out" / "digits-generic-x86-64")
    assert m["calibration"]["skipped"] == 1


@pytest.mark.parametrize("args, expect", [
    (["--quant", "int3"], "unknown --quant 'int3'"),
    (["--profile", "pi4"], "unknown device profile 'pi4'"),
    (["--formats", "caffe"], "unknown format 'caffe'"),
    (["--mean", "a,b"], "--mean must be comma-separated numbers"),
    (["--color", "rgb"], "gives 3 channel(s) but the model input has 1"),
    (["--resize", "64"], "fix --resize/--crop"),
    (["--labels", "/nonexistent/labels.txt"], "labels file not found"),
])
def test_bad_options_one_line(tmp_path, args, expect):
    base = ["convert", DIGITS / "digits.onnx", "-o", tmp_path, "--calib", DIGITS / "calib", "--formats", "onnx"]
    if "--profile" not in args:
        base += ["--profile", "generic-x86-64"]
    _fails(*base, *args, expect=expect)
    assert not list(tmp_path.iterdir())


def test_model_without_metadata_needs_preprocessing(tmp_path):
    import onnx
    m = onnx.load(str(DIGITS / "digits.onnx"))
    del m.metadata_props[:]
    p = tmp_path / "bare.onnx"
    onnx.save(m, str(p))
    _fails("convert", p, "--profile", "generic-x86-64", "--formats", "onnx", "--quant", "fp32", "-o", tmp_path / "o",
           expect="--preset")
    edgeinfer_cli("convert", p, "--profile", "generic-x86-64", "--formats", "onnx", "--quant", "fp32", "-o",
                  tmp_path / "o", "--mean", "0.5", "--std", "0.5", "--quiet", check=True)
    assert read_manifest(tmp_path / "o" / "bare-generic-x86-64")["preprocess"]["mean"] == [0.5]


def test_bad_bundle_and_images(tmp_path, digits_bundle):
    _fails("run", tmp_path, DIGITS / "images" / "seven_0.png", expect="not an edgeinfer bundle")
    bad = tmp_path / "bad.png"
    bad.write_text("x")
    _fails("run", digits_bundle, bad, expect="cannot read image")
    _fails("run", digits_bundle, DIGITS / "images" / "seven_0.png", "--artifact", "nope.onnx", expect="not in this bundle")


def test_prune_flag_shrinks_the_bundle_and_reports(tmp_path):
    proc = edgeinfer_cli("convert", DIGITS / "digits.onnx", "--profile", "generic-x86-64", "--formats", "onnx",
                         "--quant", "fp32", "--calib", DIGITS / "calib", "--prune", "0.3", "-o", tmp_path, "--quiet",
                         check=True)
    assert "params" in proc.stdout and "[prune]" not in proc.stderr
    m = read_manifest(tmp_path / "digits-generic-x86-64")
    assert m["pruning"]["params"]["drop"] >= 0.4 and m["pruning"]["macs"]["drop"] >= 0.4
    art = m["artifacts"][0]
    assert art["size"] < 0.7 * m["source"]["size"]
    assert art["verification"]["top1_agreement"] >= 0.9


def test_pruned_int8_verifies_for_every_emitter(tmp_path):
    edgeinfer_cli("convert", DIGITS / "digits.onnx", "--profile", "raspberry-pi-4", "--formats", "onnx,tflite,coreml",
                  "--quant", "int8", "--calib", DIGITS / "calib", "--prune", "0.3", "-o", tmp_path, "--quiet", check=True)
    m = read_manifest(tmp_path / "digits-raspberry-pi-4")
    assert sorted(a["format"] for a in m["artifacts"]) == ["coreml", "onnx", "tflite"]
    for a in m["artifacts"]:
        assert a["size"] < 0.45 * m["source"]["size"], a["file"]
        assert a["verification"]["top1_agreement"] >= 0.9, a


def test_json_output_is_pure_json_with_histogram_calibration(tmp_path):
    proc = edgeinfer_cli("convert", DIGITS / "digits.onnx", "--profile", "generic-x86-64", "--formats", "onnx",
                         "--quant", "int8", "--calib", DIGITS / "calib", "--calib-method", "percentile", "-o", tmp_path,
                         "--json", check=True)
    data = json.loads(proc.stdout)
    assert data[0]["calibration"]["method"] == "percentile"
    assert data[0]["artifacts"][0]["verification"]["top1_agreement"] >= 0.95


def test_identical_artifacts_across_profiles_are_emitted_once(tmp_path):
    proc = edgeinfer_cli("convert", DIGITS / "digits.onnx", "--profile", "raspberry-pi-4", "--profile", "raspberry-pi-5",
                         "--calib", DIGITS / "calib", "-o", tmp_path, check=True)
    assert proc.stderr.count("copied") == 2
    a = read_manifest(tmp_path / "digits-raspberry-pi-4")["artifacts"]
    b = read_manifest(tmp_path / "digits-raspberry-pi-5")["artifacts"]
    assert [x["sha256"] for x in a] == [x["sha256"] for x in b]
    for x in b:
        assert sha256_of(tmp_path / "digits-raspberry-pi-5" / x["file"]) == x["sha256"]
