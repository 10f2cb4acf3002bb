"""Atomic bundle directories: build in a temp dir next to the target, then rename into place."""
from __future__ import annotations

import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from edgeinfer.errors import EdgeInferError


def check_target(target: Path, force: bool) -> None:
    """Refuse an existing bundle (without ``force``) and an output folder that is a file or cannot be made."""
    target = Path(target)
    parent = next((p for p in target.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise EdgeInferError(f"{parent} is a file, not a folder; choose another -o")
    if parent is not None and not os.access(parent, os.W_OK | os.X_OK):
        raise EdgeInferError(f"cannot write into {parent} (permission denied); choose another -o")
    if target.exists() and not force:
        raise EdgeInferError(f"{target} already exists; pass --force to replace it or choose another -o")
    if target.exists() and not target.is_dir():
        raise EdgeInferError(f"{target} exists and is not a directory; remove it or choose another -o")


@contextmanager
def atomic_dir(target: Path, force: bool) -> Iterator[Path]:
    """Yield a fresh temp dir; on success it replaces ``target`` in one rename, on error it vanishes."""
    target = Path(target)
    check_target(target, force)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    except OSError as exc:
        raise EdgeInferError(f"cannot create the output folder {target.parent}: {exc.strerror}; choose another -o") from None
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.rename(target, old / "bundle")
    os.rename(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def scrub_local_paths(value: Any, folders: list[Path | None], tmp: Path, target: Path) -> Any:
    """``value`` (a manifest) with every mention of this machine's folders cut to names.

    Bundles travel to other people's devices: an absolute path (user name, project layout) must not.
    Each folder in ``folders`` (and the user's home) becomes its last name; the bundle's temp dir
    becomes the bundle's name."""
    names: dict[str, str] = {str(Path.home()): "~"}
    for f, name in [*((f, None) for f in folders), (target, None), (tmp, Path(target).name)]:
        if f:
            for form in {str(Path(f).absolute()), str(Path(f).resolve())}:
                names[form] = name or Path(f).resolve().name
    pattern = re.compile("|".join(re.escape(f) + r"(?![\w.-])" for f in sorted(names, key=len, reverse=True)))

    def scrub(v: Any) -> Any:
        if isinstance(v, str):
            return pattern.sub(lambda m: names[m.group(0)], v)
        if isinstance(v, dict):
            return {k: scrub(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [scrub(x) for x in v]
        return v
    return scrub(value)
