"""``edgeinfer package``: a finished bundle -> app-ready folders, one per target.

``package_bundle(PackageOptions) -> PackageResult`` reads the bundle (never re-converts or
re-quantizes: the precisions are the bundle's), and writes ``OUT/<target>/`` for each target with
the model files, ``labels.txt``, a checksummed ``package.json`` and a README holding the calls for
that platform. The whole ``OUT`` folder is built in a temp dir and renamed into place, so a failure
leaves nothing behind. Targets: ``android`` (LiteRT / MediaPipe Tasks / Task Library),
``ios`` (Core ML + Vision), ``ort-mobile`` (ONNX Runtime Mobile).
"""
from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from edgeinfer.bundle import check_integrity, read_manifest
from edgeinfer.errors import EdgeInferError
from edgeinfer.progress import Progress

from ..bundle_writer import atomic_dir, check_target
from .common import Bundle, write_package_json

TARGETS = {   # target -> module with ``check(bundle)`` (refuse early) and ``build(bundle, folder, name)``
    "android": "converters.package.android",
    "ios": "converters.package.ios",
    "ort-mobile": "converters.package.ort_mobile",
}
ALL = "all"


@dataclass
class PackageOptions:
    bundle: Path
    targets: list[str]
    out_dir: Path
    name: str | None = None
    zip: bool = False
    force: bool = False
    progress: bool = True


@dataclass
class PackageResult:
    out_dir: Path
    folders: dict[str, Path] = field(default_factory=dict)
    packages: dict[str, dict] = field(default_factory=dict)
    seconds: float = 0.0


def expand_targets(targets: list[str]) -> list[str]:
    """``all`` -> every target; unknown names -> one-line error."""
    out: list[str] = []
    for t in targets:
        names = list(TARGETS) if t == ALL else [t]
        for n in names:
            if n not in TARGETS:
                raise EdgeInferError(f"unknown package target {t!r}; choose from {', '.join(TARGETS)}, all")
            if n not in out:
                out.append(n)
    if not out:
        raise EdgeInferError(f"give --target {'|'.join(TARGETS)}|all")
    return out


def open_bundle(path: Path) -> Bundle:
    manifest = read_manifest(path)
    bad = {f: s for f, s in check_integrity(path, manifest).items() if s in ("missing", "size mismatch", "sha256 mismatch")}
    if bad:
        f, s = next(iter(bad.items()))
        raise EdgeInferError(f"bundle artifact {f} is {s}; re-run `edgeinfer convert` before packaging")
    return Bundle(Path(path), manifest)


def package_bundle(opts: PackageOptions) -> PackageResult:
    import importlib

    t0 = time.perf_counter()
    targets = expand_targets(opts.targets)
    bundle = open_bundle(opts.bundle)
    name = opts.name or bundle.default_name
    modules = {t: importlib.import_module(TARGETS[t]) for t in targets}
    for t in targets:                     # refuse before writing anything
        modules[t].check(bundle)
    check_target(Path(opts.out_dir), opts.force)
    result = PackageResult(Path(opts.out_dir))
    bar = Progress("packaging", len(targets), opts.progress)
    with atomic_dir(Path(opts.out_dir), opts.force) as tmp:
        for t in targets:
            folder = tmp / t
            folder.mkdir()
            pkg = modules[t].build(bundle, folder, name)
            result.packages[t] = write_package_json(folder, t, name, bundle, pkg)
            if opts.zip:
                shutil.make_archive(str(tmp / f"{name}-{t}"), "zip", root_dir=folder)
            bar.update()
    bar.__exit__(None, None, None)    # the final line only on success: errors stay one line
    result.folders = {t: Path(opts.out_dir) / t for t in targets}
    result.seconds = round(time.perf_counter() - t0, 3)
    return result


def summary_lines(result: PackageResult) -> list[str]:
    lines = []
    for t, pkg in result.packages.items():
        lines.append(f"{t}: {result.folders[t]}")
        for f in pkg["files"]:
            lines.append(f"  {f['file']:<44} {f['size'] / 1e6:8.3f} MB  {f.get('role', '')}")
        for c, v in pkg.get("checks", {}).items():
            lines.append(f"  check {c}: {v}")
        for n in pkg.get("notes", []):
            lines.append(f"  note: {n}")
    lines.append(f"packaged in {result.seconds:.2f} s")
    return lines
