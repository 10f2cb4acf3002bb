import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from converters.load import load_model
from edgeinfer.errors import EdgeInferError

from conftest import DIGITS


def _tiny(opset=17):
    w = numpy_helper.from_array(np.ones((2, 3), np.float32), "w")
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])], [w])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m


def _err(path) -> str:
    with pytest.raises(EdgeInferError) as exc:
        load_model(path)
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def test_loads_the_sample():
    m = load_model(DIGITS / "digits.onnx")
    assert m.graph.node


def test_missing_file(tmp_path):
    assert "not found" in _err(tmp_path / "nope.onnx")


def test_not_onnx(tmp_path):
    p = tmp_path / "m.onnx"
    p.write_text("hello, I am a text file, not a model at all " * 10)
    assert "not a valid ONNX" in _err(p)


def test_truncated(tmp_path):
    data = (DIGITS / "digits.onnx").read_bytes()
    p = tmp_path / "t.onnx"
    p.write_bytes(data[: len(data) // 2])
    assert "truncated" in _err(p) or "not a valid ONNX" in _err(p)


def test_empty_and_torch_checkpoint(tmp_path):
    (tmp_path / "e.onnx").write_bytes(b"")
    assert "empty" in _err(tmp_path / "e.onnx")
    (tmp_path / "m.pt").write_bytes(b"PK\x03\x04" + b"\0" * 100)
    assert "PyTorch" in _err(tmp_path / "m.pt")


def test_unsupported_opset(tmp_path):
    p = tmp_path / "old.onnx"
    onnx.save(_tiny(opset=7), str(p))
    msg = _err(p)
    assert "opset 7" in msg and "opset_version" in msg


def _with_external_weight(tmp_path, location: str):
    """The tiny model saved with its weight pointing at ``location`` (which is never written)."""
    m = _tiny()
    t = m.graph.initializer[0]
    t.ClearField("float_data")
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    t.external_data.add(key="location", value=location)
    p = tmp_path / "ext.onnx"
    p.write_bytes(m.SerializeToString())
    return p


def test_external_data_outside_folder(tmp_path):
    msg = _err(_with_external_weight(tmp_path, "../secret.bin"))
    assert "outside the model's folder" in msg and "'w'" in msg


def test_external_data_missing(tmp_path):
    assert "external weight file" in _err(_with_external_weight(tmp_path, "weights.bin"))


def test_external_data_inside_folder_loads(tmp_path):
    m = _tiny()
    p = tmp_path / "ok.onnx"
    onnx.save(m, str(p), save_as_external_data=True, all_tensors_to_one_file=True, location="w.bin", size_threshold=0)
    loaded = load_model(p)
    assert numpy_helper.to_array(loaded.graph.initializer[0]).sum() == 6
