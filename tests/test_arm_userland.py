"""The arm64 emulation helpers: one-line reasons when tools are missing, named cores only."""
from __future__ import annotations

import subprocess

import pytest

from converters import arm_userland as arm
from edgeinfer.errors import EdgeInferError


def test_missing_tools_say_what_and_how(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(arm.EmulationUnavailable) as exc:
        arm.check_tools(build=True)
    msg = str(exc.value)
    assert "qemu-aarch64-static" in msg and "mmdebstrap" in msg
    assert "apt-get install qemu-user-static mmdebstrap" in msg and "\n" not in msg


def test_install_tools_without_root_explains(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(arm.os, "geteuid", lambda: 1000)
    why = arm.install_tools()
    assert why and "sudo apt-get install mmdebstrap qemu-user-static" in why


def test_only_named_cores(monkeypatch, tmp_path):
    monkeypatch.setenv("EDGEINFER_DEVICE_CACHE", str(tmp_path))
    with pytest.raises(EdgeInferError, match="cortex-a72"):
        arm.userland("max")            # QEMU's default CPU emulates SVE wrongly for int8


def test_cpuinfo_describes_the_core():
    text = arm._cpuinfo(arm.CORES["cortex-a76"])
    assert text.count("processor\t:") == 4 and "CPU part\t: 0xd0b" in text and "asimddp" in text
    assert "asimddp" not in arm._cpuinfo(arm.CORES["cortex-a72"])


def test_guest_crash_is_one_line():
    crashed = subprocess.CompletedProcess([], -11, "", "x\nqemu: uncaught target signal 11 (Segmentation fault) - core dumped\n")
    assert arm.guest_crash(crashed).startswith("qemu: uncaught target signal 11")
    assert arm.guest_crash(subprocess.CompletedProcess([], 0, "", "")) is None
    assert "signal 6" in arm.guest_crash(subprocess.CompletedProcess([], 134, "", ""))


def test_installed_distributions_and_size(tmp_path):
    (tmp_path / "numpy-1.26.4.dist-info").mkdir()
    (tmp_path / "tflite_runtime-2.14.0.dist-info").mkdir()
    (tmp_path / "pkg" / "__pycache__").mkdir(parents=True)
    (tmp_path / "pkg" / "a.py").write_bytes(b"x" * 10)
    (tmp_path / "pkg" / "__pycache__" / "a.pyc").write_bytes(b"x" * 99)
    assert arm.installed_distributions(tmp_path) == {"numpy": "1.26.4", "tflite-runtime": "2.14.0"}
    assert arm.folder_size(tmp_path / "pkg") == 10
