"""Input layout: which order an image input declares, and exact graph surgery between NHWC and NCHW.

The converter works on NCHW graphs (calibration, pruning, every emitter). An NHWC model is
seen through ``nchw_view``: the input becomes NCHW and a Transpose to NHWC feeds the original
graph; the Transpose(0,3,1,2) that NHWC exports (tf2onnx, Keras) put right after their input
cancels against it and both disappear, so the emitters see a plain NCHW graph. ``nhwc_input``
does the opposite for an artifact that should take NHWC again (the ONNX artifact of an NHWC source).
"""
from __future__ import annotations

import onnx
from onnx import helper

TO_NHWC = [0, 2, 3, 1]
TO_NCHW = [0, 3, 1, 2]


def detect_layout(dims: list) -> str | None:
    """"NCHW" or "NHWC" for a rank-4 image input with 1 or 3 channels, else None."""
    if len(dims) != 4:
        return None
    chan = [d in (1, 3) for d in dims]
    if chan[1] and not chan[3]:
        return "NCHW"
    if chan[3] and not chan[1]:
        return "NHWC"
    if chan[1] and chan[3]:  # e.g. [1, 3, 3, 3]: the common case wins
        return "NCHW"
    return None


def _perm(node: onnx.NodeProto) -> list[int] | None:
    for a in node.attribute:
        if a.name == "perm":
            return list(a.ints)
    return None


def _rename_uses(graph: onnx.GraphProto, old: str, new: str) -> None:
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new


def _permute_input(model: onnx.ModelProto, perm_new_to_old: list[int], back: list[int], suffix: str) -> onnx.ModelProto:
    """Copy of ``model`` whose single input is permuted by ``perm_new_to_old`` (new dim i = old dim
    perm[i]); a Transpose(``back``) restores the old layout for the original consumers, and consumers
    that are exactly Transpose(``perm_new_to_old``) are bypassed."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    inits = {t.name for t in g.initializer}
    inp = next(i for i in g.input if i.name not in inits)
    name, inner = inp.name, inp.name + suffix
    _rename_uses(g, name, inner)
    outputs = {o.name for o in g.output}
    cancelled = [n for n in g.node if list(n.input) == [inner] and n.op_type == "Transpose"
                 and _perm(n) == perm_new_to_old and n.output[0] not in outputs]
    for n in cancelled:
        _rename_uses(g, n.output[0], name)
        g.node.remove(n)
    stale = {inner} | {n.output[0] for n in cancelled}
    keep = [v for v in g.value_info if v.name not in stale]
    del g.value_info[:]
    g.value_info.extend(keep)
    if any(inner in n.input for n in g.node):
        g.node.insert(0, helper.make_node("Transpose", [name], [inner], perm=back, name=name + suffix + "_transpose"))
    dims = list(inp.type.tensor_type.shape.dim)
    new_dims = [dims[p] for p in perm_new_to_old]
    copies = []
    for d in new_dims:
        c = onnx.TensorShapeProto.Dimension()
        c.CopyFrom(d)
        copies.append(c)
    del inp.type.tensor_type.shape.dim[:]
    inp.type.tensor_type.shape.dim.extend(copies)
    return out


def nchw_view(model: onnx.ModelProto) -> onnx.ModelProto:
    """An NHWC-input model as an exactly equivalent NCHW-input model (same input name)."""
    return _permute_input(model, TO_NCHW, TO_NHWC, "__nhwc")


def nhwc_input(model: onnx.ModelProto) -> onnx.ModelProto:
    """An NCHW-input model as an exactly equivalent NHWC-input model (same input name)."""
    return _permute_input(model, TO_NHWC, TO_NCHW, "__nchw")
