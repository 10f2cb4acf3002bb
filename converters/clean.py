"""Graph clean-up with the libraries: shape inference, constant folding, BatchNorm folding.

ONNX Runtime's basic graph optimizations (constant folding, Conv+BatchNormalization fusion,
Conv+Add/Mul fusion, redundant node elimination) are applied offline and saved back as plain
ONNX, then ONNX shape inference annotates every tensor.
"""
from __future__ import annotations

import re
import tempfile
from pathlib import Path

import onnx
import onnxruntime as ort

from edgeinfer.errors import EdgeInferError


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    try:
        return onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=False, data_prop=True)
    except onnx.shape_inference.InferenceError as exc:
        raise EdgeInferError(f"ONNX shape inference failed: {str(exc).splitlines()[0]}") from None


def optimize_basic(model: onnx.ModelProto, disabled: tuple[str, ...] = ()) -> onnx.ModelProto:
    """Constant folding + BN folding via ONNX Runtime's basic-level optimizer, as plain ONNX
    (``disabled``: names of ONNX Runtime graph transformers not to run, e.g. ``ConvBNFusion``)."""
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "in.onnx", Path(tmp) / "out.onnx"
        onnx.save(model, str(src))
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        opts.optimized_model_filepath = str(dst)
        opts.log_severity_level = 3
        try:
            ort.InferenceSession(str(src), opts, providers=["CPUExecutionProvider"],
                                 **({"disabled_optimizers": list(disabled)} if disabled else {}))
        except Exception as exc:  # ORT raises several private exception types
            detail = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : |Load model from \S+ failed:", "", str(exc).splitlines()[0])
            raise EdgeInferError(f"ONNX Runtime cannot load the model ({detail.strip()}); "
                                 "re-export it with standard ONNX ops that ONNX Runtime runs") from None
        out = onnx.load(str(dst))
    # ORT keeps the original opset/IR; metadata is carried over by hand
    del out.metadata_props[:]
    out.metadata_props.extend(model.metadata_props)
    # ORT also imports every domain it knows (ai.onnx.training, ...): keep only the ones the model
    # had or a node uses, so a cleaned model saved to disk loads as its source did
    used = {op.domain for op in model.opset_import} | {n.domain for n in out.graph.node}
    kept = [op for op in out.opset_import if op.domain in used or op.domain in ("", "ai.onnx")]
    del out.opset_import[:]
    out.opset_import.extend(kept)
    return out


def clean_model(model: onnx.ModelProto, keep_batchnorm: bool = False) -> onnx.ModelProto:
    """Shape-inferred, constant-folded model (an exporter's computed ``Pad`` amounts become the
    convolutions' pads) with BatchNormalization folded into convolutions unless ``keep_batchnorm``
    (pruning's ``bn`` criterion reads it), every node named (unique names are how recipes,
    keep-float lists and reports refer to nodes)."""
    disabled = ("ConvBNFusion",) if keep_batchnorm else ()
    cleaned = infer_shapes(optimize_basic(infer_shapes(model), disabled=disabled))
    _drop_unused_initializers(cleaned)
    name_nodes(cleaned)
    return cleaned


def name_nodes(model: onnx.ModelProto) -> None:
    """Give unnamed or duplicate-named nodes the unique name ``<op_type>_<index>`` (in place)."""
    taken = {n.name for n in model.graph.node if n.name}
    seen: set[str] = set()
    for i, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            name, k = f"{node.op_type}_{i}", 0
            while name in taken:
                k += 1
                name = f"{node.op_type}_{i}_{k}"
            node.name = name
            taken.add(name)
        seen.add(node.name)


def _drop_unused_initializers(model: onnx.ModelProto) -> None:
    used = {name for node in model.graph.node for name in node.input}
    used |= {o.name for o in model.graph.output}
    keep = [t for t in model.graph.initializer if t.name in used]
    if len(keep) != len(model.graph.initializer):
        del model.graph.initializer[:]
        model.graph.initializer.extend(keep)
    inits = {t.name for t in model.graph.initializer}
    graph_inputs = [i for i in model.graph.input if i.name not in inits or i.name in used]
    if len(graph_inputs) != len(model.graph.input):
        del model.graph.input[:]
        model.graph.input.extend(graph_inputs)


def count_ops(model: onnx.ModelProto) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in model.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts
