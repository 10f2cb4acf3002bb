"""TFLite emitter figures, side by side in one run.

    .venv/bin/python tools/bench_tflite.py [--threads 1] [--runs 20] [--calib 16]

1. MobileNetV2 (tools/model_zoo, seeded weights, 224x224): conversion time of every TFLite
   precision, file sizes and their ratio to float32, float32 vs ONNX Runtime fp32 max abs error,
   int8 vs ONNX Runtime QDQ int8 (same calibration ranges) top-1 agreement, latency of each
   artifact in ai-edge-litert. Calibration inputs are synthetic for this one (seeded weights, no
   labelled 224x224 data here).
2. digits sample (samples/digits, real held-out images): accuracy of ORT fp32 / ORT int8 /
   TFLite fp32 / TFLite int8, and TFLite int8 vs ORT int8 top-1 agreement.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

from converters.calibrate import calibrate  # noqa: E402
from converters.clean import clean_model  # noqa: E402
from converters.emitters.api import EmitRequest  # noqa: E402
from converters.emitters.tflite.emitter import emit  # noqa: E402
from converters.quantize_onnx import quantize_int8  # noqa: E402
from edgeinfer.backends import BackendOptions, open_backend  # noqa: E402
from edgeinfer.preprocess import to_layout  # noqa: E402

PRECISIONS = (("fp32", "fp32", {}), ("fp16", "fp16", {}), ("int8", "int8", {}),
              ("int8-dynamic", "int8", {"int8_mode": "dynamic"}), ("int4", "int4", {}))


def ort_session(model: onnx.ModelProto, threads: int) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def ort_outputs(model, x: np.ndarray, threads: int) -> np.ndarray:
    sess = ort_session(model, threads)
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x[i:i + 1]})[0] for i in range(len(x))])


def tflite_outputs(path: Path, x: np.ndarray, layout: str, threads: int) -> np.ndarray:
    be = open_backend("tflite", path, BackendOptions(threads=threads))
    return np.concatenate([be.run(to_layout(x[i:i + 1], layout))[0] for i in range(len(x))])


def latency_ms(path: Path, x1: np.ndarray, layout: str, threads: int, runs: int) -> float:
    be = open_backend("tflite", path, BackendOptions(threads=threads))
    xin = to_layout(x1, layout)
    be.run(xin)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        be.run(xin)
        times.append(time.perf_counter() - t)
    return 1000 * float(np.median(times))


def emit_all(model, calib, out_dir: Path) -> dict:
    arts = {}
    for label, prec, opts in PRECISIONS:
        t = time.perf_counter()
        art = emit(EmitRequest(model=model, precision=prec, out_path=out_dir / f"{label}.tflite", calibration=calib,
                               input_layout="NHWC", options=dict(opts)))
        arts[label] = (art, time.perf_counter() - t)
    return arts


def mobilenet(args, out_dir: Path) -> None:
    from model_zoo import build_mobilenetv2
    model = clean_model(build_mobilenetv2())
    rng = np.random.default_rng(0)
    calib_x = rng.uniform(-1, 1, (args.calib, 3, 224, 224)).astype(np.float32)
    test_x = rng.uniform(-1, 1, (args.test, 3, 224, 224)).astype(np.float32)
    calib = calibrate(model, calib_x, progress=False)
    t0 = time.perf_counter()
    arts = emit_all(model, calib, out_dir)
    total = time.perf_counter() - t0
    ref32 = ort_outputs(model, test_x, args.threads)
    q8 = quantize_int8(model, calib)
    ref8 = ort_outputs(q8, test_x, args.threads)
    size32 = arts["fp32"][0].path.stat().st_size
    print(f"\n== MobileNetV2 1.0 / 224 (seeded weights), {args.test} synthetic test inputs, "
          f"{args.calib} synthetic calibration inputs, threads={args.threads}")
    print(f"all {len(arts)} TFLite precisions converted in {total:.2f} s (target < 5 s)")
    print(f"{'artifact':<14}{'emit s':>8}{'size MB':>9}{'x fp32':>8}{'max|d| vs ORT fp32':>20}"
          f"{'top1 vs ORT fp32':>18}{'top1 vs ORT int8':>18}{'latency ms':>12}{'x fp32 lat':>11}")
    lat32 = None
    for label, (art, secs) in arts.items():
        out = tflite_outputs(art.path, test_x, art.input_layout, args.threads)
        lat = latency_ms(art.path, test_x[:1], art.input_layout, args.threads, args.runs)
        lat32 = lat32 or lat
        size = art.path.stat().st_size
        print(f"{label:<14}{secs:>8.2f}{size / 1e6:>9.2f}{size / size32:>8.3f}{np.abs(out - ref32).max():>20.2e}"
              f"{(out.argmax(1) == ref32.argmax(1)).mean():>18.3f}{(out.argmax(1) == ref8.argmax(1)).mean():>18.3f}"
              f"{lat:>12.1f}{lat / lat32:>11.2f}")
    sess8, sess32 = ort_session(q8, args.threads), ort_session(model, args.threads)
    for name, sess in (("ORT fp32", sess32), ("ORT QDQ int8", sess8)):
        x1 = test_x[:1]
        iname = sess.get_inputs()[0].name
        sess.run(None, {iname: x1})
        ts = []
        for _ in range(args.runs):
            t = time.perf_counter()
            sess.run(None, {iname: x1})
            ts.append(time.perf_counter() - t)
        print(f"{name:<14}{'':>8}{'':>9}{'':>8}{'':>20}{'':>18}{'':>18}{1000 * np.median(ts):>12.1f}")


def digits(args, out_dir: Path) -> None:
    from converters.images import list_images, read_images
    from edgeinfer.preprocess import PreprocessConfig
    src = ROOT / "samples" / "digits" / "digits.onnx"
    if not src.exists():
        print("\n== digits: samples/digits/digits.onnx missing, skipped")
        return
    raw = onnx.load(str(src))
    meta = {p.key: p.value for p in raw.metadata_props}
    cfg = PreprocessConfig.from_dict(json.loads(meta["edgeinfer.preprocess"]))
    model = clean_model(raw)
    size = (32, 32)
    calib_set = read_images(list_images(ROOT / "samples/digits/calib"), None, cfg, size, "calib", progress=False)
    held_root = ROOT / "samples/digits/heldout"
    held = read_images(list_images(held_root), held_root, cfg, size, "held-out", progress=False)
    labels = np.array([int(lb) for lb in held.labels])
    calib = calibrate(model, calib_set.samples, progress=False)
    d = out_dir / "digits"
    d.mkdir()
    arts = {lab: a for lab, (a, _) in emit_all(model, calib, d).items()}
    ref32 = ort_outputs(model, held.samples, args.threads).argmax(1)
    ref8 = ort_outputs(quantize_int8(model, calib), held.samples, args.threads).argmax(1)
    print(f"\n== digits sample: {len(labels)} real held-out images, {len(calib_set.samples)} calibration images")
    print(f"{'model':<22}{'accuracy':>10}{'top1 vs ORT fp32':>18}{'top1 vs ORT int8':>18}")
    print(f"{'ORT fp32':<22}{(ref32 == labels).mean():>10.4f}{1.0:>18.4f}{(ref32 == ref8).mean():>18.4f}")
    print(f"{'ORT QDQ int8':<22}{(ref8 == labels).mean():>10.4f}{(ref8 == ref32).mean():>18.4f}{1.0:>18.4f}")
    for label, art in arts.items():
        pred = tflite_outputs(art.path, held.samples, art.input_layout, args.threads).argmax(1)
        print(f"{'TFLite ' + label:<22}{(pred == labels).mean():>10.4f}{(pred == ref32).mean():>18.4f}"
              f"{(pred == ref8).mean():>18.4f}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--calib", type=int, default=16)
    ap.add_argument("--test", type=int, default=8)
    args = ap.parse_args(argv)
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        mobilenet(args, Path(tmp))
        digits(args, Path(tmp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
