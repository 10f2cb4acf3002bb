"""Real pretrained models rebuilt as PyTorch modules for the intake figures (tools/intake_figures.py).

Each builder writes the published architecture as nn.Modules and fills it with the weights of a
real checkpoint file the user points at (nothing is downloaded or committed):
- ``mobilenet_v2_from_onnx``: torchvision's MobileNetV2 structure, weights from an ONNX file whose
  Conv nodes come in torchvision's module order (BatchNorm folded into conv biases).
- ``yolov8_from_onnx``: Ultralytics' YOLOv8 (yolov8.yaml; widths and depths read from the weights),
  weights matched by the scope names of a real Ultralytics ONNX export; the Detect head computes
  its anchors from the feature shapes, so a re-export can have dynamic height/width.
- ``blazeface_from_tflite``: a MediaPipe BlazeFace .tflite replayed op by op (NHWC in, NCHW body).
Each result is checked against the file it came from.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn as nn
from onnx import numpy_helper


def _conv(cin: int, cout: int, k: int, stride: int, groups: int = 1, act: bool = True, same_pad: bool = True) -> nn.Sequential:
    """Conv (+ReLU6) with TF "SAME" padding: stride 2 pads only bottom/right, as the checkpoint was trained."""
    layers: list[nn.Module] = []
    if k > 1 and stride == 2 and same_pad:
        layers += [nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(cin, cout, k, stride, 0, groups=groups)]
    else:
        layers += [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups)]
    if act:
        layers.append(nn.ReLU6())
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        layers = [] if expand == 1 else [_conv(cin, hidden, 1, 1)]
        layers += [_conv(hidden, hidden, 3, stride, groups=hidden), _conv(hidden, cout, 1, 1, act=False)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetV2(nn.Module):
    """torchvision.models.MobileNetV2 (width 1.0) with BatchNorm folded; ``features`` + ``classifier``."""

    SETTING = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]

    def __init__(self, classes: int = 1000):
        super().__init__()
        layers: list[nn.Module] = [_conv(3, 32, 3, 2)]
        cin = 32
        for t, c, n, s in self.SETTING:
            for i in range(n):
                layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        layers.append(_conv(cin, 1280, 1, 1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, classes))

    def forward(self, x):
        x = self.features(x)
        x = nn.functional.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.classifier(x)


def mobilenet_v2_from_onnx(path: Path) -> MobileNetV2:
    m = onnx.load(str(path))
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    convs = [(inits[n.input[1]], inits[n.input[2]]) for n in m.graph.node if n.op_type == "Conv"]
    net = MobileNetV2().eval()
    targets = [mod for mod in net.features.modules() if isinstance(mod, nn.Conv2d)]
    if len(convs) != len(targets) + 1:
        raise SystemExit(f"{path}: {len(convs)} convs, expected {len(targets) + 1} (MobileNetV2 + classifier)")
    with torch.no_grad():
        for mod, (w, b) in zip(targets, convs):
            assert tuple(mod.weight.shape) == w.shape, (mod, w.shape)
            mod.weight.copy_(torch.from_numpy(w.copy()))
            mod.bias.copy_(torch.from_numpy(b.copy()))
        w, b = convs[-1]
        net.classifier[1].weight.copy_(torch.from_numpy(w.reshape(w.shape[0], -1)))
        net.classifier[1].bias.copy_(torch.from_numpy(b))
    _check_against(net, m, (1, 3, 224, 224))
    return net


def _check_against(net: nn.Module, model: onnx.ModelProto, shape, layout_nhwc: bool = False) -> None:
    """The rebuilt module must reproduce the weight file's own model (max abs <= 1e-3)."""
    import onnxruntime as ort
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    ref = sess.run(None, {sess.get_inputs()[0].name: x})
    with torch.no_grad():
        got = net(torch.from_numpy(x))
    got = got if isinstance(got, (list, tuple)) else [got]
    err = max(float(np.abs(r - g.numpy()).max()) for r, g in zip(ref, got))
    if err > 1e-3:
        raise SystemExit(f"rebuilt module differs from the weight file's model by {err:.3g}")
    print(f"rebuilt {type(net).__name__} reproduces its weight file within {err:.2e}")


# ----------------------------------------------------------------------------- YOLOv8 (Ultralytics)


class Conv(nn.Module):
    """Ultralytics Conv with its BatchNorm folded: conv (+bias) -> SiLU."""

    def __init__(self, cin: int, cout: int, k: int = 1, s: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, s, k // 2)

    def forward(self, x):
        return nn.functional.silu(self.conv(x))


class Bottleneck(nn.Module):
    def __init__(self, c: int, shortcut: bool):
        super().__init__()
        self.cv1, self.cv2, self.add = Conv(c, c, 3), Conv(c, c, 3), shortcut

    def forward(self, x):
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C2f(nn.Module):
    def __init__(self, cin: int, cout: int, n: int, shortcut: bool):
        super().__init__()
        self.c = cout // 2
        self.cv1 = Conv(cin, 2 * self.c, 1)
        self.cv2 = Conv((2 + n) * self.c, cout, 1)
        self.m = nn.ModuleList(Bottleneck(self.c, shortcut) for _ in range(n))

    def forward(self, x):
        y = list(self.cv1(x).chunk(2, 1))
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


class SPPF(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.cv1, self.cv2 = Conv(cin, cin // 2, 1), Conv(cin // 2 * 4, cout, 1)
        self.m = nn.MaxPool2d(5, 1, 2)

    def forward(self, x):
        x = self.cv1(x)
        y1 = self.m(x)
        y2 = self.m(y1)
        return self.cv2(torch.cat([x, y1, y2, self.m(y2)], 1))


class DFL(nn.Module):
    def __init__(self, reg_max: int = 16):
        super().__init__()
        self.conv = nn.Conv2d(reg_max, 1, 1, bias=False)
        self.reg_max = reg_max

    def forward(self, x):
        b, _, a = x.shape
        return self.conv(x.view(b, 4, self.reg_max, a).transpose(2, 1).softmax(1)).view(b, 4, a)


class Detect(nn.Module):
    """Anchor-free head; anchors come from the feature-map shapes (dynamic in a dynamic export)."""

    def __init__(self, nc: int, ch: list[int], c2: int, c3: int, reg_max: int = 16):
        super().__init__()
        self.nc, self.reg_max, self.stride = nc, reg_max, (8, 16, 32)
        self.cv2 = nn.ModuleList(nn.Sequential(Conv(c, c2, 3), Conv(c2, c2, 3), nn.Conv2d(c2, 4 * reg_max, 1)) for c in ch)
        self.cv3 = nn.ModuleList(nn.Sequential(Conv(c, c3, 3), Conv(c3, c3, 3), nn.Conv2d(c3, nc, 1)) for c in ch)
        self.dfl = DFL(reg_max)

    def forward(self, feats):
        b = feats[0].shape[0]
        x = [torch.cat([self.cv2[i](f), self.cv3[i](f)], 1) for i, f in enumerate(feats)]
        points, strides = [], []
        for f, s in zip(x, self.stride):
            h, w = f.shape[2:]
            sy, sx = torch.meshgrid(torch.arange(h, dtype=torch.float32) + 0.5,
                                    torch.arange(w, dtype=torch.float32) + 0.5, indexing="ij")
            points.append(torch.stack([sx, sy], -1).view(-1, 2))
            strides.append(torch.full((h * w, 1), float(s)))
        anchors, stride = torch.cat(points).transpose(0, 1), torch.cat(strides).transpose(0, 1)
        xc = torch.cat([xi.view(b, 4 * self.reg_max + self.nc, -1) for xi in x], 2)
        box, cls = xc.split((4 * self.reg_max, self.nc), 1)
        lt, rb = self.dfl(box).chunk(2, 1)
        x1y1, x2y2 = anchors.unsqueeze(0) - lt, anchors.unsqueeze(0) + rb
        dbox = torch.cat([(x1y1 + x2y2) / 2, x2y2 - x1y1], 1) * stride
        return torch.cat([dbox, cls.sigmoid()], 1)


class YOLOv8(nn.Module):
    """yolov8.yaml (n/s/m/l/x by channel widths and C2f depths read from the weights)."""

    def __init__(self, c: list[int], n: dict[int, int], nc: int, c2: int, c3: int):
        super().__init__()
        up = nn.Upsample(scale_factor=2, mode="nearest")
        self.model = nn.ModuleList([
            Conv(3, c[0], 3, 2), Conv(c[0], c[1], 3, 2), C2f(c[1], c[1], n[2], True), Conv(c[1], c[2], 3, 2),
            C2f(c[2], c[2], n[4], True), Conv(c[2], c[3], 3, 2), C2f(c[3], c[3], n[6], True), Conv(c[3], c[4], 3, 2),
            C2f(c[4], c[4], n[8], True), SPPF(c[4], c[4]), up, nn.Identity(), C2f(c[4] + c[3], c[3], n[12], False), up,
            nn.Identity(), C2f(c[3] + c[2], c[2], n[15], False), Conv(c[2], c[2], 3, 2), nn.Identity(),
            C2f(c[2] + c[3], c[3], n[18], False), Conv(c[3], c[3], 3, 2), nn.Identity(),
            C2f(c[3] + c[4], c[4], n[21], False), Detect(nc, [c[2], c[3], c[4]], c2, c3)])

    def forward(self, x):
        m = self.model
        x4 = m[4](m[3](m[2](m[1](m[0](x)))))
        x6 = m[6](m[5](x4))
        x9 = m[9](m[8](m[7](x6)))
        x12 = m[12](torch.cat([m[10](x9), x6], 1))
        x15 = m[15](torch.cat([m[13](x12), x4], 1))
        x18 = m[18](torch.cat([m[16](x15), x12], 1))
        x21 = m[21](torch.cat([m[19](x18), x9], 1))
        return m[22]([x15, x18, x21])


def _module_path(node_name: str) -> str:
    """'/model.22/cv2.0/cv2.0.2/Conv' -> 'model.22.cv2.0.2' (Ultralytics' export scope names)."""
    parts = node_name.strip("/").split("/")[:-1]
    rel: list[str] = []
    for p in parts[1:]:
        if rel and p.startswith(rel[-1] + "."):
            rel[-1] = p
        else:
            rel.append(p)
    return ".".join(parts[:1] + rel)


def yolov8_from_onnx(path: Path) -> YOLOv8:
    """The YOLOv8 of a real Ultralytics ONNX export (BatchNorm folded), weights matched by scope name."""
    m = onnx.load(str(path))
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    weights = {_module_path(n.name): [inits[i] for i in n.input[1:] if i in inits] for n in m.graph.node
               if n.op_type == "Conv"}
    out = lambda key: weights[key][0].shape[0]  # noqa: E731
    c = [out("model.0.conv"), out("model.1.conv"), out("model.3.conv"), out("model.5.conv"), out("model.7.conv")]
    n = {i: len({k.split(".")[3] for k in weights if k.startswith(f"model.{i}.m.")}) for i in (2, 4, 6, 8, 12, 15, 18, 21)}
    net = YOLOv8(c, n, nc=out("model.22.cv3.0.2"), c2=out("model.22.cv2.0.0.conv"), c3=out("model.22.cv3.0.0.conv")).eval()
    params = dict(net.named_parameters())
    with torch.no_grad():
        for key, ws in weights.items():
            for name, value in zip(("weight", "bias"), ws):
                target = params[f"{key}.{name}"]
                assert tuple(target.shape) == value.shape, (key, name, target.shape, value.shape)
                target.copy_(torch.from_numpy(value.copy()))
    missing = [k for k in params if k.rsplit(".", 1)[0] not in weights]
    if missing:
        raise SystemExit(f"{path}: no weights for {missing[:3]}")
    _check_against(net, m, (1, 3, 640, 640))
    return net


# ----------------------------------------------------------------------------- BlazeFace (MediaPipe .tflite)


class TFLiteReplay(nn.Module):
    """A float TFLite CNN (conv / depthwise / add / relu / pad / max-pool / reshape / concat, as
    MediaPipe's BlazeFace models are) replayed op by op in PyTorch with its own weights. The input
    is NHWC like the .tflite; the body runs NCHW, as a tf2onnx export does, with the transposes at
    the edges. Padding and strides follow from the file's tensor shapes (TF "SAME" puts the odd
    pixel bottom/right); the result is checked against the TFLite interpreter by the builder."""

    def __init__(self, path: Path):
        super().__init__()
        from ai_edge_litert.interpreter import Interpreter, OpResolverType
        it = Interpreter(model_path=str(path),  # no XNNPACK: its delegate node would hide the ops
                         experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
        it.allocate_tensors()
        self.details = {d["index"]: d for d in it.get_tensor_details()}
        self.input_index = it.get_input_details()[0]["index"]
        self.outputs = [d["index"] for d in it.get_output_details()]
        self.ops = [(o["op_name"], list(o["inputs"]), list(o["outputs"])) for o in it._get_ops_details()]
        consts: dict[int, np.ndarray] = {}
        for name, ins, outs in self.ops:
            for i in ins:
                if i >= 0 and i not in consts and self.details[i]["shape"].size and i != self.input_index:
                    try:
                        consts[i] = np.array(it.get_tensor(i), dtype=np.float32)
                    except ValueError:
                        pass
            if name == "DEQUANTIZE":
                consts[outs[0]] = consts[ins[0]]
        self.params = nn.ParameterDict()
        for name, ins, _ in self.ops:
            if name in ("CONV_2D", "DEPTHWISE_CONV_2D"):
                w = consts[ins[1]]  # [O, kh, kw, I] or [1, kh, kw, C]
                w = w.transpose(3, 0, 1, 2) if name == "DEPTHWISE_CONV_2D" else w.transpose(0, 3, 1, 2)
                self.params[f"w{ins[1]}"] = nn.Parameter(torch.from_numpy(np.ascontiguousarray(w)), requires_grad=False)
                self.params[f"b{ins[2]}"] = nn.Parameter(torch.from_numpy(consts[ins[2]]), requires_grad=False)
        self.consts = consts

    def _shape(self, i: int) -> list[int]:
        return [int(v) for v in self.details[i]["shape"]]

    def _same_pad(self, x, i_in: int, i_out: int, k: int):
        (_, h, w, _), (_, oh, ow, _) = self._shape(i_in), self._shape(i_out)
        s = max(1, round(h / oh))
        ph, pw = max((oh - 1) * s + k - h, 0), max((ow - 1) * s + k - w, 0)
        if ph == pw == 0:
            return x, s
        return nn.functional.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)), s

    def forward(self, x):
        v = {self.input_index: x.permute(0, 3, 1, 2)}  # NHWC in, NCHW body
        for name, ins, outs in self.ops:
            if name == "DEQUANTIZE":
                continue
            a = v.get(ins[0])
            if name in ("CONV_2D", "DEPTHWISE_CONV_2D"):
                w = self.params[f"w{ins[1]}"]
                a, s = self._same_pad(a, ins[0], outs[0], w.shape[-1])
                y = nn.functional.conv2d(a, w, self.params[f"b{ins[2]}"], s, groups=w.shape[0] if name == "DEPTHWISE_CONV_2D" else 1)
            elif name == "ADD":
                y = a + v[ins[1]]
            elif name == "RELU":
                y = torch.relu(a)
            elif name == "PAD":
                p = self.consts[ins[1]].astype(int)  # NHWC [[n0, n1], [h0, h1], [w0, w1], [c0, c1]]
                y = nn.functional.pad(a, (int(p[2, 0]), int(p[2, 1]), int(p[1, 0]), int(p[1, 1]), int(p[3, 0]), int(p[3, 1])))
            elif name == "MAX_POOL_2D":
                y = nn.functional.max_pool2d(a, 2, 2)
            elif name == "RESHAPE":
                src = a.permute(0, 2, 3, 1) if a.dim() == 4 else a
                y = src.reshape(self._shape(outs[0]))
            elif name == "CONCATENATION":
                parts = [v[i] for i in ins]
                out, first = self._shape(outs[0]), self._shape(ins[0])
                axis = next(d for d in range(len(out)) if out[d] != first[d])
                y = torch.cat(parts, {3: 1, 1: 2, 2: 3}.get(axis, axis) if len(out) == 4 else axis)
            else:
                raise SystemExit(f"TFLite op {name} is not replayed")
            v[outs[0]] = y
        return tuple(v[i] for i in self.outputs)


def blazeface_from_tflite(path: Path) -> TFLiteReplay:
    """MediaPipe's face_detection_*.tflite as an NHWC PyTorch module, checked against LiteRT."""
    from ai_edge_litert.interpreter import Interpreter
    net = TFLiteReplay(path).eval()
    it = Interpreter(model_path=str(path))
    it.allocate_tensors()
    shape = [int(v) for v in it.get_input_details()[0]["shape"]]
    x = np.random.default_rng(0).uniform(-1, 1, shape).astype(np.float32)
    it.set_tensor(it.get_input_details()[0]["index"], x)
    it.invoke()
    with torch.no_grad():
        got = net(torch.from_numpy(x))
    err = max(float(np.abs(it.get_tensor(d["index"]) - g.numpy()).max()) for d, g in zip(it.get_output_details(), got))
    if err > 1e-3:
        raise SystemExit(f"replayed {Path(path).name} differs from LiteRT by {err:.3g}")
    print(f"replayed {Path(path).name} reproduces LiteRT within {err:.2e}")
    return net
