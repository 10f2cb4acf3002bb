"""Shared fixtures: the digits sample converted once per test session."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "samples" / "digits"
sys.path.insert(0, str(ROOT / "tools"))


def edgeinfer_cli(*args: str, check: bool = False) -> subprocess.CompletedProcess:
    """Run the CLI in a subprocess, as a user would."""
    proc = subprocess.run([sys.executable, "-m", "edgeinfer.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT)
    if check and proc.returncode != 0:
        raise AssertionError(f"edgeinfer {' '.join(map(str, args))} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def convert_digits(out: Path, profile: str, fmt: str) -> Path:
    """digits.onnx -> ``profile`` bundle with int8 + fp32 artifacts of ``fmt``, calibrated on samples/digits/calib."""
    edgeinfer_cli("convert", DIGITS / "digits.onnx", "--profile", profile, "--formats", fmt,
                  "--quant", "int8,fp32", "--calib", DIGITS / "calib", "-o", out, "--quiet", check=True)
    return out / f"digits-{profile}"


@pytest.fixture(scope="session")
def digits_bundle(tmp_path_factory) -> Path:
    """digits.onnx -> generic-x86-64 bundle with int8 + fp32 ONNX artifacts."""
    return convert_digits(tmp_path_factory.mktemp("bundles"), "generic-x86-64", "onnx")


@pytest.fixture(scope="session")
def digits_tflite_bundle(tmp_path_factory) -> Path:
    """digits.onnx -> raspberry-pi-4 bundle with int8 + fp32 TFLite artifacts."""
    return convert_digits(tmp_path_factory.mktemp("tflite-bundles"), "raspberry-pi-4", "tflite")


# ---------------------------------------------------------------- app packages (tests/test_package*.py)
SAMPLE_DET = ROOT / "samples" / "detector"


@pytest.fixture(scope="session")
def package_bundles(tmp_path_factory) -> dict[str, Path]:
    """The digits (fp32+int8) and detector (fp32) samples as onnx+tflite+coreml bundles."""
    out = tmp_path_factory.mktemp("pkg-bundles")
    edgeinfer_cli("convert", DIGITS / "digits.onnx", "--profile", "generic-x86-64", "--formats", "onnx,tflite,coreml",
                  "--quant", "fp32,int8", "--calib", DIGITS / "calib", "-o", out, "--quiet", check=True)
    edgeinfer_cli("convert", SAMPLE_DET / "shapes_det.onnx", "--profile", "generic-x86-64", "--formats", "onnx,tflite,coreml",
                  "--quant", "fp32", "-o", out, "--quiet", check=True)
    return {"digits": out / "digits-generic-x86-64", "det": out / "shapes_det-generic-x86-64"}


@pytest.fixture(scope="session")
def app_packages(package_bundles, tmp_path_factory) -> dict[str, Path]:
    """`edgeinfer package --target all --zip` of each of ``package_bundles``."""
    out = tmp_path_factory.mktemp("packages")
    for key, b in package_bundles.items():
        edgeinfer_cli("package", b, "--target", "all", "-o", out / key, "--zip", "--quiet", check=True)
    return {k: out / k for k in package_bundles}


def square_detector_images(n: int = 4) -> list[Path]:
    """Detector val images that are already 128x128 (letterbox = identity, no app-side resize)."""
    import json
    ann = json.loads((SAMPLE_DET / "val" / "annotations.json").read_text())
    return [SAMPLE_DET / "val" / i["file_name"] for i in ann["images"] if (i["width"], i["height"]) == (128, 128)][:n]


def iou(a, b) -> float:
    """IoU of two xyxy boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def region_asker(model, regions: dict, kept: list[str]):
    """A stand-in ``quantize(names)`` for the region choosers, and the list it appends to: which region
    (fraction; None for ``kept`` alone) each call asked for. Regions must differ in size; ``model`` is returned."""
    by_size = {len(v): f for f, v in regions.items()}
    asked: list = []

    def quantize(names):
        asked.append(None if list(names) == list(kept) else by_size[len(names)])
        return model
    return quantize, asked
