"""``edgeinfer inspect MODEL``: what a source model is, in numbers."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgeinfer.bundle import sha256_of, size_of

from .clean import count_ops, infer_shapes
from .load import load_model, opset_of
from .model_info import metadata, output_specs, real_inputs


def inspect_model(path: Path) -> dict[str, Any]:
    model = infer_shapes(load_model(path))
    params = int(sum(np.prod(t.dims) for t in model.graph.initializer))
    inputs = []
    for i in real_inputs(model):
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in i.type.tensor_type.shape.dim]
        inputs.append({"name": i.name, "shape": dims})
    return {
        "file": str(path), "sha256": sha256_of(Path(path)), "size": size_of(Path(path)),
        "opset": opset_of(model), "ir_version": model.ir_version, "producer": model.producer_name,
        "inputs": inputs, "outputs": output_specs(model), "parameters": params,
        "nodes": len(model.graph.node), "op_counts": count_ops(model), "edgeinfer_metadata": metadata(model),
    }
