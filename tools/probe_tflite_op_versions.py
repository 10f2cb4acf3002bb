"""Measure the highest version of each builtin op that a TFLite runtime registers.

    .venv/bin/python tools/probe_tflite_op_versions.py [--python .venv-tflite214/bin/python] [--max 16]

For every op the edgeinfer emitter writes and versions 1..--max, a tiny valid model gets one extra
operator code (op, version) appended; the interpreter resolves every operator code when it builds
the model, so "Didn't find op for builtin opcode" means that runtime cannot run that version.
Prints a Python dict {op: highest version} for ``converters/emitters/tflite/op_versions.py``'s
RUNTIME_MAX table. ``--python`` runs the probe in another interpreter (e.g. tflite-runtime 2.14's venv).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PROBE = """
import json, sys
from pathlib import Path
try:
    from ai_edge_litert.interpreter import Interpreter
    engine = "ai-edge-litert"
except ImportError:
    from tflite_runtime.interpreter import Interpreter
    engine = "tflite-runtime"
import importlib.metadata as md
out = {"engine": engine, "version": md.version(engine), "ok": {}}
for f in sorted(Path(sys.argv[1]).glob("*.tflite")):
    op, v = f.stem.rsplit("__v", 1)
    try:
        Interpreter(model_path=str(f))
        ok = True
    except (ValueError, RuntimeError) as exc:
        ok = "find op for builtin opcode" not in str(exc)
    out["ok"].setdefault(op, {})[v] = ok
print(json.dumps(out))
"""


def probe_models(work: Path, ops: list[str], max_version: int) -> None:
    import numpy as np
    from ai_edge_litert import schema_py_generated as fb

    from converters.emitters.tflite.builder import ModelBuilder
    for op in ops:
        for v in range(1, max_version + 1):
            b = ModelBuilder()
            x = b.add_tensor("x", [1, 4], fb.TensorType.FLOAT32)
            y = b.add_tensor("y", [1, 4], fb.TensorType.FLOAT32)
            b.add_op("RELU", [x], [y])
            code = getattr(fb.BuiltinOperator, op)
            b._opcode_versions.append([code, v])          # an extra, unused operator code
            (work / f"{op}__v{v}.tflite").write_bytes(b.finish([x], [y]))
    del np


def main() -> int:
    from converters.emitters.tflite.op_versions import RULES
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--max", type=int, default=16)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        probe_models(Path(tmp), sorted(RULES), args.max)
        r = subprocess.run([args.python, "-c", PROBE, tmp], capture_output=True, text=True)
        if r.returncode != 0:
            print(r.stderr[-2000:], file=sys.stderr)
            return 1
        res = json.loads(r.stdout.strip().splitlines()[-1])
    best = {op: max((int(v) for v, ok in vs.items() if ok), default=0) for op, vs in sorted(res["ok"].items())}
    print(f"# {res['engine']} {res['version']}")
    print(json.dumps(best, indent=None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
