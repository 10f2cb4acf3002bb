"""Checks shared by the pruning and recovery configs' ``validate()``."""
from __future__ import annotations

from typing import Any

from edgeinfer.errors import EdgeInferError


def integer_at_least(owner: str, name: str, value: Any, least: int) -> None:
    """Refuse ``value`` (the config field ``name`` of ``owner``: "prune", "distill", ...) unless it is an
    int (not a bool) >= ``least``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise EdgeInferError(f"{owner} {name} must be an integer >= {least}, got {value!r}")
