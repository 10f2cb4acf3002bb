"""Issue-2 figures for the ONNX path, measured side by side in one run.

    .venv/bin/python tools/bench_onnx.py [--threads 1] [--reps 30]

Prints: file-size ratios (MobileNetV2 int8/fp32, MatMul MLP int4/fp32), digits held-out
accuracy fp32 vs int8 (real labels), ORT int8 vs fp32 latency on MobileNetV2 (interleaved,
median), Predictor overhead over a bare InferenceSession.run at batch 1, preprocessing time
for a decoded 640x480 photo -> 224x224, and the wall time of `edgeinfer convert` of MobileNetV2
to fp32+int8 ONNX with 64 calibration photos.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import onnx
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(ROOT))

from model_zoo import build_mlp, build_mobilenetv2  # noqa: E402
from photos import write_photo_folder  # noqa: E402
from timing import interleaved_medians_ms  # noqa: E402

from edgeinfer import Predictor  # noqa: E402
from edgeinfer.preprocess import PRESETS, PreprocessConfig, preprocess_pil  # noqa: E402


def cli(*args) -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "edgeinfer.cli", *map(str, args)], check=True, cwd=ROOT,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


def with_metadata(model: onnx.ModelProto, preprocess: dict) -> onnx.ModelProto:
    model.metadata_props.add(key="edgeinfer.preprocess", value=json.dumps(preprocess))
    return model


def heldout_accuracy(bundle: Path, artifact: str) -> float:
    pred = Predictor(bundle, artifact=artifact, threads=1)
    paths = sorted((ROOT / "samples/digits/heldout").glob("*/*.png"))
    correct = 0
    for i in range(0, len(paths), 64):
        chunk = paths[i:i + 64]
        for p, r in zip(chunk, pred.predict(chunk, top_k=1)):
            correct += r.labels[0] == p.parent.name
    return correct / len(paths)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=30)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        photos = tmp / "photos"
        write_photo_folder(photos, 80, (640, 480))
        mnv2 = tmp / "mobilenetv2.onnx"
        onnx.save(with_metadata(build_mobilenetv2(), PRESETS["imagenet"]), str(mnv2))
        print("converting MobileNetV2 (fp32 + int8, 64 calibration photos) ...", file=sys.stderr)
        secs = cli("convert", mnv2, "--profile", "generic-x86-64", "--formats", "onnx", "--quant", "int8,fp32",
                   "--calib", photos, "--calib-limit", "64", "-o", tmp / "out", "--quiet")
        bundle = tmp / "out" / "mobilenetv2-generic-x86-64"
        rows.append(("convert MobileNetV2 -> fp32+int8 ONNX, 64 calib images", f"{secs:.1f} s", "< 30 s"))
        fp32_f, int8_f = bundle / "mobilenetv2-fp32.onnx", bundle / "mobilenetv2-int8.onnx"
        rows.append(("MobileNetV2 int8 / fp32 file size", f"{int8_f.stat().st_size / fp32_f.stat().st_size:.3f}x", "<= 0.27x"))

        mlp = tmp / "mlp.onnx"
        onnx.save(with_metadata(build_mlp(in_features=256, use_gemm=True), PRESETS["raw"]), str(mlp))
        # the MLP takes [N, 256]: size only, measured on the emitter directly
        from converters.clean import clean_model
        from converters.emitters.onnx_int4 import store_plan
        from converters.int4 import BLOCK32, plan_rtn
        m_clean = clean_model(onnx.load(str(mlp)))
        q4, _ = store_plan(m_clean, plan_rtn(m_clean, BLOCK32))
        rows.append(("MLP (Gemm, 3.4M params) int4 / fp32 size",
                     f"{len(q4.SerializeToString()) / len(m_clean.SerializeToString()):.3f}x", "<= 0.17x"))

        print("digits held-out accuracy ...", file=sys.stderr)
        cli("convert", ROOT / "samples/digits/digits.onnx", "--profile", "generic-x86-64", "--formats", "onnx",
            "--quant", "int8,fp32", "--calib", ROOT / "samples/digits/calib", "-o", tmp / "d", "--quiet")
        dig = tmp / "d" / "digits-generic-x86-64"
        a32, a8 = heldout_accuracy(dig, "digits-fp32.onnx"), heldout_accuracy(dig, "digits-int8.onnx")
        rows.append(("digits held-out top-1 fp32 / int8 (360 real labels)", f"{a32:.2%} / {a8:.2%}",
                     f"diff {100 * (a32 - a8):+.2f} pt (<= 0.5)"))

        print("latency ...", file=sys.stderr)
        so = ort.SessionOptions()
        so.intra_op_num_threads = args.threads
        s32 = ort.InferenceSession(str(fp32_f), so, providers=["CPUExecutionProvider"])
        s8 = ort.InferenceSession(str(int8_f), so, providers=["CPUExecutionProvider"])
        pred = Predictor(bundle, artifact="mobilenetv2-int8.onnx", threads=args.threads)
        from PIL import Image
        img = Image.open(next(photos.glob("*.jpg"))).convert("RGB")
        img.load()
        cfg = PreprocessConfig.from_dict(PRESETS["imagenet"])
        x, _ = preprocess_pil(img, cfg, (224, 224))
        x = x[None]
        name = s32.get_inputs()[0].name
        t = {k: v / 1e3 for k, v in interleaved_medians_ms({
            "fp32": lambda: s32.run(None, {name: x}),
            "int8": lambda: s8.run(None, {name: x}),
            "predictor_int8": lambda: pred.postprocess(pred.run(x), [None], 5),
            "preprocess": lambda: preprocess_pil(img, cfg, (224, 224)),
        }, args.reps).items()}
        rows.append(("ORT MobileNetV2 fp32 / int8 latency (batch 1)", f"{t['fp32'] * 1e3:.1f} / {t['int8'] * 1e3:.1f} ms",
                     f"speed-up {t['fp32'] / t['int8']:.2f}x (>= 1.6x)"))
        rows.append(("Predictor.run+postprocess vs bare session.run (int8)", f"{t['predictor_int8'] * 1e3:.2f} vs {t['int8'] * 1e3:.2f} ms",
                     f"overhead {100 * (t['predictor_int8'] / t['int8'] - 1):+.1f}% (<= 5%)"))
        rows.append(("preprocess decoded 640x480 -> 224x224 (imagenet)", f"{t['preprocess'] * 1e3:.2f} ms", "<= 2 ms"))
    width = max(len(r[0]) for r in rows)
    print(f"\n{'figure':<{width}}  {'measured':<22} target")
    for r in rows:
        print(f"{r[0]:<{width}}  {r[1]:<22} {r[2]}")


if __name__ == "__main__":
    main()
