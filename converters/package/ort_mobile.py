"""ONNX Runtime Mobile target: each ONNX artifact with fixed shapes, converted to the ORT format by
onnxruntime's own ``convert_onnx_models_to_ort`` (``--target_platform arm`` for ARM profiles,
``amd64`` otherwise), the ``required_operators_and_types.config`` for reduced builds, and the
NNAPI / Core ML EP usability report of ``check_onnx_model_mobile_usability`` in the README.
Each ``.ort`` is loaded back in onnxruntime and compared with the bundle's ONNX artifact.
"""
from __future__ import annotations

import contextlib
import io
import logging
import shutil
import tempfile
from pathlib import Path

import numpy as np
import onnx

from edgeinfer.errors import EdgeInferError

from .common import Bundle, TargetPackage, max_abs, lean_imports, write_labels
from .readme import ort_readme

CONFIG = "required_operators_and_types.config"


def check(bundle: Bundle) -> None:
    bundle.require("onnx", "ort-mobile")


def target_platform(bundle: Bundle) -> str:
    return "arm" if bundle.profile_arch.lower().startswith(("arm", "aarch")) else "amd64"


def fixed_shapes(src: Path, dst: Path) -> list[str]:
    """Pin every symbolic dimension (the batch) to 1 with onnxruntime's ``make_dim_param_fixed``; returns their names."""
    with lean_imports():
        from onnxruntime.tools.onnx_model_utils import make_dim_param_fixed

    model = onnx.load(str(src))
    params = sorted({d.dim_param for vi in list(model.graph.input) + list(model.graph.output)
                     for d in vi.type.tensor_type.shape.dim if d.dim_param})
    for p in params:
        make_dim_param_fixed(model.graph, p, 1)
    for vi in list(model.graph.input) + list(model.graph.output):   # unnamed dynamic dims
        for d in vi.type.tensor_type.shape.dim:
            if not d.HasField("dim_value") and not d.dim_param:
                d.dim_value = 1
    onnx.save(model, str(dst))
    return params


def usability_report(model_path: Path) -> str:
    """The text ``check_onnx_model_mobile_usability`` prints for ``model_path``."""
    with lean_imports():
        from onnxruntime.tools.mobile_helpers.usability_checker import analyze_model

    stream = io.StringIO()
    logger = logging.getLogger("edgeinfer.ort_usability")
    logger.handlers[:] = [logging.StreamHandler(stream)]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    with contextlib.redirect_stdout(io.StringIO()):
        analyze_model(model_path, skip_optimize=False, logger=logger)
    return stream.getvalue()


def summarize(report: str) -> dict[str, str]:
    """{"NNAPI": "YES|NO|MAYBE", ...} from the report's 'should perform well' lines."""
    out = {}
    for line in report.splitlines():
        if "Model should perform well with" in line and "as is:" in line:
            ep = line.split("Model should perform well with", 1)[1].split(" as is:")[0].strip()
            out[ep] = line.rsplit(":", 1)[1].strip()
    return out


def convert(fixed_dir: Path, out_dir: Path, platform: str) -> None:
    with lean_imports():
        from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

    import onnxruntime as ort

    ort.set_default_logger_severity(3)   # the converter's "hardware specific" warning: said in the README
    logging.getLogger("ort_format_model.utils").setLevel(logging.WARNING)
    with contextlib.redirect_stdout(io.StringIO()):
        convert_onnx_models_to_ort(fixed_dir, output_dir=out_dir, optimization_styles=[OptimizationStyle.Fixed],
                                   target_platform=platform, enable_type_reduction=True)


def compare(ort_path: Path, onnx_path: Path, x: np.ndarray, platform: str) -> float:
    """Max |difference| of all outputs of the .ort and the ONNX artifact on ``x`` (one sample at a time),
    both sessions with the option the conversion used (``session.qdqisint8allowed`` is 1 for arm: int8
    QDQ fused to s8s8 kernels, which saturate on x86 hosts without VNNI)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.add_session_config_entry("session.qdqisint8allowed", "1" if platform == "arm" else "0")
    a = ort.InferenceSession(str(ort_path), so, providers=["CPUExecutionProvider"])
    b = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
    name_a, name_b = a.get_inputs()[0].name, b.get_inputs()[0].name
    worst = 0.0
    for i in range(len(x)):
        for u, v in zip(a.run(None, {name_a: x[i:i + 1]}), b.run(None, {name_b: x[i:i + 1]})):
            worst = max(worst, max_abs(u, v))
    return worst


def build(bundle: Bundle, folder: Path, name: str) -> TargetPackage:
    pkg = TargetPackage()
    platform = target_platform(bundle)
    arts = bundle.require("onnx", "ort-mobile")
    reports: dict[str, str] = {}
    models = []
    x = bundle.sample_inputs(2)
    with tempfile.TemporaryDirectory(prefix="edgeinfer-ort-") as tmp:
        fixed_dir, ort_dir = Path(tmp) / "fixed", Path(tmp) / "ort"
        fixed_dir.mkdir()
        for art in arts:
            out = f"{name}-{art['precision']}.onnx"
            fixed_shapes(bundle.path / art["file"], fixed_dir / out)
        try:
            convert(fixed_dir, ort_dir, platform)
        except Exception as exc:   # onnxruntime's converter names the failing model/op
            raise EdgeInferError(f"onnxruntime could not convert the bundle's ONNX artifacts to the ORT format: "
                                 f"{str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__}") from None
        for art in arts:
            stem = f"{name}-{art['precision']}"
            src = ort_dir / f"{stem}.ort"
            if not src.is_file():
                raise EdgeInferError(f"onnxruntime wrote no {src.name}; the ORT conversion failed")
            shutil.copy2(src, folder / src.name)
            pkg.files[src.name] = f"ORT format model ({art['precision']}, target_platform {platform})"
            models.append(src.name)
            report = usability_report(fixed_dir / f"{stem}.onnx")
            reports[src.name] = report
            pkg.checks[src.name] = {"max_abs_diff_vs_onnx_artifact": compare(folder / src.name, bundle.path / art["file"], x, platform),
                                    "inputs": int(len(x)), "ep_usability": summarize(report),
                                    "compared_with": {"session.qdqisint8allowed": "1" if platform == "arm" else "0",
                                                      "host": "this machine's onnxruntime CPU kernels"}}
        configs = list(ort_dir.glob("*.config"))
        if len(configs) != 1:
            raise EdgeInferError(f"onnxruntime wrote {len(configs)} operator configs, expected one")
        shutil.copy2(configs[0], folder / CONFIG)
    pkg.files[CONFIG] = "operators and types for a reduced ONNX Runtime build"
    if platform == "amd64":
        pkg.notes.append("x86-64 profile: the .ort files carry x86-specific layout optimizations (NCHWc) and are for "
                         "x86 hosts; package an ARM profile's bundle (e.g. pixel-8) for phones")
    labels = write_labels(folder, bundle.labels)
    if labels:
        pkg.files[labels] = "labels"
    (folder / "README.md").write_text(ort_readme(bundle, name, models, CONFIG, reports, pkg.notes))
    pkg.files["README.md"] = "how to use it with ONNX Runtime Mobile"
    pkg.details.update(models=models, target_platform=platform, preprocess=bundle.manifest["preprocess"],
                       postprocess=bundle.postprocess)
    return pkg
