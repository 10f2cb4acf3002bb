"""Core ML runtime backend: on non-Apple hosts it refuses with a one-line, actionable error."""
import platform

import pytest

from edgeinfer.backends import BackendOptions, backend_class, open_backend
from edgeinfer.errors import EdgeInferError


def test_registered():
    assert backend_class("coreml").format == "coreml"


@pytest.mark.skipif(platform.system() == "Darwin", reason="on macOS the backend loads (see test_coreml_emitter)")
def test_non_apple_host_error(tmp_path):
    with pytest.raises(EdgeInferError) as err:
        open_backend("coreml", tmp_path / "m.mlpackage", BackendOptions(compute_units="CPU_AND_NE"))
    msg = str(err.value)
    assert "macOS/iOS" in msg and "--artifact" in msg and "onnx or tflite" in msg
    assert "\n" not in msg


def test_backend_module_imports_only_runtime_deps():
    """Runtime code: numpy/stdlib/edgeinfer at module level; coremltools only lazily, never converters/onnx."""
    import ast

    import edgeinfer.backends.coreml_backend as mod
    tree = ast.parse(open(mod.__file__).read())
    top = {("edgeinfer" if n.level else (n.module or "").split(".")[0]) if isinstance(n, ast.ImportFrom) else a.name.split(".")[0]
           for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom)) for a in getattr(n, "names", [])}
    assert top <= {"__future__", "json", "platform", "pathlib", "numpy", "edgeinfer"}
    every = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not every & {"onnx", "converters", "flatbuffers"}


def test_bgr_batch_becomes_an_rgb_image():
    """Core ML takes a PIL image as RGB and reorders it to a BGR input itself: the backend must hand
    it the photo's RGB pixels, not the BGR-ordered tensor's channels."""
    import numpy as np

    from edgeinfer.backends.coreml_backend import CoreMLBackend

    pre = {"color": "bgr", "scale": 1 / 255, "mean": [0.0], "std": [1.0]}
    b = object.__new__(CoreMLBackend)
    b._pre, b._gray = pre, False
    x = np.zeros((1, 3, 2, 2), np.float32)
    x[0, 0], x[0, 1], x[0, 2] = 10 / 255, 20 / 255, 30 / 255     # B, G, R planes
    img = next(b._images(x))
    assert img.mode == "RGB" and img.getpixel((0, 0)) == (30, 20, 10)
    b._pre = dict(pre, color="rgb")
    assert next(b._images(x)).getpixel((0, 0)) == (10, 20, 30)
