"""Conversion state: ONNX tensor name -> TFLite tensor + stored layout + quantization.

Layout contract: every converted value records ``perm`` such that the TFLite tensor holds
``onnx_value.transpose(perm)``. Convolution-like ops produce NHWC (``perm == (0, 2, 3, 1)``)
and layout-agnostic ops keep whatever layout their inputs have, so conv chains never see a
TRANSPOSE; ``Converter.stored(value, perm)`` inserts one (or a free RESHAPE when only size-1
axes move) where a layout-sensitive op needs another order.

Precision modes: "fp32", "fp16" (fp16 weights + DEQUANTIZE), "int8" (full-integer: activations
int8 with scales from the shared calibration ranges), "dynamic" (int8 weights, float
activations), "int4" (full-integer int8 with int4 weights where kernels accept them).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from ai_edge_litert import schema_py_generated as fb
from onnx import numpy_helper

from converters.quant_math import qparams_from_range
from edgeinfer.errors import EdgeInferError

from .builder import ModelBuilder, quant_params

NHWC = (0, 2, 3, 1)
FLOAT32, INT8, INT32, UINT8 = fb.TensorType.FLOAT32, fb.TensorType.INT8, fb.TensorType.INT32, fb.TensorType.UINT8


def identity(rank: int) -> tuple[int, ...]:
    return tuple(range(rank))


def inverse(perm) -> tuple[int, ...]:
    inv = [0] * len(perm)
    for i, p in enumerate(perm):
        inv[p] = i
    return tuple(inv)


@dataclass
class Value:
    tensor: int                 # TFLite tensor index
    shape: tuple[int, ...]      # ONNX (logical) shape
    perm: tuple[int, ...]       # stored = logical.transpose(perm)

    @property
    def stored_shape(self) -> tuple[int, ...]:
        return tuple(self.shape[p] for p in self.perm)

    def axis(self, onnx_axis: int) -> int:
        """Stored position of a (possibly negative) logical axis."""
        a = onnx_axis % len(self.shape) if self.shape else 0
        return self.perm.index(a)


def attrs(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


class Converter:
    """Holds the builder and the per-tensor maps while handlers translate nodes in order."""

    FUSABLE_ACTS = {"Relu": "RELU", "Relu6": "RELU6"}

    def __init__(self, model: onnx.ModelProto, mode: str, ranges: dict | None = None,
                 io_dtype: str = "float32"):
        self.model = model
        self.graph = model.graph
        self.mode = mode
        self.ranges = ranges or {}
        self.io_dtype = io_dtype
        self.b = ModelBuilder()
        self.consts: dict[str, np.ndarray] = {i.name: numpy_helper.to_array(i) for i in self.graph.initializer}
        self.values: dict[str, Value] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.node: onnx.NodeProto | None = None
        self.notes: list[str] = []
        self._layout_cache: dict[tuple[int, tuple], int] = {}
        self._const_cache: dict[tuple, int] = {}
        self.fused: dict[int, tuple[str, onnx.NodeProto]] = {}
        self.gap_heads: dict[int, onnx.NodeProto] = {}   # GlobalAveragePool index -> the Flatten/Reshape it absorbs
        self.skip: set[int] = set()
        self.int4_ops: set[str] = set()
        self.int4_plan = None                      # converters.int4.Int4Plan in int4 mode
        self.channel_means: dict = {}              # ONNX tensor -> per-channel float mean (int8 bias correction)
        self.pinned_batch = False
        self.float_nodes: list[str] = []
        self.float_node_ids: set[int] = set()
        self.float_twins: dict[str, Value] = {}   # float copy of a value produced/dequantized for a float island
        self.int8_readers: set[str] = set()
        self.graph_outputs: set[str] = set()
        self.float_outputs: dict[str, Value] = {}  # graph outputs produced by a float island (kept float)

    # ---------- facts ----------
    @property
    def quantized(self) -> bool:
        """True when activations are int8 (full-integer modes)."""
        return self.mode in ("int8", "int4")

    def error(self, what: str) -> EdgeInferError:
        n = self.node
        where = f"node {n.name or n.output[0]!r} ({n.op_type})" if n is not None else "graph"
        return EdgeInferError(f"TFLite emitter: {where}: {what}")

    def is_const(self, name: str) -> bool:
        return name in self.consts

    def const(self, name: str) -> np.ndarray:
        if name not in self.consts:
            raise self.error(f"input {name!r} must be a constant (initializer) for TFLite")
        return self.consts[name]

    def shape(self, name: str) -> tuple[int, ...]:
        if name in self.consts:
            return tuple(self.consts[name].shape)
        shp = self.shapes.get(name)
        if shp is None:
            raise self.error(f"tensor {name!r} has no static shape; TFLite needs static shapes (run clean_model / fix dynamic dims)")
        return shp

    # ---------- quantization ----------
    def qparams(self, name: str) -> tuple[float, int]:
        if name not in self.ranges:
            raise self.error(f"no calibration range for tensor {name!r}; int8 needs a CalibrationResult covering every float tensor")
        lo, hi = self.ranges[name]
        return qparams_from_range(lo, hi, "int8")

    def qof(self, tensor: int) -> tuple[float, int] | None:
        q = self.b.quant(tensor)
        if q is None or not q.scale:
            return None
        return float(q.scale[0]), int(q.zeroPoint[0])

    def act_type(self) -> int:
        return INT8 if self.quantized else FLOAT32

    # ---------- tensors ----------
    def new_value(self, name: str, shape, perm=None, q: tuple[float, int] | None = None, qname: str | None = None) -> Value:
        """Create the TFLite tensor for ONNX output ``name`` (logical ``shape``) and register it.

        In int8 modes the quantization comes from ``q`` or the calibration range of ``qname or name``.
        """
        shape = tuple(int(d) for d in shape)
        perm = tuple(perm) if perm is not None else identity(len(shape))
        quant = None
        if self.quantized:
            s, z = q if q is not None else self.qparams(qname or name)
            quant = quant_params(s, z)
        t = self.b.add_tensor(name, [shape[p] for p in perm], self.act_type(), quant)
        v = Value(t, shape, perm)
        self.values[name] = v
        return v

    def scratch(self, hint: str, stored_shape, like: int) -> int:
        """An intermediate tensor with the type and quantization of tensor ``like``."""
        return self.b.add_tensor(hint, stored_shape, self.b.ttype(like), self.b.quant(like))

    def alias(self, name: str, value: Value, shape=None, perm=None) -> Value:
        v = Value(value.tensor, tuple(shape if shape is not None else value.shape), tuple(perm if perm is not None else value.perm))
        self.values[name] = v
        return v

    def get(self, name: str) -> Value:
        """The converted value for ``name``; constants are materialized in ONNX order."""
        if name in self.values:
            return self.values[name]
        if name in self.consts:
            arr = self.consts[name]
            t = self.activation_const(arr.astype(np.float32), name)
            return Value(t, tuple(arr.shape), identity(arr.ndim))
        raise self.error(f"input {name!r} was not produced by any supported node")

    def activation_const(self, arr: np.ndarray, hint: str, q: tuple[float, int] | None = None) -> int:
        """A constant used like an activation: float32, or per-tensor int8 in int8 modes."""
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        if not self.quantized:
            return self.b.add_const(hint, arr)
        if q is None:
            q = qparams_from_range(float(arr.min(initial=0.0)), float(arr.max(initial=0.0)), "int8")
        s, z = q
        qa = np.clip(np.round(arr / s) + z, -128, 127).astype(np.int8)
        return self.b.add_const(hint, qa, quant_params(s, z))

    def int_const(self, values, hint: str = "const", dtype=np.int32) -> int:
        arr = np.asarray(values, dtype=dtype)
        key = (hint.split("/")[-1], arr.dtype.str, arr.shape, arr.tobytes())
        if key not in self._const_cache:
            self._const_cache[key] = self.b.add_const(hint, arr)
        return self._const_cache[key]

    def float_weight(self, arr: np.ndarray, hint: str) -> int:
        """A float weight/bias: float32, or float16 + DEQUANTIZE in fp16 mode."""
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        if self.mode != "fp16":
            return self.b.add_const(hint, arr)
        half = self.b.add_const(hint + "_fp16", arr.astype(np.float16))
        out = self.b.add_tensor(hint, arr.shape, FLOAT32)
        self.b.add_op("DEQUANTIZE", [half], [out])
        return out

    # ---------- layout ----------
    def stored(self, value: Value, perm) -> int:
        """Tensor holding ``value`` in layout ``perm``: same tensor, RESHAPE (size-1 moves) or TRANSPOSE."""
        perm = tuple(perm)
        if perm == value.perm:
            return value.tensor
        key = (value.tensor, perm)
        if key in self._layout_cache:
            return self._layout_cache[key]
        inv = inverse(value.perm)
        q = [inv[p] for p in perm]                 # stored_new = stored_old.transpose(q)
        old_shape = value.stored_shape
        new_shape = [old_shape[i] for i in q]
        out = self.scratch(self.b.tensors[value.tensor].name + "_" + "".join(map(str, perm)), new_shape, value.tensor)
        moved = [i for i in q if old_shape[i] != 1]
        if moved == sorted(moved):
            self.reshape(value.tensor, new_shape, out=out)
        else:
            self.b.add_op("TRANSPOSE", [value.tensor, self.int_const(q, "perm")], [out], None)
        self._layout_cache[key] = out
        return out

    def onnx_order(self, value: Value) -> int:
        return self.stored(value, identity(len(value.shape)))

    @staticmethod
    def _reshape_options(new_shape) -> fb.ReshapeOptionsT:
        o = fb.ReshapeOptionsT()
        o.newShape = [int(d) for d in new_shape]
        return o

    def reshape(self, tensor: int, new_shape, out: int | None = None, hint: str = "reshape") -> int:
        """RESHAPE ``tensor``; a batch pinned from a symbolic dim is written as -1 so the runtime can resize it."""
        if out is None:
            out = self.scratch(hint, new_shape, tensor)
        new_shape = [int(d) for d in new_shape]
        src = self.b.shape(tensor)
        if self.pinned_batch and len(src) > 1 and len(new_shape) > 1 and src[0] == new_shape[0] == 1:
            new_shape[0] = -1
        self.b.add_op("RESHAPE", [tensor, self.int_const(list(new_shape), "shape")], [out],
                      self._reshape_options(new_shape))
        return out

    def requantize(self, tensor: int, q: tuple[float, int]) -> int:
        """``tensor`` re-expressed with int8 params ``q`` (a QUANTIZE op when they differ)."""
        cur = self.qof(tensor)
        if cur is None or (abs(cur[0] - q[0]) <= 1e-12 * max(cur[0], 1e-30) and cur[1] == q[1]):
            return tensor
        out = self.b.add_tensor(self.b.tensors[tensor].name + "_rq", self.b.shape(tensor), INT8, quant_params(*q))
        self.b.add_op("QUANTIZE", [tensor], [out], None)
        return out

    # ---------- activations fused into the producer ----------
    def fused_activation(self, node_index: int, node: onnx.NodeProto) -> tuple[int, str]:
        """(ActivationFunctionType, ONNX name the op's output takes) for a producer node."""
        if node_index in self.fused:
            act, act_node = self.fused[node_index]
            return getattr(fb.ActivationFunctionType, act), act_node.output[0]
        return fb.ActivationFunctionType.NONE, node.output[0]

    # ---------- float islands inside an int8 graph ----------
    def plan_float_islands(self, node_ids: set[int], nodes: list[onnx.NodeProto]) -> None:
        """Record which nodes run in float and, per tensor, whether an int8 op or the graph output reads it."""
        self.float_node_ids = set(node_ids)
        self.graph_outputs = {o.name for o in self.graph.output}
        self.int8_readers: set[str] = set()
        for i, n in enumerate(nodes):
            if i not in self.float_node_ids and i not in self.skip:
                self.int8_readers.update(x for x in n.input if x)

    def run_in_float(self, handler, index: int, node: onnx.NodeProto) -> None:
        """Run ``handler`` with float tensors inside an int8 graph (nodes the recipe keeps in float).

        Each int8 input is DEQUANTIZEd with its own scale (a float twin from an earlier island is used
        as is). An output is QUANTIZEd (scale from its calibration range) only for int8 consumers; the
        float tensor is kept for float-island consumers and graph outputs, so e.g. a kept-float Concat of
        box pixels and 0..1 scores reaches the model output without one shared int8 scale.
        """
        saved = {}
        for name in node.input:
            if not name or name not in self.values or name in saved:
                continue
            if name in self.float_twins:
                saved[name] = self.values[name]
                self.values[name] = self.float_twins[name]
            elif self.b.ttype(self.values[name].tensor) == INT8:
                v = saved[name] = self.values[name]
                f = self.b.add_tensor(self.b.tensors[v.tensor].name + "_f", list(v.stored_shape), FLOAT32)
                self.b.add_op("DEQUANTIZE", [v.tensor], [f], None)
                self.float_twins[name] = self.values[name] = Value(f, v.shape, v.perm)
        mode, self.mode = self.mode, "fp32"
        try:
            handler(self, index, node)
        finally:
            self.mode = mode
            self.values.update(saved)
        for name in node.output:
            if not name or name not in self.values:
                continue
            v = self.float_twins[name] = self.values[name]
            if name in self.graph_outputs:
                self.float_outputs[name] = v
            if name not in self.int8_readers:
                continue                       # read only by float islands / the graph output: stays float
            s, z = self.qparams(name)
            q = self.b.add_tensor(name + "_q", list(v.stored_shape), INT8, quant_params(s, z))
            self.b.add_op("QUANTIZE", [v.tensor], [q], None)
            self.values[name] = Value(q, v.shape, v.perm)
