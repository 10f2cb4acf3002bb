"""fp32 vs naive int8 vs sensitivity-guided int8 mAP of the sample detector, side by side.

    .venv/bin/python tools/bench_detector_int8.py [--model samples/detector/shapes_det.onnx]

int8 = the pipeline's recipe on the cleaned graph (``converters.clean``, ``converters.calibrate`` minmax ranges on ``calib/`` +
``converters.quantize_onnx.quantize_int8``: static QDQ, per-channel int8 weights, int8
activations). The sensitivity search (``converters.sensitivity``) needs no labels: its metric is
``detection_agreement`` (runtime decoder + NMS + COCO mAP@0.5 of the int8 detections against the
fp32 detections) on the calibration images, exactly what the converter can run. mAP figures are pycocotools on ``val/`` (labelled, never seen by the search).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from detector_eval import evaluate, load_images, load_split, progress, run_onnx  # noqa: E402

from converters.calibrate import calibrate  # noqa: E402
from converters.clean import clean_model  # noqa: E402
from converters.quantize_onnx import quantize_int8  # noqa: E402
from converters.sensitivity import detection_agreement, run_outputs, sensitivity_search  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="samples/detector/shapes_det.onnx")
    ap.add_argument("--val", default=None, help="COCO-style folder (default: val/ next to the model)")
    ap.add_argument("--calib", default=None, help="calibration images (default: calib/ next to the model)")
    ap.add_argument("--tolerance", type=float, default=0.005, help="allowed agreement-mAP@0.5 drop in the search")
    ap.add_argument("--budget", type=int, default=8, help="max nodes kept in float")
    ap.add_argument("--activation-dtype", default="int8", choices=["int8", "uint8"])
    args = ap.parse_args(argv)

    root = Path(args.model).parent
    model = clean_model(onnx.load(args.model))  # what the pipeline quantizes: shapes folded, BN folded
    meta = {p.key: p.value for p in model.metadata_props}
    pre, post = json.loads(meta["edgeinfer.preprocess"]), json.loads(meta["edgeinfer.postprocess"])
    val_x, val_t, val_gt, val_ids = load_split(args.val or root / "val", pre)
    cal_x, cal_t = load_images(args.calib or root / "calib", pre)
    progress(f"{len(val_x)} val images, {len(cal_x)} calibration images")

    t0 = time.time()
    calib = calibrate(model, cal_x, "minmax")
    naive = quantize_int8(model, calib, activation_dtype=args.activation_dtype)
    metric = detection_agreement(run_outputs(model, cal_x), post, cal_t)  # what the converter can run
    rep = sensitivity_search(model, cal_x, cal_x, metric, budget=args.budget, tolerance=args.tolerance,
                             calibration=calib,
                             quantize=lambda m, c, ex: quantize_int8(m, c, nodes_to_exclude=tuple(ex),
                                                                     activation_dtype=args.activation_dtype))
    search_s = time.time() - t0
    mixed = quantize_int8(model, calib, nodes_to_exclude=tuple(rep.excluded), activation_dtype=args.activation_dtype)

    rows = {}
    for name, m in (("fp32", model), ("int8 naive", naive), ("int8 + sensitivity", mixed)):
        rows[name] = evaluate(run_onnx(m, val_x), val_t, val_gt, val_ids)
    base = rows["fp32"]
    print(f"sample detector {args.model}: {len(val_x)} val images, mAP by pycocotools")
    print(f"{'model':<20} {'mAP@0.5':>8} {'d(pts)':>7} {'mAP@.5:.95':>11} {'d(pts)':>7}")
    for name, r in rows.items():
        print(f"{name:<20} {r['map50']:8.4f} {100 * (r['map50'] - base['map50']):+7.2f} "
              f"{r['map50_95']:11.4f} {100 * (r['map50_95'] - base['map50_95']):+7.2f}")
    print(f"search: agreement mAP@0.5 vs fp32 on calib: naive {rep.naive_metric:.4f} -> {rep.final_metric:.4f} "
          f"({rep.evaluations} quantize+eval runs, {search_s:.0f}s)")
    ops = {n.name: n.op_type for n in model.graph.node}
    print(f"kept in float ({len(rep.excluded)}): " + (", ".join(f"{n} ({ops[n]})" for n in rep.excluded) or "none"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
