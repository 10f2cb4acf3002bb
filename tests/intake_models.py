"""Small models built with torch for the intake tests: dynamic axes, NHWC inputs, fp16 weights,
split detector outputs, and the PyTorch file kinds (.pt2, TorchScript, pickles)."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn as nn


def _seed(seed: int = 0) -> None:
    torch.manual_seed(seed)


class TinyNet(nn.Module):
    """A MobileNet-flavoured classifier: conv-bn-relu6, depthwise, hardswish, pool, linear."""

    def __init__(self, classes: int = 5):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU6(),
            nn.Conv2d(16, 16, 3, 1, 1, groups=16), nn.BatchNorm2d(16), nn.Hardswish(),
            nn.Conv2d(16, 24, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(24, classes))
        for m in self.modules():  # non-trivial BatchNorm statistics
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)

    def forward(self, x):
        return self.body(x)


class NHWCNet(nn.Module):
    """What tf2onnx/Keras exports look like: NHWC input, a transpose to NCHW before the convs.
    ``normalize_first`` puts an NHWC per-channel scale/shift ahead of the transpose."""

    def __init__(self, normalize_first: bool = False):
        super().__init__()
        self.net = TinyNet()
        self.normalize_first = normalize_first
        self.register_buffer("scale", torch.tensor([2.0, 1.5, 0.5]))

    def forward(self, x):
        if self.normalize_first:
            x = x * self.scale - 0.25
        return self.net(x.permute(0, 3, 1, 2))


class TinyYolo(nn.Module):
    """Anchor-free YOLOv8-style head over strides 8/16/32 whose grid comes from the feature shapes
    (Shape/Range ops in a dynamic export); output [1, 4 + classes, N] in input pixels."""

    def __init__(self, classes: int = 3):
        super().__init__()
        self.classes = classes
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU(),
                                  nn.Conv2d(16, 16, 3, 2, 1), nn.ReLU())
        self.down = nn.ModuleList([nn.Conv2d(16, 16, 3, 2, 1), nn.Conv2d(16, 16, 3, 2, 1)])
        self.heads = nn.ModuleList([nn.Conv2d(16, 4 + classes, 1) for _ in range(3)])

    def forward(self, x):
        feats = [self.stem(x)]
        for d in self.down:
            feats.append(torch.relu(d(feats[-1])))
        outs = []
        for f, head, stride in zip(feats, self.heads, (8, 16, 32)):
            p = head(f)
            b, _, h, w = p.shape
            gy, gx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                                    indexing="ij")
            grid = torch.stack([gx, gy]).reshape(1, 2, h * w)
            p = p.reshape(b, 4 + self.classes, h * w)
            xy = (grid + torch.sigmoid(p[:, :2]) * 2 - 0.5) * stride
            wh = torch.sigmoid(p[:, 2:4]) * 4 * stride
            outs.append(torch.cat([xy, wh, torch.sigmoid(p[:, 4:])], 1))
        return torch.cat(outs, 2)


class TinyBlazeFace(nn.Module):
    """BlazeFace-front-shaped detector on an NHWC 128x128 input: 16x16x2 + 8x8x6 = 896 anchors,
    split outputs boxes [1, 896, 16] and scores [1, 896, 1] (as the MediaPipe model)."""

    def __init__(self):
        super().__init__()
        self.s8 = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 8, 3, 2, 1), nn.ReLU(),
                                nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU())
        self.s16 = nn.Sequential(nn.Conv2d(16, 16, 3, 2, 1), nn.ReLU())
        self.box8, self.box16 = nn.Conv2d(16, 2 * 16, 1), nn.Conv2d(16, 6 * 16, 1)
        self.cls8, self.cls16 = nn.Conv2d(16, 2, 1), nn.Conv2d(16, 6, 1)

    def forward(self, x):
        x = x.permute(0, 3, 1, 2)
        f8 = self.s8(x)
        f16 = self.s16(f8)

        def flat(t, k):  # [1, A*k, H, W] -> [1, H*W*A, k] in MediaPipe's (y, x, anchor) order
            return t.permute(0, 2, 3, 1).reshape(1, -1, k)
        boxes = torch.cat([flat(self.box8(f8), 16), flat(self.box16(f16), 16)], 1)
        scores = torch.cat([flat(self.cls8(f8), 1), flat(self.cls16(f16), 1)], 1)
        return boxes, scores


def export_onnx(module: nn.Module, shape, path: Path, dynamic_axes=None, output_names=None, opset: int = 17) -> Path:
    """The TorchScript-based exporter (fast, opset 17) with optional dynamic axes."""
    module.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.randn(*shape),), str(path), dynamo=False, opset_version=opset,
                          input_names=["images"], output_names=output_names, dynamic_axes=dynamic_axes)
    return path


def tiny_net(seed: int = 0) -> TinyNet:
    _seed(seed)
    return TinyNet().eval()


def to_fp16(src: Path, dst: Path) -> Path:
    from onnxruntime.transformers.float16 import convert_float_to_float16
    onnx.save(convert_float_to_float16(onnx.load(str(src)), keep_io_types=True), str(dst))
    return dst


def images(folder: Path, n: int = 12, size: int = 64, seed: int = 0) -> Path:
    """Random-blob RGB photos for calibration."""
    from PIL import Image
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        base = rng.integers(0, 256, (1, 1, 3))
        arr = np.clip(base + rng.normal(0, 40, (size, size, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(arr).save(folder / f"img{i:02d}.png")
    return folder
