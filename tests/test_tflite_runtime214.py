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


@pytest.mark.skipif(not (VENV / "bin" / "python").exists(), reason=f"{VENV} missing")
def test_failed_batch_resize_falls_back_without_crashing(tmp_path):
    """A fixed-shape RESHAPE makes the batch resize fail at allocation; tflite-runtime 2.14 then crashed in
    invoke() (found running the detector on emulated arm64). The backend re-opens the interpreter instead."""
    import numpy as np
    from onnx import helper
    from tflite_util import convert, make_model
    m = make_model([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Reshape", ["r", "shape"], ["y"])],
                   [("x", [1, 4, 4, 4])], [("y", [1, 64])], {"shape": np.array([1, 64], np.int64)})
    art = convert(m, tmp_path)
    script = (f"import sys, numpy as np; sys.path.insert(0, {str(ROOT)!r})\n"
              "from edgeinfer.backends.litert_backend import LiteRTBackend\n"
              f"be = LiteRTBackend({str(art.path)!r})\n"
              "x = np.arange(3 * 64, dtype=np.float32).reshape(3, 4, 4, 4) - 90\n"
              "y = be.run(x)[0]\n"
              "assert y.shape == (3, 64), y.shape\n"
              "assert np.array_equal(y, np.maximum(x, 0).transpose(0, 3, 1, 2).reshape(3, 64)), y\n"
              "print('OK', be.engine)")
    r = subprocess.run([str(VENV / "bin" / "python"), "-c", script], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "OK tflite_runtime" in r.stdout, (r.returncode, r.stderr[-2000:])
