"""Graph preparation before emission: pin symbolic batch dims, infer static shapes, collect constants,
fold BatchNormalization into the preceding Conv, plan activation fusion and GAP -> Flatten heads.
"""
from __future__ import annotations

import copy

import numpy as np
import onnx
from onnx import numpy_helper, shape_inference

from edgeinfer.errors import EdgeInferError

from .context import Converter
from .ops.activation import fused_kind

# producers whose TFLite op carries a fused activation
FUSABLE_PRODUCERS = {"Conv", "Gemm", "Add", "Sub", "Mul", "Div", "MaxPool", "AveragePool"}


def pin_batch(model: onnx.ModelProto) -> tuple[onnx.ModelProto, bool]:
    """Copy of ``model`` with symbolic/unknown input dim 0 set to 1; other dynamic dims are an error."""
    model = copy.deepcopy(model)
    inits = {i.name for i in model.graph.initializer}
    pinned = False
    for inp in model.graph.input:
        if inp.name in inits:
            continue
        for i, d in enumerate(inp.type.tensor_type.shape.dim):
            if d.HasField("dim_value") and d.dim_value > 0:
                continue
            if i != 0:
                raise EdgeInferError(f"TFLite emitter: input {inp.name!r} has dynamic dimension {i} "
                                     f"({d.dim_param or '?'}); only the batch dimension may be dynamic: fix the input size")
            d.Clear()
            d.dim_value = 1
            pinned = True
    if pinned:  # intermediate shapes were inferred with the symbolic batch: infer them again
        del model.graph.value_info[:]
        for out in model.graph.output:
            for d in out.type.tensor_type.shape.dim:
                if not d.HasField("dim_value"):
                    d.Clear()
    return shape_inference.infer_shapes(model), pinned


def static_shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for vi in list(model.graph.input) + list(model.graph.value_info) + list(model.graph.output):
        tt = vi.type.tensor_type
        if not tt.HasField("shape"):
            continue
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
        if all(d is not None for d in dims):
            shapes[vi.name] = tuple(dims)
    return shapes


def constants_from_nodes(ctx: Converter) -> None:
    """Constant nodes become entries of ``ctx.consts`` (they emit no operator)."""
    for node in ctx.graph.node:
        if node.op_type == "Constant":
            attr = node.attribute[0]
            if attr.name != "value":
                raise EdgeInferError(f"TFLite emitter: Constant node {node.output[0]!r} uses {attr.name!r}; only 'value' is supported")
            ctx.consts[node.output[0]] = numpy_helper.to_array(attr.t)


def fold_batchnorm(ctx: Converter) -> None:
    """Fold BatchNormalization into a Conv whose output only it consumes (output keeps the BN's name)."""
    consumers = _consumers(ctx.graph)
    producers = {o: n for n in ctx.graph.node for o in n.output}
    graph_outs = {o.name for o in ctx.graph.output}
    for node in ctx.graph.node:
        if node.op_type != "BatchNormalization":
            continue
        conv = producers.get(node.input[0])
        if conv is None or conv.op_type != "Conv" or len(consumers[node.input[0]]) != 1 or node.input[0] in graph_outs \
                or not all(n in ctx.consts for n in node.input[1:5]) or conv.input[1] not in ctx.consts:
            raise EdgeInferError(f"TFLite emitter: node {node.name or node.output[0]!r} (BatchNormalization) does not follow "
                                 "a Conv it can be folded into; run clean_model (BN folding) first")
        eps = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
        gamma, beta, mean, var = (ctx.consts[n].astype(np.float64) for n in node.input[1:5])
        s = gamma / np.sqrt(var + eps)
        w = ctx.consts[conv.input[1]].astype(np.float64)
        b = ctx.consts[conv.input[2]].astype(np.float64) if len(conv.input) > 2 and conv.input[2] else np.zeros(w.shape[0])
        wname, bname = conv.output[0] + "_bnfold_w", conv.output[0] + "_bnfold_b"
        ctx.consts[wname] = (w * s.reshape(-1, 1, 1, 1)).astype(np.float32)
        ctx.consts[bname] = ((b - mean) * s + beta).astype(np.float32)
        ctx.shapes[node.output[0]] = ctx.shapes.get(node.output[0], ctx.shapes.get(conv.output[0]))
        del conv.input[1:]
        conv.input.extend([wname, bname])
        conv.output[0] = node.output[0]
        node.op_type = "Constant"  # marked: skipped by the emitter
        node.ClearField("input")
        node.ClearField("output")


def _consumers(graph) -> dict[str, list[int]]:
    cons: dict[str, list[int]] = {}
    for i, n in enumerate(graph.node):
        for name in n.input:
            cons.setdefault(name, []).append(i)
    return cons


def plan_fusion(ctx: Converter) -> None:
    """Relu / Clip(0,6) / Clip(-1,1) consumed alone after a fusable producer become a fused activation."""
    consumers = _consumers(ctx.graph)
    graph_outs = {o.name for o in ctx.graph.output}
    nodes = list(ctx.graph.node)
    for i, n in enumerate(nodes):
        if n.op_type not in FUSABLE_PRODUCERS or len(n.output) != 1 or n.output[0] in graph_outs:
            continue
        if n.op_type in ("Add", "Sub", "Mul", "Div") and all(x in ctx.consts for x in n.input):
            continue
        users = consumers.get(n.output[0], [])
        if len(users) != 1:
            continue
        act_node = nodes[users[0]]
        if act_node.input[0] != n.output[0]:
            continue
        ctx.node = act_node
        kind = fused_kind(ctx, act_node) if act_node.op_type in ("Relu", "Clip") else None
        if kind is not None:
            ctx.fused[i] = (kind, act_node)
            ctx.skip.add(users[0])
    ctx.node = None


def plan_gap_heads(ctx: Converter) -> None:
    """GlobalAveragePool read only by a Flatten / constant Reshape to [N, C] becomes one MEAN(keep_dims=False).

    The GAP handler then writes the Flatten's output (no RESHAPE) and the Flatten node is skipped.
    """
    consumers = _consumers(ctx.graph)
    graph_outs = {o.name for o in ctx.graph.output}
    nodes = list(ctx.graph.node)
    for i, n in enumerate(nodes):
        if n.op_type != "GlobalAveragePool" or n.output[0] in graph_outs:
            continue
        users = consumers.get(n.output[0], [])
        if len(users) != 1 or i in ctx.skip or users[0] in ctx.skip:
            continue
        head = nodes[users[0]]
        if head.op_type not in ("Flatten", "Reshape") or head.input[0] != n.output[0]:
            continue
        if head.op_type == "Reshape" and (len(head.input) < 2 or head.input[1] not in ctx.consts):
            continue
        x_shape, y_shape = ctx.shapes.get(n.input[0]), ctx.shapes.get(head.output[0])
        if x_shape is None or y_shape is None or len(x_shape) < 3 or tuple(y_shape) != tuple(x_shape[:2]):
            continue
        ctx.gap_heads[i] = head
        ctx.skip.add(users[0])
