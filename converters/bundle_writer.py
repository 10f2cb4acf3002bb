"""Atomic bundle directories: build in a temp dir next to the target, then rename into place."""
from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

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
