"""Int8 activations simulated on a float ONNX graph (for the int4 search of full-integer formats).

A TFLite int4 artifact computes with int8 activations (scales from the shared calibration
ranges), so the 4/8-bit search must score a mix the way that artifact will run, not with float
activations. ``int8_activations(model, ranges)`` returns a copy where every activation tensor the
TFLite emitter stores as int8 is rounded to its int8 grid (``QuantizeLinear`` ->
``DequantizeLinear``, scale and zero point from ``quant_math.qparams_from_range`` like the
emitter); the weights stay float initializers. Run it with ``cpu_session(fuse_qdq=False)`` (as
``evaluate.WeightSession`` does): by default ONNX Runtime would quantize those weights itself and
fuse them into its int8 kernels, making the figure depend on the host's int8 arithmetic (and
on x86 without VNNI, its saturation). Not simulated: the output of a
producer whose only reader is a Relu/Clip (TFLite fuses the activation; only the clipped tensor
is stored), and int32 bias / fixed-point requantization rounding (below the int8 step).
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..quant_math import qparams_from_range

FUSED_PRODUCERS = {"Conv", "Gemm", "Add", "Sub", "Mul", "Div", "MaxPool", "AveragePool"}
FUSED_ACTIVATIONS = {"Relu", "Clip"}


def _fused_outputs(graph: onnx.GraphProto) -> set[str]:
    """Tensors TFLite never stores: a fusable producer's output read only by a Relu/Clip."""
    readers: dict[str, list[onnx.NodeProto]] = {}
    for n in graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    outs = {o.name for o in graph.output}
    return {n.output[0] for n in graph.node
            if n.op_type in FUSED_PRODUCERS and len(n.output) == 1 and n.output[0] not in outs
            and len(readers.get(n.output[0], [])) == 1 and readers[n.output[0]][0].op_type in FUSED_ACTIVATIONS
            and readers[n.output[0]][0].input[0] == n.output[0]}


def _qdq(name: str, src: str, dst: str, rng: tuple[float, float]) -> tuple[list, list]:
    scale, zp = qparams_from_range(rng[0], rng[1], "int8")
    inits = [numpy_helper.from_array(np.array(scale, np.float32), name + "/s"),
             numpy_helper.from_array(np.array(zp, np.int8), name + "/z")]
    nodes = [helper.make_node("QuantizeLinear", [src, name + "/s", name + "/z"], [name + "/q"], name=name + "/Q"),
             helper.make_node("DequantizeLinear", [name + "/q", name + "/s", name + "/z"], [dst], name=name + "/DQ")]
    return inits, nodes


def int8_activations(model: onnx.ModelProto, ranges: dict[str, tuple[float, float]]) -> onnx.ModelProto:
    """A copy of ``model`` with int8 fake quantization on every stored activation that has a range."""
    out = onnx.ModelProto.FromString(model.SerializeToString())
    g = out.graph
    inits = {t.name for t in g.initializer}
    skip = _fused_outputs(g) | inits
    outputs = {o.name for o in g.output}
    rename: dict[str, str] = {}
    new_nodes: list[onnx.NodeProto] = []
    new_inits: list[onnx.TensorProto] = []

    def simulate(t: str) -> list[onnx.NodeProto]:
        if t in skip or t not in ranges or t in rename:
            return []
        ini, nodes = _qdq(f"actsim/{t}", t, t + "/actsim", ranges[t])
        new_inits.extend(ini)
        rename[t] = t + "/actsim"
        return nodes

    for i in g.input:
        new_nodes.extend(simulate(i.name))
    for n in g.node:
        for k, x in enumerate(n.input):
            if x in rename:
                n.input[k] = rename[x]
        new_nodes.append(n)
        for t in n.output:
            new_nodes.extend(simulate(t))
    for t in outputs & set(rename):        # graph outputs: the producer writes a twin, the DQ writes the name
        twin = t + "/float"
        for n in new_nodes:
            n.output[:] = [twin if o == t else o for o in n.output]
            n.input[:] = [twin if x == t else x for x in n.input]
        for n in new_nodes:
            n.output[:] = [t if o == rename[t] else o for o in n.output]
            n.input[:] = [t if x == rename[t] else x for x in n.input]
    del g.node[:]
    g.node.extend(new_nodes)
    g.initializer.extend(new_inits)
    return out
