"""Runs on the device side (an emulated arm64 Python, or the host for the reference): runtime only.

    python device_worker.py outputs JOB.json     every Linux artifact of each bundle -> raw outputs + predictions
    python device_worker.py models DIR            every DIR/*.tflite with its .in.npy -> .out.npz (op coverage)
    python device_worker.py footprint BUNDLE IMG ARTIFACT  one `edgeinfer run`-like pass: import / load / predict seconds, peak RSS

Imports only edgeinfer (the installed wheel), numpy and the engine; writes JSON/npz next to its inputs.
A failing artifact is recorded with its one-line error and the rest still run.
"""
from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

T_START = time.perf_counter()
LINUX_FORMATS = ("onnx", "tflite")


def peak_rss_mb() -> float:
    """Peak resident set of this process in MB (under QEMU: the emulator's own memory included)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def outputs(job_file: str) -> int:
    import numpy as np

    from edgeinfer.errors import EdgeInferError
    from edgeinfer.predictor import Predictor
    job = json.loads(Path(job_file).read_text())
    out_dir = Path(job["out"])
    out_dir.mkdir(parents=True, exist_ok=True)
    report_file = out_dir / "report.json"
    report = json.loads(report_file.read_text()) if report_file.exists() else {}   # resumed after a crash
    for b in job["bundles"]:
        manifest = json.loads((Path(b["dir"]) / "manifest.json").read_text())
        for art in manifest["artifacts"]:
            if art["format"] not in LINUX_FORMATS or art["format"] not in job.get("formats", LINUX_FORMATS):
                continue
            key = f"{Path(b['dir']).name}/{art['file']}"
            if key in report:
                continue
            print(f"start {key}", file=sys.stderr, flush=True)   # names the artifact if the engine crashes
            try:
                t = time.perf_counter()
                pred = Predictor(b["dir"], artifact=art["file"], threads=job.get("threads", 1))
                load_s = time.perf_counter() - t
                batch, transforms = pred.preprocess(b["images"])
                raw = pred.run(batch)
                results = pred.postprocess(raw, transforms, top_k=3) if pred.task == "classify" else pred.postprocess(raw, transforms)
            except (EdgeInferError, RuntimeError, ValueError) as exc:
                report[key] = {"ok": False, "error": str(exc).splitlines()[0][:300]}
                report_file.write_text(json.dumps(report, indent=1))
                continue
            np.savez(out_dir / (key.replace("/", "__") + ".npz"), *raw)
            report[key] = {"ok": True, "engine": pred.backend.describe().get("engine"), "load_s": load_s,
                           "results": [r.to_dict() for r in results]}
            report_file.write_text(json.dumps(report, indent=1))
    report_file.write_text(json.dumps(report, indent=1))
    return 0


def models(workdir: str) -> int:
    import numpy as np

    from edgeinfer.backends.base import BackendOptions
    from edgeinfer.backends.litert_backend import LiteRTBackend
    work = Path(workdir)
    results = json.loads((work / "results.json").read_text()) if (work / "results.json").exists() else {}
    skip = set(results)                     # resumed after a crash: the driver recorded it
    for model in sorted(work.glob("*.tflite")):
        if model.stem in skip:
            continue
        print(f"start {model.stem}", file=sys.stderr, flush=True)
        x = np.load(model.with_suffix(".in.npy"))
        try:
            be = LiteRTBackend(model, BackendOptions(threads=1))
            np.savez(model.with_suffix(".out.npz"), *be.run(x))
            results[model.stem] = {"ok": True, "engine": be.engine}
        except Exception as exc:  # noqa: BLE001 (report every failure, keep going)
            results[model.stem] = {"ok": False, "error": str(exc).splitlines()[0][:300]}
        (work / "results.json").write_text(json.dumps(results))   # kept current: a crash loses only one
    return 0


def footprint(bundle: str, image: str, artifact: str) -> int:
    t0 = time.perf_counter()
    import numpy  # noqa: F401
    t_numpy = time.perf_counter()
    from edgeinfer.backends import backend_class
    from edgeinfer.predictor import Predictor
    t_edgeinfer = time.perf_counter()
    backend_class("tflite" if artifact.endswith(".tflite") else "onnx")      # imports the engine
    t_engine = time.perf_counter()
    pred = Predictor(bundle, artifact=artifact, threads=1)
    t_load = time.perf_counter()
    res = pred.predict([image])
    t_pred = time.perf_counter()
    res = pred.predict([image])                # a second, warm prediction
    t_warm = time.perf_counter()
    print(json.dumps({
        "artifact": pred.artifact["file"], "engine": pred.backend.describe().get("engine"),
        "interpreter_s": t0 - T_START, "numpy_import_s": t_numpy - t0, "edgeinfer_import_s": t_edgeinfer - t_numpy,
        "engine_import_s": t_engine - t_edgeinfer, "load_s": t_load - t_engine, "first_predict_s": t_pred - t_load, "warm_predict_s": t_warm - t_pred,
        "peak_rss_mb": peak_rss_mb(), "top": res[0].to_dict(),
    }))
    return 0


def main(argv: list[str]) -> int:
    modes = {"outputs": outputs, "models": models, "footprint": footprint}
    if not argv or argv[0] not in modes:
        print(__doc__, file=sys.stderr)
        return 2
    return modes[argv[0]](*argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
