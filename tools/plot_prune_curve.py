"""Accuracy vs MACs under structured pruning: the digits sample, and a real pretrained model on real photos.

    .venv/bin/python tools/plot_prune_curve.py [-o docs/prune_curve.png] [--max-ratio 0.7] [--step 0.1]
        [--real /work/realdata --cuts 0.1,0.2,0.35 --recover lsq,distill --budget 900 --json rows.json]

Digits panel: held-out top-1 for uniform ratios 0..--max-ratio, without / with least-squares
reconstruction (no training). Real panel (``--real DIR``, the layout of /work/realdata: a model
``mobilenet_v2.onnx`` with edgeinfer metadata, ``calib/`` and ``eval/`` with ``labels.tsv``):
per MAC cut (``--prune-flops``, per-group allocation by measured sensitivity) and per recovery
(``lsq``: least squares only; ``distill``: that plus label-free distillation from the unpruned
model on the calib photos, ``--budget`` seconds), top-1 on the eval photos and top-1 agreement
with the unpruned model. Labels are read only to score; pruning and recovery never see them.
Prints every row as it is measured.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

from bench_prune import DIGITS, load_digits_data, top1  # noqa: E402
from converters.images import read_images  # noqa: E402
from converters.ort_session import cpu_session  # noqa: E402
from converters.prune import PruneConfig, prune_model  # noqa: E402
from edgeinfer.preprocess import PreprocessConfig  # noqa: E402


def digits_rows(max_ratio: float, step: float, criterion: str) -> list[tuple]:
    model = onnx.load(DIGITS / "digits.onnx")
    calib, x, labels = load_digits_data(model)
    rows = []
    print(f"digits: {'ratio':>6} {'MACs':>11} {'top-1 no recon':>15} {'top-1 recon':>12}")
    for r in np.round(np.arange(0.0, max_ratio + 1e-9, step), 3):
        accs = []
        for rec in ("none", "lsq"):
            cfg = PruneConfig(ratio=float(r), criterion=criterion, recover=rec, allocation="uniform")
            pm, rep = prune_model(model, cfg, calib, progress_bar=False)
            accs.append(100 * float((top1(pm, x) == labels).mean()))
        rows.append((float(r), rep.macs[1], *accs))
        print(f"        {r:6.2f} {rep.macs[1]:11,} {accs[0]:14.2f}% {accs[1]:11.2f}%", flush=True)
    return rows


def load_split(root: Path, split: str, cfg: PreprocessConfig, hw) -> tuple[np.ndarray, np.ndarray]:
    pairs = [line.split("\t") for line in (root / split / "labels.tsv").read_text().splitlines() if line.strip()]
    imgs = read_images([root / split / f for f, _ in pairs], root / split, cfg, hw, f"reading {split}", True)
    if imgs.skipped:
        raise SystemExit(f"{len(imgs.skipped)} unreadable images in {root / split}")
    return imgs.samples, np.array([int(c) for _, c in pairs])


def logits(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = cpu_session(model, 2)
    name = sess.get_inputs()[0].name
    step = 1 if sess.get_inputs()[0].shape[0] == 1 else 16
    return np.concatenate([sess.run(None, {name: x[i:i + step]})[0] for i in range(0, len(x), step)]).reshape(len(x), -1)


def real_rows(root: Path, cuts: list[float], recovers: list[str], budget: float) -> tuple[float, list[dict]]:
    from converters.prune.distill import DistillConfig
    model = onnx.load(root / "mobilenet_v2.onnx")
    meta = {p.key: p.value for p in model.metadata_props}
    cfg = PreprocessConfig.from_dict(json.loads(meta["edgeinfer.preprocess"]))
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    calib, _ = load_split(root, "calib", cfg, (dims[2], dims[3]))
    x, y = load_split(root, "eval", cfg, (dims[2], dims[3]))
    ref = logits(model, x).argmax(1)
    base = 100 * float((ref == y).mean())
    print(f"real: unpruned top-1 {base:.2f}% on {len(x)} eval photos; recovery data: {len(calib)} calib photos (unlabelled)")
    rows = []
    for cut in cuts:
        for rec in recovers:
            t0 = time.perf_counter()
            pc = PruneConfig(flops_target=cut, recover=rec, distill=DistillConfig(time_budget=budget))
            pm, rep = prune_model(model, pc, calib)
            seconds = time.perf_counter() - t0
            pred = logits(pm, x).argmax(1)
            row = {"cut": cut, "recover": rec, "macs": rep.macs[1], "macs_drop": round(rep._drop(rep.macs), 4),
                   "top1": round(100 * float((pred == y).mean()), 2), "agreement": round(float((pred == ref).mean()), 4),
                   "seconds": round(seconds), "distillation": rep.distillation}
            rows.append(row)
            print(f"  cut {cut:.2f} {rec:<8} MACs -{100 * row['macs_drop']:.1f}%  top-1 {row['top1']:.2f}% "
                  f"({row['top1'] - base:+.2f} pt)  agreement {row['agreement']:.3f}  {seconds:.0f} s", flush=True)
    return base, rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-o", "--out", type=Path, default=Path("prune_curve.png"))
    ap.add_argument("--criterion", default="activation")
    ap.add_argument("--max-ratio", type=float, default=0.7)
    ap.add_argument("--step", type=float, default=0.1)
    ap.add_argument("--real", type=Path, help="folder with mobilenet_v2.onnx, calib/ and eval/ (see /work/realdata/README.md)")
    ap.add_argument("--cuts", default="0.1,0.2,0.35")
    ap.add_argument("--recover", default="lsq,distill")
    ap.add_argument("--budget", type=float, default=900.0, help="distillation seconds per point")
    ap.add_argument("--json", type=Path, help="also write the measured rows here")
    args = ap.parse_args(argv)

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    digits = digits_rows(args.max_ratio, args.step, args.criterion)
    real = real_rows(args.real, [float(c) for c in args.cuts.split(",")], args.recover.split(","), args.budget) \
        if args.real else None
    if args.json:
        args.json.write_text(json.dumps({"digits": digits, "real": real and {"fp32_top1": real[0], "rows": real[1]}}, indent=1))

    fig, axes = plt.subplots(1, 2 if real else 1, figsize=(12 if real else 6.4, 4.2), dpi=120, squeeze=False)
    ax = axes[0][0]
    macs = np.array([r[1] for r in digits]) / 1e6
    ax.plot(macs, [r[3] for r in digits], "o-", label="uniform cut + least-squares reconstruction")
    ax.plot(macs, [r[2] for r in digits], "s--", label="uniform cut, no reconstruction")
    ax.axhline(digits[0][3], color="grey", lw=0.8, ls=":", label="unpruned")
    ax.set(xlabel="MACs per image (millions)", ylabel="held-out top-1 (%)", ylim=(0, 106))
    ax.set_title("digits sample (10 classes, 32x32), no training", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    if real:
        base, rows = real
        ax = axes[0][1]
        for rec, style in (("lsq", "s--"), ("distill", "o-")):
            pts = sorted((r["macs"] / 1e6, r["top1"]) for r in rows if r["recover"] == rec)
            if pts:
                ax.plot(*zip(*pts), style, label={"lsq": "least squares only", "distill": "+ distillation"}[rec])
        ax.axhline(base, color="grey", lw=0.8, ls=":", label=f"unpruned ({base:.1f}%)")
        ax.set(xlabel="MACs per image (millions)", ylabel="top-1 on 800 real eval photos (%)")
        ax.set_title("MobileNetV2 (pretrained), per-group allocation, 200 unlabelled photos", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
