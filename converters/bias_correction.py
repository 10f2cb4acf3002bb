"""Bias correction for int8 weights (Nagel et al. 2019, "Data-Free Quantization", section 4.2).

Rounding weights shifts each output channel's mean by ``(W_q - W) . E[x]``: a systematic error
that per-channel scales do not remove (it grows when scales get coarser, e.g. pair-safe weights)
and that ONNX Runtime's ``quantize_static`` leaves in. ``correct_biases`` subtracts that shift
from the float bias of every quantized Conv / Gemm of a QDQ model, with ``E[x]`` the per-channel
mean of the layer's float input over the calibration images (measured once on the float model, on
the first ``MEAN_PIXELS`` input pixels of them).

Contract: only the float bias initializers change; weights, scales and activation ranges stay.
A Conv/Gemm without a bias initializer of its own, and MatMul, are left as they are.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .images import within_pixels
from .ort_session import tensor_probe

OPS = ("Conv", "Gemm")
MEAN_PIXELS = 200 * 224 * 224   # input means use at most this many input pixels of samples (24 images at 640 px)


def mean_samples(samples: np.ndarray) -> np.ndarray:
    """The leading samples the input means are measured on: all of them up to ``MEAN_PIXELS``
    input pixels (a channel mean over millions of positions has long converged), at least 8."""
    return samples[:within_pixels(samples, MEAN_PIXELS, 8)]


def input_channel_means(model: onnx.ModelProto, samples: np.ndarray, tensors: list[str]) -> dict[str, np.ndarray]:
    """Per-channel means (axis 1 of NCHW tensors, the last axis of 2-D ones) of the float
    ``tensors`` of ``model`` over ``samples`` (float32 batch, run one at a time)."""
    probe = tensor_probe(model, tensors)
    sums: dict[str, np.ndarray] = {}
    for i in range(len(samples)):
        got = probe(samples[i:i + 1])
        for t in tensors:
            v = got[t]
            chan = 1 if v.ndim > 2 else v.ndim - 1
            mean = v.mean(axis=tuple(a for a in range(v.ndim) if a != chan), dtype=np.float64)
            sums[t] = sums.get(t, 0.0) + mean
    return {t: s / max(len(samples), 1) for t, s in sums.items()}


def cached_input_means(float_model: onnx.ModelProto, samples: np.ndarray, tensors, cache: dict[str, np.ndarray]
                       ) -> dict[str, np.ndarray]:
    """``cache`` (updated in place) holding the per-channel means of every one of ``tensors``,
    the missing ones measured in one pass over ``mean_samples(samples)``."""
    missing = sorted(set(tensors) - set(cache))
    if missing and len(samples):
        cache.update(input_channel_means(float_model, mean_samples(samples), missing))
    return cache


def output_shift(op_type: str, attrs: dict, weight_error: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """Expected change of each output channel caused by ``weight_error`` (dequantized minus
    float weight, the op's own layout) for inputs of per-channel mean ``mean`` (padding ignored)."""
    if op_type == "Conv":
        group = int(attrs.get("group", 1))
        m, cg = weight_error.shape[:2]
        per_tap = weight_error.reshape(m, cg, -1).sum(axis=2)          # (M, C/group)
        mg = m // group
        mu = mean.reshape(group, cg)
        return np.concatenate([per_tap[g * mg:(g + 1) * mg] @ mu[g] for g in range(group)])
    w = weight_error if attrs.get("transB", 0) else weight_error.T       # Gemm (transA 0): (N, K)
    return w @ mean


def correct_biases(qmodel: onnx.ModelProto, float_model: onnx.ModelProto, samples: np.ndarray,
                   cache: dict[str, np.ndarray] | None = None) -> int:
    """Subtract the weight-rounding shift from the bias of every quantized Conv/Gemm of ``qmodel``
    (in place; nodes matched to ``float_model`` by name). ``cache`` keeps input means between calls
    on the same float model and samples. Returns how many biases changed."""
    from .quantize_onnx import quantized_weights
    f_inits = {t.name: t for t in float_model.graph.initializer}
    q_inits = {t.name: t for t in qmodel.graph.initializer}
    uses: dict[str, int] = {}
    for n in qmodel.graph.node:
        for i in n.input:
            uses[i] = uses.get(i, 0) + 1
    todo = [(node, dq, src) for node, dq, src in quantized_weights(qmodel, float_model, OPS)
            if src is not None and not any(a.name == "transA" and a.i for a in node.attribute)
            and len(node.input) >= 3 and node.input[2] in q_inits and uses[node.input[2]] == 1]
    cache = cached_input_means(float_model, samples, {src.input[0] for _, _, src in todo}, {} if cache is None else cache)
    changed = 0
    for node, dq, src in todo:
        if src.input[0] not in cache:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        w = numpy_helper.to_array(f_inits[src.input[1]]).astype(np.float64)
        q = numpy_helper.to_array(q_inits[dq.input[0]]).astype(np.float64)
        scale = numpy_helper.to_array(q_inits[dq.input[1]]).astype(np.float64)
        zp = numpy_helper.to_array(q_inits[dq.input[2]]).astype(np.float64) if len(dq.input) > 2 and dq.input[2] else 0.0
        axis = next((helper.get_attribute_value(a) for a in dq.attribute if a.name == "axis"), 1)
        shape = [1] * q.ndim
        if np.ndim(scale):
            shape[axis] = -1
        deq = (q - np.reshape(zp, shape)) * np.reshape(scale, shape)
        shift = output_shift(node.op_type, attrs, deq - w, cache[src.input[0]])
        bias_t = q_inits[node.input[2]]
        bias = numpy_helper.to_array(bias_t).astype(np.float64)
        if bias.shape != shift.shape:
            continue
        bias_t.CopyFrom(numpy_helper.from_array((bias - shift).astype(np.float32), bias_t.name))
        changed += 1
    return changed
