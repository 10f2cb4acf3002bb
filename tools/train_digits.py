"""Train the project's sample classifier on scikit-learn's digits and write ``samples/digits/``.

Dev-only (needs torch==2.13.0). Deterministic: the same environment regenerates every output
byte for byte.

    .venv/bin/python tools/train_digits.py [--out samples/digits] [--epochs 40]

Pipeline (one preprocessing implementation, shared with the runtime):
  1. every 8x8 digit (0..16) -> 0..255 -> 32x32 grayscale PNG (PIL bicubic);
  2. stratified 80/20 split (random_state=0);
  3. training/evaluation tensors are read back from those PNGs through
     ``edgeinfer.preprocess.preprocess_image`` with the model's own preprocessing config;
  4. a MobileNet-style net (stem conv, depthwise-separable blocks, BatchNorm, ReLU6, GAP, Linear)
     is trained with small random shifts as augmentation;
  5. exported to ONNX opset 17 (BatchNormalization kept, batch dim ``N``) with the preprocessing,
     labels and task in ``metadata_props``; checked against torch with ONNX Runtime;
  6. held-out split (image-folder layout), 100 calibration images from the training split,
     a few sample images (some larger than 32x32) and a README are written next to the model.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgeinfer.preprocess import PreprocessConfig, preprocess_image  # noqa: E402

SEED = 0
SIZE = 32
LABELS = [str(i) for i in range(10)]
NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
PREPROCESS = PreprocessConfig.from_dict({
    "color": "gray", "resize_mode": "stretch", "resize": SIZE, "scale": 1 / 255,
    "mean": [0.5], "std": [0.5], "interpolation": "bilinear",
})
# (out_channels, stride) of the depthwise-separable blocks after a 16-channel stem.
BLOCKS = [(32, 2), (32, 1), (64, 2), (64, 1), (128, 2), (128, 1)]
CALIB_PER_CLASS = 10
# (label, size) of the sample images: some at the model size, some larger to exercise resizing.
SAMPLES = [(7, 32), (2, 32), (0, 96), (3, 96), (5, 64), (9, 96)]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def digit_to_image(pixels8x8: np.ndarray, size: int) -> Image.Image:
    """8x8 array of 0..16 -> grayscale PIL image of ``size`` x ``size`` (bicubic upscale)."""
    u8 = np.round(np.asarray(pixels8x8, dtype=np.float64) * (255.0 / 16.0)).astype(np.uint8)
    return Image.fromarray(u8, mode="L").resize((size, size), Image.BICUBIC)


def save_png(im: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, format="PNG", optimize=True)


def load_tensor(paths: list[Path]) -> np.ndarray:
    """PNG files -> float32 NCHW batch through the runtime's preprocessing."""
    return np.stack([preprocess_image(p, PREPROCESS, (SIZE, SIZE))[0] for p in paths])


def write_dataset(out: Path, work: Path):
    """Write the PNGs; return (train_paths, y_train, heldout_paths, y_heldout, split indices)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    idx = np.arange(len(digits.target))
    tr, te = train_test_split(idx, test_size=0.2, random_state=SEED, stratify=digits.target)
    tr, te = np.sort(tr), np.sort(te)
    train_paths, heldout_paths = [], []
    for i in tr:
        p = work / f"train/{digits.target[i]}/digits_{i:04d}.png"
        save_png(digit_to_image(digits.images[i], SIZE), p)
        train_paths.append(p)
    for i in te:
        p = out / f"heldout/{digits.target[i]}/digits_{i:04d}.png"
        save_png(digit_to_image(digits.images[i], SIZE), p)
        heldout_paths.append(p)
    # calibration: the first CALIB_PER_CLASS training images of each class (flat folder)
    (out / "calib").mkdir(parents=True, exist_ok=True)
    for c in range(10):
        for i in [j for j in tr if digits.target[j] == c][:CALIB_PER_CLASS]:
            shutil.copyfile(work / f"train/{c}/digits_{i:04d}.png", out / f"calib/digits_{i:04d}.png")
    # sample images: the first held-out image of each chosen class, at the chosen size
    for k, (c, size) in enumerate(SAMPLES):
        i = [j for j in te if digits.target[j] == c][0]
        save_png(digit_to_image(digits.images[i], size), out / f"images/{NAMES[c]}_{k}.png")
    return train_paths, digits.target[tr], heldout_paths, digits.target[te], digits


def build_model():
    import torch.nn as nn

    def conv_bn(cin, cout, k, stride, groups=1):
        return [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout), nn.ReLU6()]

    layers, cin = conv_bn(1, 16, 3, 1), 16
    for cout, stride in BLOCKS:
        layers += conv_bn(cin, cin, 3, stride, groups=cin) + conv_bn(cin, cout, 1, 1)
        cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, 10)]
    return nn.Sequential(*layers)


def shift_batch(x, gen, max_shift: int = 2, background: float = -1.0):
    """Random integer shifts in [-max_shift, max_shift] per image, filled with the background."""
    import torch
    import torch.nn.functional as F

    n, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4, value=background)
    d = torch.randint(0, 2 * max_shift + 1, (n, 2), generator=gen)
    return torch.stack([padded[b, :, d[b, 0]:d[b, 0] + h, d[b, 1]:d[b, 1] + w] for b in range(n)])


def train(model, x_train, y_train, epochs: int, batch: int = 64):
    import torch
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(SEED)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    steps = epochs * ((len(x_train) + batch - 1) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    x_train, y_train = torch.from_numpy(x_train), torch.from_numpy(y_train)
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(x_train), generator=gen)
        total, correct, loss_sum = 0, 0, 0.0
        for s in range(0, len(perm), batch):
            b = perm[s:s + batch]
            xb, yb = shift_batch(x_train[b], gen), y_train[b]
            logits = model(xb)
            loss = F.cross_entropy(logits, yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += float(loss.detach()) * len(b)
            correct += int((logits.argmax(1) == yb).sum())
            total += len(b)
        log(f"epoch {epoch + 1:3d}/{epochs}  loss {loss_sum / total:.4f}  train acc {correct / total:.4f}")


def export_onnx(model, path: Path, x_check: np.ndarray) -> None:
    import onnx
    import onnxruntime as ort
    import torch

    model.eval()
    dummy = torch.from_numpy(x_check[:2])
    with warnings.catch_warnings():  # the TorchScript exporter is deprecated, but the dynamo one folds BN
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (dummy,), str(path), dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
                          training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False)
    m = onnx.load(str(path))
    n_bn = sum(n.op_type == "BatchNormalization" for n in m.graph.node)
    if n_bn == 0:
        raise SystemExit("export folded BatchNormalization away; the sample must keep BN nodes")
    m.producer_name, m.producer_version = "edgeinfer tools/train_digits.py", "1"
    m.doc_string = "MobileNet-style digits classifier trained on sklearn load_digits (32x32 gray)"
    for key, value in (("edgeinfer.preprocess", json.dumps(PREPROCESS.to_dict())),
                       ("edgeinfer.labels", json.dumps(LABELS)),
                       ("edgeinfer.task", "classify")):
        m.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(m, full_check=True)
    onnx.save(m, str(path))
    with torch.no_grad():
        ref = model(torch.from_numpy(x_check)).numpy()
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    got = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"]).run(None, {"input": x_check})[0]
    err = float(np.abs(got - ref).max())
    log(f"exported {path} ({path.stat().st_size} bytes, {n_bn} BatchNormalization nodes); "
        f"max |ORT - torch| = {err:.2e}")
    if err > 1e-4:
        raise SystemExit(f"ONNX Runtime disagrees with torch: max abs error {err:.2e} > 1e-4")


def ort_accuracy(onnx_path: Path, heldout_dir: Path) -> tuple[float, int]:
    """Top-1 of the exported model on heldout/<label>/*.png read through the runtime preprocessing."""
    import onnxruntime as ort

    paths = sorted(heldout_dir.glob("*/*.png"))
    x = load_tensor(paths)
    y = np.array([LABELS.index(p.parent.name) for p in paths])
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    logits = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    return float((logits.argmax(1) == y).mean()), len(y)


def write_readme(out: Path, acc: float, n: int, n_train: int, epochs: int, n_params: int, predictions: dict) -> None:
    pre = json.dumps(PREPROCESS.to_dict())
    sample_lines = "\n".join(f"| `images/{k}` | {v[0]} | {v[1]} |" for k, v in predictions.items())
    text = f"""# digits sample model

Made by `tools/train_digits.py` (regenerate with
`.venv/bin/python tools/train_digits.py`; needs torch==2.13.0, dev only; deterministic).

- **Data**: scikit-learn `load_digits` (1797 real, labelled 8x8 handwritten digits).
  Each digit (0..16) is scaled to 0..255 and upscaled to a 32x32 grayscale PNG with PIL bicubic.
  Stratified split, 20% held out (`random_state=0`): {n_train} training / {n} held-out images.
- **Preprocessing** (the runtime's own `edgeinfer.preprocess`, used for training too):
  `{pre}`
- **Model** (`digits.onnx`, opset 17): stem 3x3 conv (16) + {len(BLOCKS)} depthwise-separable
  blocks {BLOCKS} (out channels, stride), each conv followed by BatchNormalization + ReLU6
  (exported as Clip 0..6), global average pool, Linear 128 -> 10. {n_params} parameters.
  BatchNormalization nodes are kept in the graph on purpose (the converter folds them).
  Input `input` float32 [N,1,32,32]; output `logits` [N,10] (no softmax).
- **Training**: AdamW + one-cycle LR, {epochs} epochs, batch 64, random shifts of up to 2 pixels;
  seeded, `torch.use_deterministic_algorithms(True)`, 1 thread.
- **Held-out top-1 accuracy (ONNX Runtime, fp32): {acc * 100:.2f}%** ({round(acc * n)}/{n}).

ONNX `metadata_props`:

| key | value |
|---|---|
| `edgeinfer.preprocess` | the preprocessing config above (JSON) |
| `edgeinfer.labels` | `{json.dumps(LABELS)}` (JSON list, index = class id) |
| `edgeinfer.task` | `classify` |

Files:

- `digits.onnx`, `labels.txt` (one label per line, line i = class i)
- `heldout/<label>/digits_<index>.png`: the whole held-out split (image-folder layout, real labels;
  `<index>` is the row in `load_digits`)
- `calib/digits_<index>.png`: {CALIB_PER_CLASS * 10} images from the TRAINING split ({CALIB_PER_CLASS} per class), for calibration
- `images/`: sample images from the held-out split named by their true label; some are larger than
  32x32 (bicubic upscales of the 8x8 digit straight to that size) so resizing is exercised:

| image | size | fp32 prediction |
|---|---|---|
{sample_lines}
"""
    (out / "README.md").write_text(text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "samples" / "digits")
    ap.add_argument("--epochs", type=int, default=40)
    args = ap.parse_args(argv)

    import torch

    torch.manual_seed(SEED)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)

    out: Path = args.out
    for sub in ("heldout", "calib", "images"):
        shutil.rmtree(out / sub, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        log("writing PNGs ...")
        train_paths, y_train, heldout_paths, y_heldout, _ = write_dataset(out, Path(tmp))
        log(f"{len(train_paths)} training / {len(heldout_paths)} held-out images; reading them back ...")
        x_train = load_tensor(train_paths)
    x_heldout = load_tensor(heldout_paths)

    model = build_model()
    n_params = sum(p.numel() for p in model.parameters())
    log(f"model: {n_params} parameters")
    train(model, x_train, y_train.astype(np.int64), args.epochs)
    model.eval()
    with torch.no_grad():
        torch_acc = float((model(torch.from_numpy(x_heldout)).argmax(1).numpy() == y_heldout).mean())
    log(f"torch held-out top-1: {torch_acc:.4f}")

    onnx_path = out / "digits.onnx"
    export_onnx(model, onnx_path, x_heldout[:64])
    (out / "labels.txt").write_text("\n".join(LABELS) + "\n")
    acc, n = ort_accuracy(onnx_path, out / "heldout")

    import onnxruntime as ort
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    predictions = {}
    for p in sorted((out / "images").glob("*.png")):
        x = load_tensor([p])
        predictions[p.name] = (f"{Image.open(p).size[0]}x{Image.open(p).size[1]}",
                               LABELS[int(sess.run(None, {"input": x})[0].argmax())])
    write_readme(out, acc, n, len(train_paths), args.epochs, n_params, predictions)
    print(f"held-out top-1 accuracy (ONNX Runtime, {n} images): {acc * 100:.2f}%")
    if acc < 0.95:
        print("accuracy below the 95% target", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
