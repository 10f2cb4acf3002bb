"""Where a detector's int8 loss comes from: mAP@0.5 agreement with fp32 on held-out photos for
int8 variants that differ in ONE respect each, measured side by side in one run.

    .venv/bin/python tools/diagnose_int8_detector.py --model /work/realdata_yolo/fall_yolov8s.onnx \\
        --calib /work/realdata_yolo/calib64 --eval /work/realdata/eval --n 150 \\
        [--stages 0-9,10-21,22,0-4,0-2]

Variants (all with the converter's recipe: per-channel pair-safe int8 weights, bias correction,
uint8 activations from min/max ranges of the first 51 calibration photos, the decode tail after the
head's last convolutions kept in float, as the converter's search keeps it):
- ``int8``: the recipe as shipped;
- ``plain min/max``: the same without the activation-aware low ends (``converters.activation_ranges``);
- ``weights only``: the same file with every activation Quantize/Dequantize pair removed (8-bit
  weights, float activations);
- ``16-bit activations``: every activation as uint16 (ONNX Runtime's 16-bit QDQ, com.microsoft ops);
- ``16-bit in stage A-B``: activations of the nodes named ``/model.K/...`` with A <= K <= B as uint16,
  the rest uint8 (YOLOv8 / Ultralytics node names; ORT's ``TensorQuantOverrides``).
ONNX Runtime runs 16-bit QDQ nodes in float between Dequantize and Quantize on CPUs: the 16-bit
rows say what precision the loss needs, not what a CPU would run fast.
Photos: preprocessed by an fp32 bundle's own letterbox (``convert --quant fp32`` first, in a temp dir).
"""
from __future__ import annotations

import argparse
import dataclasses
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from converters.calibrate import calibrate, collect_ranges  # noqa: E402
from converters.clean import clean_model  # noqa: E402
from converters.images import list_images  # noqa: E402
from converters.quantize_onnx import quantize_int8  # noqa: E402
from converters.sensitivity import detection_agreement, head_groups, run_outputs  # noqa: E402
from edgeinfer.predictor import Predictor  # noqa: E402
from edgeinfer.preprocess import Transform  # noqa: E402
from edgeinfer.progress import Progress  # noqa: E402

CALIB_USED = 51   # what `convert` calibrates on from 64 photos (it holds 13 out for verification)


def preprocessed(bundle: Path, artifact: str, paths: list[Path], what: str) -> np.ndarray:
    pred = Predictor(bundle, artifact=artifact)
    with Progress(f"preprocessing {what}", len(paths)) as bar:
        out = []
        for p in paths:
            out.append(pred.preprocess([p])[0])
            bar.update()
    return np.concatenate(out).astype(np.float32)


def without_activation_qdq(qmodel: onnx.ModelProto) -> onnx.ModelProto:
    """The QDQ model with every Quantize->Dequantize pair on an activation bypassed (weights keep theirs)."""
    inits = {t.name for t in qmodel.graph.initializer}
    producer = {o: n for n in qmodel.graph.node for o in n.output}
    rename, drop = {}, set()
    for n in qmodel.graph.node:
        q = producer.get(n.input[0]) if n.op_type == "DequantizeLinear" and n.input[0] not in inits else None
        if q is not None and q.op_type == "QuantizeLinear":
            rename[n.output[0]] = q.input[0]
            drop.update((id(n), id(q)))
    kept = [n for n in qmodel.graph.node if id(n) not in drop]
    for n in kept:
        for i, name in enumerate(n.input):
            n.input[i] = rename.get(name, name)
    del qmodel.graph.node[:]
    qmodel.graph.node.extend(kept)
    return qmodel


def mixed_16bit(model, calib, keep_float: list[str], tensors16: set[str]) -> onnx.ModelProto:
    """The recipe with the activations in ``tensors16`` (all when it holds '*') as uint16."""
    every = "*" in tensors16
    return quantize_int8(model, calib, nodes_to_exclude=keep_float, activation_dtype="uint16" if every else "uint8",
                         pair_safe=True, uint16_tensors=() if every else tensors16)


def stage_tensors(model: onnx.ModelProto, lo: int, hi: int) -> set[str]:
    out = set()
    for n in model.graph.node:
        m = re.match(r"/model\.(\d+)/", n.name)
        if m and lo <= int(m.group(1)) <= hi:
            out.update(n.output)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--calib", required=True)
    ap.add_argument("--eval", required=True, help="held-out photos, disjoint from --calib")
    ap.add_argument("--n", type=int, default=150)
    ap.add_argument("--stages", default="0-9,10-21,22,0-4,0-2", help="comma-separated A-B node-name stages for 16-bit rows")
    args = ap.parse_args(argv)

    calib_paths = list_images(args.calib)
    eval_paths = [p for p in list_images(args.eval) if p.name not in {c.name for c in calib_paths}][:args.n]
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "edgeinfer.cli", "convert", args.model, "--profile", "generic-x86-64",
                        "--quant", "fp32", "--formats", "onnx", "--task", "detect", "--decoder", "yolov8", "--preset",
                        "yolo", "--letterbox", "640", "-o", tmp, "--force", "--quiet"], check=True)
        bundle = next(Path(tmp).iterdir())
        artifact = f"{Path(args.model).stem}-fp32.onnx"
        post = Predictor(bundle, artifact=artifact).manifest["postprocess"]
        calib_x = preprocessed(bundle, artifact, calib_paths[:CALIB_USED], "calibration photos")
        eval_x = preprocessed(bundle, artifact, eval_paths, "held-out photos")
    model = clean_model(onnx.load(args.model))
    size = (int(eval_x.shape[3]), int(eval_x.shape[2]))
    reference = run_outputs(model, eval_x)
    metric = detection_agreement(reference, post, Transform(size))
    calib = calibrate(model, calib_x, "minmax")
    tail = list(head_groups(model)[0])
    shipped = quantize_int8(model, calib, nodes_to_exclude=tail, activation_dtype="uint8", pair_safe=True)
    plain = dataclasses.replace(calib, ranges=collect_ranges(model, calib_x, "minmax", progress=False), tightened={})
    variants = [("int8 (the recipe as shipped)", lambda: shipped),
                ("int8 with plain min/max ranges", lambda: quantize_int8(
                    model, plain, nodes_to_exclude=tail, activation_dtype="uint8", pair_safe=True)),
                ("weights only (float activations)", lambda: without_activation_qdq(onnx.ModelProto.FromString(
                    shipped.SerializeToString()))),
                ("16-bit activations everywhere", lambda: mixed_16bit(model, calib, tail, {"*"}))]
    for stage in filter(None, args.stages.split(",")):
        lo, _, hi = stage.partition("-")
        lo, hi = int(lo), int(hi or lo)
        variants.append((f"16-bit in stage {lo}-{hi}, 8-bit elsewhere",
                         lambda lo=lo, hi=hi: mixed_16bit(model, calib, tail, stage_tensors(model, lo, hi))))
    from edgeinfer.detection.postprocess import DetectPostprocessor
    n_boxes = sum(len(DetectPostprocessor(post)(outs, Transform(size)).arrays()[2]) for outs in reference)
    rows = []
    for name, build in variants:
        value = metric(run_outputs(build(), eval_x))
        rows.append((name, value))
        print(f"{name:<45} {value:.4f}", file=sys.stderr, flush=True)
    print(f"\n{len(eval_x)} held-out photos, {n_boxes} fp32 boxes; "
          f"mAP@0.5 agreement of each variant with fp32 (decode tail kept float in all)")
    for name, value in rows:
        print(f"{name:<45} {value:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
