"""Core ML emitter figures on a MobileNetV2-architecture model, measured side by side in one run.

    .venv/bin/python tools/bench_coreml.py [--resolution 224] [--samples 2]

Converts the (cleaned, BN-folded) model to fp16, int8 and 4-bit .mlpackage, and prints per
variant: conversion time, weight.bin size and its ratio to fp16, and the numpy MIL evaluator's
error against ONNX Runtime fp32 on random pixel-derived inputs (max abs on logits, on softmax
probabilities, top-1 agreement). Targets: total conversion < 10 s, int8 <= 0.55x, 4-bit <= 0.3x.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))
logging.disable(logging.WARNING)


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--resolution", type=int, default=224)
    ap.add_argument("--samples", type=int, default=2, help="inputs evaluated per variant (numpy evaluator is slow)")
    ap.add_argument("--target", default="iOS16")
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "2")

    import onnxruntime as ort
    from model_zoo import build_mobilenetv2

    from converters.clean import clean_model
    from converters.emitters.api import EmitRequest
    from converters.emitters.coreml.emitter import emit
    from converters.emitters.coreml.verify import run_mlpackage, weight_file_size

    pre = {"color": "rgb", "scale": 1 / 255, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    model = clean_model(build_mobilenetv2(resolution=args.resolution))
    rng = np.random.default_rng(0)
    pix = rng.integers(0, 256, size=(args.samples, 3, args.resolution, args.resolution)).astype(np.float32)
    x = ((pix / 255 - np.reshape(pre["mean"], (1, 3, 1, 1))) / np.reshape(pre["std"], (1, 3, 1, 1))).astype(np.float32)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    ref = np.concatenate([sess.run(None, {sess.get_inputs()[0].name: x[i:i + 1]})[0] for i in range(len(x))])

    rows, total = [], 0.0
    with tempfile.TemporaryDirectory() as d:
        for prec, mode in (("fp16", None), ("int8", None), ("int4", "kmeans"), ("int4", "uniform")):
            print(f"converting {prec} ...", file=sys.stderr)
            t0 = time.perf_counter()
            art = emit(EmitRequest(model=model, precision=prec, out_path=Path(d) / f"mnv2_{prec}_{mode}.mlpackage", preprocess=pre,
                                   task="classify", profile={"runtime": {"coreml_target": args.target}},
                                   options={"palettize_mode": mode} if mode else {}))
            dt = time.perf_counter() - t0
            print(f"evaluating {prec} on {len(x)} input(s) ...", file=sys.stderr)
            got = run_mlpackage(art.path, x)[0]
            rows.append((prec + (f"-{mode}" if mode else ""), dt, weight_file_size(art.path), float(np.abs(got - ref).max()),
                         float(np.abs(softmax(got) - softmax(ref)).max()), float((got.argmax(1) == ref.argmax(1)).mean()),
                         "; ".join(art.notes)))
    fp16 = rows[0][2]
    print(f"MobileNetV2 {args.resolution}x{args.resolution}, target {args.target}, {len(x)} evaluator input(s)")
    print(f"{'variant':12} {'convert s':>9} {'weight.bin':>12} {'x fp16':>7} {'max|dlogit|':>12} {'max|dprob|':>11} {'top1 agree':>10}")
    for prec, dt, size, e, ep, agree, notes in rows:
        print(f"{prec:12} {dt:9.2f} {size:12,d} {size / fp16:7.3f} {e:12.4f} {ep:11.5f} {agree:10.2%}  {notes}")
    for k in (2, 3):
        total = rows[0][1] + rows[1][1] + rows[k][1]
        print(f"total conversion fp16 + int8 + {rows[k][0]}: {total:.2f} s (target < 10 s); "
              f"int8 {rows[1][2] / fp16:.3f}x (target <= 0.55), {rows[k][0]} {rows[k][2] / fp16:.3f}x (target <= 0.3)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
