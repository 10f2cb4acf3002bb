"""The bundle: a directory with ``manifest.json``, artifacts and labels.

Manifest (``schema: 1``), the contract between converter and runtime::

    {
      "schema": 1,
      "edgeinfer_version": "0.1.0",
      "created": "2026-11-22T04:40:00Z",
      "source": {"file": "digits.onnx", "sha256": "...", "opset": 17},
      "profile": {"name": "raspberry-pi-4", ...runtime section of the profile...},
      "task": "classify" | "detect",
      "input": {"name": "input", "shape": [1, 1, 32, 32], "layout": "NCHW", "dtype": "float32"},
      "outputs": [{"name": "logits", "shape": [1, 10]}],
      "preprocess": {...edgeinfer.preprocess config...},
      "postprocess": {"kind": "classify", "softmax": true, "top_k": 5}
                   | {"kind": "detect", "decoder": "yolov8", ...},
      "labels": "labels.txt" | null,
      "calibration": {"method": "minmax", "images": 64, "skipped": 0, "synthetic": false} | null,
      "artifacts": [
        {"file": "model-int8.onnx", "format": "onnx", "precision": "int8",
         "sha256": "...", "size": 12345, "input_layout": "NCHW", "io_dtype": "float32",
         "verification": {"inputs": 32, "max_abs_error": 0.01, "cosine": 0.999, "top1_agreement": 1.0},
         "op_coverage": {...}, "notes": [...], "details": {...}}
      ],
      "warnings": [...]
    }

Artifacts are listed in the profile's preferred order; the runtime picks the first it can run.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from .errors import EdgeInferError

MANIFEST_NAME = "manifest.json"
SCHEMA_VERSION = 1


def sha256_of(path: Path) -> str:
    """sha256 of a file, or of a directory's files (sorted relative paths + contents)."""
    h = hashlib.sha256()
    path = Path(path)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        if path.is_dir():
            h.update(str(f.relative_to(path)).encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def size_of(path: Path) -> int:
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def is_bundle(path: Path) -> bool:
    return (Path(path) / MANIFEST_NAME).is_file()


def read_manifest(bundle_dir: Path) -> dict[str, Any]:
    """Load and check a bundle's manifest; one-line errors for anything wrong."""
    bundle_dir = Path(bundle_dir)
    mpath = bundle_dir / MANIFEST_NAME
    if not bundle_dir.exists():
        raise EdgeInferError(f"bundle not found: {bundle_dir}")
    if not mpath.is_file():
        raise EdgeInferError(f"{bundle_dir} is not an edgeinfer bundle (no {MANIFEST_NAME}); make one with `edgeinfer convert`")
    try:
        manifest = json.loads(mpath.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EdgeInferError(f"{mpath} is not valid JSON ({exc}); re-run `edgeinfer convert`") from None
    schema = manifest.get("schema")
    if schema != SCHEMA_VERSION:
        raise EdgeInferError(f"{mpath} has schema {schema!r}; this edgeinfer reads schema {SCHEMA_VERSION}: upgrade edgeinfer or re-convert")
    for key in ("task", "input", "preprocess", "postprocess", "artifacts"):
        if key not in manifest:
            raise EdgeInferError(f"{mpath} lacks the {key!r} entry; re-run `edgeinfer convert`")
    if not manifest["artifacts"]:
        raise EdgeInferError(f"{mpath} lists no artifacts")
    return manifest


def read_labels(bundle_dir: Path, manifest: dict[str, Any]) -> list[str] | None:
    name = manifest.get("labels")
    if not name:
        return None
    p = Path(bundle_dir) / name
    if not p.is_file():
        raise EdgeInferError(f"labels file {p} named by the manifest is missing")
    return [line.strip() for line in p.read_text().splitlines() if line.strip()]


def write_manifest(bundle_dir: Path, manifest: dict[str, Any]) -> Path:
    p = Path(bundle_dir) / MANIFEST_NAME
    p.write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    return p
