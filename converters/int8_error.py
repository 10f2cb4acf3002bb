"""Where an int8 QDQ model loses accuracy, from one run: per-node error introduced, as SQNR.

``node_error_ranking(float_model, qdq_model, inputs)`` runs both models once per input with every
float tensor exposed as an output (ONNX Runtime's ``qdq_loss_debug`` augmentation), accumulates
per tensor the signal-to-quantization-noise ratio of the QDQ model's activation against the float
model's (dB, higher is better), and scores each quantized node by the SQNR it LOSES: the worst
SQNR among its inputs minus the SQNR of its output. A node that quantizes badly (a concat of boxes
in pixels and scores in 0..1, a layer with outlier weights) loses many dB; the search then only
evaluates the top few nodes instead of every node.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from edgeinfer.progress import Progress



CLEAN_DB = 120.0   # SQNR of an unquantized tensor (graph inputs, float paths), a cap on "no error"


@dataclass
class NodeError:
    nodes: tuple[str, ...]   # one node, or a producer grouped with its consumer (see node_error_ranking)
    op_type: str             # of the group's first node
    lost_db: float       # SQNR lost across the node (inputs' worst minus output's)
    output_db: float     # SQNR of the node's output against the float model


def _augmented_session(model: onnx.ModelProto, tmp: Path, name: str, optimize: bool):
    import onnxruntime as ort
    from onnxruntime.quantization.qdq_loss_debug import modify_model_output_intermediate_tensors
    src, aug = tmp / f"{name}.onnx", tmp / f"{name}_aug.onnx"
    onnx.save(model, str(src))
    modify_model_output_intermediate_tensors(str(src), str(aug))
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(aug), so, providers=["CPUExecutionProvider"])


def _save_postfix() -> str:
    from onnxruntime.quantization.qdq_loss_debug import _TENSOR_SAVE_POSTFIX
    return _TENSOR_SAVE_POSTFIX


def tensor_sqnr(float_model: onnx.ModelProto, qdq_model: onnx.ModelProto, inputs: np.ndarray,
                progress: bool = False, floors: dict[str, float] | None = None) -> dict[str, float]:
    """Per float tensor name: SQNR (dB) of the QDQ model's tensor against the float model's,
    accumulated over ``inputs`` (NCHW float32, run one at a time), taken after the tensor's own
    QuantizeLinear/DequantizeLinear pair where it has one. The QDQ model runs unfused
    (the ONNX spec's QDQ arithmetic: no kernel-specific saturation). ``floors``: tensors whose float
    reference is clipped below at the given value first (an activation's flat end, where the int8 range
    is cut on purpose: ``activation_ranges.activation_floors``)."""
    floors = floors or {}
    from onnxruntime.quantization.qdq_loss_debug import DEQUANT_OUTPUT_SUFFIX as dq_suffix
    postfix = _save_postfix()
    signal: dict[str, float] = {}
    noise: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        f_sess = _augmented_session(float_model, Path(tmp), "float", optimize=True)
        q_sess = _augmented_session(qdq_model, Path(tmp), "qdq", optimize=False)
        f_in, q_in = f_sess.get_inputs()[0].name, q_sess.get_inputs()[0].name
        f_names = [o.name for o in f_sess.get_outputs()]
        q_names = [o.name for o in q_sess.get_outputs()]
        with Progress("measuring int8 error", len(inputs), progress) as bar:
            for x in inputs:
                x1 = np.ascontiguousarray(x[None], np.float32)
                f_out = dict(zip(f_names, f_sess.run(None, {f_in: x1})))
                q_out = dict(zip(q_names, q_sess.run(None, {q_in: x1})))
                f_out[f_in + postfix] = x1.reshape(-1)   # the graph input: its own quantization counts too
                for name, fv in f_out.items():
                    if not name.endswith(postfix):
                        continue
                    base = name[:-len(postfix)]
                    # what the QDQ model's consumers see: the dequantized tensor where there is one
                    qv = q_out.get(base + dq_suffix + postfix, q_out.get(name))
                    if qv is None or qv.shape != fv.shape:
                        continue
                    f64 = fv.astype(np.float64)
                    if base in floors:
                        f64 = np.maximum(f64, floors[base])
                    signal[base] = signal.get(base, 0.0) + float((f64 ** 2).sum())
                    noise[base] = noise.get(base, 0.0) + float(((f64 - qv) ** 2).sum())
                bar.update()
    return {k: float(10 * np.log10((signal[k] + 1e-30) / (noise[k] + 1e-30))) for k in signal}


def node_error_ranking(float_model: onnx.ModelProto, qdq_model: onnx.ModelProto, inputs: np.ndarray,
                       nodes: list[str] | None = None, progress: bool = False,
                       floors: dict[str, float] | None = None) -> list[NodeError]:
    """Nodes of ``float_model`` ranked by SQNR lost, worst first. A node whose output the QDQ model
    does not have (a Conv whose Relu/Clip the quantizer folded into the following QuantizeLinear)
    is grouped with its single consumer: ``NodeError.nodes`` holds the group, producer first.
    ``nodes`` restricts the ranking to groups containing one of those names; ``floors`` as in ``tensor_sqnr``."""
    sqnr = {k: min(v, CLEAN_DB) for k, v in tensor_sqnr(float_model, qdq_model, inputs, progress, floors).items()}
    # an exact input (the image) counts as clean as the cleanest int8 tensor: the first layer's own
    # 8-bit output is not a loss of 120 dB
    cleanest = max((v for v in sqnr.values() if v < CLEAN_DB), default=CLEAN_DB)
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in float_model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    # group = the nodes between measured tensors: follow unmeasured single-consumer outputs forward
    member_of: dict[str, list[onnx.NodeProto]] = {}
    groups: list[list[onnx.NodeProto]] = []
    for n in float_model.graph.node:
        group = member_of.get(n.name)
        if group is None:
            group = [n]
            groups.append(group)
        outs = [o for o in n.output if o]
        if outs and not any(o in sqnr for o in outs):
            nxt = [c for o in outs for c in consumers.get(o, [])]
            if len(nxt) == 1 and nxt[0].name not in member_of:
                group.append(nxt[0])
                member_of[nxt[0].name] = group
    wanted = set(nodes) if nodes is not None else None
    ranking = []
    for group in groups:
        names = tuple(g.name for g in group)
        if wanted is not None and not wanted.intersection(names):
            continue
        outs = [sqnr[o] for o in group[-1].output if o in sqnr]
        if not outs:
            continue
        inside = {o for g in group for o in g.output}
        ins = [sqnr[i] for g in group for i in g.input if i in sqnr and i not in inside]
        out_db = min(outs)
        ranking.append(NodeError(names, group[0].op_type, min(ins + [cleanest]) - out_db, out_db))
    ranking.sort(key=lambda e: -e.lost_db)
    return ranking
