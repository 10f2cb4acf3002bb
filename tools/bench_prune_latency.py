"""Pruned vs unpruned, converted alike: verification of every artifact and engine latency side by side.

    .venv/bin/python tools/bench_prune_latency.py MODEL.onnx PRUNED.onnx --calib DIR
        [--profile generic-x86-64] [--formats onnx,tflite,coreml] [--quant fp32,int8] [--runs 30] [--threads 1]

Both models go through the same ``edgeinfer convert`` (same profile, formats, precisions and
calibration folder; PRUNED.onnx is a pruned float model, e.g. from ``tools/plot_prune_curve.py
--save-dir`` or the fp32 ONNX artifact of a ``convert --prune-flops F`` bundle). Printed:

1. per artifact of each bundle: its verification figures from the manifest (cosine, top-1
   agreement with its own float model) and whether the agreement meets the floor (0.9);
2. engine latency (``Backend.run`` only, batch 1, ``--threads`` threads) of the ONNX Runtime and
   LiteRT artifacts, unpruned and pruned runs interleaved (load changes hit both alike), median
   milliseconds and the pruned / unpruned ratio. Core ML artifacts are verified, not timed
   (``predict`` is macOS-only).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

from converters.verify import DEFAULT_AGREEMENT_FLOOR  # noqa: E402
from edgeinfer.bench import synthetic_image  # noqa: E402
from timing import interleaved_medians_ms  # noqa: E402

TIMED = ("onnx", "tflite")


def convert(model: Path, out: Path, args) -> Path:
    """Run ``edgeinfer convert`` on ``model``; return its bundle folder."""
    cmd = [sys.executable, "-m", "edgeinfer.cli", "convert", str(model), "--profile", args.profile,
           "--formats", args.formats, "--quant", args.quant, "--calib", str(args.calib), "-o", str(out), "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"convert {model} failed: {(done.stderr or done.stdout).strip().splitlines()[-1:]}")
    bundles = [p for p in out.iterdir() if (p / "manifest.json").is_file()]
    if len(bundles) != 1:
        raise SystemExit(f"expected one bundle under {out}, found {len(bundles)}")
    return bundles[0]


def verification_rows(label: str, bundle: Path) -> list[str]:
    m = json.loads((bundle / "manifest.json").read_text())
    rows = []
    for a in m["artifacts"]:
        v = a["verification"]
        agree = v.get("top1_agreement")
        ok = agree is None or agree >= DEFAULT_AGREEMENT_FLOOR
        rows.append(f"  {label:<9} {a['format']:<7} {a['precision']:<6} {a['size'] / 1e6:8.3f} MB  cos {v['cosine']:.5f}  "
                    f"agreement {agree if agree is not None else float('nan'):.3f}  "
                    f"{'pass' if ok else 'FAIL'}" + (f"  [{v['arithmetic']}]" if v.get("arithmetic") else ""))
    return rows


def engine_fn(bundle: Path, artifact: str, threads: int):
    """A no-argument callable running the artifact's engine once on one preprocessed photo-like image."""
    from edgeinfer.bench import _layout
    from edgeinfer.predictor import Predictor
    pred = Predictor(bundle, artifact=artifact, threads=threads)
    batch, _ = pred.preprocess([synthetic_image()])
    x = np.ascontiguousarray(_layout(pred, batch))
    return lambda: pred.backend.run(x)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path)
    ap.add_argument("pruned", type=Path)
    ap.add_argument("--calib", type=Path, required=True)
    ap.add_argument("--profile", default="generic-x86-64")
    ap.add_argument("--formats", default="onnx,tflite,coreml")
    ap.add_argument("--quant", default="fp32,int8")
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        bundles = {}
        for label, src in (("unpruned", args.model), ("pruned", args.pruned)):
            print(f"converting {label}: {src}", flush=True)
            bundles[label] = convert(src, Path(tmp) / label, args)
        print(f"\n== verification (each artifact against its own float model; floor {DEFAULT_AGREEMENT_FLOOR})")
        for label, b in bundles.items():
            print("\n".join(verification_rows(label, b)))
        m0, m1 = (json.loads((bundles[k] / "manifest.json").read_text()) for k in ("unpruned", "pruned"))
        pairs = [(a0["file"], a1["file"], a0["format"], a0["precision"]) for a0 in m0["artifacts"] for a1 in m1["artifacts"]
                 if a0["format"] == a1["format"] and a0["precision"] == a1["precision"] and a0["format"] in TIMED]
        print(f"\n== engine latency, batch 1, {args.threads} thread(s), median of {args.runs} interleaved runs")
        print(f"  {'engine':<22} {'unpruned ms':>12} {'pruned ms':>10}   pruned/unpruned")
        for f0, f1, fmt, prec in pairs:
            fns = {"u": engine_fn(bundles["unpruned"], f0, args.threads), "p": engine_fn(bundles["pruned"], f1, args.threads)}
            med = interleaved_medians_ms(fns, args.runs)
            name = {"onnx": "ONNX Runtime", "tflite": "LiteRT"}[fmt] + f" {prec}"
            print(f"  {name:<22} {med['u']:12.2f} {med['p']:10.2f}   {med['p'] / med['u']:.3f}x", flush=True)
    load = os.getloadavg()
    print(f"\nload average while measured: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} (shared machine: ratios, not absolute ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
