"""`make device-test`: the runtime on an emulated arm64 (QEMU user mode) compared with this x86 host.

    python tools/device_test.py [--cpus cortex-a72,cortex-a76] [--json FIGURES.json] [--no-pytest]

1. Builds the project's wheel and installs it for aarch64 / CPython 3.11 with only the runtime
   extras, each in its own folder: ``edgeinfer[tflite]`` (ai-edge-litert), ``edgeinfer[onnx]``
   (onnxruntime), and ``edgeinfer`` + ``tflite-runtime==2.14.0`` + ``numpy<2`` (what Raspberry Pi OS
   bookworm users install). Fails if any converter dependency arrives (onnx, coremltools, sympy,
   torch, ...); prints each install's size.
2. Converts the samples (digits classifier, shapes detector) for raspberry-pi-4 on this host:
   TFLite and ONNX, fp32 and int8.
3. Runs every artifact on this host (reference) and, per emulated core (Cortex-A72 = Pi 4,
   Cortex-A76 = Pi 5 / phone big cores), in each install; checks TFLite int8 bit-exact, float
   within 1e-4 (relative to the output's magnitude when above 1), same top-1 / detections; ONNX
   int8 agreement is reported (ORT's int8 kernels differ per ISA by design). tflite-runtime 2.14 is
   compared with the same 2.14 on x86 (``.venv-tflite214``, made by ``make test``; bit-exact int8), or
   with ai-edge-litert within 4 int8 output steps when that venv is missing.
4. tflite-runtime 2.14 under emulation: every op model x precision the emitter writes
   (``tools/check_tflite_runtime214.py``'s set) loads and agrees with ai-edge-litert on x86
   (on ``--ops-cpus``, Cortex-A72 by default).
   ``edgeinfer convert --verify-on emulated`` for raspberry-pi-5 records Cortex-A76 figures.
5. The runtime's own tests that make sense on a device (preprocessing, decoders, NMS, metrics)
   under pytest on the emulated Cortex-A72.
6. Device figures emulation measures honestly: install sizes, import-time share, peak RSS.
   Emulated timings are 40-500x slower than a device and uneven: never reported as device speed.

Exit 0 when everything agrees, 1 on a mismatch or crash, 0 with one ``SKIP`` line when this
machine cannot emulate (no qemu-user-static / mmdebstrap, no root, no network), unless
``EDGEINFER_DEVICE_TEST=require``. Caches under ``~/.cache/edgeinfer-device``.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tools")]

from converters import arm_userland as arm  # noqa: E402
from edgeinfer.errors import EdgeInferError  # noqa: E402

CONVERTER_ONLY = {"onnx", "coremltools", "sympy", "torch", "onnx-ir", "tensorflow", "scikit-learn", "scipy",
                  "onnxscript", "opencv-python-headless"}
DEVICE_TESTS = ["tests/test_preprocess.py", "tests/test_detection_decoders.py", "tests/test_detection_postprocess.py",
                "tests/test_detection_metrics.py", "tests/test_detection_nms.py"]
# the hypothesis-driven NMS reference comparisons take ~45 s natively (tens of minutes emulated): left to x86
DEVICE_TESTS_SKIP = "not matches_reference and not select_pipeline"
TEST_TOOLS = ["pytest>=7", "hypothesis>=6"]
FLOAT_TOL = 1e-4
X86_214 = ROOT / ".venv-tflite214" / "bin" / "python"
T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[device-test {time.perf_counter() - T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


# ---------- installs ----------
def build_wheel(dest: Path) -> Path:
    """The project's wheel: with this venv's setuptools when it can build one (fast), else isolated."""
    cmd = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(dest), str(ROOT)]
    r = subprocess.run(cmd[:5] + ["--no-build-isolation"] + cmd[5:], capture_output=True, text=True)
    if r.returncode != 0:       # a fresh venv has setuptools but not `wheel`
        r = subprocess.run(cmd, capture_output=True, text=True)
    wheels = list(dest.glob("edgeinfer-*.whl"))
    if r.returncode != 0 or not wheels:
        raise SystemExit(f"error: building the edgeinfer wheel failed: {r.stderr.strip()[-400:]}")
    return wheels[0]


def wheel_requirements(wheel: Path, extra: str | None) -> list[str]:
    """The wheel's own Requires-Dist for ``extra`` on aarch64 CPython 3.11 Linux (what pip resolves)."""
    import zipfile
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        return arm.runtime_requirements(z.read(meta).decode().splitlines(), extra)


def installs(wheel: Path, run_dir: Path) -> dict[str, dict]:
    """name -> {paths (PYTHONPATH order), engine, distributions, size_mb, biggest}."""
    overlay = run_dir / "edgeinfer-wheel"
    arm.pip_target(overlay, [str(wheel)], no_deps=True)
    specs = {
        "tflite": wheel_requirements(wheel, "tflite"),
        "onnx": wheel_requirements(wheel, "onnx"),
        "tflite214": [r for r in wheel_requirements(wheel, None) if not r.startswith("numpy")]
        + ["numpy<2", "tflite-runtime==2.14.0"],
    }
    out = {}
    for name, reqs in specs.items():
        deps = arm.target_env(name, reqs, log)
        dists = arm.installed_distributions(deps)
        bad = sorted(CONVERTER_ONLY & set(dists))
        if bad:
            raise SystemExit(f"error: the runtime-only install {name} ({' '.join(reqs)}) pulled converter "
                             f"dependencies: {', '.join(bad)}")
        sizes = {}
        for top in deps.iterdir():
            if top.name.startswith(".") or top.name.endswith(".dist-info") or top.name in ("bin", "__pycache__"):
                continue
            sizes[top.name] = arm.folder_size(top) if top.is_dir() else top.stat().st_size
        total = arm.folder_size(deps) + arm.folder_size(overlay)
        out[name] = {"paths": [overlay, deps], "requirements": reqs, "distributions": dists,
                     "size_mb": total / 1e6, "wheel_mb": arm.folder_size(overlay) / 1e6,
                     "biggest": {k: round(v / 1e6, 1) for k, v in sorted(sizes.items(), key=lambda kv: -kv[1])[:4]}}
        log(f"install {name}: {total / 1e6:.0f} MB, {len(dists)} distributions: {', '.join(sorted(dists))}")
    return out


# ---------- sample bundles ----------
def convert_samples(out: Path) -> list[dict]:
    """Sample bundles for raspberry-pi-4 (TFLite + ONNX, fp32 + int8), converted on this host."""
    samples = ROOT / "samples"
    jobs = [
        (samples / "digits" / "digits.onnx", ["--calib", samples / "digits" / "calib"],
         sorted((samples / "digits" / "images").glob("*.png"))[:8]),
        # the int8 keep-float search is accuracy work, not what this test checks: skipped for time
        (samples / "detector" / "shapes_det.onnx", ["--calib", samples / "detector" / "calib", "--verify-data",
                                                   samples / "detector" / "val", "--no-auto-keep-float"],
         sorted((samples / "detector" / "images").glob("*.jpg"))[:3]),
    ]
    bundles = []
    for model, extra, images in jobs:
        cmd = [sys.executable, "-m", "edgeinfer.cli", "convert", model, "--profile", "raspberry-pi-4",
               "--formats", "tflite,onnx", "--quant", "int8,fp32", "-o", out, "--quiet", *extra]
        r = subprocess.run(list(map(str, cmd)), capture_output=True, text=True, cwd=ROOT,
                           env=dict(os.environ, PYTHONPATH=str(ROOT)))
        if r.returncode != 0:
            raise SystemExit(f"error: converting {model.name} failed: {r.stderr.strip()[-500:]}")
        bundles.append({"dir": str(out / f"{model.stem}-raspberry-pi-4"), "images": [str(i) for i in images]})
        log(f"converted {model.name}")
    return bundles


def run_resumable(cpu: str | None, paths: list, args: list, state_file: Path, describe=lambda key: "",
                  python: str = sys.executable) -> None:
    """Run a device_worker mode until it finishes; an engine crash is recorded against the item it was
    running (``start KEY`` on stderr) and the worker resumes after it, so one crash costs one item."""
    for _ in range(100):
        if cpu is None:
            r = subprocess.run([python, *map(str, args)], capture_output=True, text=True,
                               env=dict(os.environ, PYTHONPATH=str(ROOT)))
        else:
            r = arm.run_python(cpu, paths, args, timeout=1200)
        if r.returncode == 0:
            return
        crash = arm.guest_crash(r) if cpu else None
        started = [ln.split(" ", 1)[1] for ln in r.stderr.splitlines() if ln.startswith("start ")]
        if not crash or not started:
            raise SystemExit(f"error: device_worker {args[1]} failed on {cpu or 'x86'}: {r.stderr.strip()[-600:]}")
        state = json.loads(state_file.read_text()) if state_file.exists() else {}
        state[started[-1]] = {"ok": False, "error": f"the engine crashed in the emulator ({crash}) running "
                                                    f"{started[-1]}{describe(started[-1])}"}
        state_file.write_text(json.dumps(state))
        log(f"{cpu}: {state[started[-1]]['error']}; resuming after it")
    raise SystemExit("error: too many crashes")


def _tflite_ops(bundles: list[dict]):
    def describe(key: str) -> str:
        bdir = next((b["dir"] for b in bundles if Path(b["dir"]).name == key.split("/")[0]), None)
        if bdir is None:
            return ""
        art = next(a for a in json.loads(Path(bdir, "manifest.json").read_text())["artifacts"] if a["file"] == key.split("/")[1])
        ops = art.get("details", {}).get("op_versions")
        return f" (ops: {', '.join(f'{k} v{v}' for k, v in ops.items())})" if ops else ""
    return describe


def run_outputs(bundles: list[dict], out: Path, formats, cpu: str | None, inst: dict | None,
                python: str = sys.executable) -> dict:
    job = out / "job.json"
    out.mkdir(parents=True, exist_ok=True)
    job.write_text(json.dumps({"bundles": bundles, "out": str(out), "formats": list(formats), "threads": 1}))
    run_resumable(cpu, inst["paths"] if inst else [], [ROOT / "tools" / "device_worker.py", "outputs", job],
                  out / "report.json", _tflite_ops(bundles), python)
    return json.loads((out / "report.json").read_text())


def _load(path: Path) -> list[np.ndarray]:
    z = np.load(path)
    return [z[k] for k in z.files]


def _samples_on(bundles, ref_dir, ref, tmp, cpu, env, inst, formats, exact) -> tuple[list, int]:
    d = tmp / f"{cpu}-{env}"
    t = time.perf_counter()
    got = run_outputs(bundles, d, formats, cpu, inst)
    more, f = compare(ref_dir, ref, d, got, tflite_int8_exact=exact)
    log(f"{cpu} [{env}]: {len(more) - f}/{len(more)} artifacts ok ({time.perf_counter() - t:.0f} s emulated)")
    return [(cpu, env, *m) for m in more], f


def compare(ref_dir: Path, ref: dict, got_dir: Path, got: dict, tflite_int8_exact: bool = True) -> tuple[list, int]:
    """Rows (artifact, verdict, detail) and the number of failures."""
    rows, failures = [], 0
    for key, g in sorted(got.items()):
        r = ref.get(key)
        if not g["ok"] or r is None or not r["ok"]:
            rows.append((key, "FAIL", (g.get("error") or "no reference")[:160]))
            failures += 1
            continue
        fname = key.replace("/", "__") + ".npz"
        a, b = _load(ref_dir / fname), _load(got_dir / fname)
        diff = max(float(np.abs(x - y).max()) for x, y in zip(a, b))
        scale = max(1.0, max(float(np.abs(x).max()) for x in a))
        top1 = _top1_agreement(r["results"], g["results"])
        same_pred = top1 == 1.0
        int8, tfl = "int8" in key, key.endswith(".tflite")
        if tfl and int8 and tflite_int8_exact:
            ok, rule = all(np.array_equal(x, y) for x, y in zip(a, b)), "bit-exact"
        elif tfl and int8:   # tflite-runtime 2.14: other int8 kernels on arm64, 4 output steps allowed
            step = max(float(x.max() - x.min()) for x in a) / 255.0
            exact = all(np.array_equal(x, y) for x, y in zip(a, b))
            ok, rule = diff <= 4 * step + 1e-6, f"<= 4 steps ({4 * step:.2g}){', bit-exact' if exact else ''}"
        elif not int8:
            ok, rule = diff <= FLOAT_TOL * scale and same_pred, f"<= {FLOAT_TOL:g} x {scale:.3g}"
        else:
            ok, rule = True, "reported"
        failures += not ok
        rows.append((key, "ok" if ok else "MISMATCH",
                     f"{rule}: max|arm - x86| {diff:.3g}; top-1/detections same {top1:.0%}"))
    return rows, failures


def _same_prediction(x: dict, y: dict) -> bool:
    """Same top-1 class (classifier) or same detections: classes in order, boxes within half a pixel."""
    if "detections" in x:
        dx, dy = x["detections"], y["detections"]
        return len(dx) == len(dy) and all(a["class_id"] == b["class_id"] and
                                          max(abs(p - q) for p, q in zip(a["box"], b["box"])) <= 0.5
                                          for a, b in zip(dx, dy))
    return x["top_k"][0]["class_id"] == y["top_k"][0]["class_id"]


def _top1_agreement(a: list, b: list) -> float:
    same = [_same_prediction(x, y) for x, y in zip(a, b)]
    return sum(same) / max(len(same), 1)


def verify_on_emulated(out: Path) -> tuple[list, int]:
    """`edgeinfer convert --verify-on emulated` for raspberry-pi-5: figures from the emulated Cortex-A76
    are in the manifest, and the TFLite int8 file gives the host's outputs bit for bit."""
    t = time.perf_counter()
    digits = ROOT / "samples" / "digits"
    cmd = [sys.executable, "-m", "edgeinfer.cli", "convert", digits / "digits.onnx", "--profile", "raspberry-pi-5",
           "--formats", "tflite,onnx", "--quant", "int8", "--calib", digits / "calib", "-o", out, "--quiet",
           "--verify-on", "emulated", "--force"]
    r = subprocess.run(list(map(str, cmd)), capture_output=True, text=True, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    if r.returncode != 0:
        return [("convert --verify-on emulated", "FAIL", r.stderr.strip()[-300:], "")], 1
    manifest = json.loads((out / "digits-raspberry-pi-5" / "manifest.json").read_text())
    rows, fails = [], 0
    for a in manifest["artifacts"]:
        v, e = a["verification"], a.get("verification_emulated") or {}
        ok = e.get("arithmetic") == "emulated-cortex-a76" and (a["format"] != "tflite" or e.get("max_abs_diff_vs_host") == 0)
        fails += not ok
        rows.append((a["file"], "ok" if ok else "FAIL",
                     f"top-1 agreement {v['top1_agreement']:.3f}, cos {v['cosine']:.5f}",
                     f"{e.get('arithmetic')}: top-1 agreement {e.get('top1_agreement', float('nan')):.3f}, "
                     f"cos {e.get('cosine', float('nan')):.5f}, max|arm - host| {e.get('max_abs_diff_vs_host', float('nan')):.3g}"))
    log(f"convert --verify-on emulated: {time.perf_counter() - t:.0f} s")
    return rows, fails


# ---------- op coverage in tflite-runtime 2.14 ----------
def op_models_214(cpu: str, inst: dict, src: Path, expected: dict) -> tuple[list, int]:
    """The emitted op models (in ``src``) run in tflite-runtime 2.14 on ``cpu``, compared with x86 LiteRT."""
    from check_tflite_runtime214 import compare_op_models
    work = src.with_name(f"{src.name}-{cpu}")
    shutil.copytree(src, work, dirs_exist_ok=True)
    (work / "results.json").unlink(missing_ok=True)
    t = time.perf_counter()
    run_resumable(cpu, inst["paths"], [ROOT / "tools" / "device_worker.py", "models", work], work / "results.json")
    log(f"op models on {cpu}: {time.perf_counter() - t:.0f} s")
    results = json.loads((work / "results.json").read_text())
    rows, f = compare_op_models(expected, results, work, fp32_tol=FLOAT_TOL)
    bad = [m for m in rows if m[1] != "ok"]
    log(f"tflite-runtime 2.14 on {cpu}: {len(rows) - len(bad)}/{len(rows)} op models x precisions ok"
        + (f"; not ok: {', '.join(m[0] + ' (' + m[1] + ')' for m in bad)}" if bad else ""))
    return [(f"{cpu} {stem}", st, info) for stem, st, info in rows], f


# ---------- device tests and figures ----------
def device_pytest(cpu: str, inst: dict) -> tuple[bool, str]:
    tools = arm.target_env("testtools", TEST_TOOLS, log)
    t = time.perf_counter()
    r = arm.run_python(cpu, [*inst["paths"], tools], ["-m", "pytest", "-q", "-p", "no:cacheprovider", "-x",
                                                       "-k", DEVICE_TESTS_SKIP, *DEVICE_TESTS], timeout=1500, cwd=ROOT)
    log(f"runtime tests on {cpu}: {time.perf_counter() - t:.0f} s")
    tail = (r.stdout.strip().splitlines() or ["(no output)"])[-1]
    return r.returncode == 0, tail if r.returncode == 0 else r.stdout[-1500:] + r.stderr[-500:]


def footprints(bundles: list[dict], insts: dict, cpu: str) -> list[dict]:
    t = time.perf_counter()
    worker = ROOT / "tools" / "device_worker.py"
    rows = []
    idle = arm.run_python(cpu, insts["tflite"]["paths"], ["-c", "import sys; sys.path.insert(0, sys.argv[1]); "
                          "import device_worker as w; print(w.peak_rss_mb())", ROOT / "tools"])
    idle_native = subprocess.run([sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]); "
                                  "import device_worker as w; print(w.peak_rss_mb())", str(ROOT / "tools")],
                                 capture_output=True, text=True)
    base = {"arm": float(idle.stdout.strip() or "nan"), "x86": float(idle_native.stdout.strip() or "nan")}
    for b in bundles:
        for env, art in (("tflite", "int8.tflite"), ("onnx", "int8.onnx"), ("tflite214", "int8.tflite")):
            name = Path(b["dir"]).name.rsplit("-raspberry-pi-4", 1)[0] + "-" + art
            args = [worker, "footprint", b["dir"], b["images"][0], name]
            r = arm.run_python(cpu, insts[env]["paths"], args)
            n = subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True,
                               env=dict(os.environ, PYTHONPATH=str(ROOT)))
            if r.returncode != 0:
                raise SystemExit(f"error: footprint of {name} in {env} on {cpu}: {arm.guest_crash(r) or r.stderr[-400:]}")
            f = json.loads(r.stdout.strip().splitlines()[-1])
            fx = json.loads(n.stdout.strip().splitlines()[-1]) if n.returncode == 0 else {}
            imp = f["numpy_import_s"] + f["edgeinfer_import_s"] + f["engine_import_s"]
            total = imp + f["interpreter_s"] + f["load_s"] + f["first_predict_s"]
            rows.append({"bundle": Path(b["dir"]).name, "install": env, "artifact": name,
                         "size_mb": Path(b["dir"], name).stat().st_size / 1e6,
                         "peak_rss_mb_emulated": f["peak_rss_mb"], "idle_rss_mb_emulated": base["arm"],
                         "peak_rss_mb_x86": fx.get("peak_rss_mb"), "idle_rss_mb_x86": base["x86"],
                         "import_share_emulated": imp / total,
                         "import_share_x86": (fx["numpy_import_s"] + fx["edgeinfer_import_s"] + fx["engine_import_s"])
                         / (fx["numpy_import_s"] + fx["edgeinfer_import_s"] + fx["engine_import_s"] + fx["interpreter_s"]
                            + fx["load_s"] + fx["first_predict_s"]) if fx else None})
    log(f"footprints on {cpu}: {time.perf_counter() - t:.0f} s")
    return rows


def print_table(rows, header) -> None:
    w = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    for row in [header, *rows]:
        print("  ".join(str(x).ljust(n) for x, n in zip(row, w)))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpus", default="cortex-a72,cortex-a76")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    ap.add_argument("--no-pytest", action="store_true", help="skip the runtime tests under emulation")
    ap.add_argument("--no-figures", action="store_true", help="skip install sizes / RSS / import share")
    ap.add_argument("--ops-cpus", default="cortex-a72",
                    help="cores that run the tflite-runtime 2.14 op models (comma-separated)")
    ap.add_argument("--keep", type=Path, help="work in this folder and keep it (bundles, outputs)")
    args = ap.parse_args(argv)
    cpus = [c.strip() for c in args.cpus.split(",") if c.strip()]
    required = os.environ.get("EDGEINFER_DEVICE_TEST") == "require"
    try:
        why = arm.install_tools()
        if why:
            raise arm.EmulationUnavailable(why)
        for cpu in cpus:
            arm.userland(cpu, log)
        return _run(cpus, args)
    except arm.EmulationUnavailable as exc:
        print(f"SKIP device-test: {exc}", file=sys.stderr)
        return 1 if required else 0
    except EdgeInferError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _run(cpus, args) -> int:
    failures = 0
    figures: dict = {"cpus": cpus, "qemu": subprocess.run(["qemu-aarch64-static", "--version"], capture_output=True,
                                                          text=True).stdout.splitlines()[0]}
    with tempfile.TemporaryDirectory(prefix="edgeinfer-device-") as tmp:
        tmp = Path(tmp)
        if args.keep:
            tmp = args.keep
            tmp.mkdir(parents=True, exist_ok=True)
        wheel = build_wheel(tmp / "wheel")
        insts = installs(wheel, tmp)
        figures["installs"] = {k: {x: v[x] for x in ("requirements", "distributions", "size_mb", "biggest")}
                               for k, v in insts.items()}
        bundles = convert_samples(tmp / "bundles")
        ref_dir = tmp / "ref"
        ref = run_outputs(bundles, ref_dir, ("tflite", "onnx"), None, None)
        refs = {"tflite": (ref_dir, ref, True), "onnx": (ref_dir, ref, True), "tflite214": (ref_dir, ref, False)}
        if X86_214.exists():      # the same tflite-runtime 2.14 on x86 (make test's venv); its arm64 int8 kernels
            d214 = tmp / "ref-tflite214"  # differ from x86's by 1-2 output steps, so the 4-step rule still applies
            refs["tflite214"] = (d214, run_outputs(bundles, d214, ("tflite",), None, None, str(X86_214)), False)
        log(f"x86 reference: {len(ref)} artifacts (tflite-runtime 2.14 on x86: {X86_214.exists()})")
        from check_tflite_runtime214 import emit_op_models
        (tmp / "ops").mkdir(exist_ok=True)
        expected, not_emitted = emit_op_models(tmp / "ops")
        tasks = {}
        with ThreadPoolExecutor(max_workers=max(1, min(4, (os.cpu_count() or 2)))) as pool:
            for cpu in cpus:
                for env, formats in (("tflite", ("tflite",)), ("onnx", ("onnx",)), ("tflite214", ("tflite",))):
                    tasks[("samples", cpu, env)] = pool.submit(_samples_on, bundles, *refs[env][:2], tmp, cpu, env,
                                                               insts[env], formats, refs[env][2])
                if cpu in args.ops_cpus.split(","):
                    tasks[("ops", cpu)] = pool.submit(op_models_214, cpu, insts["tflite214"], tmp / "ops", expected)
            tasks[("verify",)] = pool.submit(verify_on_emulated, tmp / "verify")
            if not args.no_pytest:
                tasks[("pytest",)] = pool.submit(device_pytest, cpus[0], insts["tflite"])
            if not args.no_figures:
                tasks[("footprint",)] = pool.submit(footprints, bundles, insts, cpus[0])
        rows, op_rows = [], []
        for key, fut in tasks.items():
            if key[0] == "samples":
                more, f = fut.result()
                rows += more
                failures += f
            elif key[0] == "ops":
                more, f = fut.result()
                op_rows += more
                failures += f
        print("\nSample bundles: emulated arm64 vs this x86 host")
        print_table(rows, ("cpu", "install", "artifact", "verdict", "detail"))
        figures["samples"] = rows
        figures["tflite214_ops"] = {"ok": sum(r[1] == "ok" for r in op_rows), "total": len(op_rows),
                                    "not_ok": [r for r in op_rows if r[1] != "ok"], "not_emitted": len(not_emitted)}
        print(f"\ntflite-runtime 2.14 (numpy<2) on {args.ops_cpus}: {figures['tflite214_ops']['ok']}/{len(op_rows)} "
              f"op models x precisions ok ({len(not_emitted)} model x precision pairs the emitter refuses, e.g. int4 "
              "without weights, are not counted)")
        for r in figures["tflite214_ops"]["not_ok"]:
            print("  ", *r)
        vrows, f = tasks[("verify",)].result()
        failures += f
        figures["verify_on_emulated"] = vrows
        print("\nedgeinfer convert --verify-on emulated (digits, raspberry-pi-5):")
        print_table(vrows, ("artifact", "verdict", "host figures", "emulated figures"))
        if not args.no_pytest:
            ok, tail = tasks[("pytest",)].result()
            failures += not ok
            figures["pytest"] = tail
            print(f"\nruntime tests under emulation ({cpus[0]}, edgeinfer[tflite]): {tail}")
        if not args.no_figures:
            fp = tasks[("footprint",)].result()
            figures["footprint"] = fp
            print(f"\nDevice figures (emulated {cpus[0]}; RSS under QEMU includes the emulator, x86-native beside it)")
            print_table([(r["bundle"], r["install"], r["artifact"], f"{r['size_mb']:.3f}",
                          f"{r['peak_rss_mb_emulated']:.0f} (idle {r['idle_rss_mb_emulated']:.0f})",
                          f"{r['peak_rss_mb_x86']:.0f} (idle {r['idle_rss_mb_x86']:.0f})",
                          f"{r['import_share_emulated']:.0%} / {r['import_share_x86']:.0%}") for r in fp],
                        ("bundle", "install", "artifact", "MB", "peak RSS MB arm64-emu", "peak RSS MB x86",
                         "import share emu / x86"))
            print("\nInstalled size on arm64 (aarch64 wheels, cp311):")
            for k, v in insts.items():
                print(f"  edgeinfer[{k}]: {v['size_mb']:.0f} MB; largest: "
                      + ", ".join(f"{n} {s} MB" for n, s in v["biggest"].items()))
    figures["failures"] = failures
    figures["seconds"] = round(time.perf_counter() - T0, 1)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1, default=str))
    print(f"\ndevice-test: {'FAILED (' + str(failures) + ')' if failures else 'ok'} in {figures['seconds']:.0f} s "
          "(emulated timings are not device speed)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
