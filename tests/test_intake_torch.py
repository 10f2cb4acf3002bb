"""PyTorch sources: .pt2 (torch.export), TorchScript, pickles (refused unless trusted) and the
``edgeinfer.convert(module, example_input, ...)`` API."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import edgeinfer
import intake_models as im
from conftest import edgeinfer_cli
from converters.api import convert
from converters.intake.torch_source import sniff
from edgeinfer import EdgeInferError, Predictor
from edgeinfer.preprocess import PreprocessConfig, preprocess_image

PROFILE = "generic-x86-64"
PRE = dict(preset="imagenet", resize=72, crop=64)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("torch")
    net = im.tiny_net(seed=3)
    x = torch.randn(1, 3, 64, 64)
    torch.export.save(torch.export.export(net, (x,)), d / "net.pt2")
    torch.jit.save(torch.jit.trace(net, x), d / "net_ts.pt")
    torch.save(net, d / "net_pickle.pt")
    torch.save(net.state_dict(), d / "net_sd.pth")
    im.images(d / "calib", 12, size=80)
    return d, net


def _torch_scores(net, bundle_manifest, img):
    chw, _ = preprocess_image(img, PreprocessConfig.from_dict(bundle_manifest["preprocess"]), (64, 64))
    with torch.no_grad():
        return chw, net(torch.from_numpy(chw[None])).numpy()[0]


def test_sniff_tells_the_kinds_apart(files):
    d, _ = files
    assert sniff(d / "net.pt2") == "torch-export"
    assert sniff(d / "net_ts.pt") == "torchscript"
    assert sniff(d / "net_pickle.pt") == sniff(d / "net_sd.pth") == "torch-pickle"
    assert sniff(d / "calib" / "img00.png") is None


def test_pt2_converts_and_matches_torch(files, tmp_path):
    d, net = files
    proc = edgeinfer_cli("convert", d / "net.pt2", "--profile", PROFILE, "--preset", "imagenet", "--resize", "72",
                         "--crop", "64", "--calib", d / "calib", "--quant", "fp32,int8", "--formats", "onnx,tflite",
                         "-o", tmp_path, "--quiet", check=True)
    assert "torch.export (.pt2) exported to ONNX opset 18" in proc.stdout
    bundle = tmp_path / "net-generic-x86-64"
    m = edgeinfer.bundle.read_manifest(bundle)
    assert m["source"]["file"] == "net.pt2" and m["source"]["export_max_abs_error"] < 1e-4
    img = d / "calib" / "img02.png"
    chw, ref = _torch_scores(net, m, img)
    for art in ("net-fp32.onnx", "net-fp32.tflite"):
        np.testing.assert_allclose(Predictor(bundle, artifact=art).run(chw[None])[0][0], ref, atol=1e-4)
    assert Predictor(bundle, artifact="net-int8.onnx").predict([img])[0].top1 == int(np.argmax(ref))


def test_torchscript_takes_the_size_from_the_preprocessing(files, tmp_path):
    d, net = files
    res = convert(d / "net_ts.pt", profile=PROFILE, out=tmp_path, quant=["fp32"], formats=["onnx"], **PRE)
    m = res.manifests[0]
    assert m["source"]["format"] == "TorchScript" and m["input"]["shape"] == [1, 3, 64, 64]
    chw, ref = _torch_scores(net, m, d / "calib" / "img04.png")
    np.testing.assert_allclose(Predictor(res.bundles[0]).run(chw[None])[0][0], ref, atol=1e-4)
    with pytest.raises(EdgeInferError, match="does not record its input size; pass --input-shape"):
        convert(d / "net_ts.pt", profile=PROFILE, out=tmp_path / "b", quant=["fp32"], formats=["onnx"],
                preset="raw")  # nothing says the input size


def test_pickles_are_refused_unless_trusted(files, tmp_path):
    d, net = files
    proc = edgeinfer_cli("convert", d / "net_pickle.pt", "--profile", PROFILE, "--preset", "imagenet", "-o", tmp_path,
                         "--quiet")
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1
    assert "runs arbitrary code" in proc.stderr and "--trust-pickle" in proc.stderr
    assert not list(tmp_path.iterdir())
    with pytest.raises(EdgeInferError, match="weights without the architecture"):
        convert(d / "net_sd.pth", profile=PROFILE, out=tmp_path, trust_pickle=True, quant=["fp32"], **PRE)
    res = convert(d / "net_pickle.pt", profile=PROFILE, out=tmp_path, trust_pickle=True, quant=["fp32"],
                  formats=["onnx"], **PRE)
    assert res.manifests[0]["source"]["format"] == "pickled nn.Module (--trust-pickle)"


def test_python_api_converts_a_module_in_memory(files, tmp_path):
    d, net = files
    res = edgeinfer.convert(net, torch.randn(1, 3, 64, 64), profile=PROFILE, out=tmp_path, name="tiny",
                            calib_dir=d / "calib", quant=["fp32", "int8"], formats=["onnx"], **PRE)
    m = res.manifests[0]
    assert res.bundles[0].name == "tiny-generic-x86-64" and m["source"]["file"] == "tiny.pt2"
    chw, ref = _torch_scores(net, m, d / "calib" / "img05.png")
    np.testing.assert_allclose(Predictor(res.bundles[0], artifact="tiny-fp32.onnx").run(chw[None])[0][0], ref, atol=1e-4)
    with pytest.raises(EdgeInferError, match="give an example input"):
        edgeinfer.convert(net, profile=PROFILE, out=tmp_path)
    with pytest.raises(EdgeInferError, match="unknown option 'quantize'"):
        edgeinfer.convert(net, torch.randn(1, 3, 64, 64), profile=PROFILE, out=tmp_path, quantize="int8")
