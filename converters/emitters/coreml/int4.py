"""Core ML storage of an int4 plan (``converters.int4``): the plan's integers, nothing re-rounded.

``store_plan(mlmodel, plan, conv_names, channel_scale)`` replaces the weight constant of every
planned ``conv`` / ``linear`` by ``constexpr_blockwise_shift_scale`` (iOS18 / macOS15): int4 (or
int8) data in the ONNX weight layout, one fp16 scale per output channel and block of input
channels. ``conv_names`` maps MIL op names to ONNX node names. A per-channel ``1/std`` the emitter
folded into the first convolution's weights (``channel_scale``) goes into that layer's scales.
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
               folded_node: str | None):
    """The compressed MLModel (see module docstring); raises if a planned layer is not found."""
    from coremltools.converters.mil.mil import Builder as mb
    from coremltools.converters.mil.mil import types
    from coremltools.converters.mil.mil.passes.graph_pass import AbstractGraphPass
    from coremltools.models.utils import _apply_graph_pass

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
                    data, scale = _data_and_scale(lq, tuple(wvar.shape),
                                                  channel_scale if node == folded_node else None)
                    dtype = types.np_int4_dtype if lq.bits == 4 else np.int8
                    with f:
                        new = mb.constexpr_blockwise_shift_scale(
                            data=data.astype(dtype), scale=scale.astype(wvar.val.dtype), before_op=op,
                            name=wvar.name + "_int" + str(lq.bits))
                        op.enclosing_block.replace_uses_of_var_after_op(anchor_op=new.op, old_var=wvar, new_var=new,
                                                                       no_check_var_types=True)
                    done.add(node)

    from coremltools import _SPECIFICATION_VERSION_IOS_18
    out = _apply_graph_pass(mlmodel, _StorePlan(), spec_version=_SPECIFICATION_VERSION_IOS_18, skip_model_load=True)
    missing = sorted(set(plan.layers) - done)
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
        if o.type != "constexpr_blockwise_shift_scale" or o.outputs[0].name not in consumers:
            continue
        arg = o.inputs["data"].arguments[0]
        v = prog.value(arg.value)
        bits = 4 if arg.value.type.tensorType.dataType == _int4_enum() else 8
        q = np.asarray(v).astype(np.int8)
        found[consumers[o.outputs[0].name]] = (bits, q.reshape(q.shape[0], -1))
    return found


def _int4_enum() -> int:
    from coremltools.proto import MIL_pb2
    return MIL_pb2.DataType.INT4
