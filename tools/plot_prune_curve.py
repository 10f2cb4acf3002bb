"""Accuracy vs MACs under structured pruning: the digits sample, and a real pretrained model on real photos.

    .venv/bin/python tools/plot_prune_curve.py [-o docs/prune_curve.png] [--max-ratio 0.7] [--step 0.1]
        [--real /work/realdata --cuts 0.2,0.35 --recover lsq,distill,blockwise,blockwise+distill
         --budget 900 --blockwise-budget 600 --final-budget 300 --extra-recovery 600 --json rows.json --save-dir pruned/
         --resolution --sizes 208,192,176,160] [--rows a.json,b.json]

Digits panel: held-out top-1 for uniform ratios 0..--max-ratio, without / with least-squares
reconstruction (no training). Real panel (``--real DIR``, the layout of /work/realdata: a model
``mobilenet_v2.onnx`` with edgeinfer metadata, ``calib/`` and ``eval/`` with ``labels.tsv``):
per MAC cut (``--prune-flops``, per-group allocation by measured sensitivity) and per recovery
(``lsq``: least squares only; ``distill``: that plus label-free distillation from the unpruned
model, ``--budget`` seconds; ``blockwise``: that plus block-by-block training on cached block
outputs of the unpruned model, ``--blockwise-budget`` seconds; ``blockwise+distill``: that plus an
end-to-end pass on cached teacher logits of fixed views, ``--final-budget`` seconds), top-1 on the scored photos and top-1 agreement with the unpruned
model. Recovery data (unlabelled): the calib photos plus ``--extra-recovery`` N of the eval photos
(N = 600 takes 3 of every 4 in labels.tsv order); the other eval photos (every 4th, >= 200) are
the scored ones, disjoint from everything pruning and recovery see. Labels are read only to
score. Prints every row as it is measured, with wall and process CPU seconds and the load average.
``--resolution`` lets the MAC budget lower the input size too (``--prune-resolution``); the scored
photos are then read again at the chosen size (field of view kept). ``--sizes`` scores the
unpruned model at smaller input sizes alone, for reference. ``--fold K`` scores the eval photos at
position K modulo 4 instead of 3 (recovery takes the rest), so four runs score every eval photo once.
"""
from __future__ import annotations

import argparse
import json
import os
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


def split_labels(root: Path, split: str) -> list[tuple[Path, int]]:
    """(photo, class index) of ``root/split/labels.tsv``, in its order."""
    pairs = [line.split("\t") for line in (root / split / "labels.tsv").read_text().splitlines() if line.strip()]
    return [(root / split / f, int(c)) for f, c in pairs]


def load_split(root: Path, split: str, cfg: PreprocessConfig, hw) -> tuple[np.ndarray, np.ndarray]:
    pairs = split_labels(root, split)
    imgs = read_images([f for f, _ in pairs], root / split, cfg, hw, f"reading {split}", True)
    if imgs.skipped:
        raise SystemExit(f"{len(imgs.skipped)} unreadable images in {root / split}")
    return imgs.samples, np.array([c for _, c in pairs])


def logits(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = cpu_session(model, 2)
    name = sess.get_inputs()[0].name
    step = 1 if sess.get_inputs()[0].shape[0] == 1 else 16
    return np.concatenate([sess.run(None, {name: x[i:i + step]})[0] for i in range(0, len(x), step)]).reshape(len(x), -1)


def split_recovery(calib: np.ndarray, x: np.ndarray, y: np.ndarray, extra: int, fold: int = 3):
    """(unlabelled recovery images, scored images, their labels): calib plus ``extra`` eval photos
    (3 of every 4 in file order, at most 600) for recovery, every 4th eval photo scored (those at
    ``fold`` modulo 4: the four folds score every eval photo once)."""
    held = np.arange(len(x)) % 4 == fold
    if extra > int((~held).sum()):
        raise SystemExit(f"--extra-recovery {extra}: at most {int((~held).sum())} eval photos can be used "
                         "(every 4th is kept for scoring)")
    if extra == 0:
        return calib, x, y
    return np.concatenate([calib, x[~held][:extra]]), x[held], y[held]


def recovery_files(root: Path, extra: int, fold: int = 3) -> list[Path]:
    """The files of ``split_recovery``'s recovery images, in its order."""
    names = {split: [f for f, _ in split_labels(root, split)] for split in ("calib", "eval")}
    unheld = [f for i, f in enumerate(names["eval"]) if i % 4 != fold]
    return names["calib"] + (unheld[:extra] if extra else [])


def cpu_seconds() -> float:
    return time.process_time()


def scored_at(root: Path, pre: dict, full: tuple[int, int], hw: tuple[int, int], extra: int,
              cache: dict, fold: int = 3) -> np.ndarray:
    """The scored eval photos read again at ``hw`` (preprocessing scaled to keep the field of view)."""
    from converters.prune.resolution import scaled_preprocess
    if hw not in cache:
        cfg = PreprocessConfig.from_dict(scaled_preprocess(pre, full, hw))
        x, y = load_split(root, "eval", cfg, hw)
        cache[hw] = split_recovery(x[:0], x, y, extra, fold)[1]
    return cache[hw]


def real_rows(root: Path, cuts: list[float], recovers: list[str], distill_cfg, extra: int,
              save_dir: Path | None, multiple: int = 8, blockwise_cfg=None, final_cfg=None,
              resolution: bool = False, sizes: tuple[int, ...] = (),
              model_file: str = "mobilenet_v2.onnx", fold: int = 3,
              criterion: str = "activation") -> tuple[float, list[dict]]:
    from converters.prune.graph import prepare as prepare_model
    from converters.pipeline import read_again
    from converters.prune.resolution import at_size, resize_input
    from converters.clean import clean_model
    model = clean_model(onnx.load(root / model_file), keep_batchnorm=True)   # as convert's pruning sees it
    meta = {p.key: p.value for p in model.metadata_props}
    pre = json.loads(meta["edgeinfer.preprocess"])
    cfg = PreprocessConfig.from_dict(pre)
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    full = (dims[2], dims[3])
    calib, _ = load_split(root, "calib", cfg, full)
    x, y = load_split(root, "eval", cfg, full)
    recovery, x, y = split_recovery(calib, x, y, extra, fold)
    # smaller input sizes see the recovery photos read again at that size, as the convert does
    read_at = read_again(recovery_files(root, extra, fold), cfg, full)
    scored = {full: x}
    ref = logits(model, x).argmax(1)
    base = 100 * float((ref == y).mean())
    print(f"real: unpruned top-1 {base:.2f}% on {len(x)} scored eval photos; recovery data: {len(recovery)} "
          f"unlabelled photos ({len(calib)} calib + {len(recovery) - len(calib)} eval, disjoint from the scored ones)")
    rows = []
    for size in sizes:      # the input size alone (no channel cut, no recovery): MobileNet's resolution multiplier
        from converters.prune import flops
        small = resize_input(prepare_model(model), (size, size))
        pred = logits(small, scored_at(root, pre, full, (size, size), extra, scored, fold)).argmax(1)
        drop = 1.0 - flops.count(small, shapes_ready=True).macs / flops.count(prepare_model(model), shapes_ready=True).macs
        row = {"cut": round(drop, 4), "recover": "none", "macs": flops.count(small, shapes_ready=True).macs,
               "macs_drop": round(drop, 4), "input": [size, size], "resolution": True, "size_only": True,
               "top1": round(100 * float((pred == y).mean()), 2), "agreement": round(float((pred == ref).mean()), 4),
               "scored": int(len(x)), "recovery_images": 0, "seconds": 0, "cpu_seconds": 0, "distillation": None}
        rows.append(row)
        print(f"  input {size}x{size} only: MACs -{100 * drop:.1f}%  top-1 {row['top1']:.2f}% ({row['top1'] - base:+.2f} pt)  "
              f"agreement {row['agreement']:.3f}", flush=True)
    for cut in cuts:
        lsq = bw = None
        for rec in recovers:
            t0, c0 = time.perf_counter(), cpu_seconds()
            if rec in ("distill", "blockwise", "blockwise+distill") and lsq is not None:
                # the least-squares (and block-wise) start prune_model would build, measured once per cut
                from converters.prune.blockwise import blockwise
                from converters.prune.distill import distill
                from converters.prune.graph import prepare
                rep = lsq[1]
                hw = rep.input_hw[1] if rep.input_hw else full
                teacher = prepare(model) if hw == full else resize_input(prepare(model), hw)
                data = at_size(recovery, slice(None), hw, read_at)
                if rec == "blockwise+distill" and bw is not None:
                    start, rep.distillation, s0, cpu0 = bw
                else:
                    if rec == "distill":    # distillation's teacher runs at full size, block-wise at the student's
                        start, rep.distillation = distill(prepare(model), lsq[0], rep.kept, recovery, distill_cfg)
                    else:
                        start, rep.distillation = blockwise(teacher, lsq[0], rep.kept, data, blockwise_cfg)
                    s0, cpu0 = lsq[2] + time.perf_counter() - t0, lsq[3] + cpu_seconds() - c0
                    t0, c0 = time.perf_counter(), cpu_seconds()
                    if rec == "blockwise":
                        bw = (start, rep.distillation, s0, cpu0)
                pm = start
                if rec == "blockwise+distill":
                    pm, final = distill(prepare(model), start, rep.kept, recovery, final_cfg)
                    rep.distillation = {**rep.distillation, "final_distillation": final}
                seconds, cpu = s0 + time.perf_counter() - t0, cpu0 + cpu_seconds() - c0
            else:
                pc = PruneConfig(flops_target=cut, recover=rec, distill=final_cfg if rec == "blockwise+distill"
                                 else distill_cfg, blockwise=blockwise_cfg, channel_multiple=multiple,
                                 resolution=resolution, criterion=criterion)
                pm, rep = prune_model(model, pc, recovery, read_at=read_at)
                seconds, cpu = time.perf_counter() - t0, cpu_seconds() - c0
                if rec == "lsq":
                    lsq = (pm, rep, seconds, cpu)
            hw = rep.input_hw[1] if rep.input_hw else full
            pred = logits(pm, scored_at(root, pre, full, hw, extra, scored, fold)).argmax(1)
            row = {"cut": cut, "recover": rec, "macs": rep.macs[1], "macs_drop": round(rep._drop(rep.macs), 4),
                   "input": list(hw), "resolution": resolution,
                   "top1": round(100 * float((pred == y).mean()), 2), "agreement": round(float((pred == ref).mean()), 4),
                   "seconds": round(seconds), "cpu_seconds": round(cpu), "load": round(os.getloadavg()[0], 1),
                   "scored": int(len(x)), "recovery_images": int(len(recovery)), "distillation": rep.distillation}
            rows.append(row)
            d = rep.distillation
            print(f"  cut {cut:.2f} {rec:<8} input {hw[0]}x{hw[1]} MACs -{100 * row['macs_drop']:.1f}%  top-1 {row['top1']:.2f}% "
                  f"({row['top1'] - base:+.2f} pt)  agreement {row['agreement']:.3f}  wall {seconds:.0f} s, "
                  f"CPU {cpu:.0f} s, load {row['load']}"
                  + (f"  ({d.get('method', 'distillation')}: wall {d['seconds']:.0f} s, CPU {d['cpu_seconds']:.0f} s)"
                     if d else ""), flush=True)
            if save_dir:
                save_dir.mkdir(parents=True, exist_ok=True)
                onnx.save(pm, save_dir / f"{Path(model_file).stem}-flops{cut:g}-{rec}{'-res' if resolution else ''}.onnx")
    return base, rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-o", "--out", type=Path, default=Path("prune_curve.png"))
    ap.add_argument("--criterion", default="activation")
    ap.add_argument("--max-ratio", type=float, default=0.7)
    ap.add_argument("--step", type=float, default=0.1)
    ap.add_argument("--real", type=Path, help="folder with mobilenet_v2.onnx, calib/ and eval/ (see /work/realdata/README.md)")
    ap.add_argument("--model", default="mobilenet_v2.onnx", help="model file in --real (e.g. efficientnet_lite0.onnx)")
    ap.add_argument("--cuts", default="0.2,0.35")
    ap.add_argument("--recover", default="lsq,distill")
    ap.add_argument("--budget", type=float, default=900.0, help="distillation seconds per point")
    ap.add_argument("--blockwise-budget", type=float, default=600.0, help="block-wise recovery seconds per point")
    ap.add_argument("--final-budget", type=float, default=300.0,
                    help="blockwise+distill: seconds of the end-to-end pass on cached teacher logits after the blocks")
    ap.add_argument("--final-lr", type=float, help="blockwise+distill: relative step of that pass (default: final_pass_config's)")
    ap.add_argument("--blockwise-lr", type=float, help="block-wise learning rate (default: BlockwiseConfig's)")
    ap.add_argument("--blockwise-epochs", type=float, help="block-wise passes per block, at most (default: BlockwiseConfig's)")
    ap.add_argument("--lr", type=float, help="distillation learning rate (default: DistillConfig's)")
    ap.add_argument("--epochs", type=float, help="distillation epochs, at most (default: DistillConfig's)")
    ap.add_argument("--train", choices=("all", "affine"), help="distillation: whole weights or per-channel scales + biases")
    ap.add_argument("--views", type=int, help="distillation: fixed views per image, teacher logits cached (default: DistillConfig's)")
    ap.add_argument("--min-crop", type=float, help="distillation: smallest random crop, as a fraction of the area (default 0.5)")
    ap.add_argument("--mixup", type=float, help="distillation: blend views, Beta(a, a) weights; needs --views 0 (default off)")
    ap.add_argument("--feature-weight", type=float, help="distillation feature-loss weight (default: DistillConfig's)")
    ap.add_argument("--train-size", type=int, help="distillation training resolution in pixels (default: DistillConfig's)")
    ap.add_argument("--batch", type=int, help="distillation batch size (default: DistillConfig's)")
    ap.add_argument("--fold", type=int, choices=range(4), default=3,
                    help="score the eval photos at this position modulo 4 (recovery uses the others); run 0-3 to score all")
    ap.add_argument("--extra-recovery", type=int, default=600,
                    help="eval photos added (unlabelled) to the recovery data; the rest of eval is scored")
    ap.add_argument("--channel-multiple", type=int, default=8,
                    help="kept widths rounded to this (8 as the device profiles; 1 = exact widths, slower under ORT)")
    ap.add_argument("--resolution", action="store_true",
                    help="let the MAC budget lower the input size too (--prune-resolution); scored photos are read at it")
    ap.add_argument("--sizes", default="", help="also score the unpruned model at these input sizes alone "
                    "(comma-separated px, e.g. 208,192,176,160; photos read at each size)")
    ap.add_argument("--save-dir", type=Path, help="save each pruned model here (for tools/bench_prune_latency.py)")
    ap.add_argument("--json", type=Path, help="also write the measured rows here")
    ap.add_argument("--rows", help="draw the real panel from rows previous --json runs wrote (comma-separated files; "
                    "no re-measuring)")
    args = ap.parse_args(argv)

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    digits = digits_rows(args.max_ratio, args.step, args.criterion)
    real = None
    if args.rows:
        saved = [json.loads(Path(p).read_text())["real"] for p in args.rows.split(",")]
        real = (saved[0]["fp32_top1"], [r for s in saved for r in s["rows"]])
    elif args.real:
        from converters.prune.blockwise import BlockwiseConfig
        from converters.prune.distill import DistillConfig, final_pass_config
        final = final_pass_config(args.final_budget)
        if args.final_lr is not None:
            final.lr = args.final_lr
        bw = {k: v for k, v in (("lr", args.blockwise_lr), ("epochs", args.blockwise_epochs)) if v is not None}
        knobs = {k: v for k, v in (("lr", args.lr), ("epochs", args.epochs), ("train", args.train), ("views", args.views),
                                   ("crop_scale", args.min_crop and (args.min_crop, 1.0)), ("feature_weight", args.feature_weight),
                                   ("train_size", args.train_size), ("batch", args.batch), ("mixup", args.mixup))
                 if v is not None}
        real = real_rows(args.real, [float(c) for c in args.cuts.split(",")], args.recover.split(","),
                         DistillConfig(time_budget=args.budget, **knobs), args.extra_recovery, args.save_dir,
                         args.channel_multiple, BlockwiseConfig(time_budget=args.blockwise_budget, **bw), final,
                         args.resolution, tuple(int(v) for v in args.sizes.split(",") if v), args.model, args.fold,
                         args.criterion)
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
        names = {"lsq": "least squares only", "distill": "+ distillation", "blockwise": "+ block-wise reconstruction",
                 "blockwise+distill": "+ block-wise, then end-to-end KL"}
        for res in (False, True):
            for rec, style in (("lsq", "s--"), ("distill", "o-"), ("blockwise", "^-"), ("blockwise+distill", "D-")):
                pts = sorted((r["macs"] / 1e6, r["top1"]) for r in rows if r["recover"] == rec
                             and bool(r.get("resolution")) == res and not r.get("size_only"))
                if pts:        # every curve starts at the unpruned model
                    pts.append((rows[0]["macs"] / (1.0 - rows[0]["macs_drop"]) / 1e6, base))
                    ax.plot(*zip(*pts), style, color=None if not res else "C3" if rec == "lsq" else "C4",
                            label=("channels + input size (--prune-resolution): " if res else "channels: ") + names[rec])
        only = sorted((r["macs"] / 1e6, r["top1"]) for r in rows if r.get("size_only"))
        if only:
            ax.plot(*zip(*only), "x:", color="grey", label="input size alone (no channel cut, no recovery)")
        ax.axhline(base, color="grey", lw=0.8, ls=":", label=f"unpruned ({base:.1f}%)")
        ax.set(ylim=(0, 100), xlabel="MACs per image (millions)", ylabel=f"top-1 on {rows[0]['scored']} held-out real photos (%)")
        ax.set_title(f"{args.model.split('.')[0]} (pretrained), per-group allocation, "
                     f"{max(r['recovery_images'] for r in rows)} unlabelled photos",
                     fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
