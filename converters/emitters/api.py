"""The contract between the conversion pipeline and each format emitter.

An emitter is a function ``emit(request: EmitRequest) -> EmittedArtifact`` registered in
``converters.emitters.EMITTERS`` under its format name. It writes exactly one artifact
(a file, or a directory for ``.mlpackage``) at ``request.out_path`` and nothing else.
Unsupported ops/attributes raise ``EdgeInferError`` naming the node, the op and what is
supported; nothing is written in that case.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx


@dataclass
class CalibrationResult:
    """Statistics gathered ONCE on the cleaned fp32 model and shared by every emitter.

    ``ranges`` maps every float tensor name of the cleaned model (graph inputs, node outputs)
    to the (min, max) range chosen by ``method``. Emitters derive int8 scales/zero-points from
    these ranges with ``converters.quant_math.qparams_from_range`` so the ONNX, TFLite and
    Core ML artifacts agree.
    """

    method: str                       # "minmax" | "percentile" | "entropy"
    ranges: dict[str, tuple[float, float]]
    samples: np.ndarray               # preprocessed calibration inputs, float32, NCHW batch
    num_images: int                   # images used
    skipped: int = 0                  # unreadable images skipped
    synthetic: bool = False           # True when no real data was given (explicit user flag)
    channel_means: dict[str, np.ndarray] = field(default_factory=dict)  # per-channel input means, measured on demand
    tightened: dict[str, int] = field(default_factory=dict)   # activation rule -> ranges it raised (converters.activation_ranges)
    tails_clipped: int = 0            # SiLU outputs whose thin top tail was cut (activation_ranges.clip_heavy_tails)


@dataclass
class EmitRequest:
    model: onnx.ModelProto            # cleaned fp32 graph: NCHW, static shapes, BN folded
    precision: str                    # "fp32" | "fp16" | "int8" | "int4"
    out_path: Path                    # where to write the artifact (inside a temp dir)
    calibration: CalibrationResult | None = None
    input_layout: str = "NCHW"        # layout the artifact's input takes: "NCHW" | "NHWC"
    options: dict[str, Any] = field(default_factory=dict)   # format-specific options
    preprocess: dict[str, Any] = field(default_factory=dict)  # the bundle's preprocessing config
    labels: list[str] | None = None
    task: str = "classify"
    profile: dict[str, Any] = field(default_factory=dict)   # the device profile (as a dict)
    int4: Any = None                  # converters.int4.Int4Plan for "int4" (None: the emitter rounds to nearest)
    int8_weights: Any = None          # converters.int4.plan_int8 for weight-only "int8" (Core ML; None: round to nearest)
    postprocess: dict[str, Any] = field(default_factory=dict)  # the bundle's postprocessing config


@dataclass
class EmittedArtifact:
    path: Path                        # the written file or directory
    format: str                       # "onnx" | "tflite" | "coreml"
    precision: str
    input_layout: str = "NCHW"
    io_dtype: str = "float32"         # dtype of model input/output tensors
    notes: list[str] = field(default_factory=list)        # what the user should know (e.g. int4 is storage-only)
    details: dict[str, Any] = field(default_factory=dict)  # extra facts for the manifest (op counts, ...)
