"""The contract every inference backend honours.

A backend wraps one artifact file of a bundle. ``run`` takes a float32 batch already
preprocessed *in the artifact's input layout* (``input_layout``) and returns the model's
outputs as float32 arrays, in the order of ``output_names``. Quantized model I/O
(int8/uint8 tensors) is the backend's business: it quantizes inputs and dequantizes outputs
from the tensor parameters, so callers always see float32.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class BackendOptions:
    """Options common to all backends; each backend ignores what it cannot honour."""

    threads: int | None = None
    # ONNX Runtime execution providers, in order (e.g. ["XNNPACKExecutionProvider", "CPUExecutionProvider"])
    providers: list[str] = field(default_factory=list)
    # LiteRT delegates by name ("xnnpack", "gpu", "nnapi", "hexagon", "edgetpu") or library path
    delegates: list[str] = field(default_factory=list)
    # fail instead of falling back to CPU when a delegate/provider is missing
    strict_delegate: bool = False
    # Core ML compute units: "ALL" | "CPU_AND_NE" | "CPU_AND_GPU" | "CPU_ONLY"
    compute_units: str = "ALL"


class Backend:
    """Base class; subclasses set ``format`` and implement ``run``."""

    format: str = ""
    # may ``run`` be called from several threads at once? (ONNX Runtime sessions: yes; LiteRT interpreters: no)
    thread_safe: bool = False

    def __init__(self, path: Path, options: BackendOptions | None = None):
        self.path = Path(path)
        self.options = options or BackendOptions()
        self.input_name: str = ""
        self.input_shape: list[int | None] = []
        self.input_layout: str = "NCHW"
        self.output_names: list[str] = []
        self.warnings: list[str] = []

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        raise NotImplementedError

    def describe(self) -> dict:
        """What the backend actually uses (engine, providers/delegates), for reports."""
        return {"format": self.format}
