"""Tiny ONNX graph builder and checks shared by the tests/test_prune_*.py files."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from converters.prune.api import PruneConfig, plan
from converters.prune.graph import GraphView, prepare
from converters.prune.groups import analyze
from converters.prune.importance import class_scores
from converters.prune.runner import session
from converters.prune import surgery


class G:
    """Appends nodes/initializers; methods return output names. Weights are seeded random."""

    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.nodes, self.inits, self.k = [], [], 0

    def name(self, p):
        self.k += 1
        return f"{p}{self.k}"

    def const(self, value, prefix="c"):
        n = self.name(prefix)
        self.inits.append(numpy_helper.from_array(np.asarray(value), n))
        return n

    def op(self, op, inputs, n_out=1, **attrs):
        name = self.name(op.lower())
        outs = [f"{name}_out{i}" if n_out > 1 else f"{name}_out" for i in range(n_out)]
        self.nodes.append(helper.make_node(op, inputs, outs, name=name, **attrs))
        return outs if n_out > 1 else outs[0]

    def conv(self, x, cin, cout, k=3, group=1, bias=True, stride=1):
        w = self.const((self.rng.standard_normal((cout, cin // group, k, k)) * 0.4).astype(np.float32), "w")
        ins = [x, w] + ([self.const((self.rng.standard_normal(cout) * 0.1).astype(np.float32), "b")] if bias else [])
        return self.op("Conv", ins, kernel_shape=[k, k], pads=[k // 2] * 4, group=group, strides=[stride, stride])

    def bn(self, x, c):
        r = self.rng
        vals = [r.uniform(0.5, 1.5, c), r.normal(0, 0.1, c), r.normal(0, 0.1, c), r.uniform(0.5, 1.5, c)]
        return self.op("BatchNormalization", [x] + [self.const(v.astype(np.float32)) for v in vals])

    def relu(self, x):
        return self.op("Relu", [x])

    def gemm(self, x, k, n):
        w = self.const((self.rng.standard_normal((n, k)) * 0.2).astype(np.float32), "w")
        b = self.const((self.rng.standard_normal(n) * 0.1).astype(np.float32), "b")
        return self.op("Gemm", [x, w, b], transB=1)

    def model(self, out, in_shape=(None, 3, 8, 8), in_name="input") -> onnx.ModelProto:
        shape = ["N" if d is None else d for d in in_shape]
        g = helper.make_graph(self.nodes, "t", [helper.make_tensor_value_info(in_name, TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)], self.inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
        m = onnx.shape_inference.infer_shapes(m)
        onnx.checker.check_model(m, full_check=True)
        return m


def run(model, x):
    return session(model, threads=1).run(None, {model.graph.input[0].name: x})[0]


def inputs(shape=(4, 3, 8, 8), seed=1):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def prune_parts(model, ratio, criterion="l1", samples=None, **cfg):
    """(analysis, pruned model, kept indices per tensor) without reconstruction."""
    config = PruneConfig(ratio=ratio, criterion=criterion, recover="none", allocation="uniform", **cfg).validate()
    an = analyze(GraphView(prepare(model)), tuple(config.exclude))
    scores, _ = class_scores(an, criterion, samples)
    pruned, kept = surgery.apply(an, plan(an, scores, ratio, config))
    onnx.checker.check_model(pruned, full_check=True)
    return an, pruned, kept


def zeroed_reference(model, kept):
    """``model`` with the removed output channels of every Conv/Gemm/MatMul zeroed (weights and bias).

    With ReLU between layers (no BN shift) this computes exactly what the pruned graph computes.
    """
    m = onnx.ModelProto()
    m.CopyFrom(model)
    inits = {i.name: i for i in m.graph.initializer}
    for node in m.graph.node:
        out = node.output[0]
        if node.op_type not in ("Conv", "Gemm", "MatMul") or out not in kept:
            continue
        axis = 1 if node.op_type == "MatMul" else 0          # Gemm here always has transB=1
        n_out = numpy_helper.to_array(inits[node.input[1]]).shape[axis]
        drop = np.setdiff1d(np.arange(n_out), kept[out])
        for idx in (1, 2):
            if len(node.input) > idx and node.input[idx]:
                a = numpy_helper.to_array(inits[node.input[idx]]).copy()
                if axis:
                    a[:, drop] = 0
                else:
                    a[drop] = 0
                inits[node.input[idx]].CopyFrom(numpy_helper.from_array(a, node.input[idx]))
    return m


def weight_shape(model, node_name, index=1):
    node = next(n for n in model.graph.node if n.name == node_name)
    init = next(i for i in model.graph.initializer if i.name == node.input[index])
    return tuple(init.dims)


def group_of(an, layer):
    return next(g for g in an.groups if layer in g.producers)


def kl_to(model, x):
    """``pruned -> mean KL(model || pruned)`` of the class distributions on ``x`` (a recovery score)."""
    def log_softmax(z):
        z = z - z.max(axis=1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    t = log_softmax(run(model, x))
    return lambda pruned: float((np.exp(t) * (t - log_softmax(run(pruned, x)))).sum(axis=1).mean())
