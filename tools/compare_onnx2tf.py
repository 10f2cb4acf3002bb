"""edgeinfer's TFLite emitter vs onnx2tf (+ TensorFlow), side by side in one run. Outside CI.

    .venv/bin/python tools/compare_onnx2tf.py [--onnx2tf-venv /tmp/onnx2tf-venv]
        [--slim-venv /tmp/edgeinfer-tflite-venv] [--work /tmp/onnx2tf-compare] [--threads 2]

Two throw-away venvs OUTSIDE the repository, created on first run (pip from the registry) and
reused afterwards (their install time is stored next to them):
  * onnx2tf venv: ``pip install onnx2tf`` (it pins tensorflow, tf-keras, onnx, onnxruntime,
    onnxsim, onnx-graphsurgeon, ai-edge-litert, ... exactly) + sng4onnx/sne4onnx;
  * slim venv: only what edgeinfer's TFLite conversion imports (numpy, pillow, click, onnx,
    onnxruntime, flatbuffers, ai-edge-litert); the edgeinfer conversion runs there with
    PYTHONPATH=<repo>, which also proves that set is enough.
Both conversions run as child processes, so both times are whole-process wall-clock times
(imports included). Models: MobileNetV2 1.0/224 (tools/model_zoo, seeded weights, batch 1,
synthetic inputs) and samples/digits/digits.onnx (real calibration and held-out images).
Both sides get the same calibration arrays for int8. Every .tflite is then run in this venv's
ai-edge-litert on the same inputs (NHWC) and compared with ONNX Runtime fp32 on the source model.

onnx2tf fetches ``calibration_image_sample_data_20x128x128x3_float32.npy`` from github.com for
any model with a 3-channel 4-D input, even for a float32-only conversion. This machine has no
internet, so the script first runs onnx2tf as-is (and records the failure), then puts a file of
that name holding seeded uniform [0, 1) data (NOT the COCO images) in onnx2tf's working
directory, which onnx2tf reads instead of downloading; int8 calibration is always passed
explicitly with ``-cind`` so that file never calibrates anything.

Not part of ``make test`` or CI.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ONNX2TF_PKGS = ["onnx2tf", "sng4onnx", "sne4onnx"]
SLIM_PKGS = ["numpy==2.4.6", "pillow", "click", "onnx==1.23.2", "onnxruntime==1.31.1", "flatbuffers",
             "ai-edge-litert==2.3.0"]
ONNX2TF_SAMPLE = "calibration_image_sample_data_20x128x128x3_float32.npy"
STAMP = "compare_onnx2tf_install.json"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def child_env(threads: int, extra: dict | None = None) -> dict:
    env = dict(os.environ)
    for k in ("OMP_NUM_THREADS", "TF_NUM_INTRAOP_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[k] = str(threads)
    env.update({"TF_NUM_INTEROP_THREADS": "1", "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""})
    env.update(extra or {})
    return env


# ---------------------------------------------------------------- venvs

def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def ensure_venv(venv: Path, packages: list[str]) -> dict:
    """Create ``venv`` with ``packages`` if it does not exist; return install seconds, size, versions."""
    stamp = venv / STAMP
    if not (venv / "bin" / "python").exists() or not stamp.exists():
        log(f"creating {venv} and installing {' '.join(packages)} (timed) ...")
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        t = time.perf_counter()
        r = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--no-cache-dir", *packages], capture_output=True, text=True)
        secs = time.perf_counter() - t
        if r.returncode:
            lines = [ln for ln in r.stderr.splitlines() if "is ignored" not in ln]
            raise SystemExit(f"pip install {' '.join(packages)} into {venv} failed: {lines[-1] if lines else r.returncode}")
        stamp.write_text(json.dumps({"packages": packages, "install_s": secs,
                                     "date": time.strftime("%Y-%m-%d %H:%M")}))
    info = json.loads(stamp.read_text())
    site = next((venv / "lib").glob("python*/site-packages"))
    freeze = subprocess.run([str(venv / "bin" / "pip"), "list", "--format=json"], capture_output=True, text=True)
    dists = {d["name"].lower(): d["version"] for d in json.loads(freeze.stdout)}
    info.update(site_bytes=dir_bytes(site), n_dists=len(dists), versions=dists)
    return info


# ---------------------------------------------------------------- edgeinfer side (child process)

def edgeinfer_child(model_path: str, out_dir: str, calib_path: str, precisions: str) -> None:
    """Runs in the slim venv: load, clean, calibrate (int8), emit; prints the artifact paths as JSON."""
    sys.path.insert(0, str(ROOT))
    import numpy as np
    import onnx

    from converters.calibrate import calibrate
    from converters.clean import clean_model
    from converters.emitters.api import EmitRequest
    from converters.emitters.tflite.emitter import emit

    model = clean_model(onnx.load(model_path))
    calib = None
    out = {}
    for prec in precisions.split(","):
        if prec == "int8" and calib is None:
            calib = calibrate(model, np.load(calib_path), progress=False)
        art = emit(EmitRequest(model=model, precision=prec, out_path=Path(out_dir) / f"edgeinfer_{prec}.tflite",
                               calibration=calib, input_layout="NHWC"))
        out[prec] = str(art.path)
    print(json.dumps(out))


def run_edgeinfer(venv: Path, model: Path, out: Path, calib_nchw: Path, precisions: str, threads: int) -> tuple[float, dict]:
    out.mkdir(parents=True, exist_ok=True)
    cmd = [str(venv / "bin" / "python"), str(Path(__file__).resolve()), "--edgeinfer-child",
           str(model), str(out), str(calib_nchw), precisions]
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=child_env(threads, {"PYTHONPATH": str(ROOT)}))
    secs = time.perf_counter() - t
    if r.returncode:
        raise SystemExit(f"edgeinfer conversion failed: {r.stderr.strip().splitlines()[-1]}")
    return secs, json.loads(r.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- onnx2tf side

def onnx2tf_cmd(venv: Path, model: Path, out: Path, calib_nhwc: Path | None, channels: int) -> list[str]:
    cmd = [str(venv / "bin" / "onnx2tf"), "-i", str(model), "-o", str(out), "-b", "1", "-n"]
    if calib_nhwc is not None:
        zero, one = "[[[[" + ",".join(["0.0"] * channels) + "]]]]", "[[[[" + ",".join(["1.0"] * channels) + "]]]]"
        cmd += ["-oiqt", "-qt", "per-channel", "-cind", "input", str(calib_nhwc), zero, one,
                "-iqd", "float32", "-oqd", "float32"]
    return cmd


def first_error_line(text: str) -> str:
    lines = [ln for ln in text.splitlines() if ln.strip() and "is ignored" not in ln]
    errs = [ln for ln in lines if "Error" in ln or "error" in ln.split(":")[0]]
    return (errs or lines or ["(no output)"])[-1].strip()


def run_onnx2tf(venv: Path, model: Path, out: Path, cwd: Path, calib_nhwc: Path | None, channels: int,
                threads: int) -> tuple[float | None, str]:
    """(seconds, "") on success, (None, error line) on failure. Logs go to ``out``.log."""
    cwd.mkdir(parents=True, exist_ok=True)
    cmd = onnx2tf_cmd(venv, model, out, calib_nhwc, channels)
    log("  $ " + " ".join(cmd))
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=child_env(threads))
    secs = time.perf_counter() - t
    out.parent.mkdir(parents=True, exist_ok=True)
    Path(str(out) + ".log").write_text(r.stdout + "\n" + r.stderr)
    if r.returncode:
        return None, first_error_line(r.stderr + r.stdout)
    return secs, ""


def provide_sample_file(cwd: Path) -> None:
    """Seeded uniform data under the name onnx2tf would otherwise download (see module docstring)."""
    import numpy as np
    np.save(cwd / ONNX2TF_SAMPLE, np.random.default_rng(0).uniform(0, 1, (20, 128, 128, 3)).astype(np.float32))


# ---------------------------------------------------------------- evaluation (this venv)

def tflite_ops(path: Path) -> dict[str, int]:
    from ai_edge_litert import schema_py_generated as fb
    names = {v: k for k, v in vars(fb.BuiltinOperator).items() if not k.startswith("_")}
    m = fb.ModelT.InitFromPackedBuf(path.read_bytes(), 0)
    counts: dict[str, int] = {}
    for sg in m.subgraphs:
        for op in sg.operators or []:
            code = m.operatorCodes[op.opcodeIndex]
            name = names.get(max(code.builtinCode, code.deprecatedBuiltinCode), "CUSTOM")
            counts[name] = counts.get(name, 0) + 1
    return counts


def tflite_run(path: Path, x_nchw, threads: int):
    """Outputs for every sample (batch 1), input fed NHWC (or NCHW if that is what the file takes)."""
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter
    it = Interpreter(model_path=str(path), num_threads=threads)
    it.allocate_tensors()
    inp, outp = it.get_input_details()[0], it.get_output_details()[0]
    nhwc = np.transpose(x_nchw, (0, 2, 3, 1))
    src = nhwc if tuple(inp["shape"][1:]) == nhwc.shape[1:] else x_nchw
    results = []
    for i in range(len(src)):
        xi = src[i:i + 1]
        if inp["dtype"] != np.float32:
            s, z = inp["quantization"]
            info = np.iinfo(inp["dtype"])
            xi = np.clip(np.round(xi / s + z), info.min, info.max).astype(inp["dtype"])
        it.set_tensor(inp["index"], xi)
        it.invoke()
        y = it.get_tensor(outp["index"])
        if outp["dtype"] != np.float32:
            s, z = outp["quantization"]
            y = (y.astype(np.float32) - z) * s
        results.append(y.reshape(1, -1))
    return np.concatenate(results), ("NHWC" if src is nhwc else "NCHW")


def ort_run(model_path: Path, x_nchw, threads: int):
    import numpy as np
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(model_path), so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x_nchw[i:i + 1]})[0].reshape(1, -1) for i in range(len(x_nchw))])


# ---------------------------------------------------------------- models

def prepare_models(work: Path, n_calib: int, n_test: int) -> list[dict]:
    """Write each source model, its NCHW/NHWC calibration arrays and its NCHW test inputs."""
    import numpy as np
    import onnx
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "tools"))
    from model_zoo import build_mobilenetv2
    specs = []
    d = work / "mobilenetv2"
    d.mkdir(parents=True, exist_ok=True)
    onnx.save(build_mobilenetv2(batch=1), str(d / "model.onnx"))
    rng = np.random.default_rng(0)
    calib = rng.uniform(-1, 1, (n_calib, 3, 224, 224)).astype(np.float32)
    test = rng.uniform(-1, 1, (n_test, 3, 224, 224)).astype(np.float32)
    specs.append(dict(name="MobileNetV2 1.0/224 (seeded)", dir=d, calib=calib, test=test, labels=None, channels=3))

    src = ROOT / "samples" / "digits" / "digits.onnx"
    if src.exists():
        from converters.images import list_images, read_images
        from edgeinfer.preprocess import PreprocessConfig
        raw = onnx.load(str(src))
        meta = {p.key: p.value for p in raw.metadata_props}
        cfg = PreprocessConfig.from_dict(json.loads(meta["edgeinfer.preprocess"]))
        size = tuple(d.dim_value for d in raw.graph.input[0].type.tensor_type.shape.dim[2:])
        calib_set = read_images(list_images(ROOT / "samples/digits/calib"), None, cfg, size, "calib", progress=False)
        held_root = ROOT / "samples/digits/heldout"
        held = read_images(list_images(held_root), held_root, cfg, size, "held-out", progress=False)
        d = work / "digits"
        d.mkdir(parents=True, exist_ok=True)
        onnx.save(raw, str(d / "model.onnx"))
        specs.append(dict(name="digits sample (real images)", dir=d, calib=calib_set.samples, test=held.samples,
                          labels=np.array([int(lb) for lb in held.labels]), channels=1))
    for s in specs:
        np.save(s["dir"] / "calib_nchw.npy", s["calib"])
        np.save(s["dir"] / "calib_nhwc.npy", np.transpose(s["calib"], (0, 2, 3, 1)))
    return specs


def evaluate(path: Path, spec: dict, ref, threads: int) -> dict:
    import numpy as np
    y, layout = tflite_run(path, spec["test"], threads)
    ops = tflite_ops(path)
    row = dict(file=path.name, size=path.stat().st_size, max_err=float(np.abs(y - ref).max()),
               rel_err=float(np.abs(y - ref).max() / np.abs(ref).max()),
               agree=float((y.argmax(1) == ref.argmax(1)).mean()), n_ops=sum(ops.values()),
               transposes=ops.get("TRANSPOSE", 0), layout=layout, ops=ops)
    if spec["labels"] is not None:
        row["acc"] = float((y.argmax(1) == spec["labels"]).mean())
    return row


# ---------------------------------------------------------------- main

def compare_model(spec: dict, args, notes: list[str]) -> list[dict]:
    d = spec["dir"]
    model = d / "model.onnx"
    log(f"== {spec['name']}")
    rows = []
    # edgeinfer: fp32 alone, then fp32+int8 in one process (the second includes calibration)
    t32, arts = run_edgeinfer(args.slim_venv, model, d / "edgeinfer", d / "calib_nchw.npy", "fp32", args.threads)
    t_both, arts = run_edgeinfer(args.slim_venv, model, d / "edgeinfer", d / "calib_nchw.npy", "fp32,int8", args.threads)
    rows.append(dict(tool="edgeinfer", prec="fp32", secs=t32, path=Path(arts["fp32"])))
    rows.append(dict(tool="edgeinfer", prec="int8", secs=t_both, path=Path(arts["int8"]), secs_note="fp32+int8"))
    # onnx2tf: float run, then the int8 run (-oiqt also rewrites float32/float16/dynamic-range files)
    cwd = d / "onnx2tf_cwd"
    (cwd / ONNX2TF_SAMPLE).unlink(missing_ok=True)  # every run first tries onnx2tf as a user would
    secs, err = run_onnx2tf(args.onnx2tf_venv, model, d / "onnx2tf_fp32", cwd, None, spec["channels"], args.threads)
    if secs is None and "github.com" in err:
        notes.append(f"{spec['name']}: onnx2tf without a local sample file failed: {err}")
        log(f"  onnx2tf needs the internet: {err[:160]}...; retrying with a local seeded {ONNX2TF_SAMPLE}")
        provide_sample_file(cwd)
        notes.append(f"{spec['name']}: reran with a local seeded {ONNX2TF_SAMPLE} in onnx2tf's working directory")
        secs, err = run_onnx2tf(args.onnx2tf_venv, model, d / "onnx2tf_fp32", cwd, None, spec["channels"], args.threads)
    if secs is None:
        notes.append(f"{spec['name']}: onnx2tf float32 failed: {err}")
    else:
        rows.append(dict(tool="onnx2tf", prec="fp32", secs=secs, path=d / "onnx2tf_fp32" / "model_float32.tflite"))
    secs, err = run_onnx2tf(args.onnx2tf_venv, model, d / "onnx2tf_int8", cwd, d / "calib_nhwc.npy",
                            spec["channels"], args.threads)
    if secs is None:
        notes.append(f"{spec['name']}: onnx2tf int8 (-oiqt) failed: {err}")
    else:
        q = d / "onnx2tf_int8" / "model_integer_quant.tflite"
        rows.append(dict(tool="onnx2tf", prec="int8", secs=secs, path=q, secs_note="all -oiqt files"))
        full = q.with_name("model_full_integer_quant.tflite")
        if full.exists() and full.read_bytes() == q.read_bytes():
            notes.append(f"{spec['name']}: onnx2tf's {full.name} is byte-identical to {q.name} with -iqd/-oqd float32")
    ref = ort_run(model, spec["test"], args.threads)
    for r in rows:
        r.update(evaluate(r["path"], spec, ref, args.threads))
    if spec["labels"] is not None:
        notes.append(f"{spec['name']}: ORT fp32 accuracy {(ref.argmax(1) == spec['labels']).mean():.4f} "
                     f"on {len(spec['labels'])} held-out images")
    return rows


def print_table(spec_name: str, n_test: int, rows: list[dict], sizes: dict, has_acc: bool) -> None:
    print(f"\n### {spec_name} — {n_test} test inputs\n")
    head = ["tool", "precision", "convert s", "install", "file MB", "max abs err vs ORT fp32",
            "/ max abs ORT", "top-1 vs ORT fp32"] + (["accuracy"] if has_acc else []) + ["ops", "TRANSPOSE", "input"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        secs = f"{r['secs']:.1f}" + (f" ({r['secs_note']})" if r.get("secs_note") else "")
        cells = [r["tool"], r["prec"], secs, sizes[r["tool"]], f"{r['size'] / 1e6:.2f}", f"{r['max_err']:.2e}",
                 f"{r['rel_err']:.1e}", f"{r['agree']:.3f}"] + ([f"{r['acc']:.4f}"] if has_acc else []) + \
                [str(r["n_ops"]), str(r["transposes"]), r["layout"]]
        print("| " + " | ".join(cells) + " |")
    for r in rows:
        top = ", ".join(f"{k} {v}" for k, v in sorted(r["ops"].items(), key=lambda kv: -kv[1]))
        print(f"\n- {r['tool']} {r['prec']} (`{r['file']}`): {top}", end="")
    print()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--onnx2tf-venv", type=Path, default=Path("/tmp/onnx2tf-venv"))
    ap.add_argument("--slim-venv", type=Path, default=Path("/tmp/edgeinfer-tflite-venv"))
    ap.add_argument("--work", type=Path, default=Path("/tmp/onnx2tf-compare"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--calib", type=int, default=16, help="synthetic calibration inputs for MobileNetV2")
    ap.add_argument("--test", type=int, default=8, help="synthetic test inputs for MobileNetV2")
    ap.add_argument("--edgeinfer-child", nargs=4, metavar=("MODEL", "OUT", "CALIB", "PRECISIONS"),
                    help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.edgeinfer_child:
        edgeinfer_child(*args.edgeinfer_child)
        return 0
    for v in (args.onnx2tf_venv, args.slim_venv, args.work):
        if v.resolve().is_relative_to(ROOT):
            raise SystemExit(f"{v} is inside the repository; use a throw-away path such as /tmp/...")
    o2t = ensure_venv(args.onnx2tf_venv, ONNX2TF_PKGS)
    slim = ensure_venv(args.slim_venv, SLIM_PKGS)
    sizes = {"onnx2tf": f"{o2t['site_bytes'] / 1e9:.2f} GB", "edgeinfer": f"{slim['site_bytes'] / 1e9:.2f} GB"}
    args.work.mkdir(parents=True, exist_ok=True)
    specs = prepare_models(args.work, args.calib, args.test)
    notes: list[str] = []
    results = [(s, compare_model(s, args, notes)) for s in specs]

    print(f"## edgeinfer TFLite emitter vs onnx2tf — {time.strftime('%Y-%m-%d')}, threads={args.threads}\n")
    for label, info in (("onnx2tf venv", o2t), ("edgeinfer TFLite venv", slim)):
        v = info["versions"]
        keys = [k for k in ("onnx2tf", "tensorflow", "onnx", "onnxruntime", "ai-edge-litert", "numpy") if k in v]
        print(f"- {label}: `pip install {' '.join(info['packages'])}` took {info['install_s']:.0f} s "
              f"(created {info['date']}); site-packages {info['site_bytes'] / 1e9:.2f} GB, {info['n_dists']} "
              f"distributions; " + ", ".join(f"{k} {v[k]}" for k in keys))
    for s, rows in results:
        print_table(s["name"], len(s["test"]), rows, sizes, s["labels"] is not None)
    if notes:
        print("\nNotes:")
        for n in notes:
            print(f"- {n}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
