"""ONNX precision recipes: fp16, int8 (static QDQ, per-channel weights); int4 lives in ``converters.int4``
(shared weight math) and ``converters.emitters.onnx_int4`` (storage).

All int8 activation scales come from the shared ``CalibrationResult`` (no second calibration).
"""
from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import QuantType
from onnxruntime.quantization.calibrate import CalibrationMethod, TensorData, TensorsData
from onnxruntime.quantization.qdq_quantizer import QDQQuantizer
from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

from edgeinfer.errors import EdgeInferError

from .emitters.api import CalibrationResult
from .load import sort_nodes

logging.getLogger("onnxruntime.quantization").setLevel(logging.WARNING)

ACTIVATION_TYPES = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8, "uint16": QuantType.QUInt16}
# ONNX Runtime (1.32) on x86 cannot load an int8-activation QDQ graph at opset >= 21 when a quantized
# tensor passes a Reshape/Slice: its QDQ propagation gives the QuantizeLinear it inserts output_dtype=INT8,
# then its S8->U8 pass makes that node's zero point uint8 (onnxruntime#25526). Opset 21 and 22 only add
# element types (int4, bfloat16, ...) to the ops, so a graph that type-checks at 20 means the same there.
QDQ_OPSET = 20


def to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """fp16 weights and compute, float32 model I/O kept for the caller."""
    from onnxruntime.transformers.float16 import convert_float_to_float16
    return convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=False)


def tensors_range(calib: CalibrationResult) -> TensorsData:
    data = {name: TensorData(lowest=np.float32(lo), highest=np.float32(hi)) for name, (lo, hi) in calib.ranges.items()}
    return TensorsData(CalibrationMethod.MinMax, data)


def quantize_int8(model: onnx.ModelProto, calib: CalibrationResult, *, per_channel: bool = True,
                  nodes_to_exclude=(), activation_dtype: str = "int8", pair_safe: bool = False,
                  bias_correction: bool = True, uint16_tensors=(), int16_nodes=()) -> onnx.ModelProto:
    """Static QDQ int8: per-channel symmetric int8 weights, activations from the shared ranges.

    ``pair_safe``: weights re-quantized so x86 u8s8 kernels without VNNI cannot saturate
    (``make_pair_safe``); for targets whose int8 kernels saturate (``edgeinfer.int8_arith``).
    ``bias_correction``: float biases absorb the mean shift the weight rounding causes on the
    calibration images (``converters.bias_correction``; input means cached on ``calib``).
    ``uint16_tensors``: activations quantized to 16 bits instead (ONNX Runtime's com.microsoft Q/DQ);
    ``int16_nodes``: nodes whose every activation input and output is (A16W8: weights stay 8-bit).
    """
    if calib is None:
        raise EdgeInferError("int8 needs calibration data: pass --calib DIR (or --calib-synthetic to accept random inputs)")
    if activation_dtype not in ACTIVATION_TYPES:
        raise EdgeInferError(f"activation dtype {activation_dtype!r} is not one of {', '.join(ACTIVATION_TYPES)}")
    wide = a16_overrides(model, (set(uint16_tensors) | activation_tensors(model, int16_nodes)) & set(calib.ranges),
                         ACTIVATION_TYPES[activation_dtype])
    quantizer = QDQQuantizer(
        onnx.ModelProto.FromString(model.SerializeToString()),
        per_channel, False, QuantType.QInt8, ACTIVATION_TYPES[activation_dtype], tensors_range(calib),
        [], list(nodes_to_exclude), sorted(set(QLinearOpsRegistry) | set(QDQRegistry)),
        # biases stay float: the int32 copy plus its per-channel scales cost ~1% of the file and
        # ONNX Runtime's CPU kernels run as fast either way (measured by tools/bench_onnx.py)
        {"ActivationSymmetric": False, "WeightSymmetric": True, "QuantizeBias": False,
         **({"UseQDQContribOps": True, "TensorQuantOverrides": wide} if wide or activation_dtype == "uint16" else {})},
    )
    qmodel = quantizer.quantize_model()
    sort_nodes(qmodel)   # the quantizer appends its Q/DQ nodes; the checker wants dependency order
    float_islands_read_float(qmodel, model, nodes_to_exclude)
    if pair_safe:
        make_pair_safe(qmodel, model)
    if bias_correction and calib.samples is not None and len(calib.samples):
        from .bias_correction import correct_biases
        correct_biases(qmodel, model, calib.samples, calib.channel_means)
    lower_qdq_opset(qmodel)
    return qmodel


def activation_tensors(model: onnx.ModelProto, nodes) -> set[str]:
    """The tensors ``nodes`` (names) read or write that are not initializers: their activations."""
    wanted = set(nodes)
    if not wanted:
        return set()
    inits = {t.name for t in model.graph.initializer}
    return {t for n in model.graph.node if n.name in wanted for t in [*n.input, *n.output] if t and t not in inits}


def graph_tail(model: onnx.ModelProto, nodes) -> list[str]:
    """The ``nodes`` (names) whose outputs reach the graph's outputs only through other such nodes,
    none of them a Conv/Gemm/MatMul: the end of the graph (decode arithmetic), which an NPU hands
    back to the CPU once like any float output. Weighted ops stay on the NPU, and so does all above them."""
    from .sensitivity import WEIGHTED_OPS
    wanted = set(nodes)
    outputs = {o.name for o in model.graph.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    tail: set[str] = set()
    for n in reversed(list(model.graph.node)):     # topological order: consumers are decided first
        if n.name in wanted and n.op_type not in WEIGHTED_OPS and all(t in outputs or all(c.name in tail for c in consumers.get(t, []))
                                    for t in n.output if t in outputs or t in consumers):
            tail.add(n.name)
    return [n for n in nodes if n in tail]


def quantize_a16w8(model: onnx.ModelProto, calib: CalibrationResult, nodes, **kwargs) -> tuple[onnx.ModelProto, list[str]]:
    """``quantize_int8`` with ``nodes`` kept out of 8 bits the A16W8 way: 16-bit activations and 8-bit
    weights, except the graph's tail among them (``graph_tail``), which stays float; returns (model,
    the nodes kept float)."""
    tail = graph_tail(model, nodes)
    wide = [n for n in nodes if n not in tail]
    return quantize_int8(model, calib, nodes_to_exclude=tail, int16_nodes=wide, **kwargs), tail


def a16_overrides(model: onnx.ModelProto, tensors, activation_qtype) -> dict:
    """ONNX Runtime ``TensorQuantOverrides`` putting ``tensors`` at uint16, completed by its own
    mixed-precision fixer (as its QNN config does): an op reading or writing a 16-bit tensor gets
    all its activations at 16 bits, with a requantization where an 8-bit neighbour meets it."""
    if not tensors or activation_qtype == QuantType.QUInt16:
        return {}
    from onnxruntime.quantization.execution_providers.qnn.mixed_precision_overrides_utils import (
        MixedPrecisionTensorQuantOverridesFixer)
    from onnxruntime.quantization.tensor_quant_overrides import TensorQuantOverridesHelper
    overrides = TensorQuantOverridesHelper({t: [{"quant_type": QuantType.QUInt16}] for t in sorted(tensors)})
    MixedPrecisionTensorQuantOverridesFixer.create_from_model(overrides, model, activation_qtype).apply(
        activation_qtype, False)
    return overrides.get_dict()


# ONNX Runtime's WeightBiasQuantization re-quantizes the float weights of these ops (symmetric,
# per-tensor int8) whenever the op reads a DequantizeLinear and its output path ends in a QuantizeLinear
FLOAT_WEIGHTS_REQUANTIZED_BY_ORT = ("Conv", "ConvTranspose", "Gemm")


def float_islands_read_float(qmodel: onnx.ModelProto, model: onnx.ModelProto, excluded) -> int:
    """Excluded Conv/ConvTranspose/Gemm nodes of ``qmodel`` fed by a DequantizeLinear read the float
    tensor they read in ``model`` instead (in place); returns how many were rewired.

    Without this a node kept in float is not float under ONNX Runtime: when its output goes on to a
    quantized consumer, ORT quantizes its float weights per-tensor itself and fuses it into an int8
    kernel, coarser than the per-channel int8 it was kept out of (on YOLOv8n's /model.1 conv its
    output lost 3 dB against the int8 version). The quantizer may have folded the Relu/Clip that
    produced that tensor into the Q range; a float copy of it is then put back for the island."""
    names = set(excluded)
    q_producer = {o: n for n in qmodel.graph.node for o in n.output}
    f_producer = {o: n for n in model.graph.node for o in n.output}
    f_input = {n.name: n.input[0] for n in model.graph.node if n.name in names and n.input}
    q_names = {n.name for n in qmodel.graph.node}
    added: dict[str, onnx.NodeProto] = {}   # one float copy per folded activation, shared by its islands
    rewired = 0
    for node in qmodel.graph.node:
        if node.name not in names or node.op_type not in FLOAT_WEIGHTS_REQUANTIZED_BY_ORT or not node.input:
            continue
        dq, src = q_producer.get(node.input[0]), f_input.get(node.name)
        if dq is None or dq.op_type != "DequantizeLinear" or src is None:
            continue
        origin = f_producer.get(src)
        if origin is None or (origin.name in q_names and src in q_producer):
            node.input[0] = src                     # a graph input, or a tensor still computed in float
        elif origin.op_type in ("Relu", "Clip") and (origin.input[0] in q_producer or src in q_producer):
            if src not in added:   # folded away: the tensor before it kept its own name or took the output's
                copy = added[src] = onnx.NodeProto()
                copy.CopyFrom(origin)
                copy.input[0] = origin.input[0] if origin.input[0] in q_producer else src
                copy.name, copy.output[0] = f"{origin.name}_float", f"{src}_float"
            node.input[0] = added[src].output[0]
        else:
            continue
        rewired += 1
    if added:
        qmodel.graph.node.extend(added.values())
        sort_nodes(qmodel)
    return rewired


def default_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def lower_qdq_opset(qmodel: onnx.ModelProto) -> bool:
    """Relabel ``qmodel``'s default-domain opset above ``QDQ_OPSET`` down to it (in place) when the
    graph passes the full ONNX type check there; True when it was lowered. A graph that uses what
    only the newer opsets allow (int4 tensors, bfloat16, blocked quantization) keeps its opset."""
    if default_opset(qmodel) <= QDQ_OPSET:
        return False
    trial = onnx.ModelProto.FromString(qmodel.SerializeToString())
    for o in trial.opset_import:
        if o.domain in ("", "ai.onnx"):
            o.version = QDQ_OPSET
    try:
        onnx.checker.check_model(trial, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError):
        return False
    del qmodel.opset_import[:]
    qmodel.opset_import.extend(trial.opset_import)
    return True


def gemm_to_matmul(model: onnx.ModelProto) -> onnx.ModelProto:
    """Rewrite Gemm(A, B[, C]) with constant B into MatMul(+Add), so MatMulNBits can take it."""
    out = onnx.ModelProto.FromString(model.SerializeToString())
    inits = {t.name: t for t in out.graph.initializer}
    nodes = []
    for node in out.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if (node.op_type != "Gemm" or node.input[1] not in inits or attrs.get("transA", 0)
                or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0):
            nodes.append(node)
            continue
        w = numpy_helper.to_array(inits[node.input[1]])
        if attrs.get("transB", 0):
            w = w.T
        w_name = node.input[1] + "_matmul"
        out.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(w), w_name))
        has_bias = len(node.input) > 2 and node.input[2]
        mm_out = node.output[0] + "_matmul" if has_bias else node.output[0]
        nodes.append(helper.make_node("MatMul", [node.input[0], w_name], [mm_out], name=(node.name or mm_out) + "_matmul"))
        if has_bias:
            nodes.append(helper.make_node("Add", [mm_out, node.input[2]], [node.output[0]], name=(node.name or mm_out) + "_bias"))
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return _drop_unused(out)


def _drop_unused(model: onnx.ModelProto) -> onnx.ModelProto:
    used = {i for n in model.graph.node for i in n.input}
    keep = [t for t in model.graph.initializer if t.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
    return model


def _weight_rows(op_type: str, attrs: dict, w: np.ndarray, axis: int) -> tuple[np.ndarray, list[np.ndarray]] | None:
    """The weight as an (outputs, K) matrix and the K orderings a GEMM kernel may pack it in;
    None where the op is not lowered to a u8s8 GEMM (depthwise convolutions run their own exact kernel)."""
    if op_type == "Conv":
        group = int(attrs.get("group", 1))
        if w.ndim != 4 or (w.shape[1] == 1 and group == w.shape[0] and group > 1) or axis != 0:
            return None
        m = w.shape[0]
        # (c, kh, kw) and (kh, kw, c)
        return w.reshape(m, -1), [np.arange(w[0].size), np.arange(w[0].size).reshape(w.shape[1:]).transpose(1, 2, 0).ravel()]
    if w.ndim != 2:
        return None
    out_axis = 0 if (op_type == "Gemm" and attrs.get("transB", 0)) else 1
    if axis != out_axis:
        return None
    rows = w if out_axis == 0 else w.T
    return rows, [np.arange(rows.shape[1])]


def quantized_weights(qmodel: onnx.ModelProto, float_model: onnx.ModelProto, ops: tuple[str, ...]):
    """Yield ``(node, dq, src)`` for every node of the QDQ ``qmodel`` whose op is in ``ops`` and whose
    weight (input 1) is a DequantizeLinear of an initializer; ``src`` is the node of ``float_model``
    with the same name, or None when it has no float weight initializer."""
    f_inits = {t.name for t in float_model.graph.initializer}
    f_nodes = {n.name: n for n in float_model.graph.node if n.name}
    q_inits = {t.name for t in qmodel.graph.initializer}
    producers = {o: n for n in qmodel.graph.node for o in n.output}
    for node in qmodel.graph.node:
        if node.op_type not in ops or len(node.input) < 2:
            continue
        dq = producers.get(node.input[1])
        if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in q_inits:
            continue
        src = f_nodes.get(node.name)
        ok = src is not None and len(src.input) >= 2 and src.input[1] in f_inits
        yield node, dq, src if ok else None


_PAIR_SAFE_CACHE: dict[bytes, tuple[np.ndarray, np.ndarray]] = {}
_PAIR_SAFE_CACHE_MAX = 2048   # weight tensors (a 640 px YOLOv8s has 64)


def _cached_pair_safe(rows: np.ndarray, orders: list[np.ndarray], fit) -> tuple[np.ndarray, np.ndarray]:
    """``fit(rows, orders)``, memoised on the bytes of ``rows`` and ``orders``: the keep-float search
    re-quantizes the same float weights once per candidate, and the fit is the costly part."""
    import hashlib
    h = hashlib.blake2b(digest_size=20)
    h.update(str((rows.dtype, rows.shape)).encode())
    h.update(np.ascontiguousarray(rows).tobytes())
    for o in orders:
        h.update(np.ascontiguousarray(o, np.int64).tobytes())
    key = h.digest()
    if key not in _PAIR_SAFE_CACHE:
        if len(_PAIR_SAFE_CACHE) >= _PAIR_SAFE_CACHE_MAX:
            _PAIR_SAFE_CACHE.clear()
        _PAIR_SAFE_CACHE[key] = fit(rows, orders)
    q, s = _PAIR_SAFE_CACHE[key]
    return q.copy(), s.copy()


def make_pair_safe(qmodel: onnx.ModelProto, float_model: onnx.ModelProto) -> int:
    """Re-quantize, in place, the int8 weights of every GEMM-lowered Conv/Gemm/MatMul of the QDQ
    ``qmodel`` with ``quant_math.pair_safe_per_channel`` from the float weights of ``float_model``
    (matched by node name). Returns how many weight tensors lost precision (a scale grew)."""
    from .quant_math import pair_safe_per_channel
    f_inits = {t.name: t for t in float_model.graph.initializer}
    q_inits = {t.name: t for t in qmodel.graph.initializer}
    widened = 0
    for node, dq, src in quantized_weights(qmodel, float_model, ("Conv", "Gemm", "MatMul")):
        wq_t = q_inits[dq.input[0]]
        if wq_t.data_type != TensorProto.INT8:
            continue
        if src is None:
            raise EdgeInferError(f"internal: quantized node {node.name!r} has no float weight to re-quantize")
        w = numpy_helper.to_array(f_inits[src.input[1]])
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        axis = next((helper.get_attribute_value(a) for a in dq.attribute if a.name == "axis"), 1)
        scale_t = q_inits[dq.input[1]]
        if int(np.prod(scale_t.dims or [1])) == 1:
            continue   # per-tensor weights (not produced by this recipe)
        found = _weight_rows(node.op_type, attrs, w, axis)
        if found is None:
            continue
        rows, orders = found
        q_rows, scales = _cached_pair_safe(rows, orders, pair_safe_per_channel)
        if node.op_type == "Conv":
            q = q_rows.reshape(w.shape)
        else:
            q = q_rows if rows is w else q_rows.T
        old = numpy_helper.to_array(scale_t)
        widened += int(np.any(scales > old * (1 + 1e-6)))
        wq_t.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(q), wq_t.name))
        scale_t.CopyFrom(numpy_helper.from_array(scales.reshape(old.shape), scale_t.name))
    return widened
