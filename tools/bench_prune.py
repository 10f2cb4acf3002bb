"""Structured pruning benchmark: accuracy, size, MACs and ONNX Runtime latency side by side.

    .venv/bin/python tools/bench_prune.py --prune 0.3 [--criteria activation,l1] [--mnv2-resolution 224]

1. Digits sample (``samples/digits``): held-out top-1 of the unpruned model, the pruned model
   without reconstruction and the pruned model with least-squares reconstruction (calibration
   images only, no training), plus params / MACs / file size and fp32 latency.
2. MobileNetV2 architecture (``tools/model_zoo.py``, seeded random weights, 1000 classes):
   params / MACs / file size and fp32 latency, unpruned vs pruned (accuracy is meaningless
   for random weights, so only agreement of the pruned graph's shape/run is shown).

Latency: batch 1, one intra-op thread, the sessions run interleaved, median of --runs.
Kept channel counts are rounded to --channel-multiple (default 8, as the device profiles say):
ONNX Runtime's CPU convolutions block channels by 8/16, and an unaligned pruned MobileNetV2
(``--channel-multiple 1``) runs SLOWER than the unpruned one; the extra latency column shows it.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

from converters.images import list_images, read_images  # noqa: E402
from converters.prune import PruneConfig, prune_model  # noqa: E402
from converters.prune.flops import count  # noqa: E402
from converters.prune.runner import session  # noqa: E402
from edgeinfer.preprocess import PreprocessConfig  # noqa: E402
from timing import interleaved_medians_ms  # noqa: E402

DIGITS = ROOT / "samples" / "digits"


def load_digits_data(model: onnx.ModelProto):
    meta = {p.key: p.value for p in model.metadata_props}
    cfg = PreprocessConfig.from_dict(json.loads(meta["edgeinfer.preprocess"]))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    hw = (dims[2].dim_value, dims[3].dim_value)
    calib = read_images(list_images(DIGITS / "calib"), DIGITS / "calib", cfg, hw, "calib", False).samples
    held = read_images(list_images(DIGITS / "heldout"), DIGITS / "heldout", cfg, hw, "held-out", False)
    labels = np.array([int(lb) for lb in held.labels])
    return calib, held.samples, labels


def top1(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return session(model, threads=1).run(None, {model.graph.input[0].name: x})[0].argmax(axis=1)


def latency_ms(models: list[onnx.ModelProto], x: np.ndarray, runs: int) -> list[float]:
    """Median latency of each model, runs interleaved so load changes hit all alike."""
    sessions = [session(m, threads=1) for m in models]
    fns = {str(i): (lambda s=s, n=m.graph.input[0].name: s.run(None, {n: x})) for i, (s, m) in enumerate(zip(sessions, models))}
    medians = interleaved_medians_ms(fns, runs)
    return [medians[str(i)] for i in range(len(models))]


def row(label: str, a, b, fmt="{:,}") -> str:
    ratio = f"{b / a:.3f}x" if a else "-"
    return f"  {label:<22} {fmt.format(a):>14} {fmt.format(b):>14}   {ratio}"


def size_row(m0, m1) -> list[str]:
    c0, c1 = count(m0), count(m1)
    return [row("params", c0.params, c1.params), row("MACs / sample", c0.macs, c1.macs),
            row("file bytes", len(m0.SerializeToString()), len(m1.SerializeToString()))]


def bench_digits(ratio: float, criteria: list[str], runs: int, multiple: int) -> None:
    model = onnx.load(DIGITS / "digits.onnx")
    calib, x, labels = load_digits_data(model)
    base = top1(model, x)
    acc0 = (base == labels).mean()
    print(f"\n== digits sample: {len(x)} held-out images, {len(calib)} calibration images, --prune {ratio}, "
          f"channel multiple {multiple}")
    print(f"  {'model':<46} {'top-1':>7} {'agree':>7}")
    print(f"  {'unpruned':<46} {100 * acc0:6.2f}% {100.0:6.1f}%")
    fitted = None
    for crit in criteria:
        for rec in (False, True):
            pm, rep = prune_model(model, PruneConfig(ratio=ratio, criterion=crit, recover="lsq" if rec else "none", allocation="uniform",
                                                     channel_multiple=multiple),
                                  calib if (rec or crit == "activation") else None)
            pred = top1(pm, x)
            label = f"pruned ({crit}) " + ("+ reconstruction" if rec else "no reconstruction")
            print(f"  {label:<46} {100 * (pred == labels).mean():6.2f}% {100 * (pred == base).mean():6.1f}%"
                  f"   ({100 * ((pred == labels).mean() - acc0):+.2f} points)")
            if rec and fitted is None:
                fitted, fit_rep = pm, rep
    print(f"  {'':<22} {'unpruned':>14} {'pruned':>14}   ratio   (pruned = first criterion + reconstruction)")
    for line in size_row(model, fitted):
        print(line)
    t0, t1 = latency_ms([model, fitted], x[:1], runs)
    print(row("ORT fp32 latency (ms)", t0, t1, "{:.4f}"))
    print("  fitted layers: " + ", ".join(f"{f.layer} {f.error_before:.2f}->{f.error_after:.2f}" for f in fit_rep.reconstruction))


def bench_mobilenetv2(ratio: float, resolution: int, runs: int, multiple: int) -> None:
    from model_zoo import build_mobilenetv2

    model = build_mobilenetv2(resolution=resolution, num_classes=1000)
    pm, rep = prune_model(model, PruneConfig(ratio=ratio, criterion="l1", recover="none", allocation="uniform",
                                             channel_multiple=multiple), None)
    raw, _ = prune_model(model, PruneConfig(ratio=ratio, criterion="l1", recover="none", allocation="uniform"), None)
    onnx.checker.check_model(pm, full_check=True)
    x = np.random.default_rng(0).standard_normal((1, 3, resolution, resolution)).astype(np.float32)
    print(f"\n== MobileNetV2 (seeded random weights, {resolution}x{resolution}, 1000 classes), --prune {ratio}, l1, "
          f"channel multiple {multiple}")
    print(f"  {'':<22} {'unpruned':>14} {'pruned':>14}   ratio")
    for line in size_row(model, pm):
        print(line)
    t0, t1, t2 = latency_ms([model, pm, raw], x, runs)
    print(row("ORT fp32 latency (ms)", t0, t1, "{:.3f}"))
    print(row("  same, multiple 1", t0, t2, "{:.3f}"))
    cut = [g for g in rep.groups if g["kept"] < g["channels"]]
    print(f"  {len(cut)} of {len(rep.groups)} channel groups cut; left whole: "
          + "; ".join(f"{u['layers']} ({u['reasons'][0]})" for u in rep.unprunable))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prune", type=float, default=0.3)
    ap.add_argument("--criteria", default="activation,l1")
    ap.add_argument("--runs", type=int, default=200, help="latency runs for digits (MobileNetV2: runs // 10)")
    ap.add_argument("--mnv2-resolution", type=int, default=224)
    ap.add_argument("--skip-mnv2", action="store_true")
    ap.add_argument("--channel-multiple", type=int, default=8)
    args = ap.parse_args(argv)
    bench_digits(args.prune, args.criteria.split(","), args.runs, args.channel_multiple)
    if not args.skip_mnv2:
        bench_mobilenetv2(args.prune, args.mnv2_resolution, max(5, args.runs // 10), args.channel_multiple)
    return 0


if __name__ == "__main__":
    sys.exit(main())
