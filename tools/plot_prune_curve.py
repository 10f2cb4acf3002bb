"""Accuracy vs MACs of the digits sample for prune ratios 0..0.7, with and without reconstruction.

    .venv/bin/python tools/plot_prune_curve.py [-o prune_curve.png] [--criterion activation]
                                               [--channel-multiple 1] [--max-ratio 0.7] [--step 0.1]

Prints the table it plots (ratio, MACs, params, held-out top-1 without / with reconstruction).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

from bench_prune import DIGITS, load_digits_data, top1  # noqa: E402
from converters.prune import PruneConfig, prune_model  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-o", "--out", type=Path, default=Path("prune_curve.png"))
    ap.add_argument("--criterion", default="activation")
    ap.add_argument("--channel-multiple", type=int, default=1)
    ap.add_argument("--max-ratio", type=float, default=0.7)
    ap.add_argument("--step", type=float, default=0.1)
    args = ap.parse_args(argv)

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    model = onnx.load(DIGITS / "digits.onnx")
    calib, x, labels = load_digits_data(model)
    ratios = np.round(np.arange(0.0, args.max_ratio + 1e-9, args.step), 3)
    rows = []
    print(f"{'ratio':>6} {'MACs':>11} {'params':>8} {'top-1 no recon':>15} {'top-1 recon':>12}")
    for r in ratios:
        accs = []
        for rec in (False, True):
            cfg = PruneConfig(ratio=float(r), criterion=args.criterion, recover="lsq" if rec else "none", allocation="uniform",
                              channel_multiple=args.channel_multiple)
            pm, rep = prune_model(model, cfg, calib)
            accs.append(100 * float((top1(pm, x) == labels).mean()))
        rows.append((r, rep.macs[1], rep.params[1], *accs))
        print(f"{r:6.2f} {rep.macs[1]:11,} {rep.params[1]:8,} {accs[0]:14.2f}% {accs[1]:11.2f}%", flush=True)

    macs = np.array([row[1] for row in rows]) / 1e6
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    ax.plot(macs, [row[4] for row in rows], "o-", label="pruned + least-squares reconstruction")
    ax.plot(macs, [row[3] for row in rows], "s--", label="pruned, no reconstruction")
    for row, m in zip(rows, macs):
        ax.annotate(f"{row[0]:.1f}", (m, row[4]), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=7)
    ax.axhline(rows[0][4], color="grey", lw=0.8, ls=":", label="unpruned")
    ax.set_xlabel("MACs per image (millions)")
    ax.set_ylabel("held-out top-1 (%)")
    ax.set_title(f"digits sample: structured pruning ({args.criterion}), no training", fontsize=10)
    ax.set_ylim(0, 106)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
