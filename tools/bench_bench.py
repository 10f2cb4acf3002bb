"""`edgeinfer bench` vs a bare InferenceSession.run loop, timed side by side in one run.

    .venv/bin/python tools/bench_bench.py [--threads 1] [--rounds 7] [--runs 30]

Builds the MobileNetV2-architecture model (tools/model_zoo.py), converts it to an int8 ONNX bundle
(generic-x86-64 profile, 32 synthetic-photo calibration images), then alternates rounds of
``edgeinfer.bench.bench_artifact`` (engine p50) and a bare ``session.run`` loop on the same
preprocessed input, and prints the ratio of the medians of the per-round p50s (target: within 10 %).
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tools")]

from model_zoo import build_mobilenetv2  # noqa: E402
from photos import write_photo_folder  # noqa: E402

from edgeinfer.bench import bench_artifact, synthetic_image  # noqa: E402
from edgeinfer.predictor import Predictor  # noqa: E402


def make_bundle(tmp: Path) -> Path:
    model = build_mobilenetv2()
    src = tmp / "mobilenetv2.onnx"
    onnx.save(model, src)
    calib = tmp / "calib"
    write_photo_folder(calib, 32)
    labels = tmp / "labels.txt"
    labels.write_text("".join(f"class{i}\n" for i in range(1000)))
    subprocess.run([sys.executable, "-m", "edgeinfer.cli", "convert", src, "--profile", "generic-x86-64",
                    "--formats", "onnx", "--quant", "int8", "--calib", calib, "-o", tmp / "out", "--quiet",
                    "--preset", "imagenet", "--labels", labels], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return tmp / "out" / "mobilenetv2-generic-x86-64"


def bare_p50_ms(path: Path, x: np.ndarray, threads: int, runs: int) -> float:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    feed = {sess.get_inputs()[0].name: x}
    for _ in range(3):
        sess.run(None, feed)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        sess.run(None, feed)
        times.append(time.perf_counter() - t)
    return float(np.percentile(np.asarray(times) * 1e3, 50))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--runs", type=int, default=30)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        bundle = make_bundle(Path(tmp))
        artifact = "mobilenetv2-int8.onnx"
        img = synthetic_image()
        pred = Predictor(bundle, artifact=artifact, threads=args.threads)
        x = np.ascontiguousarray(pred.preprocess([img])[0], np.float32)
        ours, bare = [], []
        for r in range(args.rounds):
            rep = bench_artifact(bundle, artifact, img, args.threads, args.runs, 3, profile_ops=False, progress=False)
            ours.append(rep["engine_ms"]["p50"])
            bare.append(bare_p50_ms(bundle / artifact, x, args.threads, args.runs))
            print(f"round {r + 1}: edgeinfer bench engine p50 {ours[-1]:.2f} ms, bare session.run p50 {bare[-1]:.2f} ms",
                  file=sys.stderr)
    a, b = statistics.median(ours), statistics.median(bare)
    print(f"MobileNetV2 int8 ONNX, {args.threads} thread(s), batch 1, this host (x86-64):")
    print(f"  edgeinfer bench engine p50 {a:.2f} ms; bare InferenceSession.run p50 {b:.2f} ms; "
          f"ratio {a / b:.3f} (target 0.90-1.10)")
    return 0 if 0.9 <= a / b <= 1.1 else 1


if __name__ == "__main__":
    sys.exit(main())
