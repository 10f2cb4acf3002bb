"""Emitted .tflite files must load and run in tflite-runtime 2.14 (numpy<2) as in ai-edge-litert.

Usage (from the repository root):
    .venv/bin/python tools/check_tflite_runtime214.py [--venv .venv-tflite214] [--quick]

The parent process (main venv) emits the op-coverage models of ``tests/tflite_util.op_cases``,
the tiny CNN and, when present, ``samples/digits/digits.onnx`` in fp32 and full-integer int8 (plus
fp16, dynamic-range int8 and int4 for information), runs each in ai-edge-litert, then runs the same
files through ``edgeinfer.backends.litert_backend`` inside the 2.14 venv (where it falls back to
``tflite_runtime``) and compares. Exit code 0 when every fp32/int8 model loads and agrees
(fp32: 1e-5; int8: 4 output quantization steps), 1 otherwise, 3 when the venv is missing.
Create the venv with:
    python3 -m venv .venv-tflite214 && .venv-tflite214/bin/pip install tflite-runtime==2.14.0 'numpy<2' pillow
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REQUIRED = ("fp32", "int8")


def worker(workdir: Path) -> int:
    """Runs inside the 2.14 venv: every <name>.tflite with <name>.in.npy -> <name>.out.npz."""
    sys.path[:0] = [str(ROOT), str(ROOT / "tools")]
    from device_worker import models
    return models(str(workdir))


def _models(quick: bool):
    sys.path.insert(0, str(ROOT / "tests"))
    sys.path.insert(0, str(ROOT / "tools"))
    import onnx
    from tflite_util import op_cases, tiny_cnn
    models = dict(op_cases()) if not quick else {k: v for k, v in op_cases().items() if k.startswith(("conv", "resize", "gemm"))}
    models["tiny_cnn"] = tiny_cnn()
    digits = ROOT / "samples" / "digits" / "digits.onnx"
    if digits.exists():      # cleaned (BatchNorm folded) as the pipeline gives it: int4 plans need that graph
        from converters.clean import clean_model
        models["digits"] = clean_model(onnx.load(str(digits)))
    return models


PRECISIONS = (("fp32", {}), ("int8", {}), ("fp16", {}), ("int8-dynamic", {"int8_mode": "dynamic"}), ("int4", {}))


def emit_op_models(work: Path, quick: bool = False) -> tuple[dict, list]:
    """Emit every op model in every precision into ``work`` (with ``.in.npy`` inputs).

    Returns ({stem: (ai-edge-litert outputs on this host, artifact)}, rows for models not emitted).
    """
    import numpy as np
    models = _models(quick)
    from tflite_util import calibration, convert, run_tflite
    from edgeinfer.errors import EdgeInferError
    rng = np.random.default_rng(0)
    rows, expected = [], {}
    for name, model in models.items():
        inp = next(i for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer})
        shape = [d.dim_value or 1 for d in inp.type.tensor_type.shape.dim]
        xs = rng.standard_normal([16] + shape[1:]).astype(np.float32)
        calib = calibration(model, xs)
        for prec, opts in PRECISIONS:
            stem = f"{name}__{prec}"
            try:
                art = convert(model, work, prec.split("-")[0], calib=calib, name=stem + ".tflite", **opts)
            except EdgeInferError as exc:
                rows.append((stem, "not emitted", str(exc)[:80]))
                continue
            x = xs[:1]
            x_art = x.transpose(0, 2, 3, 1) if art.input_layout == "NHWC" and x.ndim == 4 else x
            np.save(work / f"{stem}.in.npy", np.ascontiguousarray(x_art))
            expected[stem] = (run_tflite(art.path, x), art)
    return expected, rows


def compare_op_models(expected: dict, results: dict, work: Path, fp32_tol: float = 1e-5) -> tuple[list, int]:
    """Rows (stem, status, info) comparing the worker's outputs with ``expected``; and the required failures.

    fp32 within ``fp32_tol`` (relative to the output's largest magnitude when above 1); int8 kernels
    differ in requantization rounding (XNNPACK vs reference), so 4 output steps are allowed.
    """
    import numpy as np
    rows, failures = [], 0
    for stem, (ref, art) in expected.items():
        res = results.get(stem, {"ok": False, "error": "not run"})
        prec = stem.split("__")[1]
        required = prec in REQUIRED
        if not res["ok"]:
            rows.append((stem, "LOAD/RUN FAIL" if required else "fail (info)", res["error"]))
            failures += required
            continue
        got = np.load(work / f"{stem}.out.npz")
        outs = [got[k] for k in got.files]
        err = max(float(np.abs(a - b).max()) for a, b in zip(outs, ref))
        step = max(float(r.max() - r.min()) for r in ref) / 255.0
        scale = max(1.0, max(float(np.abs(r).max()) for r in ref))
        tol = fp32_tol * scale if prec == "fp32" else 4 * step + 1e-6
        ok = err <= tol
        failures += required and not ok
        rows.append((stem, "ok" if ok else ("MISMATCH" if required else "mismatch (info)"),
                     f"max|got - litert| = {err:.2e} (tol {tol:.1e}); versions {art.details['op_versions']}"))
    return rows, failures


def print_rows(rows: list) -> None:
    w = max(len(r[0]) for r in rows)
    for stem, status, info in rows:
        print(f"{stem:<{w}}  {status:<13}  {info}")


def parent(venv: Path, quick: bool) -> int:
    py = venv / "bin" / "python"
    if not py.exists():
        print(f"SKIP: {py} not found; create it with: python3 -m venv {venv} && "
              f"{venv}/bin/pip install tflite-runtime==2.14.0 'numpy<2' pillow")
        return 3
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        expected, rows = emit_op_models(work, quick)
        print(f"running {len(expected)} models in {venv} ...", file=sys.stderr)
        subprocess.run([str(py), __file__, "--worker", str(work)], check=True)
        results = json.loads((work / "results.json").read_text())
        more, failures = compare_op_models(expected, results, work)
        rows += more
    print_rows(rows)
    print(f"\n{sum(r[1] == 'ok' for r in rows)}/{len(rows)} ok; required (fp32, int8) failures: {failures}")
    return 1 if failures else 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--venv", type=Path, default=ROOT / ".venv-tflite214")
    ap.add_argument("--quick", action="store_true", help="only conv/resize/gemm op models, tiny CNN, digits")
    ap.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker(args.worker)
    return parent(args.venv, args.quick)


if __name__ == "__main__":
    sys.exit(main())
