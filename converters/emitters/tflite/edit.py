"""Edits of a finished .tflite (one subgraph) for app packaging, with the LiteRT schema's object API.

``EditableModel(data)`` unpacks the file; the methods add operators in front of the input or after
an output, and ``to_bytes(metadata)`` packs it again (16-byte aligned buffers, metadata entries set
by name). Nothing is re-quantized: quantized tensors are (de)quantized at the new edges and the
added operators run in float32.

- ``softmax_output(i)``: output i (logits) -> probabilities (SOFTMAX over the last axis).
- ``rgb_input(matrices)``: a new float32 NHWC RGB input; 1x1 CONV_2Ds with the given matrices
  (e.g. luma weights for a grayscale model, a permutation for a BGR one) feed the old input.
- ``detection_postprocess(...)``: the ``TFLite_Detection_PostProcess`` custom op (the 4-output form
  the TFLite Task Library, MediaPipe Tasks and ML Model Binding read) after a YOLO-style head.
"""
from __future__ import annotations

import numpy as np
from ai_edge_litert import schema_py_generated as fb
from flatbuffers import flexbuffers

from edgeinfer.errors import EdgeInferError

from .builder import ModelBuilder, _AlignedBuilder
from .op_versions import RULES, op_version, signature

F32 = fb.TensorType.FLOAT32
DETECTION_POSTPROCESS = "TFLite_Detection_PostProcess"


def _name(t: fb.TensorT) -> str:
    return t.name.decode() if isinstance(t.name, bytes) else str(t.name)


class EditableModel(ModelBuilder):
    """A finished single-subgraph model opened for edits (``ModelBuilder`` helpers work on it)."""

    def __init__(self, data: bytes):
        super().__init__()
        if data[4:8] != b"TFL3":
            raise EdgeInferError("not a .tflite flatbuffer (file identifier is not TFL3)")
        self.model = fb.ModelT.InitFromPackedBuf(bytearray(data), 0)
        if len(self.model.subgraphs or []) != 1:
            raise EdgeInferError(f"app packaging handles single-subgraph .tflite files; this one has "
                                 f"{len(self.model.subgraphs or [])}")
        sg = self.model.subgraphs[0]
        self.tensors, self.operators, self.buffers = list(sg.tensors), list(sg.operators or []), list(self.model.buffers)
        self.inputs, self.outputs = list(sg.inputs), list(sg.outputs)
        self._names = {_name(t) for t in self.tensors}
        self._custom: dict[int, bytes] = {}
        for i, c in enumerate(self.model.operatorCodes or []):
            code = max(c.builtinCode, c.deprecatedBuiltinCode)
            self._opcode_versions.append([code, c.version])
            if code == fb.BuiltinOperator.CUSTOM:
                self._custom[i] = c.customCode
            else:
                self._opcodes[code] = i
        self.io_changed = False
        self._added: list[tuple[str, fb.OperatorT]] = []

    # ------------------------------------------------------------------ helpers

    def add_op(self, op: str, inputs, outputs, options=None) -> int:
        """``ModelBuilder.add_op``; the op's version is derived from its signature in ``to_bytes``."""
        i = super().add_op(op, inputs, outputs, options)
        self._added.append((op, self.operators[i]))
        return i

    def name_of(self, t: int) -> str:
        return _name(self.tensors[t])

    def float_copy(self, t: int, hint: str) -> int:
        """``t`` itself when float32, else a new float32 tensor DEQUANTIZE'd from it (appended)."""
        if self.ttype(t) == F32:
            return t
        out = self.add_tensor(hint, self.shape(t), F32)
        self.add_op("DEQUANTIZE", [t], [out], None)
        return out

    def add_custom_op(self, code: str, inputs, outputs, options: bytes) -> int:
        idx = next((i for i, c in self._custom.items() if c in (code, code.encode())), None)
        if idx is None:
            idx = len(self._opcode_versions)
            self._opcode_versions.append([fb.BuiltinOperator.CUSTOM, 1])
            self._custom[idx] = code.encode()
        o = fb.OperatorT()
        o.opcodeIndex = idx
        o.inputs, o.outputs = [int(i) for i in inputs], [int(i) for i in outputs]
        o.customOptions = np.frombuffer(options, np.uint8)
        o.customOptionsFormat = fb.CustomOptionsFormat.FLEXBUFFERS
        self.operators.append(o)
        self.op_counts[code] = self.op_counts.get(code, 0) + 1
        return len(self.operators) - 1

    def gather_last(self, t: int, idx, hint: str) -> int:
        """GATHER of columns ``idx`` along the last axis of ``t`` (float)."""
        shape = self.shape(t)
        ind = self.add_const(hint + "_idx", np.asarray(idx, np.int32))
        out = self.add_tensor(hint, shape[:-1] + [len(idx)], self.ttype(t))
        opt = fb.GatherOptionsT()
        opt.axis = len(shape) - 1
        self.add_op("GATHER", [t, ind], [out], opt)
        return out

    # ------------------------------------------------------------------ edits

    def softmax_output(self, i: int, name: str = "probabilities") -> None:
        """Output ``i`` becomes SOFTMAX(output i) (float32)."""
        src = self.float_copy(self.outputs[i], self.name_of(self.outputs[i]) + "_float")
        out = self.add_tensor(name, self.shape(src), F32)
        opt = fb.SoftmaxOptionsT()
        opt.beta = 1.0
        self.add_op("SOFTMAX", [src], [out], opt)
        self.outputs[i] = out
        self.io_changed = True

    def rgb_input(self, matrices: list[np.ndarray], input_layout: str, name: str = "image") -> None:
        """Replace input 0 (C channels) with a float32 [1, H, W, 3] RGB input mapped to the model's
        channels by a chain of 1x1 CONV_2Ds with the given [out, in] ``matrices`` (last one [C, k])."""
        old = self.inputs[0]
        shape = self.shape(old)
        if len(shape) != 4:
            raise EdgeInferError(f"the model input has shape {shape}; an image input needs 4 dimensions")
        n, h, w, c = shape if input_layout == "NHWC" else (shape[0], shape[2], shape[3], shape[1])
        first = len(self.operators)
        cur = new_in = self.add_tensor(name, [n, h, w, 3], F32)
        for k, m in enumerate(matrices):
            m = np.asarray(m, np.float32)
            last = k == len(matrices) - 1
            if last and m.shape[0] != c:
                raise EdgeInferError(f"channel map gives {m.shape[0]} channels, the model takes {c}")
            direct = last and input_layout == "NHWC" and self.ttype(old) == F32
            out = old if direct else self.add_tensor(f"{name}_map{k}", [n, h, w, m.shape[0]], F32)
            weight = self.add_const(f"{name}_map{k}_weight", m.reshape(m.shape[0], 1, 1, m.shape[1]))
            bias = self.add_const(f"{name}_map{k}_bias", np.zeros(m.shape[0], np.float32))
            opt = fb.Conv2DOptionsT()
            opt.padding, opt.strideH, opt.strideW = fb.Padding.VALID, 1, 1
            opt.dilationHFactor = opt.dilationWFactor = 1
            self.add_op("CONV_2D", [cur, weight, bias], [out], opt)
            cur = out
        if input_layout == "NCHW":
            target = old if self.ttype(old) == F32 else self.add_tensor(name + "_nchw", [n, c, h, w], F32)
            self.add_op("TRANSPOSE", [cur, self.add_const(name + "_perm", np.array([0, 3, 1, 2], np.int32))], [target], None)
            cur = target
        if cur != old:   # a quantized input: QUANTIZE with the input tensor's own parameters
            self.add_op("QUANTIZE", [cur], [old], None)
        added = self.operators[first:]
        self.operators = added + self.operators[:first]   # run before everything else
        self.inputs[0] = new_in
        self.io_changed = True

    def detection_postprocess(self, boxes: int, scores: int, anchors: np.ndarray, *, num_classes: int,
                              max_detections: int, score_threshold: float, iou_threshold: float,
                              class_agnostic: bool, scales=(1.0, 1.0, 1.0, 1.0)) -> None:
        """Outputs become (locations [1, M, 4] ymin/xmin/ymax/xmax 0..1, classes, scores, count).

        ``boxes`` [1, N, 4] holds (y_center, x_center, log h, log w) coded against ``anchors`` [N, 4]
        (y, x, h, w) with ``scales`` (y, x, h, w); ``scores`` [1, N, num_classes] probabilities."""
        n = self.shape(boxes)[1]
        a = self.add_const("anchors", np.asarray(anchors, np.float32).reshape(n, 4))
        outs = [self.add_tensor("location", [1, max_detections, 4], F32),
                self.add_tensor("category", [1, max_detections], F32),
                self.add_tensor("score", [1, max_detections], F32),
                self.add_tensor("number of detections", [1], F32)]
        opts = flexbuffers.Dumps({
            "max_detections": int(max_detections), "max_classes_per_detection": 1,
            "detections_per_class": int(max_detections), "use_regular_nms": not class_agnostic,
            "nms_score_threshold": float(score_threshold), "nms_iou_threshold": float(iou_threshold),
            "num_classes": int(num_classes), "y_scale": float(scales[0]), "x_scale": float(scales[1]),
            "h_scale": float(scales[2]), "w_scale": float(scales[3])})
        self.add_custom_op(DETECTION_POSTPROCESS, [boxes, scores, a], outs, bytes(opts))
        self.outputs = outs
        self.io_changed = True

    def only_class_max(self, scores: int, hint: str = "scores_top_class") -> int:
        """Scores [1, N, C] with every class but each anchor's best set to 0 (one class per anchor)."""
        shape = self.shape(scores)
        mx = self.add_tensor(hint + "_max", shape[:-1] + [1], F32)
        opt = fb.ReducerOptionsT()
        opt.keepDims = True
        self.add_op("REDUCE_MAX", [scores, self.add_const(hint + "_axis", np.array([len(shape) - 1], np.int32))], [mx], opt)
        eq = self.add_tensor(hint + "_is_max", shape, fb.TensorType.BOOL)
        self.add_op("EQUAL", [scores, mx], [eq], None)
        mask = self.add_tensor(hint + "_mask", shape, F32)
        self.add_op("CAST", [eq], [mask], None)
        out = self.add_tensor(hint, shape, F32)
        self.add_op("MUL", [scores, mask], [out], None)
        return out

    # ------------------------------------------------------------------ output

    def to_bytes(self, metadata: dict[str, bytes] | None = None, description: str | None = None) -> bytes:
        """Pack the edited model; ``metadata`` entries replace same-named ones or are added."""
        m = self.model
        for name, operator in self._added:   # ops without a rule (LOG, REDUCE_MAX, EQUAL, CAST) are float version 1
            v = op_version(signature(name, operator, self.tensors)) if name in RULES else 1
            entry = self._opcode_versions[operator.opcodeIndex]
            entry[1] = max(entry[1], v)
        codes = []
        for i, (code, version) in enumerate(self._opcode_versions):
            c = fb.OperatorCodeT()
            c.builtinCode, c.deprecatedBuiltinCode, c.version = code, min(code, 127), version
            c.customCode = self._custom.get(i)
            codes.append(c)
        m.operatorCodes = codes
        sg = m.subgraphs[0]
        sg.tensors, sg.operators, sg.inputs, sg.outputs = self.tensors, self.operators, self.inputs, self.outputs
        if self.io_changed:
            m.signatureDefs = None     # they name the old input/output tensors
        if description is not None:
            m.description = description
        buffers = list(self.buffers)
        entries = list(m.metadata or [])
        for key, value in (metadata or {}).items():
            b = fb.BufferT()
            b.data = np.frombuffer(value, np.uint8)
            hit = next((e for e in entries if (e.name.decode() if isinstance(e.name, bytes) else e.name) == key), None)
            if hit is None:
                hit = fb.MetadataT()
                hit.name = key
                entries.append(hit)
            buffers.append(b)
            hit.buffer = len(buffers) - 1
        m.metadata, m.buffers = entries, buffers
        builder = _AlignedBuilder(1024 * 1024)
        builder.Finish(m.Pack(builder), file_identifier=b"TFL3")
        return bytes(builder.Output())
