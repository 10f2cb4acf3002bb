"""fp16-weight ONNX sources (e.g. exported with ``keep_io_types``): the same graph in float32.

Every float16 tensor (initializers, Constant values, value infos, I/O) becomes float32 holding the
same values (the fp16 -> fp32 cast is exact), Casts to float16 become Casts to float32, and Casts
that are then float32 -> float32 are removed. The converter's float recipes start from that graph;
verification still runs the source as given.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from ..load import all_tensors

FP16, FP32 = TensorProto.FLOAT16, TensorProto.FLOAT


def has_fp16_weights(model: onnx.ModelProto) -> bool:
    return any(t.data_type == FP16 for t in all_tensors(model))


def _upcast_tensor(t: TensorProto) -> None:
    arr = numpy_helper.to_array(t).astype(np.float32)
    t.CopyFrom(numpy_helper.from_array(arr, t.name))


def upcast_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """A float32 copy of a model with float16 weights and/or float16 compute."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    for t in all_tensors(out):
        if t.data_type == FP16:
            _upcast_tensor(t)
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        if vi.type.tensor_type.elem_type == FP16:
            vi.type.tensor_type.elem_type = FP32
    for node in g.node:
        for a in node.attribute:
            if node.op_type in ("Cast", "CastLike", "RandomNormal", "RandomUniform", "EyeLike") and a.name in ("to", "dtype") \
                    and a.i == FP16:
                a.i = FP32
    _drop_float_casts(out)
    return out


def _drop_float_casts(model: onnx.ModelProto) -> None:
    """Remove Cast(to=float) whose input is already float32 (graph outputs keep their name)."""
    g = model.graph
    types = {vi.name: vi.type.tensor_type.elem_type for vi in list(g.input) + list(g.value_info)}
    types.update({t.name: t.data_type for t in g.initializer})
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    types.update({vi.name: vi.type.tensor_type.elem_type for vi in inferred.graph.value_info})
    outputs = {o.name for o in g.output}
    for node in list(g.node):
        if node.op_type != "Cast" or types.get(node.input[0]) != FP32:
            continue
        to = next(a.i for a in node.attribute if a.name == "to")
        if to != FP32:
            continue
        if node.output[0] in outputs:
            node.op_type = "Identity"
            del node.attribute[:]
            continue
        for other in g.node:
            for i, name in enumerate(other.input):
                if name == node.output[0]:
                    other.input[i] = node.input[0]
        g.node.remove(node)
