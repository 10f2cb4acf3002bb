"""Verification inside the emulated arm64 userland (``edgeinfer convert --verify-on emulated``).

An arm64 profile's artifact is re-run by the same runtime code (``edgeinfer.backends``) under
``qemu-aarch64-static -cpu <the profile's core>`` with the aarch64 engine wheels, so its figures come
from ARM kernels (XNNPACK / MLAS NEON paths) rather than this host's x86 ones; they are recorded in
the manifest entry as ``verification_emulated`` with ``arithmetic: "emulated-<core>"``. This is the
target-faithful check for int8 (ONNX Runtime's x86 kernels without VNNI saturate; ARM's do not).
Emulated timings are not device speed and are not recorded.

``core_for(profile)`` maps the profile's CPU to a core QEMU emulates (exact for Cortex-A72/A76,
otherwise the closest one, said so in the entry). Core ML and other formats are skipped.
"""
from __future__ import annotations

import importlib.metadata
import json
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

import edgeinfer
from edgeinfer.errors import EdgeInferError
from edgeinfer.preprocess import to_layout

from . import arm_userland as arm
from .emitters.api import EmittedArtifact
from .verify import BATCH, _figures, run_artifact

FORMATS = ("tflite", "onnx")
# profile CPU model (lower case, first listed core) -> QEMU core; the big cores of phones map to the A76
EXACT = {"cortex-a72": "cortex-a72", "cortex-a76": "cortex-a76", "cortex-a53": "cortex-a53", "cortex-a57": "cortex-a57"}
FALLBACK = "cortex-a76"

RUNNER = """
import json, sys
import numpy as np
from edgeinfer.backends import BackendOptions, open_backend
fmt, art, work = sys.argv[1], sys.argv[2], sys.argv[3]
be = open_backend(fmt, art, BackendOptions(threads=1))
x = np.load(work + "/inputs.npy")
parts = [be.run(x[i:i + int(sys.argv[4])]) for i in range(0, len(x), int(sys.argv[4]))]
np.savez(work + "/outputs.npz", *[np.concatenate([p[k] for p in parts]) for k in range(len(parts[0]))])
print(json.dumps(be.describe()))
"""


def core_for(profile: dict[str, Any]) -> tuple[str, str | None]:
    """(QEMU core, note or None) for a profile's data dict; raises for non-arm64 profiles."""
    cpu = profile.get("cpu", {})
    if cpu.get("arch") != "arm64":
        raise EdgeInferError(f"--verify-on emulated runs arm64 profiles; {profile.get('name')} is {cpu.get('arch')}: "
                             "convert it without --verify-on emulated")
    model = str(cpu.get("model", "")).lower().split("+")[0].strip()
    if model in EXACT:
        return EXACT[model], None
    return FALLBACK, (f"{cpu.get('model')} is not emulated by QEMU user mode; ran on {FALLBACK} "
                      "(same ARMv8.2 int8 dot-product kernels)")


def _requirements(fmt: str) -> list[str]:
    try:
        meta = (importlib.metadata.distribution("edgeinfer").read_text("METADATA") or "").splitlines()
    except importlib.metadata.PackageNotFoundError:
        meta = []
    reqs = arm.runtime_requirements(meta, fmt)
    return reqs or ["numpy>=1.23", "pillow>=9.0", "click>=8.0", {"tflite": "ai-edge-litert>=1.0", "onnx": "onnxruntime>=1.17"}[fmt]]


def run_emulated(artifact: EmittedArtifact, samples: np.ndarray, core: str, timeout: float = 1800) -> tuple[list[np.ndarray], dict]:
    """Outputs of ``artifact`` for NCHW float ``samples`` computed on the emulated ``core``."""
    env = arm.target_env(f"verify-{artifact.format}", _requirements(artifact.format))
    with tempfile.TemporaryDirectory(prefix="edgeinfer-verify-arm-") as tmp:
        work = Path(tmp)
        shutil.copytree(Path(edgeinfer.__file__).parent, work / "pkg" / "edgeinfer",
                        ignore=shutil.ignore_patterns("__pycache__"))      # the runtime only, not site-packages
        np.save(work / "inputs.npy", np.ascontiguousarray(to_layout(samples, artifact.input_layout), np.float32))
        proc = arm.run_python(core, [work / "pkg", env], ["-c", RUNNER, artifact.format, artifact.path, work, BATCH],
                              timeout=timeout)
        crash = arm.guest_crash(proc)
        if crash or proc.returncode != 0:
            tail = (proc.stderr.strip().splitlines() or ["no output"])[-1][:300]
            raise EdgeInferError(f"{artifact.path.name} failed on emulated {core}: "
                                 f"{'the engine crashed (' + crash + ')' if crash else tail}")
        z = np.load(work / "outputs.npz")
        outputs = [z[k] for k in z.files]
        info = json.loads(proc.stdout.strip().splitlines()[-1])
    return outputs, info


def check_available(profiles: list[dict]) -> None:
    """Before any work: every profile is arm64 and this machine can emulate (one-line errors)."""
    for p in profiles:
        core_for(p)
    arm.check_tools()


def verify_emulated(artifact: EmittedArtifact, samples: np.ndarray, reference: list[np.ndarray], *, profile: dict,
                    task: str, postprocess: dict, labels, input_hw, synthetic: bool = False) -> dict[str, Any] | None:
    """The verification figures of ``artifact`` computed on the profile's emulated core (None: format skipped),
    with ``max_abs_diff_vs_host``: the largest output difference from the same file run on this host."""
    if artifact.format not in FORMATS:
        return None
    core, note = core_for(profile)
    outputs, info = run_emulated(artifact, samples, core)
    qemu = subprocess.run(["qemu-aarch64-static", "--version"], capture_output=True, text=True).stdout.splitlines()
    figures: dict[str, Any] = {"arithmetic": f"emulated-{core}", "engine": info.get("engine"),
                               "emulator": qemu[0] if qemu else "qemu-aarch64-static",
                               "inputs": int(len(samples)), "synthetic_inputs": synthetic}
    if note:
        figures["note"] = note
    figures.update(_figures(artifact, outputs, reference, task=task, postprocess=postprocess, labels=labels,
                            input_hw=input_hw))
    host = run_artifact(artifact, samples)
    figures["max_abs_diff_vs_host"] = float(max(np.abs(a - b).max() for a, b in zip(outputs, host)))
    return figures
