"""Train a small vision transformer on the real sklearn digits and export it to ONNX (dev only).

    PYTHONPATH=$PWD .venv/bin/python tools/train_digits_transformer.py [--out build/digits_transformer.onnx]

A MatMul-heavy model for the int4 figures (``tools/bench_int4.py``): same data, split and
preprocessing as ``samples/digits`` (``tools/train_digits.py``: 1437 training images, the 360
held-out ones in ``samples/digits/heldout`` are never trained on), 32x32 gray input cut into 64
patches of 4x4, a linear patch embedding + learned positions, 4 pre-norm encoder layers (width 64,
4 heads, MLP 256 with ReLU), mean pooling, LayerNorm, a linear head. 96 % of its ~200k
parameters sit in MatMul weights. Seeded and single-threaded (deterministic); needs torch==2.13.0.
The ONNX file carries the edgeinfer preprocessing/labels/task metadata, so
``edgeinfer convert build/digits_transformer.onnx --calib samples/digits/calib ...`` needs no options.
"""
from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import train_digits as td  # noqa: E402  (same data, split, preprocessing)

WIDTH, DEPTH, HEADS, MLP, PATCH = 64, 4, 4, 256, 4
EPOCHS = 30


def build_model():
    import torch
    import torch.nn as nn

    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.q, self.k, self.v, self.o = (nn.Linear(WIDTH, WIDTH) for _ in range(4))

        def forward(self, x):
            n, t, d = x.shape
            split = lambda y: y.reshape(n, t, HEADS, d // HEADS).transpose(1, 2)   # noqa: E731
            q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
            a = torch.softmax(q @ k.transpose(2, 3) * (d // HEADS) ** -0.5, dim=-1)
            return self.o((a @ v).transpose(1, 2).reshape(n, t, d))

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.n1, self.n2 = nn.LayerNorm(WIDTH), nn.LayerNorm(WIDTH)
            self.attn = Attention()
            self.mlp = nn.Sequential(nn.Linear(WIDTH, MLP), nn.ReLU(), nn.Linear(MLP, WIDTH))

        def forward(self, x):
            x = x + self.attn(self.n1(x))
            return x + self.mlp(self.n2(x))

    class DigitsViT(nn.Module):
        def __init__(self):
            super().__init__()
            g = td.SIZE // PATCH
            self.embed = nn.Linear(PATCH * PATCH, WIDTH)
            self.pos = nn.Parameter(torch.zeros(1, g * g, WIDTH))
            nn.init.normal_(self.pos, std=0.02)
            self.blocks = nn.Sequential(*(Block() for _ in range(DEPTH)))
            self.norm = nn.LayerNorm(WIDTH)
            self.head = nn.Linear(WIDTH, 10)

        def forward(self, x):
            n, g = x.shape[0], td.SIZE // PATCH
            p = x.reshape(n, g, PATCH, g, PATCH).permute(0, 1, 3, 2, 4).reshape(n, g * g, PATCH * PATCH)
            h = self.blocks(self.embed(p) + self.pos)
            return self.head(self.norm(h).mean(dim=1))

    return DigitsViT()


def export(model, path: Path, x_check: np.ndarray) -> None:
    import onnx
    import onnxruntime as ort
    import torch

    model.eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.from_numpy(x_check[:2]),), str(path), dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}})
    m = onnx.load(str(path))
    m.producer_name, m.producer_version = "edgeinfer tools/train_digits_transformer.py", "1"
    m.doc_string = "Vision transformer (4 layers, width 64) trained on sklearn load_digits (32x32 gray)"
    for key, value in (("edgeinfer.preprocess", json.dumps(td.PREPROCESS.to_dict())),
                       ("edgeinfer.labels", json.dumps(td.LABELS)), ("edgeinfer.task", "classify")):
        m.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(m, full_check=True)
    onnx.save(m, str(path))
    with torch.no_grad():
        ref = model(torch.from_numpy(x_check)).numpy()
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x_check})[0]
    err = float(np.abs(got - ref).max())
    td.log(f"exported {path} ({path.stat().st_size} bytes); max |ORT - torch| = {err:.2e}")
    if err > 1e-3:
        raise SystemExit(f"ONNX Runtime disagrees with torch: max abs error {err:.2e}")


def main(argv: list[str] | None = None) -> int:
    import tempfile

    import torch
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "build" / "digits_transformer.onnx")
    ap.add_argument("--epochs", type=int, default=EPOCHS)
    args = ap.parse_args(argv)
    torch.manual_seed(td.SEED)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    digits = load_digits()
    idx = np.arange(len(digits.target))
    tr, _ = train_test_split(idx, test_size=0.2, random_state=td.SEED, stratify=digits.target)
    tr = np.sort(tr)
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i in tr:      # the runtime's own preprocessing, through the same PNGs as samples/digits
            p = Path(tmp) / f"{i:04d}.png"
            td.save_png(td.digit_to_image(digits.images[i], td.SIZE), p)
            paths.append(p)
        x_train = td.load_tensor(paths)
    y_train = digits.target[tr].astype(np.int64)
    model = build_model()
    n_params = sum(p.numel() for p in model.parameters())
    td.log(f"training DigitsViT ({n_params} parameters) on {len(x_train)} images, {args.epochs} epochs")
    td.train(model, x_train, y_train, args.epochs)
    export(model, args.out, x_train[:16])
    heldout = ROOT / "samples" / "digits" / "heldout"
    acc, n = td.ort_accuracy(args.out, heldout)
    td.log(f"held-out top-1 (ONNX Runtime, fp32): {acc:.2%} on {n} images")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
