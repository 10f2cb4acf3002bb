"""--verify-on emulated: the profile's core is chosen honestly; unusable requests fail before any work.
(The emulated run itself is exercised by `make device-test`, which builds the arm64 userland.)"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import DIGITS, ROOT
from converters.verify_emulated import core_for
from edgeinfer.errors import EdgeInferError
from edgeinfer.profiles import load_profile


def _data(name):
    p = load_profile(name)
    return dict(p.data, name=p.name)


def test_core_for_profiles():
    assert core_for(_data("raspberry-pi-4")) == ("cortex-a72", None)
    assert core_for(_data("raspberry-pi-5")) == ("cortex-a76", None)
    core, note = core_for(_data("pixel-8"))
    assert core == "cortex-a76" and "not emulated" in note and "Cortex-X3" in note
    with pytest.raises(EdgeInferError, match="arm64 profiles; generic-x86-64 is x86_64"):
        core_for(_data("generic-x86-64"))


def _convert(tmp_path, *extra, env=None):
    return subprocess.run([sys.executable, "-m", "edgeinfer.cli", "convert", str(DIGITS / "digits.onnx"), "--formats", "tflite",
                           "--quant", "fp32", "-o", str(tmp_path), "--quiet", "--verify-on", "emulated", *extra],
                          capture_output=True, text=True, cwd=ROOT, env=env)


def test_non_arm_profile_refused_before_work(tmp_path):
    r = _convert(tmp_path, "--profile", "raspberry-pi-4", "--profile", "generic-x86-64")
    assert r.returncode == 2 and "generic-x86-64 is x86_64" in r.stderr and "Traceback" not in r.stderr
    assert list(tmp_path.iterdir()) == []


def test_missing_qemu_says_how_to_get_it(tmp_path):
    env = dict(os.environ, PATH=str(tmp_path / "empty"), PYTHONPATH=str(ROOT))
    r = _convert(tmp_path / "out", "--profile", "raspberry-pi-4", env=env)
    assert r.returncode == 2, r.stderr
    assert "apt-get install qemu-user-static" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
