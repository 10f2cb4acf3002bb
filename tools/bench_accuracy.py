"""int8 accuracy on real photos, side by side in one run (issue 12 item 3).

    PYTHONPATH=. python tools/bench_accuracy.py [--data /work/realdata] [--models mobilenet_v2,efficientnet_lite0]
        [--profile generic-x86-64 --profile raspberry-pi-4] [--limit N] [--coreml-limit N] [--work DIR]

Data: the folder ``tools/real_data.py`` builds (pretrained ImageNet classifiers as fp32 ONNX with
edgeinfer metadata, ``calib/`` and ``eval/`` photos with ``labels.tsv``); see its README.md.

For every model:
* fp32: the source ONNX model under onnxruntime on this host;
* ORT ``quant_pre_process`` then ``quantize_static`` (QDQ, MinMax) on the very images edgeinfer calibrates with (``--calib
  calib/`` keeps 80 % for calibration and holds 20 % out for its own verification; the same split
  is used here): per-tensor default (S8S8), per-channel U8S8, per-channel U8S8 ``reduce_range``,
  per-channel S8S8;
and for every ``--profile``: ``edgeinfer convert MODEL --profile P --quant fp32,int8 --formats
onnx,tflite,coreml --calib calib/`` (the CLI, as a user runs it), then each int8 artifact:
* ONNX through ``Predictor`` on this host (ORT's CPU kernels: on x86 without VNNI the u8s8 path
  can saturate);
* ONNX in exact integer arithmetic (``converters.exact_int.run_exact``) when that module exists;
  otherwise the run says the column is not available (numpy evaluator: ``--exact-limit`` photos);
* TFLite through ``Predictor`` (ai-edge-litert's kernels on this host);
* Core ML (converted with the first profile only: its int8 recipe does not depend on the profile)
  through the numpy MIL evaluator ``converters.emitters.coreml.verify.run_mlpackage``
  (slow: ``--coreml-limit`` evaluates it on the first N eval photos only, and the row says so).

Columns: top-1 on ``eval/`` (labels), agreement of the top-1 class with fp32, mean cosine of the
logits with fp32's. Every figure names the arithmetic that produced it. Results also go to
``--json``.
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgeinfer.int8_arith import host_arithmetic  # noqa: E402
from edgeinfer.progress import Progress, track  # noqa: E402

MODELS = ("mobilenet_v2", "efficientnet_lite0")
PROFILES = ("generic-x86-64", "raspberry-pi-4")
BATCH = 16


@dataclass
class Row:
    model: str
    profile: str
    variant: str
    arithmetic: str
    n: int
    top1: float
    agreement: float
    cosine: float
    note: str = ""


# ---------------------------------------------------------------- data

def read_split(folder: Path, limit: int | None = None) -> tuple[list[Path], np.ndarray]:
    tsv = folder / "labels.tsv"
    if not tsv.is_file():
        raise SystemExit(f"bench_accuracy: {tsv} is missing: build the data with tools/real_data.py (see its --help)")
    rows = [ln.split("\t") for ln in tsv.read_text().splitlines() if ln]
    rows = rows[:limit] if limit else rows
    return [folder / f for f, _ in rows], np.array([int(c) for _, c in rows])


def preprocess(paths: list[Path], cfg, label: str) -> np.ndarray:
    from edgeinfer.preprocess import preprocess_image
    return np.stack([preprocess_image(p, cfg, (224, 224))[0] for p in track(paths, label, len(paths))]).astype(np.float32)


def calib_paths(calib_dir: Path) -> list[Path]:
    """The images ``edgeinfer convert --calib calib_dir`` calibrates with (its own hold-out split)."""
    from converters.images import list_images, split_holdout
    from converters.pipeline import ConvertOptions
    fraction = ConvertOptions.__dataclass_fields__["verify_fraction"].default
    return split_holdout(list_images(calib_dir), fraction)[0]


# ---------------------------------------------------------------- engines

def run_batched(fn, x: np.ndarray, label: str) -> np.ndarray:
    outs = []
    with Progress(label, len(x)) as p:
        for i in range(0, len(x), BATCH):
            outs.append(np.asarray(fn(x[i:i + BATCH]), np.float32).reshape(len(x[i:i + BATCH]), -1))
            p.update(len(x[i:i + BATCH]))
    return np.concatenate(outs)


def ort_logits(model_path: Path, x: np.ndarray, label: str) -> np.ndarray:
    import onnx
    from converters.ort_session import cpu_session
    sess = cpu_session(onnx.load(str(model_path)))
    name = sess.get_inputs()[0].name
    return run_batched(lambda b: np.concatenate([sess.run(None, {name: b[i:i + 1]})[0] for i in range(len(b))]), x, label)


class _Reader:
    def __init__(self, name: str, x: np.ndarray):
        self.name, self.x, self.i = name, x, 0

    def get_next(self):
        if self.i >= len(self.x):
            return None
        self.i += 1
        return {self.name: self.x[self.i - 1:self.i]}

    def rewind(self):
        self.i = 0


ORT_VARIANTS = {
    "ORT quantize_static default (per-tensor S8S8)": dict(per_channel=False),
    "ORT per-channel U8S8": dict(per_channel=True, activation_type="QUInt8"),
    "ORT per-channel U8S8 reduce_range": dict(per_channel=True, activation_type="QUInt8", reduce_range=True),
    "ORT per-channel S8S8 (QDQ)": dict(per_channel=True, activation_type="QInt8"),
}


def ort_quantized(model_path: Path, calib: np.ndarray, out: Path, variant: dict, cache: Path) -> Path:
    """quantize_static with ``variant``; the activation ranges are computed once (``cache``) and shared."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    import onnx
    kw = dict(variant)
    if "activation_type" in kw:
        kw["activation_type"] = getattr(QuantType, kw["activation_type"])
    name = onnx.load(str(model_path), load_external_data=False).graph.input[0].name
    quantize_static(str(model_path), str(out), _Reader(name, calib), quant_format=QuantFormat.QDQ,
                    weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                    calibration_cache_path=str(cache), **kw)
    return out


def exact_int_runner():
    """``converters.exact_int.run_exact`` if this checkout has the module, else None.

    (The file check keeps an editable install of another checkout from supplying the module.)
    """
    if not (ROOT / "converters" / "exact_int.py").is_file():
        return None
    try:
        from converters.exact_int import run_exact
    except ImportError:
        return None
    return run_exact


# ---------------------------------------------------------------- metrics

def subset_note(n: int, ref: np.ndarray, labels: np.ndarray) -> str:
    """For a row measured on the first n photos only: say so, with fp32's top-1 on those n."""
    if n >= len(ref):
        return ""
    return f"first {n} eval photos; fp32 on these: {100.0 * float((ref[:n].argmax(1) == labels[:n]).mean()):.2f} %"


def metrics(logits: np.ndarray, ref: np.ndarray, labels: np.ndarray) -> tuple[float, float, float]:
    n = len(logits)
    ref, labels = ref[:n], labels[:n]
    top = logits.argmax(1)
    cos = (logits * ref).sum(1) / (np.linalg.norm(logits, axis=1) * np.linalg.norm(ref, axis=1) + 1e-12)
    return 100.0 * float((top == labels).mean()), 100.0 * float((top == ref.argmax(1)).mean()), float(cos.mean())


# ---------------------------------------------------------------- one model

def convert(model_path: Path, profile: str, calib_dir: Path, work: Path, formats: str) -> Path:
    out = work / f"{model_path.stem}-{profile}"
    cmd = [sys.executable, "-m", "edgeinfer.cli", "convert", str(model_path), "--profile", profile, "--quant", "fp32,int8",
           "--formats", formats, "--calib", str(calib_dir), "-o", str(out), "--force"]
    print(f"$ edgeinfer convert {model_path.name} --profile {profile} --quant fp32,int8 --formats {formats} "
          f"--calib {calib_dir}", file=sys.stderr)
    r = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    if r.returncode != 0:
        raise SystemExit(f"bench_accuracy: edgeinfer convert failed for {model_path.name} / {profile}:\n{r.stdout}")
    bundles = [p for p in out.iterdir() if (p / "manifest.json").is_file()]
    if len(bundles) != 1:
        raise SystemExit(f"bench_accuracy: expected one bundle under {out}, found {len(bundles)}")
    return bundles[0]


def bench_bundle(model: str, profile: str, bundle: Path, x: np.ndarray, labels: np.ndarray, ref: np.ndarray,
                 coreml_limit: int | None, exact_limit: int | None, host: str, seen: dict[str, list[Row]]) -> list[Row]:
    """Rows for every int8 artifact; an artifact byte-identical to one of another profile is not re-run."""
    import onnx
    from edgeinfer.bundle import read_manifest
    from edgeinfer.predictor import Predictor

    rows = []
    manifest = read_manifest(bundle)
    for art in manifest["artifacts"]:
        if art.get("precision") != "int8":
            continue
        fmt, path = art["format"], bundle / art["file"]
        tag = f"edgeinfer {fmt} int8"
        if art.get("sha256") in seen:
            rows += [Row(**{**r.__dict__, "profile": profile, "note": f"same file as {r.profile}"}) for r in seen[art["sha256"]]]
            continue
        first = len(rows)
        if fmt in ("onnx", "tflite"):
            pred = Predictor(bundle, artifact=art["file"])
            engine = host if fmt == "onnx" else host_arithmetic("litert")
            logits = run_batched(lambda b: pred.run(b)[0], x, f"{model[:12]} {fmt} int8")
            rows.append(Row(model, profile, tag, engine, len(x), *metrics(logits, ref, labels), "; ".join(art.get("notes", []))))
        if fmt == "onnx":
            run_exact = exact_int_runner()
            if run_exact is None:
                print("bench_accuracy: ONNX int8 exact-int column not available (no converters.exact_int module)",
                      file=sys.stderr)
                rows.append(Row(model, profile, "edgeinfer onnx int8, exact-int", "exact-int", 0,
                                float("nan"), float("nan"), float("nan"), "not available: converters.exact_int absent"))
            else:
                proto = onnx.load(str(path))
                xe = x[:exact_limit] if exact_limit else x
                try:
                    with Progress(f"{model[:12]} exact-int", len(xe)) as prog:
                        logits = run_exact(proto, xe, prog)[0].reshape(len(xe), -1)
                except Exception as exc:  # a failure is a result: say it, do not fake a figure
                    print(f"bench_accuracy: exact-int evaluation failed: {type(exc).__name__}: {exc}", file=sys.stderr)
                    rows.append(Row(model, profile, "edgeinfer onnx int8, exact-int", "exact-int", 0, float("nan"),
                                    float("nan"), float("nan"), f"failed: {type(exc).__name__}: {str(exc)[:80]}"))
                else:
                    rows.append(Row(model, profile, "edgeinfer onnx int8, exact-int", "exact-int", len(xe),
                                    *metrics(logits, ref, labels), subset_note(len(xe), ref, labels)))
        if fmt == "coreml":
            from converters.emitters.coreml.verify import run_mlpackage
            xc = x[:coreml_limit] if coreml_limit else x
            logits = run_batched(lambda b: run_mlpackage(path, b)[0], xc, f"{model[:12]} coreml int8")
            note = subset_note(len(xc), ref, labels)
            notes = "; ".join(n for n in [note, *art.get("notes", [])] if n)
            rows.append(Row(model, profile, tag, "mil-eval-numpy", len(xc), *metrics(logits, ref, labels), notes))
        if art.get("sha256"):
            seen[art["sha256"]] = rows[first:]
    return rows


def bench_model(model: str, data: Path, profiles: list[str], limit: int | None, coreml_limit: int | None,
                exact_limit: int | None, work: Path, host: str) -> list[Row]:
    import onnx
    from converters.model_info import metadata
    from edgeinfer.preprocess import PreprocessConfig

    src = data / f"{model}.onnx"
    if not src.is_file():
        raise SystemExit(f"bench_accuracy: {src} is missing: build it with tools/real_data.py")
    cfg = PreprocessConfig.from_dict(metadata(onnx.load(str(src)))["preprocess"])
    eval_paths, labels = read_split(data / "eval", limit)
    read_split(data / "calib")  # the labels file must be there too
    x = preprocess(eval_paths, cfg, f"{model[:12]} eval photos")
    cal = preprocess(calib_paths(data / "calib"), cfg, f"{model[:12]} calib photos")
    ref = ort_logits(src, x, f"{model[:12]} fp32")
    rows = [Row(model, "-", "fp32 (source ONNX)", "host-ort-fp32", len(x), *metrics(ref, ref, labels))]
    from onnxruntime.quantization.shape_inference import quant_pre_process
    pre = work / f"{model}-ort-pre.onnx"
    quant_pre_process(str(src), str(pre))  # ORT's recommended step before quantize_static
    for variant, kw in ORT_VARIANTS.items():
        q = ort_quantized(pre, cal, work / f"{model}-{len(rows)}.onnx", kw, work / f"{model}-ort-ranges.json")
        logits = ort_logits(q, x, f"{model[:12]} {variant.split(' (')[0][:24]}")
        rows.append(Row(model, "-", variant, host, len(x), *metrics(logits, ref, labels)))
    seen: dict[str, list[Row]] = {}
    for i, profile in enumerate(profiles):
        # Core ML int8 (weights-only, no profile-specific recipe) is emitted once, with the first profile
        bundle = convert(src, profile, data / "calib", work, "onnx,tflite,coreml" if i == 0 else "onnx,tflite")
        rows += bench_bundle(model, profile, bundle, x, labels, ref, coreml_limit, exact_limit, host, seen)
    return rows


def table(rows: list[Row]) -> str:
    out = ["| model | profile | variant | arithmetic | photos | top-1 | agreement with fp32 | mean cosine |",
           "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r.n == 0:
            out.append(f"| {r.model} | {r.profile} | {r.variant} | {r.arithmetic} | - | n/a | n/a | n/a ({r.note}) |")
            continue
        note = f" ({r.note})" if r.note else ""
        out.append(f"| {r.model} | {r.profile} | {r.variant} | {r.arithmetic} | {r.n}{note} | {r.top1:.2f} % | "
                   f"{r.agreement:.1f} % | {r.cosine:.4f} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=Path("/work/realdata"), help="folder built by tools/real_data.py")
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated model names (files DATA/NAME.onnx)")
    ap.add_argument("--profile", dest="profiles", action="append", choices=PROFILES,
                    help="device profile (repeatable; default: both)")
    ap.add_argument("--limit", type=int, help="use only the first N eval photos")
    ap.add_argument("--coreml-limit", type=int, default=100, help="eval photos for the slow Core ML evaluator (0: all)")
    ap.add_argument("--exact-limit", type=int, default=200, help="eval photos for the exact-int evaluator (0: all)")
    ap.add_argument("--work", type=Path, help="keep bundles and quantized models here (default: a temp folder)")
    ap.add_argument("--json", type=Path, help="also write the rows as JSON")
    a = ap.parse_args(argv)
    profiles = a.profiles or list(PROFILES)
    host = host_arithmetic("ort")
    work_ctx = tempfile.TemporaryDirectory(prefix="bench-accuracy-") if a.work is None else None
    work = Path(work_ctx.name) if work_ctx else a.work
    work.mkdir(parents=True, exist_ok=True)
    rows: list[Row] = []
    try:
        for model in [m.strip() for m in a.models.split(",") if m.strip()]:
            new = bench_model(model, a.data, profiles, a.limit, a.coreml_limit or None, a.exact_limit or None, work, host)
            rows += new
            print(f"\n{table(new)}\n", flush=True)  # each model's rows as soon as they are measured
            if a.json:
                a.json.write_text(json.dumps([r.__dict__ for r in rows], indent=1))
    finally:
        if work_ctx:
            work_ctx.cleanup()
    print(f"\nhost: {platform.machine()}, int8 kernels {host}; data: {a.data} (see its README.md)\n")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
