"""Core ML fp16 logit error vs ONNX Runtime fp32: where it comes from, and what fp32 islands buy.

    .venv/bin/python tools/coreml_fp16_error.py digits [--stems 2,4,6,8]
    .venv/bin/python tools/coreml_fp16_error.py mobilenetv2 [--resolution 224] [--samples 3]

1. Emits the fp32 package and attributes the fp16 error with the evaluator's fp16 emulation
   (``converters.emitters.coreml.fp16_analysis.breakdown``): weights vs activations vs output cast,
   and everything-but-a-group in fp16.
2. Emits real fp16 packages side by side with ``options["fp32_ops"]`` = none / head / head,pool /
   head,pool,stem / stem:N and prints max abs error on logits and on softmax probabilities, top-1
   agreement, compute ops left in fp32, and the weight.bin size relative to the all-fp16 package.
"""
from __future__ import annotations

import argparse
import json
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

from bench_coreml import softmax  # noqa: E402


def ort(model, x: np.ndarray) -> np.ndarray:
    import onnxruntime as rt

    so = rt.SessionOptions()
    so.intra_op_num_threads = 2
    s = rt.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return s.run(None, {s.get_inputs()[0].name: x})[0]


def digits_case():
    import onnx

    from converters.clean import clean_model
    from edgeinfer.preprocess import PreprocessConfig, preprocess_image

    d = ROOT / "samples" / "digits"
    raw = onnx.load(d / "digits.onnx")
    pre = json.loads({p.key: p.value for p in raw.metadata_props}["edgeinfer.preprocess"])
    cfg = PreprocessConfig.from_dict(pre)
    x = np.stack([preprocess_image(f, cfg, (32, 32))[0] for f in sorted((d / "heldout").glob("*/*.png"))]).astype(np.float32)
    labels = [ln.strip() for ln in (d / "labels.txt").read_text().splitlines() if ln.strip()]
    return clean_model(raw), pre, labels, x


def mobilenet_case(resolution: int, samples: int):
    from converters.clean import clean_model
    from model_zoo import build_mobilenetv2

    pre = {"color": "rgb", "scale": 1 / 255, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    rng = np.random.default_rng(0)
    pix = rng.integers(0, 256, size=(samples, 3, resolution, resolution)).astype(np.float32)
    mean, std = np.array(pre["mean"]).reshape(1, 3, 1, 1), np.array(pre["std"]).reshape(1, 3, 1, 1)
    x = ((pix / 255 - mean) / std).astype(np.float32)
    model = clean_model(build_mobilenetv2(resolution=resolution))
    return model, pre, [f"c{i}" for i in range(1000)], x


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", choices=["digits", "mobilenetv2"])
    ap.add_argument("--resolution", type=int, default=224)
    ap.add_argument("--samples", type=int, default=3, help="MobileNetV2 inputs (the numpy evaluator is slow)")
    ap.add_argument("--stems", default="2,4,6", help="stem:N islands to measure")
    ap.add_argument("--per-op", action="store_true", help="also: everything but one weighted op in fp16")
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "2")

    from converters.emitters import get_emitter
    from converters.emitters.api import EmitRequest
    from converters.emitters.coreml.fp16_analysis import breakdown, format_rows
    from converters.emitters.coreml.verify import run_mlpackage, weight_file_size

    model, pre, labels, x = digits_case() if args.model == "digits" else mobilenet_case(args.resolution, args.samples)
    stems = [int(s) for s in args.stems.split(",") if s]
    ref = ort(model, x)
    print(f"{args.model}: {x.shape[0]} inputs, max |logit| {np.abs(ref).max():.2f} "
          f"(fp16 half-ulp there: {np.spacing(np.float16(np.abs(ref).max())) / 2:.4f})")
    emit = get_emitter("coreml")
    with tempfile.TemporaryDirectory() as tmp:
        def pkg(prec, fp32_ops=""):
            out = Path(tmp) / f"m_{prec}_{fp32_ops.replace(',', '_').replace(':', '')}.mlpackage"
            t = time.perf_counter()
            art = emit(EmitRequest(model=model, precision=prec, out_path=out, preprocess=pre, labels=labels,
                                   task="classify", options={"fp32_ops": fp32_ops} if fp32_ops else {}))
            return art, time.perf_counter() - t

        fp32, _ = pkg("fp32")
        print("\n[1] attribution with the evaluator's fp16 emulation of the fp32 package")
        print(format_rows(breakdown(fp32.path, x, ref, stems=stems, per_op=args.per_op)))

        print("\n[2] real fp16 packages (options['fp32_ops'])")
        print(f"{'fp32_ops':<18} {'logits max|err|':>15} {'probs max|err|':>14} {'top1':>6} {'fp32 ops':>9} {'fp32 w bytes':>12} "
              f"{'weight.bin':>11} {'vs fp16':>7} {'emit s':>6}")
        base_size = None
        for islands in ["", "head", "head,pool", "head,pool,stem"] + [f"stem:{n}" for n in stems]:
            art, dt = pkg("fp16", islands)
            got = run_mlpackage(art.path, x)[0]
            size = weight_file_size(art.path)
            base_size = base_size or size
            sh = art.details.get("fp32_ops", {"ops": 0, "of_ops": 0, "weight_bytes_share": 0.0})
            print(f"{islands or '(none)':<18} {np.abs(got - ref).max():15.4f} {np.abs(softmax(got) - softmax(ref)).max():14.5f} "
                  f"{100 * (got.argmax(1) == ref.argmax(1)).mean():5.1f}% {sh['ops']:4d}/{sh['of_ops']:<4d} "
                  f"{100 * sh['weight_bytes_share']:11.1f}% {size:11d} {size / base_size:6.2f}x {dt:6.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
