"""Dynamic input dimensions fixed from what the user said (``--input-shape`` or the preprocessing size).

Only the batch being dynamic is left alone (every emitter handles it). A dynamic height, width or
channel count is fixed: from ``--input-shape`` (in the model's own dimension order), else height
and width from the preprocessing (``--letterbox`` / ``--crop`` / ``--resize``) with batch 1.
Shape sub-graphs (``Shape`` -> ``Gather`` -> ``Reshape``, as dynamic exports carry) then fold to
constants in the clean-up step.
"""
from __future__ import annotations

from typing import Any

import onnx
from onnxruntime.tools.onnx_model_utils import make_input_shape_fixed

from edgeinfer.errors import EdgeInferError


def parse_input_shape(text: str | None) -> list[int] | None:
    """"1,3,640,640" -> [1, 3, 640, 640]; anything else is a one-line error."""
    if text is None:
        return None
    try:
        dims = [int(v) for v in str(text).replace("x", ",").split(",")]
    except ValueError:
        dims = []
    if len(dims) != 4 or any(d < 1 for d in dims):
        raise EdgeInferError(f"--input-shape {text!r} must be four positive integers in the model's order, "
                             "e.g. 1,3,640,640 (NCHW) or 1,128,128,3 (NHWC)")
    return dims


def declared_dims(inp: onnx.ValueInfoProto) -> list[int | str | None]:
    """The input's dimensions as declared: ints, symbolic names, or None (unnamed dynamic)."""
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in inp.type.tensor_type.shape.dim]


def hw_hint(pre: dict[str, Any]) -> tuple[int, int] | None:
    """(height, width) the preprocessing options produce, when they fix it."""
    if pre.get("resize_mode") == "letterbox" and isinstance(pre.get("letterbox"), dict):
        size = pre["letterbox"].get("size")
        return (int(size), int(size)) if size else None
    if pre.get("crop"):
        return int(pre["crop"]), int(pre["crop"])
    if pre.get("resize") and pre.get("resize_mode", "stretch") == "stretch":
        return int(pre["resize"]), int(pre["resize"])
    return None


def fixed_shape(name: str, declared: list, layout: str, given: list[int] | None,
                hint: tuple[int, int] | None) -> list[int | None] | None:
    """The shape to fix the input to (model order), or None when nothing but the batch is dynamic."""
    dynamic = [i for i, d in enumerate(declared) if not isinstance(d, int) or d < 1]
    if given is not None:
        for i, (d, g) in enumerate(zip(declared, given)):
            if isinstance(d, int) and d > 0 and d != g:
                raise EdgeInferError(f"--input-shape {','.join(map(str, given))} does not match input {name!r}, "
                                     f"declared {show_dims(declared)} ({layout}): dimension {i} is fixed at {d}")
        return list(given) if dynamic else None
    h_axis, w_axis, c_axis = (2, 3, 1) if layout == "NCHW" else (1, 2, 3)
    if not any(i in dynamic for i in (h_axis, w_axis, c_axis)):
        return None  # only the batch is dynamic: kept
    if c_axis in dynamic or hint is None:
        example = "1,3,H,W" if layout == "NCHW" else "1,H,W,3"
        raise EdgeInferError(f"input {name!r} has a dynamic shape {show_dims(declared)}; say the size: --input-shape "
                             f"{example} (or --letterbox N / --resize N --crop N)")
    shape = [d if isinstance(d, int) and d > 0 else None for d in declared]
    shape[0] = shape[0] or 1
    shape[h_axis], shape[w_axis] = hint
    for axis, size in ((h_axis, hint[0]), (w_axis, hint[1])):
        if isinstance(declared[axis], int) and declared[axis] > 0 and declared[axis] != size:
            raise EdgeInferError(f"input {name!r} {show_dims(declared)} is fixed at {declared[axis]} on axis {axis} but "
                                 f"the preprocessing makes {size}; fix --letterbox/--resize/--crop")
    return shape


def fix_input_shape(model: onnx.ModelProto, name: str, shape: list[int]) -> onnx.ModelProto:
    """A copy of ``model`` whose input ``name`` has the static ``shape``; stale inferred shapes dropped."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.value_info[:]  # symbolic intermediate shapes are re-inferred from the fixed input
    for o in out.graph.output:
        for d in o.type.tensor_type.shape.dim:
            if not d.HasField("dim_value"):
                d.Clear()
    try:
        make_input_shape_fixed(out.graph, name, shape)
    except ValueError as exc:
        raise EdgeInferError(f"cannot fix input {name!r} to {shape}: {exc}") from None
    return out


def show_dims(dims: list) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"
