#!/usr/bin/env bash
# A separate numpy<2 venv with tflite-runtime 2.14, the interpreter many Raspberry Pi installs
# still have. tests/test_tflite_* run emitted models in it when it exists (and skip visibly if not).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv-tflite214
PY=${PYTHON:-python3}
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import tflite_runtime.interpreter" 2>/dev/null; then
  exit 0
fi
"$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q "tflite-runtime==2.14.0" "numpy<2" pillow \
  || { echo "warning: tflite-runtime 2.14 could not be installed; its compatibility tests will be skipped" >&2; rm -rf "$VENV"; }
