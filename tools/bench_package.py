"""Time `edgeinfer package BUNDLE --target all` (a fresh process per run, as a user runs it).

    python tools/bench_package.py [BUNDLE ...]     # default: converts the two samples first

Prints per bundle the wall time and the CPU time (user + sys of the child) of the median of
``--repeat`` runs, and the machine's load average (the wall time on a shared machine includes
waiting for a core; the CPU time does not).
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cli(*args) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    subprocess.run([sys.executable, "-m", "edgeinfer.cli", *map(str, args)], check=True, cwd=ROOT, env=env,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def sample_bundles(out: Path) -> list[Path]:
    s = ROOT / "samples"
    cli("convert", s / "digits" / "digits.onnx", "--profile", "generic-x86-64", "--formats", "onnx,tflite,coreml",
        "--quant", "fp32,int8", "--calib", s / "digits" / "calib", "-o", out, "--quiet")
    cli("convert", s / "detector" / "shapes_det.onnx", "--profile", "generic-x86-64", "--formats", "onnx,tflite,coreml",
        "--quant", "fp32", "-o", out, "--quiet")
    return [out / "digits-generic-x86-64", out / "shapes_det-generic-x86-64"]


def timed(bundle: Path, out: Path) -> tuple[float, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    cli("package", bundle, "--target", "all", "-o", out, "--force", "--quiet")
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundles", nargs="*", type=Path)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        bundles = args.bundles or sample_bundles(Path(tmp) / "bundles")
        print(f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
        for b in bundles:
            runs = [timed(b, Path(tmp) / "pkg") for _ in range(args.repeat)]
            wall = statistics.median(r[0] for r in runs)
            cpu = statistics.median(r[1] for r in runs)
            print(f"{b.name:<36} package --target all: wall {wall:6.2f} s  cpu {cpu:6.2f} s  (median of {len(runs)})")
        print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
