"""Op versions come from each operator's signature (TFLite's op_version rules); files a known runtime
cannot run are refused at convert time, naming the op and the runtimes that can run it."""
from __future__ import annotations

import numpy as np
import pytest
from ai_edge_litert import schema_py_generated as fb
from onnx import helper
from tflite_util import calibration, convert, make_model, tiny_cnn

from converters.emitters.tflite import op_versions as ov
from edgeinfer.errors import EdgeInferError

T = fb.TensorType


def sig(op, ins, outs, options=None):
    """ins/outs: (type, shape[, scale[, per_channel]])."""
    def ts(spec):
        t, shape, *rest = spec
        return ov.TensorSig(t, tuple(shape), per_channel=bool(rest[1]) if len(rest) > 1 else False,
                            scale=rest[0] if rest else 0.0)
    return ov.OpSig(op, [ts(s) for s in ins], [ts(s) for s in outs], options)


def opts(cls, **kw):
    o = cls()
    for k, v in kw.items():
        setattr(o, k, v)
    return o


I8 = (T.INT8, [1, 4, 4, 8], 0.5)


@pytest.mark.parametrize("case, version", [
    (sig("MUL", [(T.INT8, [1, 8], 0.5), (T.INT8, [1, 8], 0.5)], [(T.INT8, [1, 8], 0.1)]), 3),   # rescale 2.5 >= 1
    (sig("MUL", [(T.INT8, [1, 8], 0.5), (T.INT8, [1, 8], 0.5)], [(T.INT8, [1, 8], 1.0)]), 2),
    (sig("MUL", [(T.FLOAT32, [1, 8]), (T.FLOAT32, [1, 8])], [(T.FLOAT32, [1, 8])]), 1),
    (sig("RESIZE_NEAREST_NEIGHBOR", [I8, (T.INT32, [2])], [I8], opts(fb.ResizeNearestNeighborOptionsT, alignCorners=True)), 3),
    (sig("RESIZE_NEAREST_NEIGHBOR", [I8, (T.INT32, [2])], [I8], opts(fb.ResizeNearestNeighborOptionsT)), 2),
    (sig("RESIZE_BILINEAR", [(T.FLOAT32, [1, 4, 4, 8]), (T.INT32, [2])], [(T.FLOAT32, [1, 8, 8, 8])],
         opts(fb.ResizeBilinearOptionsT, halfPixelCenters=True)), 3),
    (sig("TRANSPOSE", [(T.INT8, [1, 2, 3, 4, 5]), (T.INT32, [5])], [(T.INT8, [5, 4, 3, 2, 1])]), 4),
    (sig("TRANSPOSE", [(T.FLOAT32, [1, 2, 3, 4, 5, 6]), (T.INT32, [6])], [(T.FLOAT32, [6, 5, 4, 3, 2, 1])]), 6),
    (sig("TRANSPOSE", [I8, (T.INT32, [4])], [I8]), 2),
    (sig("SUB", [(T.FLOAT32, [1, 2, 3, 4, 5]), (T.FLOAT32, [1, 1, 1, 1, 5])], [(T.FLOAT32, [1, 2, 3, 4, 5])]), 3),
    (sig("SUB", [(T.INT8, [1, 2, 3, 4, 5]), (T.INT8, [1, 2, 3, 4, 5])], [(T.INT8, [1, 2, 3, 4, 5])]), 2),
    (sig("STRIDED_SLICE", [(T.INT8, [1, 2, 3, 4, 5])] + [(T.INT32, [5])] * 3, [(T.INT8, [1, 2, 3, 4, 5])],
         opts(fb.StridedSliceOptionsT)), 4),
    (sig("PAD", [(T.INT8, [1, 2, 3, 4, 5]), (T.INT32, [5, 2])], [(T.INT8, [1, 2, 3, 4, 5])]), 4),
    (sig("FULLY_CONNECTED", [(T.INT8, [1, 16]), (T.INT4, [8, 16]), (T.INT32, [8])], [(T.INT8, [1, 8])],
         opts(fb.FullyConnectedOptionsT)), 10),
    (sig("FULLY_CONNECTED", [(T.INT8, [1, 16]), (T.INT8, [8, 16]), (T.INT32, [8])], [(T.INT8, [1, 8])],
         opts(fb.FullyConnectedOptionsT)), 4),
    (sig("FULLY_CONNECTED", [(T.FLOAT32, [1, 2, 16]), (T.FLOAT32, [8, 16]), (ov.NONE, [])], [(T.FLOAT32, [1, 2, 8])],
         opts(fb.FullyConnectedOptionsT, keepNumDims=True)), 5),
    (sig("FULLY_CONNECTED", [(T.FLOAT32, [1, 16]), (T.INT8, [8, 16], 0.1, True), (T.FLOAT32, [8])], [(T.FLOAT32, [1, 8])],
         opts(fb.FullyConnectedOptionsT)), 12),
    (sig("CONV_2D", [(T.FLOAT32, [1, 4, 4, 8]), (T.INT8, [8, 3, 3, 8], 0.1, True), (T.FLOAT32, [8])],
         [(T.FLOAT32, [1, 4, 4, 8])], opts(fb.Conv2DOptionsT)), 5),
    (sig("DEPTHWISE_CONV_2D", [(T.FLOAT32, [1, 4, 4, 8]), (T.FLOAT32, [1, 3, 3, 8]), (T.FLOAT32, [8])],
         [(T.FLOAT32, [1, 4, 4, 8])], opts(fb.DepthwiseConv2DOptionsT, dilationHFactor=2, dilationWFactor=2)), 2),
    (sig("DEQUANTIZE", [(T.FLOAT16, [8])], [(T.FLOAT32, [8])]), 3),
    (sig("QUANTIZE", [(T.FLOAT32, [1, 8])], [(T.INT8, [1, 8], 0.1)]), 1),
])
def test_version_from_signature(case, version):
    assert ov.op_version(case) == version


def test_emitted_file_declares_the_derived_versions(tmp_path):
    model = tiny_cnn()
    xs = np.random.default_rng(0).standard_normal((8, 3, 16, 16)).astype(np.float32)
    art = convert(model, tmp_path, "int8", calib=calibration(model, xs))
    packed = fb.ModelT.InitFromPackedBuf(bytearray(art.path.read_bytes()), 0)
    names = {v: k for k, v in vars(fb.BuiltinOperator).items() if not k.startswith("_")}
    sg = packed.subgraphs[0]
    ops = [(names[packed.operatorCodes[o.opcodeIndex].builtinCode], o) for o in sg.operators]
    derived = {k: r.version for k, r in ov.derive(ops, sg.tensors).items()}
    declared = {names[c.builtinCode]: c.version for c in packed.operatorCodes}
    assert declared == derived == art.details["op_versions"]
    assert derived["CONV_2D"] == 3 and derived["FULLY_CONNECTED"] == 4
    assert art.details["runs_in"] == list(ov.RUNTIME_MAX)


def test_refusal_names_op_and_runtimes():
    need = {"FULLY_CONNECTED": ov.Requirement("FULLY_CONNECTED", 12, "hybrid, per-channel int8 weights")}
    with pytest.raises(EdgeInferError) as exc:
        ov.check_runtimes(need)
    msg = str(exc.value)
    assert "FULLY_CONNECTED needs version 12 (hybrid, per-channel int8 weights)" in msg
    assert "tflite-runtime 2.14.0 runs up to v10" in msg and "can run it: ai-edge-litert 2.3.0" in msg
    ov.check_runtimes(need, ["ai-edge-litert 2.3.0"])       # a file only for current LiteRT is fine


def test_convert_refuses_before_writing(tmp_path, monkeypatch):
    """A runtime that lacks the needed version refuses the conversion; nothing is written."""
    monkeypatch.setitem(ov.RUNTIME_MAX, "old-runtime 1.0", {**ov.RUNTIME_MAX["tflite-runtime 2.14.0"],
                                                           "RESIZE_BILINEAR": 2})
    node = helper.make_node("Resize", ["x", "", "", "sizes"], ["y"], mode="linear",
                            coordinate_transformation_mode="half_pixel")
    m = make_model([node], [("x", [1, 4, 8, 8])], [("y", [1, 4, 16, 16])],
                   {"sizes": np.array([1, 4, 16, 16], np.int64)})
    with pytest.raises(EdgeInferError) as exc:
        convert(m, tmp_path)
    assert "RESIZE_BILINEAR needs version 3 (half_pixel_centers)" in str(exc.value)
    assert "old-runtime 1.0 runs up to v2" in str(exc.value)
    assert list(tmp_path.iterdir()) == []
