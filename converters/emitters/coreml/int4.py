"""Core ML storage of an int4 plan (``converters.int4``): the plan's integers, nothing re-rounded.

``store_plan(mlmodel, plan, conv_names, channel_scale, folded_node[, affine])`` replaces the weight constant of every
planned ``conv`` / ``linear`` by ``constexpr_blockwise_shift_scale`` (iOS18 / macOS15): int4 (or
int8) data in the ONNX weight layout, one fp16 scale per output channel and block of input
channels. ``conv_names`` maps MIL op names to ONNX node names. A per-channel ``1/std`` the emitter
folded into the first convolution's weights (``channel_scale``) goes into that layer's scales.
An all-8-bit plan (``converters.int4.plan_int8``, Core ML int8) is stored as
``constexpr_affine_dequantize`` (iOS16+) when ``affine``.
``read_integers(path)`` gives back ``node -> (bits, [out, K])`` from a saved package.
"""
from __future__ import annotations

import numpy as np

from edgeinfer.errors import EdgeInferError

from ...int4.plan import Int4Plan, LayerQuant


def node_of(op_name: str, conv_names: dict[str, str]) -> str | None:
    """ONNX node of a MIL conv/linear op (coremltools' fp16 pass renames it ``<name>_cast_fp16``)."""
    return conv_names.get(op_name) or conv_names.get(op_name.removesuffix("_cast_fp16"))


def _data_and_scale(lq: LayerQuant, shape: tuple[int, ...], channel_scale: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Integers shaped like the MIL weight and scales of the same rank (block sizes = shape / scale shape)."""
    rows = lq.q.shape[0]
    scales = lq.scales if not lq.per_tensor else np.full((rows, 1), lq.scales.reshape(-1)[0], np.float32)
    if lq.layer.op != "Conv":
        return lq.q.reshape(shape), scales
    data = lq.q.reshape(shape)                                        # [O, I/g, kh, kw]
    s = scales.reshape(rows, -1, 1, 1)                                # [O, nblocks, 1, 1]
    if channel_scale is not None:                                    # 1/std folded per input channel
        s = np.repeat(s, shape[1] // s.shape[1], axis=1) * channel_scale.reshape(1, -1, 1, 1)
    return data, s


def store_plan(mlmodel, plan: Int4Plan, conv_names: dict[str, str], channel_scale: np.ndarray | None,
               folded_node: str | None, affine: bool = False, keep_float: frozenset[str] = frozenset()):
    """The compressed MLModel (see module docstring); planned layers in ``keep_float`` keep their float
    weights. Raises if any other planned layer is not found.

    ``affine``: an all-8-bit per-channel plan as ``constexpr_affine_dequantize`` (iOS16+, zero point 0)
    instead; that op holds no scale per input channel, so the layer with the folded ``channel_scale``
    must be in ``keep_float``."""
    from coremltools.converters.mil.mil import Builder as mb
    from coremltools.converters.mil.mil import types
    from coremltools.converters.mil.mil.passes.graph_pass import AbstractGraphPass
    from coremltools.models.utils import _apply_graph_pass

    if affine and any(lq.bits != 8 or lq.scales.shape[1] != 1 for lq in plan.layers.values()):
        raise EdgeInferError("Core ML: only an all-8-bit per-channel plan can be stored as constexpr_affine_dequantize")
    done: set[str] = set()

    class _StorePlan(AbstractGraphPass):
        def apply(self, prog):
            for f in prog.functions.values():
                for op in list(f.operations):
                    node = node_of(op.name, conv_names)
                    lq = plan.get(node) if node else None
                    if lq is None or op.op_type not in ("conv", "linear"):
                        continue
                    wvar = op.inputs["weight"]
                    if wvar.op is None or wvar.op.op_type != "const":
                        continue
                    folded = channel_scale is not None and node == folded_node
                    if node in keep_float:
                        continue
                    if affine and folded:
                        raise EdgeInferError(f"Core ML: {node} has input scaling folded per input channel, which "
                                             "constexpr_affine_dequantize cannot hold; keep it in float")
                    data, scale = _data_and_scale(lq, tuple(wvar.shape), channel_scale if folded else None)
                    dtype = types.np_int4_dtype if lq.bits == 4 else np.int8
                    with f:
                        if affine:
                            new = mb.constexpr_affine_dequantize(
                                quantized_data=data.astype(np.int8), zero_point=np.int8(0),
                                scale=scale.reshape(-1).astype(wvar.val.dtype), axis=0, before_op=op,
                                name=wvar.name + "_int8")
                        else:
                            new = mb.constexpr_blockwise_shift_scale(
                                data=data.astype(dtype), scale=scale.astype(wvar.val.dtype), before_op=op,
                                name=wvar.name + "_int" + str(lq.bits))
                        op.enclosing_block.replace_uses_of_var_after_op(anchor_op=new.op, old_var=wvar, new_var=new,
                                                                       no_check_var_types=True)
                    done.add(node)

    from coremltools import _SPECIFICATION_VERSION_IOS_16, _SPECIFICATION_VERSION_IOS_18
    out = _apply_graph_pass(mlmodel, _StorePlan(), skip_model_load=True,
                            spec_version=_SPECIFICATION_VERSION_IOS_16 if affine else _SPECIFICATION_VERSION_IOS_18)
    missing = sorted(set(plan.layers) - done - set(keep_float))
    if missing:
        raise EdgeInferError(f"Core ML int4: planned layers not found in the MIL program: {', '.join(missing[:5])}; "
                             "give the emitter the cleaned graph (BatchNormalization folded: converters.clean.clean_model)")
    return out


def read_integers(path) -> dict[str, tuple[int, np.ndarray]]:
    """node (MIL op name of the consumer) -> (bits, integers [out, K]) from a saved package."""
    from .verify import _mtime, _program
    from pathlib import Path

    prog = _program(str(Path(path).resolve()), _mtime(path))
    consumers: dict[str, str] = {}
    for o in prog.block.operations:
        if o.type in ("conv", "linear"):
            for b in o.inputs["weight"].arguments:
                consumers[b.name] = o.outputs[0].name
    found = {}
    for o in prog.block.operations:
        if o.type not in ("constexpr_blockwise_shift_scale", "constexpr_affine_dequantize") or o.outputs[0].name not in consumers:
            continue
        if o.type == "constexpr_affine_dequantize":        # iOS16 constexpr ops hold their data as attributes
            value = o.attributes["quantized_data"]
        else:
            value = o.inputs["data"].arguments[0].value
        v = prog.value(value)
        bits = 4 if value.type.tensorType.dataType == _int4_enum() else 8
        q = np.asarray(v).astype(np.int8)
        found[consumers[o.outputs[0].name]] = (bits, q.reshape(q.shape[0], -1))
    return found


def _int4_enum() -> int:
    from coremltools.proto import MIL_pb2
    return MIL_pb2.DataType.INT4
