#!/usr/bin/env bash
# Throw-away venvs holding the mobile platforms' own code, used by tests/test_package_platforms.py
# to check `edgeinfer package` output: MediaPipe Tasks (mediapipe 0.10.x) and the TFLite Task
# Library (tflite-support 0.4.4: needs protobuf<4, Python 3.11 and libusb-1.0). They live outside
# the repo, in ${EDGEINFER_VERIFIERS:-~/.cache/edgeinfer-verifiers}, are built once and reused.
# A venv that cannot be built leaves a one-line reason in <venv>.reason; its tests then skip, saying it.
set -uo pipefail
ROOT=${EDGEINFER_VERIFIERS:-$HOME/.cache/edgeinfer-verifiers}
mkdir -p "$ROOT"
MEDIAPIPE_SPEC=${MEDIAPIPE_SPEC:-"mediapipe>=0.10.14,<0.11"}
TFLS_SPEC="tflite-support==0.4.4"

build() {  # build NAME PYTHON CHECK PACKAGES...
  local name=$1 py=$2 check=$3; shift 3
  local venv="$ROOT/$name" stamp="$ROOT/$name/.edgeinfer-ok"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$*" ] && "$venv/bin/python" -c "$check" >/dev/null 2>&1; then
    return 0
  fi
  rm -rf "$venv" "$ROOT/$name.reason"
  local log="$ROOT/$name.log"
  if ! command -v "$py" >/dev/null 2>&1; then
    echo "$py not found (the $name verifier needs it)" > "$ROOT/$name.reason"; return 0
  fi
  echo "building the $name verifier venv in $venv (once; cached)" >&2
  if "$py" -m venv "$venv" >"$log" 2>&1 && "$venv/bin/python" -m pip install -q --upgrade pip >>"$log" 2>&1 \
     && "$venv/bin/python" -m pip install -q "$@" >>"$log" 2>&1 \
     && "$venv/bin/python" -c "$check" >>"$log" 2>&1; then
    echo "$*" > "$stamp"
  else
    echo "pip install $* or its import failed: $(grep -E 'Error|error' "$log" | tail -n 1 | cut -c1-200)" > "$ROOT/$name.reason"
    echo "warning: the $name verifier could not be built ($(cat "$ROOT/$name.reason")); its tests will be skipped" >&2
    rm -rf "$venv"
  fi
}

# tflite-support's C++ extension links libusb-1.0 (Debian: libusb-1.0-0); install it when we may.
if ! ldconfig -p 2>/dev/null | grep -q 'libusb-1.0.so.0'; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    (apt-get install -y -qq libusb-1.0-0 || { apt-get update -qq && apt-get install -y -qq libusb-1.0-0; }) >/dev/null 2>&1 || true
  fi
fi

build mediapipe "${PYTHON:-python3}" "import mediapipe.tasks.python.vision, PIL" "$MEDIAPIPE_SPEC" "numpy<2" pillow
PY311=${PYTHON311:-python3.11}
build tflite-support "$PY311" "from tflite_support.task import vision; from tflite_support import metadata" \
  "$TFLS_SPEC" "protobuf<4" "numpy<2" pillow
if ! ldconfig -p 2>/dev/null | grep -q 'libusb-1.0.so.0' && [ ! -f "$ROOT/tflite-support/.edgeinfer-ok" ]; then
  echo "libusb-1.0 is missing (apt-get install libusb-1.0-0 as root)" > "$ROOT/tflite-support.reason"
fi
exit 0
