"""Verification of a saved ``.mlpackage`` on any host.

``check_structure(path)`` reloads the package without Core ML (``skip_model_load``) and reports
its inputs/outputs and weight storage (bytes per stored dtype, read from the program's blob
constants, and the size of ``weight.bin``).

``run_mlpackage(path, batch_nchw)`` executes the saved program with the numpy MIL evaluator:
``batch_nchw`` is float32, preprocessed exactly as the bundle's preprocessing produces it
(normalized NCHW). For an image-input package the batch is mapped back to 0..255 pixels
(the inverse of the preprocessing recorded in the package) so the built-in scale/bias runs too.
Returns the model outputs as float32 arrays (classifier: the score vector), batch-first.
"""
from __future__ import annotations

import json
from collections import Counter
from functools import lru_cache
from pathlib import Path

import numpy as np

from edgeinfer.backends.coreml_backend import pixels_from_normalized
from edgeinfer.errors import EdgeInferError

from .mil_eval import MilProgram

WEIGHT_FILE = Path("Data") / "com.apple.CoreML" / "weights" / "weight.bin"
_BITS = {"FLOAT16": 16, "FLOAT32": 32, "INT8": 8, "UINT8": 8, "INT4": 4, "UINT4": 4, "UINT2": 2, "UINT1": 1,
         "UINT3": 3, "UINT6": 6, "INT16": 16, "UINT16": 16, "INT32": 32, "UINT32": 32}


def weight_file_size(path: str | Path) -> int:
    f = Path(path) / WEIGHT_FILE
    return f.stat().st_size if f.exists() else 0


def _feature(f) -> dict:
    t = f.type
    if t.HasField("imageType"):
        cs = t.imageType.ColorSpace.Name(t.imageType.colorSpace)
        return {"name": f.name, "kind": "image", "color": cs, "shape": [int(t.imageType.height), int(t.imageType.width)]}
    if t.HasField("multiArrayType"):
        dt = t.multiArrayType.ArrayDataType.Name(t.multiArrayType.dataType)
        return {"name": f.name, "kind": "tensor", "dtype": dt, "shape": [int(s) for s in t.multiArrayType.shape]}
    return {"name": f.name, "kind": t.WhichOneof("Type")}


def check_structure(path: str | Path) -> dict:
    """Facts about the saved package; raises EdgeInferError if it does not reload as an ML Program."""
    from coremltools.proto import MIL_pb2

    try:
        prog = _program(str(Path(path).resolve()), _mtime(path))
    except Exception as exc:  # a broken package is a conversion failure, said in one line
        raise EdgeInferError(f"the written Core ML package {path} does not reload: {exc}") from None
    desc = prog.spec.description
    stored_bits: Counter = Counter()
    for o in prog.block.operations:
        values = list(o.attributes.values()) + [b.value for a in o.inputs.values() for b in a.arguments if not b.name]
        for v in values:
            if v.HasField("blobFileValue"):
                tt = v.type.tensorType
                dt = MIL_pb2.DataType.Name(tt.dataType)
                stored_bits[dt] += int(np.prod([d.constant.size for d in tt.dimensions])) * _BITS.get(dt, 32)
    return {
        "inputs": [_feature(f) for f in desc.input],
        "outputs": [_feature(f) for f in desc.output],
        "class_labels": desc.predictedFeatureName != "",
        "weight_file_bytes": weight_file_size(path),
        "blob_bytes_by_dtype": {k: v // 8 for k, v in sorted(stored_bits.items())},
        "mil_ops": dict(Counter(t for t in prog.op_types if t != "const")),
        "spec_version": int(prog.spec.specificationVersion),
    }


def _mtime(path) -> float:
    return (Path(path) / "Manifest.json").stat().st_mtime if (Path(path) / "Manifest.json").exists() else 0.0


@lru_cache(maxsize=8)
def _program(path: str, mtime: float) -> MilProgram:
    return MilProgram(path)


def run_mlpackage(path: str | Path, batch_nchw: np.ndarray) -> list[np.ndarray]:
    """Run the saved package on a preprocessed NCHW float32 batch with the numpy evaluator."""
    return run_program(_program(str(Path(path).resolve()), _mtime(path)), batch_nchw)


def run_program(prog: MilProgram, batch_nchw: np.ndarray) -> list[np.ndarray]:
    """``run_mlpackage`` on an already loaded program (e.g. an ``fp16_analysis.Fp16Emulator``)."""
    desc = prog.spec.description
    feat = desc.input[0]
    x = np.asarray(batch_nchw, np.float32)
    if feat.type.HasField("imageType"):
        pre = json.loads(prog.spec.description.metadata.userDefined.get("edgeinfer.preprocess", "{}"))
        x = pixels_from_normalized(x, pre)
    per_output: list[list[np.ndarray]] = []
    for i in range(x.shape[0]):
        res = prog.run({feat.name: x[i:i + 1]})
        vals = []
        for o in desc.output:
            if o.type.HasField("stringType") or o.type.HasField("int64Type"):
                continue    # the class label: its scores are the dictionary output
            v = res[o.name]
            vals.append(np.asarray(v, np.float32).reshape(1, -1) if o.type.HasField("dictionaryType") else np.asarray(v, np.float32))
        per_output.append(vals)
    return [np.concatenate([p[j] for p in per_output], axis=0) for j in range(len(per_output[0]))]
