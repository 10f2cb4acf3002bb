"""One way for the converter to open an ONNX Runtime CPU session on an in-memory model."""
from __future__ import annotations

import onnx
import onnxruntime as ort


def cpu_session(model: onnx.ModelProto, threads: int | None = None) -> ort.InferenceSession:
    """A quiet CPU session; ``threads`` caps intra-op threads (None: ONNX Runtime's default)."""
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = int(threads)
        so.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
