"""INT4 figures, measured side by side in one run (dev tool; prints a table).

    PYTHONPATH=$PWD .venv/bin/python tools/bench_int4.py [--realdata /work/realdata] [--min-agreement 0.95]
        [--coreml-eval 200] [--skip-mobilenet] [--skip-transformer]

1. Real MobileNetV2 (``/work/realdata``, see its README): one ``edgeinfer convert --quant int4
   --formats onnx,tflite,coreml --profile iphone-16-pro`` on the 200 calibration photos (timed, wall
   and CPU: statistics, GPTQ rounding, 4/8-bit search, emission and verification included), then
   top-1 against the real labels of the 800 evaluation photos for fp32 and each int4 artifact, file
   size vs fp32, whether the formats store the same integers, and the size/accuracy curve of the mix
   (k layers at 8 bits in the search's order: the ONNX file under ONNX Runtime and the TFLite file
   under LiteRT, both stored and run for real; ``--plot curve.png``).
2. A MatMul-heavy model trained here on real data (``tools/train_digits_transformer.py``: a
   4-layer vision transformer on sklearn digits, trained if missing): fp32 vs ONNX Runtime's own
   ``MatMulNBitsQuantizer`` (RTN, block 32, symmetric) vs edgeinfer int4 round-to-nearest vs
   edgeinfer int4 (GPTQ + mix), top-1 on the 360 held-out digits and size.
Which arithmetic produced each figure is printed with it (this host: x86-64; Core ML runs in the
numpy MIL evaluator with float16 rounding, as ``edgeinfer convert`` verifies it on Linux).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

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


def _cpu_seconds() -> float:
    """user+sys of this process and its waited-for children."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _curve_points(spec: str, n_layers: int, chosen: int) -> list[int]:
    """``spec``: comma-separated layer counts, ``all`` and ``chosen`` allowed; empty: no curve."""
    names = {"all": n_layers, "chosen": chosen}
    ks = {names[t] if t in names else int(t) for t in spec.split(",") if t.strip()}
    return sorted(ks & set(range(n_layers + 1)))


def mobilenet(args, rows: list[tuple[str, str, str]], tmp: Path) -> list[dict]:
    """Rows for MobileNetV2; returns the mix curve (for the plot)."""
    from converters.calibrate import calibrate
    from converters.emitters.api import EmitRequest
    from converters.emitters.onnx_int4 import store_plan
    from converters.emitters.tflite.emitter import emit as emit_tflite
    from converters.int4 import BLOCK32, PER_CHANNEL, Int4Plan
    from converters.int4.actsim import int8_activations
    from converters.int4.mixed import mix_of, rank
    from converters.verify import arithmetic_of

    real = Path(args.realdata)
    src = real / "mobilenet_v2.onnx"
    model = load_model(src)
    cfg = resolve_preprocess(model, None, {})
    hw = (224, 224)
    eval_paths, y = labelled(real / "eval")
    eval_paths, y = eval_paths[:args.eval], y[:args.eval]
    x_eval = read(eval_paths, real / "eval", cfg, hw)
    fp32_out = run_reference(model, x_eval)[0]
    fp32 = top1(fp32_out, y)
    rows.append((f"MobileNetV2 fp32 top-1 ({len(y)} real photos)", f"{fp32:.2%}", ARITH["fp32"]))

    load0 = os.getloadavg()
    t0, c0 = time.perf_counter(), _cpu_seconds()
    res = convert(ConvertOptions(model=src, profiles=["iphone-16-pro"], out_dir=tmp / "mnv2", quant=["int4"],
                                 formats=["onnx", "tflite", "coreml"], calib_dir=real / "calib",
                                 min_agreement=args.min_agreement, int4_size=args.int4_size, progress=True))
    wall, cpu = time.perf_counter() - t0, _cpu_seconds() - c0
    load1 = os.getloadavg()
    man, bundle = res.manifests[0], res.bundles[0]
    fp32_size = man["source"]["size"]
    plan_info = man["artifacts"][0]["details"]["int4"]
    rows.append(("MobileNetV2 int4 conversion, 3 formats (statistics + GPTQ + mix search + emit + verify)",
                 f"{wall:.0f} s wall, {cpu:.0f} s CPU (user+sys); load average {load0[0]:.1f} before, {load1[0]:.1f} after; "
                 f"search alone {plan_info['search']['seconds']} s wall",
                 "target <= 180 s; 2 cores shared with other agents: quiet-machine estimate = CPU time"))
    digests = set()
    for a in man["artifacts"]:
        fmt = a["format"]
        d = a["details"]
        digests.add(d["int4_check"]["plan_int_digest"])
        n = len(y) if fmt != "coreml" else min(args.coreml_eval, len(y))
        art = artifact(bundle, a)
        out = run_artifact(art, x_eval[:n], arithmetic=None if fmt == "coreml" else arithmetic_of(art))[0]
        acc = top1(out, y[:n])
        base = top1(fp32_out[:n], y[:n])
        bits = d["int4"]["bits"]
        rows.append((f"MobileNetV2 int4 {fmt}: top-1 ({n} photos) / size vs fp32",
                     f"{acc:.2%} ({100 * (acc - base):+.2f} pt vs fp32 {base:.2%}) / {a['size'] / fp32_size:.3f}x; "
                     f"{bits['8']} of {bits['4'] + bits['8']} layers at 8 bits",
                     ARITH[fmt]))
        rows.append((f"  {fmt}: manifest held-out agreement / arithmetic / same integers as plan",
                     f"{a['verification']['top1_agreement']:.3f} / {a['verification'].get('arithmetic')} / "
                     f"{d['int4_check']['same_as_plan']} (int digest {d['int4_check']['plan_int_digest'][:12]})",
                     f"granularity {d['int4']['granularity']}; search activations {d['int4']['search']['activations']}"))
    rows.append(("MobileNetV2 int4: one integer digest across the formats", str(len(digests) == 1),
                 "each emitter read its artifact back and compared with the plan"))

    # the size/accuracy curve of the mix: k most deserving layers (the search's order) at 8 bits
    if not args.curve.strip():
        return []
    (gran_name, tr), = res.int4_trace.items()
    cands, mix = tr["candidates"], tr["mix"]
    cmodel = clean_model(model)
    calib_x = read(image_io.list_images(real / "calib"), real / "calib", cfg, hw)
    calib = calibrate(cmodel, calib_x, progress=False)
    granularity = {g.name: g for g in (BLOCK32, PER_CHANNEL)}[gran_name]
    order = mix.order
    if not order:                      # all-int4 met the target: rank anyway, for the curve
        order = rank(cmodel, Int4Plan(granularity, cands[4]), cands, calib_x[:16], progress=True,
                     simulate=lambda m: int8_activations(m, calib.ranges))[1]
    chosen = sum(1 for b in mix.bits.values() if b == 8)
    curve = []
    for k in _curve_points(args.curve, len(order), chosen):
        plan = Int4Plan(granularity, {n: cands[b][n] for n, b in mix_of(order, k).items()})
        q, _ = store_plan(cmodel, plan)
        acc_onnx = top1(run_reference(q, x_eval)[0], y)
        tfl = emit_tflite(EmitRequest(model=cmodel, precision="int4", out_path=tmp / f"curve{k}.tflite",
                                      calibration=calib, input_layout="NHWC", int4=plan))
        acc_tfl = top1(run_artifact(tfl, x_eval, arithmetic=arithmetic_of(tfl))[0], y)
        point = {"layers_8bit": k, "chosen": k == chosen, "onnx_size": len(q.SerializeToString()) / fp32_size,
                 "onnx_top1": acc_onnx, "tflite_size": (tmp / f"curve{k}.tflite").stat().st_size / fp32_size,
                 "tflite_top1": acc_tfl}
        curve.append(point)
        rows.append((f"  curve: {k:2d} of {len(order)} layers at 8 bits{' (chosen)' if k == chosen else ''}",
                     f"ONNX {point['onnx_size']:.3f}x top-1 {acc_onnx:.2%} ({100 * (acc_onnx - fp32):+.2f} pt); "
                     f"TFLite {point['tflite_size']:.3f}x top-1 {acc_tfl:.2%} ({100 * (acc_tfl - fp32):+.2f} pt)",
                     f"ONNX Runtime float compute on the int4 weights; {tfl.details.get('mode')} TFLite via LiteRT, "
                     f"{arithmetic_of(tfl)}"))
    return [dict(p, fp32_top1=fp32) for p in curve]


def plot(curve: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for fmt, mark in (("onnx", "o-"), ("tflite", "s--")):
        xs = [p[f"{fmt}_size"] for p in curve]
        ys = [100 * p[f"{fmt}_top1"] for p in curve]
        ax.plot(xs, ys, mark, label=f"{'ONNX (float activations)' if fmt == 'onnx' else 'TFLite (int8 activations)'}")
        for p, xv, yv in zip(curve, xs, ys):
            ax.annotate(str(p["layers_8bit"]) + ("*" if p["chosen"] else ""), (xv, yv), fontsize=7,
                        textcoords="offset points", xytext=(3, 3))
    fp32 = 100 * curve[0]["fp32_top1"]
    ax.axhline(fp32, color="grey", lw=0.8, ls=":", label="fp32")
    ax.axhline(fp32 - 3, color="red", lw=0.8, ls=":", label="fp32 - 3 pt")
    ax.set(xlabel="file size / fp32 file", ylabel="top-1 on 800 real photos (%)")
    ax.set_title("MobileNetV2 int4: layers kept at 8 bits (labels; * = chosen)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


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
    ap.add_argument("--int4-size", type=float, default=None, help="MobileNetV2: choose the mix by size (fraction of fp32 weight bytes)")
    ap.add_argument("--eval", type=int, default=800, help="evaluation photos used (of 800)")
    ap.add_argument("--coreml-eval", type=int, default=200, help="photos run through the (slow) Core ML evaluator")
    ap.add_argument("--skip-mobilenet", action="store_true")
    ap.add_argument("--skip-transformer", action="store_true")
    ap.add_argument("--curve", default="0,2,4,8,16,32,all,chosen",
                    help="MobileNetV2 curve points: layers at 8 bits (comma list; 'all', 'chosen'; empty: none)")
    ap.add_argument("--plot", type=Path, help="write the MobileNetV2 size/accuracy curve as a PNG here")
    ap.add_argument("--json", type=Path, help="write the rows and the curve as JSON here")
    args = ap.parse_args(argv)
    rows = Rows()
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_transformer:
            transformer(args, rows, Path(tmp))
        if not args.skip_mobilenet:
            if not (Path(args.realdata) / "mobilenet_v2.onnx").exists():
                log(f"no {args.realdata}/mobilenet_v2.onnx: skipping the MobileNetV2 figures")
            else:
                curve = mobilenet(args, rows, Path(tmp))
                if args.plot and curve:
                    plot(curve, args.plot)
                if args.json:
                    args.json.write_text(json.dumps({"rows": rows, "curve": curve}, indent=1))
    print("\n== summary ==")
    w = max(len(r[0]) for r in rows)
    for name, value, how in rows:
        print(f"{name:<{w}}  {value}    [{how}]")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
