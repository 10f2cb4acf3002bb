"""ONNX op handlers: ``HANDLERS[op_type](ctx, node_index, node)``, one function per op.

Each handler reads its inputs from the ``Converter`` (layout-tracked values and constants),
appends TFLite operators and registers its outputs. Ops not in the table are rejected by name.
"""
from __future__ import annotations

from . import activation, conv, dense, elementwise, pool, reduce, resize, shape

HANDLERS: dict = {}
for _m in (activation, conv, dense, elementwise, pool, reduce, resize, shape):
    HANDLERS.update(_m.HANDLERS)

__all__ = ["HANDLERS"]
