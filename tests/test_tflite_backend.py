"""LiteRT backend: delegate fallback / strict mode, delegate names, batch resizing, metadata."""
from __future__ import annotations

import numpy as np
import pytest
from tflite_util import convert, ort_run, tiny_cnn

from edgeinfer.backends import BackendOptions, open_backend
from edgeinfer.backends.litert_backend import delegate_candidates
from edgeinfer.backends.tflite_metadata import read_metadata
from edgeinfer.errors import EdgeInferError

MISSING = "/nonexistent/libedgeinfer_missing_delegate.so"


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    return convert(tiny_cnn(), tmp_path_factory.mktemp("be"))


def test_missing_delegate_falls_back_to_cpu_with_a_warning(artifact, capsys):
    be = open_backend("tflite", artifact.path, BackendOptions(threads=1, delegates=[MISSING, "xnnpack"]))
    assert len(be.warnings) == 1 and MISSING in be.warnings[0] and "CPU" in be.warnings[0]
    assert MISSING in capsys.readouterr().err
    assert be.describe()["delegates"] == ["xnnpack"]
    x = np.random.default_rng(0).standard_normal((1, 16, 16, 3)).astype(np.float32)
    ref = ort_run(tiny_cnn(), {"x": np.ascontiguousarray(x.transpose(0, 3, 1, 2))})[0]
    np.testing.assert_allclose(be.run(x)[0], ref, rtol=1e-5, atol=1e-5)


def test_missing_delegate_is_an_error_in_strict_mode(artifact):
    with pytest.raises(EdgeInferError, match="libedgeinfer_missing_delegate.*strict-delegate"):
        open_backend("tflite", artifact.path, BackendOptions(delegates=[MISSING], strict_delegate=True))


def test_named_delegates_map_to_platform_libraries():
    assert delegate_candidates("edgetpu", "linux") == ["libedgetpu.so.1"]
    assert delegate_candidates("edgetpu", "darwin") == ["libedgetpu.1.dylib"]
    assert delegate_candidates("gpu", "linux") == ["libtensorflowlite_gpu_delegate.so"]
    assert delegate_candidates("/opt/x/libfoo.so") == ["/opt/x/libfoo.so"]
    with pytest.raises(EdgeInferError, match="unknown TFLite delegate 'tpu9'"):
        delegate_candidates("tpu9")


def test_named_delegate_missing_on_this_machine_falls_back(artifact):
    be = open_backend("tflite", artifact.path, BackendOptions(delegates=["edgetpu"]))
    assert be.warnings and "'edgetpu'" in be.warnings[0]


def test_batches_larger_than_the_file_and_wrong_shapes(artifact):
    be = open_backend("tflite", artifact.path, BackendOptions(threads=1))
    x = np.random.default_rng(2).standard_normal((3, 16, 16, 3)).astype(np.float32)
    ref = ort_run(tiny_cnn(), {"x": np.ascontiguousarray(x.transpose(0, 3, 1, 2)[:1])})[0]
    out = be.run(x)[0]
    assert out.shape == (3, 10)
    np.testing.assert_allclose(out[:1], ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(be.run(x[1:2])[0], out[1:2], rtol=1e-6, atol=1e-6)
    with pytest.raises(EdgeInferError, match="does not match"):
        be.run(np.zeros((1, 3, 16, 16), np.float32))


def test_metadata_reader(artifact):
    assert read_metadata(artifact.path)["edgeinfer_layout"] == b"NHWC"
