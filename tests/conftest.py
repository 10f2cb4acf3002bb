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


@pytest.fixture(scope="session")
def digits_bundle(tmp_path_factory) -> Path:
    """digits.onnx -> generic-x86-64 bundle with int8 + fp32 ONNX artifacts."""
    out = tmp_path_factory.mktemp("bundles")
    edgeinfer_cli("convert", DIGITS / "digits.onnx", "--profile", "generic-x86-64", "--formats", "onnx",
                  "--quant", "int8,fp32", "--calib", DIGITS / "calib", "-o", out, "--quiet", check=True)
    return out / "digits-generic-x86-64"


@pytest.fixture(scope="session")
def digits_tflite_bundle(tmp_path_factory) -> Path:
    """digits.onnx -> raspberry-pi-4 bundle with int8 + fp32 TFLite artifacts (calibrated on samples/digits/calib)."""
    out = tmp_path_factory.mktemp("tflite-bundles")
    edgeinfer_cli("convert", DIGITS / "digits.onnx", "--profile", "raspberry-pi-4", "--formats", "tflite",
                  "--quant", "int8,fp32", "--calib", DIGITS / "calib", "-o", out, "--quiet", check=True)
    return out / "digits-raspberry-pi-4"
