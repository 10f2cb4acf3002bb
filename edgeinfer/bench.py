"""``edgeinfer bench``: load time, latency percentiles per stage, peak RSS and the slowest ops, per artifact.

What a user runs on the real device (runtime wing: numpy, pillow and the bundle's engine only).
``bench_bundle(bundle, ...)`` returns one report dict per artifact:
- ``load_s``: opening the artifact (engine session / interpreter + allocation);
- ``preprocess_ms`` / ``engine_ms`` / ``postprocess_ms`` / ``total_ms``: p50, p90, p99 and mean over
  ``runs`` timed runs after ``warmup`` untimed ones, one image per run (batch 1);
- ``peak_rss_mb``: the process's peak resident set after this artifact ran (cumulative over the
  artifacts benchmarked before it in the same process; run one ``--artifact`` for an isolated figure);
- ``ops``: the slowest operators from ONNX Runtime's profiler (a separate profiling session, so the
  timings above are not slowed by it); TFLite's Python interpreter offers no per-op profiler: ``None``.
"""
from __future__ import annotations

import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .errors import EdgeInferError
from .progress import Progress

PERCENTILES = (50, 90, 99)


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MB (ru_maxrss is KB on Linux, bytes on macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


def stats_ms(seconds: list[float]) -> dict[str, float]:
    """p50/p90/p99/mean in milliseconds of a list of durations in seconds."""
    ms = np.asarray(seconds, np.float64) * 1e3
    out = {f"p{p}": float(np.percentile(ms, p)) for p in PERCENTILES}
    out["mean"] = float(ms.mean())
    return out


def synthetic_image(size=(640, 480), seed: int = 0) -> Image.Image:
    """A deterministic camera-sized RGB image (smooth gradients + noise) when no --image is given."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) * 127 / (w + h)], axis=-1)
    img = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(img, "RGB")


def ort_slowest_ops(path: Path, batch: np.ndarray, threads: int | None, runs: int, top: int = 10) -> list[dict]:
    """Per-node mean time from ONNX Runtime's profiling JSON, slowest first (a separate session)."""
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.enable_profiling = True
    if threads:
        so.intra_op_num_threads = int(threads)
    with tempfile.TemporaryDirectory() as tmp:
        so.profile_file_prefix = str(Path(tmp) / "ort")
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        feed = {sess.get_inputs()[0].name: np.ascontiguousarray(batch, np.float32)}
        for _ in range(max(runs, 1)):
            sess.run(None, feed)
        events = json.loads(Path(sess.end_profiling()).read_text())
    per_node: dict[str, dict[str, Any]] = {}
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
            continue
        name = e["name"][: -len("_kernel_time")]
        d = per_node.setdefault(name, {"node": name, "op": e.get("args", {}).get("op_name", "?"), "us": []})
        d["us"].append(float(e.get("dur", 0)))
    med = {k: float(np.median(d["us"])) for k, d in per_node.items()}   # median: robust to a preempted run
    total = sum(med.values()) or 1.0
    rows = sorted(per_node.values(), key=lambda d: -med[d["node"]])[:top]
    return [{"node": d["node"], "op": d["op"], "median_ms": med[d["node"]] / 1e3, "share": med[d["node"]] / total}
            for d in rows]


def bench_artifact(bundle: Path, artifact: str, image: Image.Image, threads: int | None, runs: int, warmup: int,
                   profile_ops: bool = True, progress: bool = True) -> dict[str, Any]:
    """Benchmark one artifact of ``bundle`` (see the module docstring for the fields)."""
    from .predictor import Predictor
    t = time.perf_counter()
    pred = Predictor(bundle, artifact=artifact, threads=threads)
    load_s = time.perf_counter() - t
    pre, eng, post = [], [], []
    with Progress(f"bench {artifact}"[:22], warmup + runs, enabled=progress) as bar:
        for i in range(warmup + runs):
            t0 = time.perf_counter()
            batch, transforms = pred.preprocess([image])
            x = np.ascontiguousarray(_layout(pred, batch))
            t1 = time.perf_counter()
            outs = pred.backend.run(x)
            t2 = time.perf_counter()
            pred.postprocess(outs, transforms)
            t3 = time.perf_counter()
            if i >= warmup:
                pre.append(t1 - t0)
                eng.append(t2 - t1)
                post.append(t3 - t2)
            bar.update()
    totals = [a + b + c for a, b, c in zip(pre, eng, post)]
    report = {"artifact": artifact, "format": pred.artifact["format"], "precision": pred.artifact.get("precision"),
              "engine": pred.backend.describe().get("engine", pred.artifact["format"]), "threads": threads,
              "runs": runs, "warmup": warmup, "load_s": load_s, "preprocess_ms": stats_ms(pre),
              "engine_ms": stats_ms(eng), "postprocess_ms": stats_ms(post), "total_ms": stats_ms(totals),
              "peak_rss_mb": peak_rss_mb(), "size_mb": (Path(bundle) / artifact).stat().st_size / 1e6, "ops": None}
    if profile_ops and pred.artifact["format"] == "onnx":
        report["ops"] = ort_slowest_ops(pred.backend.path, x, threads, min(runs, 20))
    return report


def _layout(pred, batch: np.ndarray) -> np.ndarray:
    from .preprocess import to_layout
    return to_layout(batch, pred.input_layout)


def runnable_artifacts(bundle: Path, manifest: dict) -> list[str]:
    """Artifacts whose engine imports here (Core ML off Apple platforms is skipped)."""
    from .backends import backend_class
    names = []
    for a in manifest["artifacts"]:
        try:
            backend_class(a["format"])
        except EdgeInferError:
            continue
        if a["format"] == "coreml" and sys.platform != "darwin":
            continue
        names.append(a["file"])
    return names


def bench_bundle(bundle: str | Path, artifact: str | None = None, threads: int | None = None, runs: int = 50,
                 warmup: int = 5, image: str | Path | None = None, profile_ops: bool = True,
                 progress: bool = True) -> dict[str, Any]:
    """{"bundle", "host", "image", "artifacts": [report per artifact], "skipped": [...]}."""
    from .bundle import read_manifest
    from .preprocess import load_image
    bundle = Path(bundle)
    manifest = read_manifest(bundle)
    if runs < 1 or warmup < 0:
        raise EdgeInferError("--runs must be >= 1 and --warmup >= 0")
    names = runnable_artifacts(bundle, manifest)
    if artifact is not None:
        if artifact not in {a["file"] for a in manifest["artifacts"]}:
            raise EdgeInferError(f"artifact {artifact!r} is not in this bundle; it has: "
                                 + ", ".join(a["file"] for a in manifest["artifacts"]))
        names = [artifact]
    if not names:
        raise EdgeInferError("no artifact of this bundle has its engine installed here; install edgeinfer[onnx] or [tflite]")
    img = load_image(image, (manifest.get("preprocess") or {}).get("color", "rgb")) if image else synthetic_image()
    reports, skipped = [], []
    for name in names:
        try:
            reports.append(bench_artifact(bundle, name, img, threads, runs, warmup, profile_ops, progress))
        except EdgeInferError as exc:
            if artifact is not None:
                raise
            skipped.append({"artifact": name, "reason": str(exc)})
    import platform
    return {"bundle": str(bundle), "host": f"{platform.system()} {platform.machine()} ({os.cpu_count()} cpus)",
            "image": str(image) if image else "synthetic 640x480", "artifacts": reports, "skipped": skipped}


def format_report(rep: dict[str, Any]) -> list[str]:
    """The comparison table across artifacts, then each ONNX artifact's slowest ops."""
    lines = [f"bundle {rep['bundle']} on {rep['host']}; image: {rep['image']}",
             f"{'artifact':<30} {'load s':>7} {'pre p50':>8} {'engine p50':>10} {'p90':>8} {'p99':>8} "
             f"{'post p50':>8} {'total p50':>9} {'peak RSS MB':>11} {'MB':>7}"]
    for a in rep["artifacts"]:
        e = a["engine_ms"]
        lines.append(f"{a['artifact']:<30} {a['load_s']:7.3f} {a['preprocess_ms']['p50']:8.2f} {e['p50']:10.2f} "
                     f"{e['p90']:8.2f} {e['p99']:8.2f} {a['postprocess_ms']['p50']:8.2f} {a['total_ms']['p50']:9.2f} "
                     f"{a['peak_rss_mb']:11.0f} {a['size_mb']:7.3f}")
    lines.append("(milliseconds per image, batch 1; peak RSS is cumulative within this process)")
    for s in rep["skipped"]:
        lines.append(f"skipped {s['artifact']}: {s['reason']}")
    for a in rep["artifacts"]:
        if a["ops"]:
            lines.append(f"slowest ops of {a['artifact']} (ONNX Runtime profiler, median per run, share of the sum):")
            for o in a["ops"]:
                lines.append(f"  {o['op']:<22} {o['median_ms']:8.3f} ms {o['share']:6.1%}  {o['node']}")
    return lines


def plot(rep: dict[str, Any], path: str | Path) -> Path:
    """A horizontal stacked bar chart (preprocess / engine / postprocess p50 per artifact) as PNG, with Pillow."""
    from PIL import ImageDraw, ImageFont
    arts = rep["artifacts"]
    try:
        font = ImageFont.load_default(size=16)
    except TypeError:   # Pillow < 10.1: fixed bitmap font
        font = ImageFont.load_default()
    left, right, top, row = 300, 140, 70, 44
    width = 1100
    height = top + row * len(arts) + 90
    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    d.text((20, 15), f"edgeinfer bench: p50 latency per image ({rep['host']})", fill="black", font=font)
    stacked = [sum(a[f"{k}_ms"]["p50"] for k in ("preprocess", "engine", "postprocess")) for a in arts]
    vmax = max(max(stacked), max(a["total_ms"]["p50"] for a in arts)) or 1.0
    scale = (width - left - right) / vmax
    colors = (("preprocess", "#4e79a7"), ("engine", "#f28e2b"), ("postprocess", "#59a14f"))
    for i, a in enumerate(arts):
        y = top + i * row
        d.text((20, y + 10), a["artifact"][:34], fill="black", font=font)
        x = left
        for key, color in colors:
            w = a[f"{key}_ms"]["p50"] * scale
            d.rectangle([x, y + 6, x + max(w, 1), y + row - 8], fill=color)
            x += w
        d.text((x + 8, y + 10), f"total p50 {a['total_ms']['p50']:.2f} ms", fill="black", font=font)
    y = top + row * len(arts) + 10
    d.line([left, y, width - right, y], fill="black")
    for k in range(6):
        v = vmax * k / 5
        xx = left + v * scale
        d.line([xx, y, xx, y + 6], fill="black")
        d.text((xx - 12, y + 8), f"{v:.1f}", fill="black", font=font)
    x = left
    for key, color in colors:
        d.rectangle([x, height - 30, x + 16, height - 14], fill=color)
        d.text((x + 22, height - 32), key, fill="black", font=font)
        x += 160
    d.text((width - right + 10, y - 8), "ms (p50)", fill="black", font=font)
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    img.save(tmp, format="PNG")
    os.replace(tmp, path)
    return path
