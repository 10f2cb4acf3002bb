"""Emitted fp32/int8 models also run in tflite-runtime 2.14 (separate numpy<2 venv, created by CI)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / ".venv-tflite214"


@pytest.mark.skipif(not (VENV / "bin" / "python").exists(),
                    reason=f"{VENV} missing: python3 -m venv .venv-tflite214 && "
                           ".venv-tflite214/bin/pip install tflite-runtime==2.14.0 'numpy<2' pillow")
def test_emitted_models_run_in_tflite_runtime_214():
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "check_tflite_runtime214.py"), "--quick"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert "required (fp32, int8) failures: 0" in r.stdout
