"""Seeded ONNX model builders for tests and benchmarks (onnx.helper + numpy, no torch).

    build_mobilenetv2(width=1.0, resolution=224, num_classes=1000, seed=0, batch="N")
    build_mlp(hidden=1024, layers=4, in_features=256, num_classes=10, seed=0, use_gemm=True)
    build_tiny_cnn(num_classes=10, channels=8, resolution=16, seed=0, batch="N")

Every builder returns an ``onnx.ModelProto`` (opset 17, IR 8) that passes ``onnx.checker`` with
full shape inference, has one input ``input`` and one output ``logits``, and whose batch dim is
symbolic (``batch="N"``) or fixed (``batch=1``). Weights are random but deterministic for a seed:
He-normal convolutions, and BatchNormalization nodes kept with random-but-sane statistics
(gamma ~ U(0.8, 1.2), beta ~ N(0, 0.1), mean ~ N(0, 0.1), var ~ U(0.8, 1.5)) so that BN
folding is exercised. They are architectures for speed/size/coverage figures, not trained models.

Command line (run from the repository root):

    python tools/model_zoo.py mobilenetv2 out.onnx [--width 1.0] [--resolution 224] [--seed 0]
    python tools/model_zoo.py mlp out.onnx [--hidden 1024] [--layers 4] [--matmul]
    python tools/model_zoo.py tiny_cnn out.onnx
"""
from __future__ import annotations

import argparse
import inspect
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8


def make_divisible(v: float, divisor: int = 8) -> int:
    """MobileNet channel rounding: nearest multiple of ``divisor``, never below 90% of ``v``."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


class GraphBuilder:
    """Appends nodes and seeded initializers; each method returns the name of its output."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._count: dict[str, int] = {}

    def _name(self, kind: str) -> str:
        n = self._count.get(kind, 0)
        self._count[kind] = n + 1
        return f"{kind}_{n}"

    def const(self, name: str, value: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def node(self, op: str, inputs: list[str], **attrs) -> str:
        name = self._name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [name + "_out"], name=name, **attrs))
        return name + "_out"

    def he(self, shape: tuple[int, ...], fan_in: int) -> np.ndarray:
        return (self.rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)

    def conv(self, x: str, cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, bias: bool = False) -> str:
        name = self._name("conv")
        w = self.const(name + ".weight", self.he((cout, cin // groups, k, k), cin // groups * k * k))
        inputs = [x, w]
        if bias:
            inputs.append(self.const(name + ".bias", (self.rng.standard_normal(cout) * 0.01).astype(np.float32)))
        self.nodes.append(helper.make_node("Conv", inputs, [name + "_out"], name=name, kernel_shape=[k, k],
                                           strides=[stride, stride], pads=[k // 2] * 4, group=groups))
        return name + "_out"

    def batchnorm(self, x: str, c: int) -> str:
        name = self._name("bn")
        r = self.rng
        params = [self.const(f"{name}.{p}", v.astype(np.float32)) for p, v in (
            ("scale", r.uniform(0.8, 1.2, c)), ("bias", r.normal(0.0, 0.1, c)),
            ("mean", r.normal(0.0, 0.1, c)), ("var", r.uniform(0.8, 1.5, c)))]
        self.nodes.append(helper.make_node("BatchNormalization", [x, *params], [name + "_out"], name=name,
                                           epsilon=1e-5))
        return name + "_out"

    def relu6(self, x: str) -> str:
        if not any(t.name == "relu6.min" for t in self.inits):
            self.const("relu6.min", np.array(0.0, np.float32))
            self.const("relu6.max", np.array(6.0, np.float32))
        return self.node("Clip", [x, "relu6.min", "relu6.max"])

    def conv_bn(self, x: str, cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, act: bool = True) -> str:
        """Conv (no bias) -> BatchNormalization -> optional ReLU6 (Clip 0..6)."""
        y = self.batchnorm(self.conv(x, cin, cout, k, stride, groups), cout)
        return self.relu6(y) if act else y

    def linear(self, x: str, cin: int, cout: int, use_gemm: bool = True) -> str:
        """Fully connected: Gemm(transB=1, weight [out,in]) or MatMul(weight [in,out]) + Add."""
        name = self._name("fc")
        w = self.he((cout, cin), cin)
        b = self.const(name + ".bias", (self.rng.standard_normal(cout) * 0.01).astype(np.float32))
        if use_gemm:
            return self.node("Gemm", [x, self.const(name + ".weight", w), b], transB=1)
        return self.node("Add", [self.node("MatMul", [x, self.const(name + ".weight", np.ascontiguousarray(w.T))]), b])

    def classifier(self, x: str, cin: int, num_classes: int) -> str:
        """GlobalAveragePool -> Flatten -> Gemm."""
        return self.linear(self.node("Flatten", [self.node("GlobalAveragePool", [x])], axis=1), cin, num_classes)

    def finish(self, graph_name: str, input_shape: list, last: str, num_classes: int, batch) -> onnx.ModelProto:
        """Rename ``last`` to ``logits``, wrap into a checked opset-17 model."""
        producer = next(n for n in self.nodes if last in n.output)
        producer.output[list(producer.output).index(last)] = "logits"
        graph = helper.make_graph(
            self.nodes, graph_name,
            [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, *input_shape])],
            [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, num_classes])],
            self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                  producer_name="edgeinfer tools/model_zoo.py", ir_version=IR_VERSION)
        onnx.checker.check_model(model, full_check=True)
        return model


# (expansion t, output channels c, repeats n, first stride s) of MobileNetV2 (Sandler et al. 2018)
MOBILENETV2_SETTINGS = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                        (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]


def build_mobilenetv2(width: float = 1.0, resolution: int = 224, num_classes: int = 1000, seed: int = 0,
                      batch="N") -> onnx.ModelProto:
    """MobileNetV2: stem 3x3/2 conv, inverted residual blocks (1x1 expand, 3x3 depthwise, linear 1x1
    projection, residual Add when stride 1 and channels match), 1x1 conv to 1280, GAP, Flatten, Gemm.
    Input ``input`` [batch,3,R,R], output ``logits`` [batch,num_classes]."""
    g = GraphBuilder(seed)
    cin = make_divisible(32 * width)
    x = g.conv_bn("input", 3, cin, 3, stride=2)
    for t, c, n, s in MOBILENETV2_SETTINGS:
        cout = make_divisible(c * width)
        for i in range(n):
            stride = s if i == 0 else 1
            hidden = cin * t
            y = g.conv_bn(x, cin, hidden, 1) if t != 1 else x
            y = g.conv_bn(y, hidden, hidden, 3, stride=stride, groups=hidden)
            y = g.conv_bn(y, hidden, cout, 1, act=False)
            x = g.node("Add", [x, y]) if stride == 1 and cin == cout else y
            cin = cout
    last = make_divisible(1280 * max(1.0, width))
    x = g.conv_bn(x, cin, last, 1)
    return g.finish("mobilenetv2", [3, resolution, resolution], g.classifier(x, last, num_classes), num_classes, batch)


def build_mlp(hidden: int = 1024, layers: int = 4, in_features: int = 256, num_classes: int = 10, seed: int = 0,
              use_gemm: bool = True, batch="N") -> onnx.ModelProto:
    """``layers`` hidden fully connected layers of width ``hidden`` with Relu, then a classifier.
    Gemm (transB=1) when ``use_gemm``, else MatMul + Add. Input [batch,in_features] -> ``logits``."""
    g = GraphBuilder(seed)
    x, cin = "input", in_features
    for _ in range(layers):
        x = g.node("Relu", [g.linear(x, cin, hidden, use_gemm)])
        cin = hidden
    x = g.linear(x, cin, num_classes, use_gemm)
    return g.finish("mlp_gemm" if use_gemm else "mlp_matmul", [in_features], x, num_classes, batch)


def build_tiny_cnn(num_classes: int = 10, channels: int = 8, resolution: int = 16, seed: int = 0,
                   batch="N") -> onnx.ModelProto:
    """Small conv net for fast tests: conv+BN+ReLU6, depthwise+BN+ReLU6, pointwise+BN (linear),
    residual Add, strided depthwise, 1x1 conv+BN+ReLU6 to 2x channels, GAP, Flatten, Gemm.
    Input [batch,3,resolution,resolution]."""
    g = GraphBuilder(seed)
    c = channels
    x = g.conv_bn("input", 3, c, 3)
    y = g.conv_bn(x, c, c, 3, groups=c)
    y = g.conv_bn(y, c, c, 1, act=False)
    x = g.node("Add", [x, y])
    x = g.conv_bn(x, c, c, 3, stride=2, groups=c)
    x = g.conv_bn(x, c, 2 * c, 1)
    return g.finish("tiny_cnn", [3, resolution, resolution], g.classifier(x, 2 * c, num_classes), num_classes, batch)


BUILDERS = {"mobilenetv2": build_mobilenetv2, "mlp": build_mlp, "tiny_cnn": build_tiny_cnn}


def count_parameters(model: onnx.ModelProto, include_bn_stats: bool = False) -> int:
    """Number of weights in the initializers (BN running mean/var excluded unless asked)."""
    return sum(int(np.prod(t.dims)) for t in model.graph.initializer
               if include_bn_stats or not t.name.endswith((".mean", ".var", "relu6.min", "relu6.max")))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Write a seeded model_zoo model to an ONNX file.")
    ap.add_argument("model", choices=sorted(BUILDERS))
    ap.add_argument("out", type=Path)
    ap.add_argument("--width", type=float)
    ap.add_argument("--resolution", type=int)
    ap.add_argument("--num-classes", type=int)
    ap.add_argument("--seed", type=int)
    ap.add_argument("--batch", help="batch dim: a name (symbolic, default N) or an integer")
    ap.add_argument("--hidden", type=int)
    ap.add_argument("--layers", type=int)
    ap.add_argument("--in-features", type=int)
    ap.add_argument("--channels", type=int)
    ap.add_argument("--matmul", action="store_true", help="mlp: MatMul + Add instead of Gemm")
    args = ap.parse_args(argv)
    builder = BUILDERS[args.model]
    accepted = inspect.signature(builder).parameters
    kwargs = {k: v for k, v in vars(args).items() if k in accepted and v is not None}
    unused = [k for k, v in vars(args).items()
              if k not in accepted and k not in ("model", "out", "matmul") and v is not None]
    if unused:
        ap.error(f"{args.model} does not take {', '.join('--' + k.replace('_', '-') for k in unused)}")
    if args.matmul:
        if args.model != "mlp":
            ap.error("--matmul only applies to mlp")
        kwargs["use_gemm"] = False
    if "batch" in kwargs and kwargs["batch"].isdigit():
        kwargs["batch"] = int(kwargs["batch"])
    model = builder(**kwargs)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(args.out))
    print(f"{args.out}: {args.model} {kwargs}, {count_parameters(model)} parameters, "
          f"{args.out.stat().st_size} bytes", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
