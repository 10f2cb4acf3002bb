"""Operator versions written into the file.

A TFLite runtime accepts an operator when its resolver registers that version; we write the
lowest version that covers the feature used (float vs int8 kernels), which both
ai-edge-litert and tflite-runtime 2.14 register. ``tools/check_tflite_runtime214.py`` checks it.
"""
from __future__ import annotations

# op -> (float32 version, int8 version)
VERSIONS: dict[str, tuple[int, int]] = {
    "CONV_2D": (1, 3),
    "DEPTHWISE_CONV_2D": (1, 3),
    "FULLY_CONNECTED": (1, 4),
    "BATCH_MATMUL": (1, 2),
    "ADD": (1, 2),
    "SUB": (1, 2),
    "MUL": (1, 2),
    "DIV": (1, 2),
    "MAXIMUM": (1, 2),
    "MINIMUM": (1, 2),
    "CONCATENATION": (1, 2),
    "RESHAPE": (1, 1),
    "TRANSPOSE": (1, 2),
    "MEAN": (1, 2),
    "AVERAGE_POOL_2D": (1, 2),
    "MAX_POOL_2D": (1, 2),
    "PAD": (1, 2),
    "PADV2": (1, 2),
    "MIRROR_PAD": (1, 2),
    "RESIZE_BILINEAR": (1, 2),
    "RESIZE_NEAREST_NEIGHBOR": (1, 2),
    "SOFTMAX": (1, 2),
    "STRIDED_SLICE": (1, 2),
    "SPLIT": (1, 2),
    "SPLIT_V": (1, 2),
    "GATHER": (1, 2),
    "LOGISTIC": (1, 2),
    "RELU": (1, 2),
    "RELU6": (1, 2),
    "RELU_N1_TO_1": (1, 2),
    "HARD_SWISH": (1, 1),
    "QUANTIZE": (1, 1),
    "DEQUANTIZE": (1, 2),
}

# features that need a higher version than the plain float/int8 kernel
FEATURE_VERSIONS: dict[tuple[str, str], int] = {
    ("CONV_2D", "hybrid"): 5,              # float input, per-channel int8 filter
    ("DEPTHWISE_CONV_2D", "dilation"): 2,
    ("DEPTHWISE_CONV_2D", "hybrid"): 6,
    ("FULLY_CONNECTED", "hybrid"): 3,
    ("FULLY_CONNECTED", "keep_num_dims"): 5,
    ("RESIZE_BILINEAR", "half_pixel"): 3,
    ("RESIZE_NEAREST_NEIGHBOR", "half_pixel"): 3,
    ("DEQUANTIZE", "fp16"): 3,
    ("QUANTIZE", "requantize"): 2,
}


def version(op: str, int8: bool, *features: str) -> int:
    """Lowest version of ``op`` covering the kernel type (float/int8) and the listed features."""
    base = VERSIONS.get(op, (1, 1))[1 if int8 else 0]
    return max([base] + [FEATURE_VERSIONS.get((op, f), 1) for f in features])
