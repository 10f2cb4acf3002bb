"""W8A8 for Core ML: int8 activations from the SHARED calibration, inserted by coremltools' own passes.

coremltools' ``linear_quantize_activations`` measures activation ranges with ``MLModel.predict``
(macOS only) and then runs three MIL graph passes:
``compression::insert_prefix_quantize_dequantize_pair`` and
``compression::insert_suffix_quantize_dequantize_pair`` (both take ``activation_stats``:
MIL var name -> {"rmin", "rmax"}) and ``common::dequantize_quantize_pair_elimination``.
Here the same passes run, in the same order and with the same config, on statistics taken from
``CalibrationResult.ranges`` (ONNX tensor names) instead of from ``predict``:

* a MIL var named ``mil_name(t)`` (or ``mil_name(t) + "_cast_fp16"`` after the fp16 pass) takes the
  range of ONNX tensor ``t``;
* other vars get their range by interval propagation from their input through range-preserving
  ops (cast, reshape, ...) and affine ops with a constant operand (the ImageType scale/bias and
  per-channel 1/std ops); an image input's pixel range is the calibrated input range mapped back
  through the preprocessing;
* ranges of concat inputs/outputs are unified as coremltools does before inserting the pairs;
* an op whose tensors still have no range keeps float activations (counted in the note).

``quantize_activations(mlmodel, ranges, image, method)`` returns ``(mlmodel, note)``. The program
must target iOS17/macOS14 or newer (the ``quantize``/``dequantize`` ops' opset).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from edgeinfer.errors import EdgeInferError, NotSupportedYet

from .onnx_to_mil import mil_name

FP16_SUFFIX = "_cast_fp16"     # suffix coremltools' fp16 pass gives the vars it retypes
# ops whose output range lies inside their (first) input's range
PRESERVING = {"cast", "identity", "reshape", "transpose", "squeeze", "expand_dims", "slice_by_index",
              "slice_by_size", "gather", "split", "max_pool", "reduce_max", "upsample_nearest_neighbor", "pad"}
AFFINE = {"mul", "add", "sub", "real_div"}
# what the coremltools passes quantize (insert_prefix_/insert_suffix_quantize_dequantize_pair)
QUANT_OPS = {"conv", "avg_pool", "max_pool", "linear", "add"}
SUFFIX_ACTIVATIONS = {"leaky_relu", "tanh", "scaled_tanh", "sigmoid", "hard_sigmoid", "relu", "relu6"}
MODES = ("linear_symmetric", "linear")

Interval = tuple[np.ndarray, np.ndarray]


def _const(var) -> np.ndarray | None:
    return None if var.val is None or var.op is None or var.op.op_type != "const" else np.asarray(var.val, np.float64)


def _affine(op_type: str, x: Interval, c: np.ndarray, const_first: bool) -> Interval | None:
    lo, hi = x
    if op_type == "add":
        return lo + c, hi + c
    if op_type == "sub":
        return (c - hi, c - lo) if const_first else (lo - c, hi - c)
    if op_type == "mul":
        a, b = lo * c, hi * c
        return np.minimum(a, b), np.maximum(a, b)
    if op_type == "real_div" and not const_first and np.all(c != 0):
        a, b = lo / c, hi / c
        return np.minimum(a, b), np.maximum(a, b)
    return None


def pixel_interval(lo: float, hi: float, image) -> Interval:
    """Per-channel pixel range whose preprocessing (``image``: an ``ImageSpec``) covers [lo, hi]."""
    c = len(image.bias)
    ch = np.ones(c) if image.channel_scale is None else np.asarray(image.channel_scale, np.float64)
    bias = np.asarray(image.bias, np.float64)
    a, b = (lo / ch - bias) / image.image_scale, (hi / ch - bias) / image.image_scale
    shape = (1, c, 1, 1)
    return (np.clip(np.minimum(a, b), 0, 255).reshape(shape), np.clip(np.maximum(a, b), 0, 255).reshape(shape))


def var_ranges(func, ranges: dict[str, tuple[float, float]], image=None) -> dict[str, Interval]:
    """Range of every non-const var of the pymil ``func`` that the calibration determines."""
    by_mil = {mil_name(k): (float(v[0]), float(v[1])) for k, v in ranges.items()}
    known: dict[str, Interval] = {}
    for name, var in func.inputs.items():
        if name in by_mil:
            lo, hi = by_mil[name]
            known[name] = pixel_interval(lo, hi, image) if image is not None else (np.float64(lo), np.float64(hi))
    for op in func.operations:
        if op.op_type == "const":
            continue
        out = op.outputs[0].name
        base = out[:-len(FP16_SUFFIX)] if out.endswith(FP16_SUFFIX) else out
        if base in by_mil and base not in func.inputs:
            lo, hi = by_mil[base]
            known[out] = (np.float64(lo), np.float64(hi))
            continue
        if op.op_type in PRESERVING:
            src = op.inputs.get("x", op.inputs.get("input"))
            if src is not None and not isinstance(src, (list, tuple)) and src.name in known:
                for o in op.outputs:
                    known[o.name] = known[src.name]
        elif op.op_type in AFFINE:
            x, y = op.inputs["x"], op.inputs["y"]
            cx, cy = _const(x), _const(y)
            if cy is not None and x.name in known:
                r = _affine(op.op_type, known[x.name], cy, False)
            elif cx is not None and y.name in known:
                r = _affine(op.op_type if op.op_type != "real_div" else "", known[y.name], cx, True)
            else:
                r = None
            if r is not None:
                known[out] = r
    return known


def _concat_groups(func) -> list[list[str]]:
    return [[v.name for v in op.inputs["values"]] + [op.outputs[0].name] for op in func.operations if op.op_type == "concat"]


def activation_stats(func, ranges, image=None) -> dict[str, dict[str, float]]:
    """coremltools' ``activation_stats`` (var name -> {"rmin", "rmax"}) from the shared ranges,
    with concat neighbours unified by coremltools' own helper."""
    from coremltools.optimize.coreml.experimental._post_training_quantization import (
        _adjust_concat_surrounding_activation_stats)

    stats = {k: {"rmin": float(np.min(lo)), "rmax": float(np.max(hi))} for k, (lo, hi) in var_ranges(func, ranges, image).items()}
    groups = [g for g in _concat_groups(func) if any(n in stats for n in g)]
    if groups:
        _adjust_concat_surrounding_activation_stats(groups, stats)
    return stats


def _is_const(var) -> bool:
    return var.op is not None and var.op.op_type == "const"


def needed_vars(op) -> list[str] | None:
    """Vars whose ranges the two coremltools passes read for ``op``; None if they skip it anyway."""
    if op.op_type not in QUANT_OPS or _is_const(op.inputs["x"]):
        return None
    names = [op.inputs["x"].name, op.outputs[0].name]
    if op.op_type == "add":
        if _is_const(op.inputs["y"]):
            return None
        names.append(op.inputs["y"].name)
    children = op.outputs[0].child_ops
    if children and children[0].op_type in SUFFIX_ACTIVATIONS:
        names.append(children[0].outputs[0].name)
    return names


def _passes():
    from coremltools.converters.mil.mil.passes.graph_pass import AbstractGraphPass, PassOption
    from coremltools.converters.mil.mil.passes.pass_registry import PASS_REGISTRY

    class StatsFromCalibration(AbstractGraphPass):
        """Runs first on the loaded program: sets stats and per-op config on the coremltools passes."""

        def __init__(self, ranges, image, config_for, passes):
            super().__init__()
            self.ranges, self.image, self.config_for, self.passes = ranges, image, config_for, passes
            self.counts = (0, 0)

        def apply(self, prog):
            func = prog.functions["main"]
            stats = activation_stats(func, self.ranges, self.image)
            ops = [(op, needed_vars(op)) for op in func.operations if op.op_type != "const"]
            ops = [(op, n) for op, n in ops if n is not None]
            skipped = [op.name for op, n in ops if any(v not in stats for v in n)]
            config = self.config_for(skipped)
            for p in self.passes:
                p.set_options([PassOption("config", config), PassOption("activation_stats", stats)])
            self.counts = (len(ops) - len(skipped), len(ops))

    names = ("compression::insert_prefix_quantize_dequantize_pair", "compression::insert_suffix_quantize_dequantize_pair",
             "common::dequantize_quantize_pair_elimination")
    missing = [n for n in names if n not in PASS_REGISTRY]
    if missing:
        raise NotSupportedYet(f"Core ML W8A8 is not supported with this coremltools: its graph pass {missing[0]} is missing")
    return StatsFromCalibration, [PASS_REGISTRY[n] for n in names]


def quantize_activations(mlmodel, ranges: dict[str, tuple[float, float]], image=None, method: str = "minmax",
                         mode: str = "linear_symmetric") -> tuple[Any, str]:
    """Insert int8 quantize/dequantize activation pairs into ``mlmodel`` (an iOS17+ ML Program)."""
    import coremltools as ct
    import coremltools.optimize.coreml as oc
    from coremltools.converters.mil.frontend.milproto import load as milproto_load
    from coremltools.models import utils as model_utils

    if mode not in MODES:
        raise EdgeInferError(f"Core ML W8A8 activation mode {mode!r} is not one of {', '.join(MODES)}")
    if mlmodel.get_spec().specificationVersion < ct.target.iOS17.value:
        raise EdgeInferError("Core ML W8A8 needs an iOS17/macOS14 or newer program; set runtime.coreml_target")
    if not ranges:
        raise EdgeInferError("Core ML W8A8 needs calibration ranges; give calibration images (--calib)")

    def config_for(skipped: list[str]):
        cfg = oc.OptimizationConfig(global_config=oc.OpLinearQuantizerConfig(mode=mode, dtype="int8"))
        for name in skipped:
            cfg.set_op_name(name, None)
        return cfg

    stats_cls, passes = _passes()
    stats_pass = stats_cls(ranges, image, config_for, passes[:2])
    out = model_utils._apply_graph_pass(mlmodel, [stats_pass, *passes], spec_version=ct.target.iOS17.value,
                                        pymil_load_func=milproto_load.load, skip_model_load=mlmodel.__proxy__ is None)
    done, total = stats_pass.counts
    if done == 0:
        raise EdgeInferError("Core ML W8A8: no conv/linear/pool/add op could take int8 activations "
                             "(no calibration range matches the program's tensors); use precision int8 without w8a8")
    return out, (f"int8 activations ({mode.replace('_', ' ')}) at {done} of {total} conv/linear/pool/add ops "
                 f"from the shared {method} calibration")


def program_stats(mlmodel, ranges, image=None) -> dict[str, dict[str, float]]:
    """``activation_stats`` for the ``main`` function of a saved or in-memory ML Program."""
    from coremltools.converters.mil.frontend.milproto import load as milproto_load
    from coremltools.models import utils as model_utils

    prog = model_utils._convert_model_spec_to_pymil_prog(mlmodel, mlmodel.get_spec().specificationVersion, milproto_load.load)
    return activation_stats(prog.functions["main"], ranges, image)
