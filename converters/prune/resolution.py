"""The input resolution as one more pruning dimension (MobileNet's resolution multiplier).

A convolutional classifier with global pooling runs at any input size; its MACs scale with the
number of pixels. ``candidates`` lists smaller square-scaled sizes, ``measure`` gives each one's
label-free cost (``allocate.output_error`` of the model at that size against the same model at
full size, on the same images brought to that size by ``at_size``: the metric the channel groups are measured by) and gain (fraction of MACs removed), ``resize_input`` makes
the model take the new size (refused when an output's shape would change, e.g. a detector's grid),
``resample`` brings preprocessed samples to it, and ``scaled_preprocess`` rewrites the
preprocessing so images are read at the new size with the same field of view. ``at_size`` gives
calibration images at a size: read again from their files (``ReadAt``, what the pruned model will
see) when the caller can, resampled otherwise.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import onnx
from PIL import Image

from edgeinfer.errors import EdgeInferError

from . import flops
from .allocate import model_outputs, output_error
from .graph import infer_shapes


@dataclass
class ResolutionCurve:
    """Measured cost of each smaller input size: (height, width) -> output error, MACs removed."""

    full: tuple[int, int]
    sizes: list[tuple[int, int]]
    errors: list[float]
    gains: list[float]
    plans: list[dict] = field(default_factory=list)   # size + channel plans the joint search measured

    def to_dict(self) -> dict:
        return {"full": list(self.full), "sizes": [list(s) for s in self.sizes],
                "error": [round(e, 5) for e in self.errors], "macs_removed": [round(g, 5) for g in self.gains],
                "joint_plans": self.plans}


def fixed_hw(model: onnx.ModelProto) -> tuple[int, int] | None:
    """(H, W) of the first graph input when it is a fixed-size NCHW image, else None."""
    dims = model.graph.input[0].type.tensor_type.shape.dim
    hw = tuple(d.dim_value for d in dims[2:4]) if len(dims) == 4 else ()
    return hw if len(hw) == 2 and min(hw) > 0 else None  # type: ignore[return-value]


def input_hw(model: onnx.ModelProto) -> tuple[int, int]:
    """(H, W) of the first graph input (NCHW), refused when not fixed."""
    hw = fixed_hw(model)
    if hw is None:
        raise EdgeInferError("--prune-resolution needs a model with one fixed-size NCHW image input")
    return hw


def candidates(full: tuple[int, int], step: int, min_scale: float) -> list[tuple[int, int]]:
    """Smaller sizes, heights in steps of ``step`` px down to ``min_scale`` of the full height;
    widths scaled alike (rounded to ``step`` too)."""
    h, w = full
    out = []
    for hh in range(((h - 1) // step) * step, 0, -step):
        if hh < min_scale * h:
            break
        ww = max(step, int(round(w * hh / h / step)) * step)
        if hh < h and ww <= w:
            out.append((hh, ww))
    return out


def _output_shapes(model: onnx.ModelProto) -> list[list]:
    return [[d.dim_value if d.HasField("dim_value") else d.dim_param for d in o.type.tensor_type.shape.dim][1:]
            for o in model.graph.output]


def resize_input(model: onnx.ModelProto, hw: tuple[int, int]) -> onnx.ModelProto:
    """Copy of ``model`` taking (N, C, *hw) inputs, shapes re-inferred; refused (one line) when an
    output's shape changes with it or a node fixes the spatial size."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    dims = m.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_value, dims[3].dim_value = int(hw[0]), int(hw[1])
    before = _output_shapes(model)
    for o in m.graph.output:
        o.type.tensor_type.ClearField("shape")
    try:
        m = infer_shapes(m)
    except Exception as exc:  # noqa: BLE001 - shape inference errors name the node
        raise EdgeInferError(f"--prune-resolution: this model does not run at {hw[0]}x{hw[1]} "
                             f"({str(exc).splitlines()[0][:160]}); prune channels only") from None
    after = _output_shapes(m)
    if after != before:
        raise EdgeInferError(f"--prune-resolution: the model's outputs change shape with the input size "
                             f"({before} at full size, {after} at {hw[0]}x{hw[1]}: a detector's grid or a "
                             "flattened feature map); it applies to classifiers with global pooling only")
    for o, src in zip(m.graph.output, model.graph.output):   # keep the declared outputs as they were
        o.type.CopyFrom(src.type)
    return m


def resample(samples: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """NCHW float samples resized to ``hw`` (Pillow bilinear, which averages when shrinking)."""
    x = np.asarray(samples, np.float32)
    if x.shape[2:] == tuple(hw):
        return x
    out = np.empty((*x.shape[:2], *hw), np.float32)
    for i in range(x.shape[0]):
        for c in range(x.shape[1]):
            im = Image.fromarray(x[i, c], mode="F").resize((hw[1], hw[0]), Image.BILINEAR)
            out[i, c] = np.asarray(im, np.float32)
    return out


ReadAt = Callable[[tuple[int, int], int], np.ndarray]
"""``read(hw, n)``: the first ``n`` calibration images (in the order of the full-size samples) read
again from their files at input size ``hw`` with the field of view kept (``scaled_preprocess``)."""


def at_size(samples: np.ndarray, part: slice, hw: tuple[int, int] | None, read: ReadAt | None = None) -> np.ndarray:
    """``samples[part]`` at input size ``hw`` (None: as they are). With ``read`` (``samples`` then being
    the first images of the set it reads) they are read again from their files, as the pruned model
    will see them; without, ``resample``d (one bilinear pass more than the deployed preprocessing)."""
    x = np.asarray(samples[part], np.float32)
    if hw is None or tuple(hw) == tuple(x.shape[2:]):
        return x
    if read is None:
        return resample(x, hw)
    return np.asarray(read(tuple(hw), len(samples) if part.stop is None else min(part.stop, len(samples)))[part],
                      np.float32)


def scaled_preprocess(pre: dict, full: tuple[int, int], hw: tuple[int, int]) -> dict:
    """Preprocessing that reads images at ``hw`` with the field of view it had at ``full``."""
    if pre.get("resize_mode") == "letterbox" or pre.get("letterbox"):
        raise EdgeInferError("--prune-resolution does not apply to letterboxed (detector) inputs")
    s = hw[0] / full[0]
    out = dict(pre)
    if pre.get("crop"):
        out["crop"] = int(hw[0])
        if pre.get("resize"):
            out["resize"] = max(int(hw[0]), int(round(pre["resize"] * s)))
    elif pre.get("resize"):
        if pre.get("resize_mode") == "stretch" and hw[0] != hw[1]:
            raise EdgeInferError("--prune-resolution: a non-square stretch resize cannot be scaled; prune channels only")
        out["resize"] = int(hw[0]) if pre.get("resize_mode") == "stretch" else max(1, int(round(pre["resize"] * s)))
    return out


def measure(model: onnx.ModelProto, samples: np.ndarray, sizes: list[tuple[int, int]],
            ref: list[np.ndarray] | None = None, read: ReadAt | None = None) -> ResolutionCurve:
    """Cost and gain of each size in ``sizes`` for ``model`` (shape-inferred, full-size ``samples``;
    ``read`` as in ``at_size``)."""
    full = input_hw(model)
    macs0 = flops.count(model, shapes_ready=True).macs
    ref = ref if ref is not None else model_outputs(model, samples)
    curve = ResolutionCurve(full, [], [], [])
    for hw in sizes:
        m = resize_input(model, hw)
        curve.sizes.append(hw)
        curve.errors.append(output_error(ref, model_outputs(m, at_size(samples, slice(None), hw, read))))
        curve.gains.append(1.0 - flops.count(m, shapes_ready=True).macs / macs0)
    return curve


def rescale_metadata(model: onnx.ModelProto, full: tuple[int, int], hw: tuple[int, int]) -> None:
    """Rewrite the model's ``edgeinfer.preprocess`` metadata (if any) for input size ``hw``, in place."""
    for prop in model.metadata_props:
        if prop.key == "edgeinfer.preprocess":
            prop.value = json.dumps(scaled_preprocess(json.loads(prop.value), full, hw))
