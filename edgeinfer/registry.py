"""Lazy registries: tables map a name to "module:attribute", imported only when used."""
from __future__ import annotations

import importlib
from typing import Any


def import_target(target: str) -> Any:
    """Import "package.module:attr" and return the attribute (ModuleNotFoundError propagates)."""
    module_name, attr = target.split(":")
    return getattr(importlib.import_module(module_name), attr)
