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
    if not isinstance(manifest, dict):
        raise EdgeInferError(f"{mpath} is not a manifest (a JSON object); re-run `edgeinfer convert`")
    schema = manifest.get("schema")
    if schema != SCHEMA_VERSION:
        raise EdgeInferError(f"{mpath} has schema {schema!r}; this edgeinfer reads schema {SCHEMA_VERSION}: upgrade edgeinfer or re-convert")
    for key in ("task", "input", "preprocess", "postprocess", "artifacts"):
        if key not in manifest:
            raise EdgeInferError(f"{mpath} lacks the {key!r} entry; re-run `edgeinfer convert`")
    if not manifest["artifacts"]:
        raise EdgeInferError(f"{mpath} lists no artifacts")
    _check_shapes(manifest, mpath)
    return manifest


def _check_shapes(manifest: dict[str, Any], mpath: Path) -> None:
    """The entries the runtime indexes into have the types it expects (a hand-edited manifest fails here)."""
    def bad(what: str) -> EdgeInferError:
        return EdgeInferError(f"{mpath}: {what}; re-run `edgeinfer convert` (or restore the manifest)")
    for key in ("input", "preprocess", "postprocess"):
        if not isinstance(manifest[key], dict):
            raise bad(f"'{key}' must be a JSON object, not {type(manifest[key]).__name__}")
    shape = manifest["input"].get("shape")
    if not (isinstance(shape, list) and len(shape) == 4
            and all(isinstance(d, int) and d > 0 for d in shape[1:]) and (shape[0] is None or isinstance(shape[0], int))):
        raise bad(f"input shape {shape!r} is not [N, C, H, W]")
    if not isinstance(manifest["artifacts"], list):
        raise bad("'artifacts' must be a list")
    for i, a in enumerate(manifest["artifacts"]):
        if not (isinstance(a, dict) and all(isinstance(a.get(k), str) and a.get(k) for k in ("file", "format"))):
            raise bad(f"artifact #{i + 1} needs 'file' and 'format' names")


def read_labels(bundle_dir: Path, manifest: dict[str, Any]) -> list[str] | None:
    name = manifest.get("labels")
    if not name:
        return None
    p = Path(bundle_dir) / name
    if not p.is_file():
        raise EdgeInferError(f"labels file {p} named by the manifest is missing")
    return read_label_lines(p)


def read_label_lines(path: Path) -> list[str]:
    """One label per non-empty line of a UTF-8 text file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise EdgeInferError(f"labels file {path} is not UTF-8 text; write one label per line") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def write_manifest(bundle_dir: Path, manifest: dict[str, Any]) -> Path:
    p = Path(bundle_dir) / MANIFEST_NAME
    p.write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    return p


def check_integrity(bundle_dir: Path, manifest: dict[str, Any]) -> dict[str, str]:
    """Artifact file -> "ok" | "missing" | "sha256 mismatch" against the manifest."""
    status = {}
    for a in manifest["artifacts"]:
        p = Path(bundle_dir) / a["file"]
        if not p.exists():
            status[a["file"]] = "missing"
        elif a.get("sha256") and sha256_of(p) != a["sha256"]:
            status[a["file"]] = "sha256 mismatch"
        else:
            status[a["file"]] = "ok"
    return status
