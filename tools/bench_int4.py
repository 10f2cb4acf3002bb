"""INT4 figures, measured side by side in one run (dev tool; prints a table).

    PYTHONPATH=$PWD .venv/bin/python tools/bench_int4.py [--realdata /work/realdata] [--min-agreement 0.95]
        [--coreml-eval 200] [--skip-mobilenet] [--skip-transformer]

1. Real MobileNetV2 (``/work/realdata``, see its README): one ``edgeinfer convert --quant int4
   --formats onnx,tflite,coreml --profile iphone-16-pro`` on the 200 calibration photos (timed: GPTQ
   rounding + 4/8-bit search included), then top-1 against the real labels of the 800 evaluation
   photos for fp32 and each int4 artifact, file size vs fp32, whether the formats store the same
   integers, and the size/accuracy curve of the mix (more layers at 8 bits, in the search's
   sensitivity order; measured with the plan applied to the float graph under ONNX Runtime).
2. A MatMul-heavy model trained here on real data (``tools/train_digits_transformer.py``: a
   4-layer vision transformer on sklearn digits, trained if missing): fp32 vs ONNX Runtime's own
   ``MatMulNBitsQuantizer`` (RTN, block 32, symmetric) vs edgeinfer int4 round-to-nearest vs
   edgeinfer int4 (GPTQ + mix), top-1 on the 360 held-out digits and size.
Which arithmetic produced each figure is printed with it (this host: x86-64; Core ML runs in the
numpy MIL evaluator with float16 rounding, as ``edgeinfer convert`` verifies it on Linux).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from converters import images as image_io  # noqa: E402
from converters.clean import clean_model  # noqa: E402
from converters.emitters.api import EmittedArtifact  # noqa: E402
from converters.load import load_model  # noqa: E402
from converters.model_info import resolve_preprocess  # noqa: E402
from converters.pipeline import ConvertOptions, convert  # noqa: E402
from converters.verify import run_artifact, run_reference  # noqa: E402

ARITH = {"onnx": "ONNX Runtime CPU, this x86-64 host (float compute on dequantized weights)",
         "tflite": "LiteRT (ai-edge-litert) CPU kernels, this x86-64 host (int8 activations)",
         "coreml": "numpy MIL evaluator, float16 rounding emulated (Core ML cannot run on Linux)",
         "fp32": "ONNX Runtime CPU, this x86-64 host"}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Rows(list):
    """The result table; each row is also printed as soon as it is measured (long runs)."""

    def append(self, row: tuple[str, str, str]) -> None:
        super().append(row)
        print(f"{row[0]}  {row[1]}    [{row[2]}]", flush=True)


def labelled(folder: Path) -> tuple[list[Path], np.ndarray]:
    rows = [line.split("\t") for line in (folder / "labels.tsv").read_text().splitlines() if line.strip()]
    return [folder / r[0] for r in rows], np.array([int(r[1]) for r in rows])


def read(paths: list[Path], root: Path, cfg, hw) -> np.ndarray:
    return image_io.read_images(paths, root, cfg, hw, f"reading {root.name}", True).samples


def top1(outputs: np.ndarray, y: np.ndarray) -> float:
    return float((outputs.reshape(len(y), -1).argmax(1) == y).mean())


def artifact(bundle: Path, entry: dict) -> EmittedArtifact:
    return EmittedArtifact(path=bundle / entry["file"], format=entry["format"], precision=entry["precision"],
                           input_layout=entry["input_layout"], io_dtype=entry["io_dtype"])


def mobilenet(args, rows: list[tuple[str, str, str]], tmp: Path) -> None:
    from converters.emitters.onnx_int4 import store_plan
    from converters.int4 import BLOCK32, Int4Plan
    from converters.int4.mixed import mix_of, rank

    real = Path(args.realdata)
    src = real / "mobilenet_v2.onnx"
    model = load_model(src)
    cfg = resolve_preprocess(model, None, {})
    hw = (224, 224)
    eval_paths, y = labelled(real / "eval")
    eval_paths, y = eval_paths[:args.eval], y[:args.eval]
    x_eval = read(eval_paths, real / "eval", cfg, hw)
    fp32 = top1(run_reference(model, x_eval)[0], y)
    rows.append((f"MobileNetV2 fp32 top-1 ({len(y)} real photos)", f"{fp32:.2%}", ARITH["fp32"]))

    trace: dict = {}
    import converters.int4 as int4_mod
    orig = int4_mod.build_plans

    def traced(*a, **k):
        return orig(*a, **dict(k, trace=trace))
    int4_mod.build_plans = traced
    t0, c0 = time.perf_counter(), time.process_time()
    res = convert(ConvertOptions(model=src, profiles=["iphone-16-pro"], out_dir=tmp / "mnv2", quant=["int4"],
                                 formats=["onnx", "tflite", "coreml"], calib_dir=real / "calib",
                                 min_agreement=args.min_agreement, progress=True))
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    int4_mod.build_plans = orig
    man, bundle = res.manifests[0], res.bundles[0]
    fp32_size = man["source"]["size"]
    rows.append(("MobileNetV2 int4 conversion, 3 formats (GPTQ + mix search incl.)",
                 f"{wall:.0f} s wall, {cpu:.0f} s CPU", "<= 180 s; this host is shared by 8 agents on 2 cores"))
    digests = {}
    for a in man["artifacts"]:
        fmt = a["format"]
        d = a["details"]
        digests[fmt] = d["int4_check"]["plan_int_digest"][:12]
        n = len(y) if fmt != "coreml" else min(args.coreml_eval, len(y))
        out = run_artifact(artifact(bundle, a), x_eval[:n])[0]
        acc = top1(out, y[:n])
        bits = d["int4"]["bits"]
        rows.append((f"MobileNetV2 int4 {fmt}: top-1 ({n} photos) / size vs fp32",
                     f"{acc:.2%} ({100 * (acc - top1(run_reference(model, x_eval[:n])[0], y[:n])):+.2f} pt) / "
                     f"{a['size'] / fp32_size:.3f}x; {bits['8']} of {bits['4'] + bits['8']} layers at 8 bits",
                     ARITH[fmt]))
        rows.append((f"  {fmt}: held-out agreement in the manifest / same integers as plan",
                     f"{a['verification']['top1_agreement']:.3f} / {d['int4_check']['same_as_plan']} "
                     f"(int digest {digests[fmt]})", d["int4"]["granularity"]))
    # the size/accuracy curve of the mix (block32 plan: the ONNX and Core ML integers)
    cands, mix = trace["block32"]["candidates"], trace["block32"]["mix"]
    cmodel = clean_model(model)
    order = mix.order
    if not order:                      # all-int4 met the target: rank anyway, for the curve
        calib = read(image_io.list_images(real / "calib")[:16], real / "calib", cfg, hw)
        order = rank(cmodel, Int4Plan(BLOCK32, cands[4]), cands, calib, progress=True)[1]
    n_layers = len(order)
    for k in sorted({0, 4, 8, 16, n_layers} & set(range(n_layers + 1))):
        plan = Int4Plan(BLOCK32, {n: cands[b][n] for n, b in mix_of(order, k).items()})
        q, _ = store_plan(cmodel, plan)
        acc = top1(run_reference(plan.apply(cmodel), x_eval)[0], y)
        rows.append((f"  curve: {k:2d} of {n_layers} layers at 8 bits",
                     f"{len(q.SerializeToString()) / fp32_size:.3f}x fp32, top-1 {acc:.2%} ({100 * (acc - fp32):+.2f} pt)",
                     "ONNX file size; plan applied to the float graph, ONNX Runtime"))


def transformer(args, rows: list[tuple[str, str, str]], tmp: Path) -> None:
    import subprocess

    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    from converters.emitters.onnx_int4 import store_plan
    from converters.int4 import BLOCK32, plan_rtn
    from converters.quantize_onnx import gemm_to_matmul

    path = ROOT / "build" / "digits_transformer.onnx"
    if not path.exists():
        log("training the digits transformer (tools/train_digits_transformer.py) ...")
        subprocess.run([sys.executable, str(ROOT / "tools" / "train_digits_transformer.py"), "--out", str(path)], check=True)
    digits = ROOT / "samples" / "digits"
    model = load_model(path)
    cfg = resolve_preprocess(model, None, {})
    paths = sorted((digits / "heldout").glob("*/*.png"))
    y = np.array([int(p.parent.name) for p in paths])
    x = read(paths, digits / "heldout", cfg, (32, 32))
    clean = clean_model(model)
    size32 = len(clean.SerializeToString())
    n_mm = sum(n.op_type in ("MatMul", "Gemm") for n in clean.graph.node)
    rows.append(("digits ViT fp32 top-1 (360 held-out digits)", f"{top1(run_reference(clean, x)[0], y):.2%}, "
                 f"{size32 / 1e6:.2f} MB, {n_mm} MatMul/Gemm", ARITH["fp32"]))
    q = MatMulNBitsQuantizer(gemm_to_matmul(clean), bits=4, block_size=32, is_symmetric=True)
    q.process()
    ort4 = q.model.model
    rows.append(("  ONNX Runtime MatMulNBitsQuantizer RTN (block 32)",
                 f"top-1 {top1(run_reference(ort4, x)[0], y):.2%}, {len(ort4.SerializeToString()) / size32:.3f}x", ARITH["onnx"]))
    rtn, _ = store_plan(clean, plan_rtn(clean, BLOCK32))
    rows.append(("  edgeinfer int4 round-to-nearest (no data)",
                 f"top-1 {top1(run_reference(rtn, x)[0], y):.2%}, {len(rtn.SerializeToString()) / size32:.3f}x", ARITH["onnx"]))
    t0 = time.perf_counter()
    res = convert(ConvertOptions(model=path, profiles=["generic-x86-64"], out_dir=tmp / "vit", quant=["int4"],
                                 formats=["onnx"], calib_dir=digits / "calib", verify_dir=digits / "heldout",
                                 min_agreement=args.min_agreement, progress=True))
    secs = time.perf_counter() - t0
    a = res.manifests[0]["artifacts"][0]
    out = run_artifact(artifact(res.bundles[0], a), x)[0]
    b = a["details"]["int4"]["bits"]
    rows.append(("  edgeinfer int4 (GPTQ + 4/8 mix, 100 calib images)",
                 f"top-1 {top1(out, y):.2%}, {a['size'] / size32:.3f}x; {b['8']} of {b['4'] + b['8']} layers at 8 bits; "
                 f"{secs:.0f} s", ARITH["onnx"]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--realdata", default="/work/realdata")
    ap.add_argument("--min-agreement", type=float, default=None, help="int4 target (default: the shared floor)")
    ap.add_argument("--eval", type=int, default=800, help="evaluation photos used (of 800)")
    ap.add_argument("--coreml-eval", type=int, default=200, help="photos run through the (slow) Core ML evaluator")
    ap.add_argument("--skip-mobilenet", action="store_true")
    ap.add_argument("--skip-transformer", action="store_true")
    args = ap.parse_args(argv)
    rows = Rows()
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_transformer:
            transformer(args, rows, Path(tmp))
        if not args.skip_mobilenet:
            if not (Path(args.realdata) / "mobilenet_v2.onnx").exists():
                log(f"no {args.realdata}/mobilenet_v2.onnx: skipping the MobileNetV2 figures")
            else:
                mobilenet(args, rows, Path(tmp))
    print("\n== summary ==")
    w = max(len(r[0]) for r in rows)
    for name, value, how in rows:
        print(f"{name:<{w}}  {value}    [{how}]")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
