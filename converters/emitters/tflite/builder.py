"""Accumulates TFLite tensors, buffers, operator codes and operators; packs a .tflite file.

Uses ``ai_edge_litert.schema_py_generated`` (flatbuffers object API); no TensorFlow.
Constant buffers are 16-byte aligned like the TFLite converter writes them.
"""
from __future__ import annotations

import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as fb

from .op_versions import derive

NP_TO_TFL = {
    np.dtype(np.float32): fb.TensorType.FLOAT32,
    np.dtype(np.float16): fb.TensorType.FLOAT16,
    np.dtype(np.int32): fb.TensorType.INT32,
    np.dtype(np.int64): fb.TensorType.INT64,
    np.dtype(np.int8): fb.TensorType.INT8,
    np.dtype(np.uint8): fb.TensorType.UINT8,
    np.dtype(np.int16): fb.TensorType.INT16,
    np.dtype(np.bool_): fb.TensorType.BOOL,
}
INT4 = fb.TensorType.INT4


class _AlignedBuilder(flatbuffers.Builder):
    """flatbuffers.Builder whose byte vectors (tensor buffers) start on 16-byte boundaries and
    whose identical int64 vectors (per-channel zero points, all zeros) are written once and shared."""

    def __init__(self, size: int):
        super().__init__(size)
        self._shared: dict[bytes, int] = {}

    def CreateNumpyVector(self, x):  # noqa: N802 (flatbuffers naming)
        if x.dtype == np.int64:
            key = x.tobytes()
            if key not in self._shared:
                self._shared[key] = super().CreateNumpyVector(x)
            return self._shared[key]
        if x.dtype != np.uint8:
            return super().CreateNumpyVector(x)
        payload = x.tobytes()
        self.StartVector(1, len(payload), 16)
        self.head = self.head - len(payload)
        self.Bytes[self.head:self.head + len(payload)] = payload
        self.vectorNumElems = len(payload)
        return self.EndVector()


def pack_int4(q: np.ndarray) -> np.ndarray:
    """Pack int4 values (stored in int8, range [-8, 7]) two per byte, low nibble first."""
    flat = q.astype(np.int8).reshape(-1)
    if flat.size % 2:
        flat = np.concatenate([flat, np.zeros(1, np.int8)])
    lo = flat[0::2].astype(np.uint8) & 0x0F
    hi = (flat[1::2].astype(np.uint8) & 0x0F) << 4
    return (lo | hi).astype(np.uint8)


def quant_params(scale, zero_point, axis: int = 0) -> fb.QuantizationParametersT:
    q = fb.QuantizationParametersT()
    q.scale = np.atleast_1d(np.asarray(scale, np.float32)).reshape(-1)
    q.zeroPoint = np.atleast_1d(np.asarray(zero_point, np.int64)).reshape(-1)
    q.quantizedDimension = int(axis)
    return q


class ModelBuilder:
    """Mutable model under construction. Tensor/operator indices are returned as ints."""

    def __init__(self) -> None:
        self.tensors: list[fb.TensorT] = []
        self.buffers: list[fb.BufferT] = [fb.BufferT()]  # buffer 0: the empty sentinel
        self.operators: list[fb.OperatorT] = []
        self._opcodes: dict[int, int] = {}      # builtin code -> index in opcode list
        self._opcode_versions: list[list[int]] = []  # [code, version]: set from signatures by finish()
        self._op_names: list[str] = []
        self.requirements: dict = {}                 # op -> op_versions.Requirement, after finish()
        self._names: set[str] = set()
        self.op_counts: dict[str, int] = {}

    def _unique(self, name: str) -> str:
        base, i = name, 1
        while name in self._names:
            name = f"{base}_{i}"
            i += 1
        self._names.add(name)
        return name

    def add_tensor(self, name: str, shape, ttype: int, quant: fb.QuantizationParametersT | None = None,
                   data: bytes | np.ndarray | None = None) -> int:
        t = fb.TensorT()
        t.name = self._unique(name)
        t.shape = [int(d) for d in shape]
        t.type = ttype
        t.quantization = quant
        if data is not None:
            b = fb.BufferT()
            b.data = np.frombuffer(bytes(data) if not isinstance(data, np.ndarray) else data.tobytes(), np.uint8)
            self.buffers.append(b)
            t.buffer = len(self.buffers) - 1
        else:
            t.buffer = 0
        self.tensors.append(t)
        return len(self.tensors) - 1

    def add_const(self, name: str, array: np.ndarray, quant: fb.QuantizationParametersT | None = None,
                  int4: bool = False) -> int:
        """A constant tensor; ``int4`` packs int8-held values in [-8, 7] as TFLite INT4."""
        array = np.asarray(array, order="C")
        if int4:
            return self.add_tensor(name, array.shape, INT4, quant, pack_int4(array))
        ttype = NP_TO_TFL.get(array.dtype)
        if ttype is None:
            raise TypeError(f"no TFLite tensor type for {array.dtype}")
        return self.add_tensor(name, array.shape, ttype, quant, array)

    def shape(self, idx: int) -> list[int]:
        return list(self.tensors[idx].shape)

    def ttype(self, idx: int) -> int:
        return self.tensors[idx].type

    def quant(self, idx: int) -> fb.QuantizationParametersT | None:
        return self.tensors[idx].quantization

    def add_op(self, op: str, inputs, outputs, options=None) -> int:
        """Append operator ``op`` (a ``BuiltinOperator`` name); ``-1`` in inputs = optional absent.
        Its version is derived from its signature when the model is finished (``op_versions``)."""
        code = getattr(fb.BuiltinOperator, op)
        if code not in self._opcodes:
            self._opcodes[code] = len(self._opcode_versions)
            self._opcode_versions.append([code, 1])
        idx = self._opcodes[code]
        self._op_names.append(op)
        o = fb.OperatorT()
        o.opcodeIndex = idx
        o.inputs = [int(i) for i in inputs]
        o.outputs = [int(i) for i in outputs]
        if options is not None:
            o.builtinOptionsType = getattr(fb.BuiltinOptions, type(options).__name__[:-1])
            o.builtinOptions = options
        self.operators.append(o)
        self.op_counts[op] = self.op_counts.get(op, 0) + 1
        return len(self.operators) - 1

    _code_names = {v: k for k, v in vars(fb.BuiltinOperator).items() if not k.startswith("_")}

    def opcode_versions(self) -> dict[str, int]:
        return {self._code_names[c]: v for c, v in self._opcode_versions}

    def finish(self, inputs: list[int], outputs: list[int], description: str = "",
               metadata: dict[str, bytes] | None = None) -> bytes:
        """Serialize to .tflite bytes (file identifier TFL3, schema version 3), op versions from signatures."""
        self.requirements = derive(list(zip(self._op_names, self.operators)), self.tensors)
        for entry in self._opcode_versions:
            name = self._code_names.get(entry[0])
            if name in self.requirements:
                entry[1] = self.requirements[name].version
        codes = []
        for code, version in self._opcode_versions:
            c = fb.OperatorCodeT()
            c.builtinCode = code
            c.deprecatedBuiltinCode = min(code, 127)
            c.version = version
            codes.append(c)
        sg = fb.SubGraphT()
        sg.tensors, sg.operators = self.tensors, self.operators
        sg.inputs, sg.outputs = list(inputs), list(outputs)
        sg.name = "main"
        model = fb.ModelT()
        model.version = 3
        model.operatorCodes = codes
        model.subgraphs = [sg]
        model.description = description
        buffers = list(self.buffers)
        model.metadata = []
        for key, value in (metadata or {}).items():
            b = fb.BufferT()
            b.data = np.frombuffer(value, np.uint8)
            buffers.append(b)
            m = fb.MetadataT()
            m.name, m.buffer = key, len(buffers) - 1
            model.metadata.append(m)
        model.buffers = buffers
        builder = _AlignedBuilder(1024 * 1024)
        builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
        return bytes(builder.Output())
