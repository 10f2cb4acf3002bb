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

A bundle is untrusted input (it may come from anyone). The reader therefore refuses, in one line
naming the entry, any path that leaves the bundle folder (absolute, ``..``, a symlink pointing
out), and ``verified_artifact`` checks size and sha256 before an engine sees a file.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import warnings
from pathlib import Path, PureWindowsPath
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
    for key in ("profile", "calibration", "source"):   # optional objects the runtime reads fields of
        if manifest.get(key) is not None and not isinstance(manifest[key], dict):
            raise EdgeInferError(f"{mpath}: {key!r} must be a JSON object, not {type(manifest[key]).__name__}; "
                                 "re-run `edgeinfer convert`")
    for i, a in enumerate(manifest["artifacts"]):
        contained(bundle_dir, a["file"], f"artifacts[{i}].file")
    if manifest.get("labels") is not None:
        contained(bundle_dir, manifest["labels"], "labels")
    return manifest


def contained(bundle_dir: Path, name: object, entry: str) -> Path:
    """``bundle_dir/name`` resolved, or a one-line refusal when ``name`` could reach outside the bundle.

    Refused: non-strings, absolute paths (POSIX or Windows), any ``..`` part, the bundle folder itself,
    and paths whose symlinks (at any level, or inside an artifact folder) resolve outside the bundle."""
    root = Path(bundle_dir).resolve()

    def refuse(why: str) -> EdgeInferError:
        return EdgeInferError(f"bundle {bundle_dir}: manifest entry {entry} = {name!r} {why}; the bundle is refused "
                              "(entries must be file names inside the bundle folder)")
    if not isinstance(name, str) or not name.strip() or "\x00" in name:
        raise refuse("is not a file name")
    parts = re.split(r"[\\/]", name)
    if os.path.isabs(name) or name.startswith(("/", "\\")) or PureWindowsPath(name).drive:
        raise refuse("is an absolute path")
    if ".." in parts:
        raise refuse("climbs out with '..'")
    target = (root / name).resolve()
    if target == root or root not in target.parents:
        raise refuse(f"resolves to {'the bundle folder itself' if target == root else 'a place outside the bundle'} (symlink?)")
    if target.is_dir():
        for folder, dirs, files in os.walk(target):
            for child in dirs + files:
                p = Path(folder) / child
                if p.is_symlink() and root not in p.resolve().parents:
                    raise refuse(f"holds a symlink {p.relative_to(target)} pointing outside the bundle")
                if p.is_file() and p.stat().st_nlink > 1:
                    raise refuse(f"holds {p.relative_to(target)}, a hard link to a file outside the bundle's own copy"
                                 " (copy the bundle with `cp -r`)")
    elif target.is_file() and target.stat().st_nlink > 1:
        raise refuse("is a hard link to another file (a file outside the bundle may be read through it; "
                     "copy the bundle with `cp -r`)")
    return target


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
    p = contained(bundle_dir, name, "labels")
    if not p.is_file():
        raise EdgeInferError(f"labels file {Path(bundle_dir) / name} named by the manifest is missing")
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


_DIGESTS: dict[tuple, str] = {}
_DIGESTS_LOCK = threading.Lock()


def _stat_key(path: Path) -> tuple:
    """What changes whenever a file's content can have changed: inode, size, mtime and ctime (ctime cannot be
    set back by a user), for the file or every file of a folder artifact."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    stats = [(str(f), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns) for f in files for st in [f.stat()]]
    return (str(path), tuple(stats))


def cached_sha256(path: Path) -> str:
    """``sha256_of`` remembered in this process while the file's stat key is unchanged."""
    key = _stat_key(path)
    with _DIGESTS_LOCK:
        hit = _DIGESTS.get(key)
    if hit is None:
        hit = sha256_of(path)
        with _DIGESTS_LOCK:
            _DIGESTS[key] = hit
    return hit


def artifact_status(bundle_dir: Path, entry: dict[str, Any]) -> str:
    """"ok" | "missing" | "size mismatch" | "sha256 mismatch" | "no sha256 recorded" for one manifest artifact."""
    p = contained(bundle_dir, entry["file"], "artifact file")
    if not p.exists():
        return "missing"
    size, digest = entry.get("size"), entry.get("sha256")
    if not isinstance(digest, str) or not isinstance(size, int) or isinstance(size, bool):
        return "no sha256 recorded"
    if size_of(p) != size:
        return "size mismatch"
    return "ok" if cached_sha256(p) == digest.lower() else "sha256 mismatch"


def verified_artifact(bundle_dir: Path, entry: dict[str, Any]) -> Path:
    """The artifact's path once its size and sha256 match the manifest; a one-line refusal naming it otherwise.

    An entry that records no sha256 (a hand-made manifest) is opened with a warning: whoever can delete the
    hash could as well recompute it, so refusing it would protect nothing that a signature would not."""
    status = artifact_status(bundle_dir, entry)
    p = contained(bundle_dir, entry["file"], "artifact file")
    if status == "missing":
        raise EdgeInferError(f"artifact file {Path(bundle_dir) / entry['file']} named by the manifest is missing")
    if status == "no sha256 recorded":
        warnings.warn(f"artifact {entry['file']} of {bundle_dir}: the manifest records no sha256 and size; opened unverified",
                      stacklevel=2)
    elif status != "ok":
        raise EdgeInferError(f"artifact {entry['file']} of {bundle_dir}: {status} against the manifest; the file was "
                             "altered or damaged: copy the bundle again (or pass --no-verify-hash if you edited it on purpose)")
    return p


def check_integrity(bundle_dir: Path, manifest: dict[str, Any]) -> dict[str, str]:
    """Artifact file -> ``artifact_status`` for every artifact of the manifest (``inspect`` reports it)."""
    return {a["file"]: artifact_status(bundle_dir, a) for a in manifest["artifacts"]}
