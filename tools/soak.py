"""Memory soak: many inferences through ``Predictor`` per engine, resident memory every 1,000.

    PYTHONPATH=$PWD python tools/soak.py                       # digits sample, ONNX + TFLite, 10,000 each
    PYTHONPATH=$PWD python tools/soak.py --bundle B1 --bundle B2 --image photo.jpg --count 10000

Each artifact soaks in a fresh process (one engine's allocations do not blur another's). Every
inference is a full ``predict([image])``: decode, preprocess, engine, postprocess. At every
``--every`` inferences the script records the process's current RSS (VmRSS) and peak (VmHWM); the
verdict compares the last reading with the first (after ``--every`` inferences of warm-up):
flat means growth < 5 %. Not a test: the figures depend on the machine and its load.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "samples" / "digits"
FLAT = 0.05


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _soak(bundle: str, artifact: str, image: str, count: int, every: int, queue) -> None:
    from edgeinfer import Predictor
    from edgeinfer.progress import Progress
    pred = Predictor(bundle, artifact=artifact)
    rows = []
    with Progress(f"soak {artifact}", total=count) as bar:
        for i in range(1, count + 1):
            pred.predict([image])
            bar.update()
            if i % every == 0:
                rows.append({"inferences": i, "rss_mb": _status_kb("VmRSS") / 1024, "peak_mb": _status_kb("VmHWM") / 1024})
    queue.put({"artifact": artifact, "engine": pred.describe().get("engine"), "rows": rows})


def soak(bundle: Path, artifact: str, image: Path, count: int, every: int) -> dict:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_soak, args=(str(bundle), artifact, str(image), count, every, q))
    p.start()
    out = q.get()
    p.join()
    return out


def sample_bundles(work: Path) -> list[Path]:
    """The digits sample as one ONNX and one TFLite bundle (fp32 + int8 each)."""
    out = []
    for profile, fmt in (("generic-x86-64", "onnx"), ("raspberry-pi-4", "tflite")):
        subprocess.run([sys.executable, "-m", "edgeinfer.cli", "convert", str(DIGITS / "digits.onnx"), "--profile", profile,
                        "--formats", fmt, "--quant", "int8,fp32", "--calib", str(DIGITS / "calib"), "-o", str(work),
                        "--quiet"], check=True, cwd=ROOT)
        out.append(work / f"digits-{profile}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", action="append", type=Path, help="bundle to soak (every artifact this host runs)")
    ap.add_argument("--image", type=Path, default=DIGITS / "images" / "seven_0.png")
    ap.add_argument("--count", type=int, default=10_000)
    ap.add_argument("--every", type=int, default=1_000)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="soak-"))
    try:
        bundles = args.bundle or sample_bundles(work)
        results = []
        for b in bundles:
            manifest = json.loads((b / "manifest.json").read_text())
            for a in manifest["artifacts"]:
                if a["format"] == "coreml" and sys.platform != "darwin":
                    continue
                results.append({"bundle": b.name, **soak(b, a["file"], args.image, args.count, args.every)})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"{'bundle':<24} {'artifact':<22} {'engine':<28} {'RSS@' + str(args.every):>10} {'RSS@' + str(args.count):>11} "
          f"{'peak':>8} {'growth':>8}")
    for r in results:
        first, last = r["rows"][0], r["rows"][-1]
        growth = last["rss_mb"] / first["rss_mb"] - 1
        print(f"{r['bundle']:<24} {r['artifact']:<22} {str(r['engine']):<28} {first['rss_mb']:>8.1f}MB {last['rss_mb']:>9.1f}MB "
              f"{last['peak_mb']:>6.1f}MB {growth:>+7.2%}  {'flat' if growth < FLAT else 'GROWS'}")


if __name__ == "__main__":
    main()
