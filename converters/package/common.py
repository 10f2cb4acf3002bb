"""What every package target shares: the opened bundle, ``package.json``, README writing."""
from __future__ import annotations

import contextlib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import edgeinfer
from edgeinfer.bundle import read_labels, sha256_of, size_of
from edgeinfer.errors import EdgeInferError
from edgeinfer.preprocess import PreprocessConfig

PACKAGE_SCHEMA = 1
CONVERT_FORMATS = {"tflite": "tflite", "coreml": "coreml", "onnx": "onnx"}


@contextlib.contextmanager
def lean_imports():
    """Imports inside see no PyTorch or scikit-learn (unless imported already): coremltools and
    ``onnxruntime.tools`` import them eagerly when installed (seconds) for converters and
    compression paths packaging never uses."""
    names = ("torch", "torchvision", "torchaudio", "torchao", "executorch", "sklearn")
    blocked = [n for n in names if n not in sys.modules]
    for n in blocked:
        sys.modules[n] = None   # `import torch` raises ImportError, find_spec("torch") is None
    try:
        yield
    finally:
        for n in blocked:
            if n in sys.modules and sys.modules[n] is None:
                del sys.modules[n]


@dataclass
class Bundle:
    """A read bundle: folder + manifest, with the facts packaging needs."""

    path: Path
    manifest: dict[str, Any]

    @property
    def task(self) -> str:
        return self.manifest["task"]

    @property
    def default_name(self) -> str:
        return Path(self.manifest.get("source", {}).get("file") or self.path.name).stem

    @property
    def labels(self) -> list[str] | None:
        return read_labels(self.path, self.manifest)

    @property
    def preprocess(self) -> PreprocessConfig:
        return PreprocessConfig.from_dict(self.manifest["preprocess"])

    @property
    def postprocess(self) -> dict[str, Any]:
        return self.manifest["postprocess"]

    @property
    def input_hw(self) -> tuple[int, int]:
        s = self.manifest["input"]["shape"]
        return int(s[2]), int(s[3])

    def artifacts(self, fmt: str) -> list[dict[str, Any]]:
        return [a for a in self.manifest["artifacts"] if a["format"] == fmt]

    def require(self, fmt: str, target: str) -> list[dict[str, Any]]:
        """The bundle's ``fmt`` artifacts, or the one-line error naming the convert call that makes them."""
        arts = self.artifacts(fmt)
        if not arts:
            have = ",".join(sorted({a["format"] for a in self.manifest["artifacts"]}))
            raise EdgeInferError(f"--target {target} needs a {fmt} artifact but the bundle {self.path} has only {have}; "
                                 f"re-convert with `edgeinfer convert ... --formats {have},{fmt}`")
        return arts

    @property
    def profile_arch(self) -> str:
        prof = self.manifest.get("profile", {})
        return str(prof.get("cpu", {}).get("arch") or prof.get("arch") or "")

    def normalization_255(self, channels: int) -> tuple[list[float], list[float]]:
        """Mean/std in 0..255 pixel units for ``channels`` channels (model channel order)."""
        cfg = self.preprocess
        mean = np.broadcast_to(np.asarray(cfg.mean if cfg.mean is not None else [0.0], np.float64), (channels,))
        std = np.broadcast_to(np.asarray(cfg.std if cfg.std is not None else [1.0], np.float64), (channels,))
        return [float(v) for v in mean / cfg.scale], [float(v) for v in std / cfg.scale]

    def sample_inputs(self, n: int = 4, seed: int = 0) -> np.ndarray:
        """Inputs in the normalized range the preprocessing produces (pixels drawn uniformly), NCHW."""
        rng = np.random.default_rng(seed)
        c = int(self.manifest["input"]["shape"][1])
        h, w = self.input_hw
        pix = rng.integers(0, 256, size=(n, h, w, c), dtype=np.uint8)
        from edgeinfer.preprocess import normalize
        return np.stack([normalize(p[:, :, 0] if c == 1 else p, self.preprocess) for p in pix]).astype(np.float32)


@dataclass
class TargetPackage:
    """What a target builder returns: files (relative path -> role), checks, notes."""

    files: dict[str, str] = field(default_factory=dict)
    checks: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)


def write_package_json(folder: Path, target: str, name: str, bundle: Bundle, pkg: TargetPackage) -> dict[str, Any]:
    """Write ``package.json`` (files with sha256 and size) and return it."""
    entries = [{"file": f, "role": role, "sha256": sha256_of(folder / f), "size": size_of(folder / f)}
               for f, role in pkg.files.items()]
    doc = {
        "schema": PACKAGE_SCHEMA, "target": target, "name": name, "edgeinfer_version": edgeinfer.__version__,
        "bundle": {"path": str(bundle.path), "source": bundle.manifest.get("source"), "task": bundle.task,
                   "profile": bundle.manifest.get("profile", {}).get("name"),
                   "manifest_sha256": sha256_of(bundle.path / "manifest.json")},
        "files": entries, "checks": pkg.checks, "notes": pkg.notes, **pkg.details,
    }
    (folder / "package.json").write_text(json.dumps(doc, indent=2) + "\n")
    return doc


def write_labels(folder: Path, labels: list[str] | None) -> str | None:
    if not labels:
        return None
    (folder / "labels.txt").write_text("\n".join(labels) + "\n", encoding="utf-8")
    return "labels.txt"


def max_abs(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)))) if np.size(a) else 0.0
