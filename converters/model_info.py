"""What the bundle needs to know about a model: input spec, preprocessing, labels, task.

Sources, strongest first: command-line options, the model's ONNX ``metadata_props``
(``edgeinfer.preprocess``, ``edgeinfer.labels``, ``edgeinfer.task``, ``edgeinfer.postprocess``,
all JSON), then what the graph itself says (input shape, a final Softmax).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import onnx

from edgeinfer.bundle import read_label_lines
from edgeinfer.errors import EdgeInferError
from edgeinfer.preprocess import PRESETS, PreprocessConfig

from .load import real_inputs

META_PREFIX = "edgeinfer."
JSON_KEYS = ("preprocess", "labels", "postprocess")


def metadata(model: onnx.ModelProto) -> dict[str, Any]:
    """The model's ``edgeinfer.*`` metadata, JSON-decoded; a malformed entry is a one-line error."""
    out = {}
    for prop in model.metadata_props:
        if prop.key.startswith(META_PREFIX):
            key = prop.key[len(META_PREFIX):]
            try:
                out[key] = json.loads(prop.value)
            except json.JSONDecodeError:
                if key in JSON_KEYS:
                    raise EdgeInferError(f"model metadata {prop.key!r} is not valid JSON") from None
                out[key] = prop.value  # plain strings such as edgeinfer.task = classify
    return out


def input_spec(model: onnx.ModelProto) -> dict[str, Any]:
    """Name, NCHW shape (batch may be None) and dtype of the single image input (after ``intake``)."""
    inp = real_inputs(model)[0]
    tt = inp.type.tensor_type
    if tt.elem_type != onnx.TensorProto.FLOAT:
        raise EdgeInferError(f"input {inp.name!r} is {onnx.TensorProto.DataType.Name(tt.elem_type)}; edgeinfer converts float32-input models")
    dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
    if len(dims) != 4:
        raise EdgeInferError(f"input {inp.name!r} has rank {len(dims)}; edgeinfer converts image models with NCHW [N,C,H,W] input")
    if dims[1] not in (1, 3):
        raise EdgeInferError(f"input {inp.name!r} has shape {dims}: expected an image input [N,C,H,W] or [N,H,W,C] "
                             "with 1 or 3 channels")
    if dims[2] is None or dims[3] is None:
        raise EdgeInferError(f"input {inp.name!r} has a dynamic height/width {dims}; pass --input-shape N,C,H,W "
                             "(or --letterbox N / --resize N)")
    return {"name": inp.name, "shape": dims, "layout": "NCHW", "dtype": "float32"}


def output_specs(model: onnx.ModelProto) -> list[dict[str, Any]]:
    specs = []
    for out in model.graph.output:
        dims = [d.dim_value if d.HasField("dim_value") else None for d in out.type.tensor_type.shape.dim]
        specs.append({"name": out.name, "shape": dims})
    return specs


def merged_preprocess(model: onnx.ModelProto | None, preset: str | None, overrides: dict[str, Any]) -> dict[str, Any]:
    """Preprocessing keys from preset, then model metadata, then explicit options (later wins); unvalidated."""
    cfg: dict[str, Any] = {}
    if preset:
        if preset not in PRESETS:
            raise EdgeInferError(f"unknown --preset {preset!r}; choose one of {', '.join(PRESETS)}")
        cfg.update(PRESETS[preset])
    meta = metadata(model).get("preprocess") if model is not None else None
    if meta is not None and not isinstance(meta, dict):
        raise EdgeInferError("model metadata 'edgeinfer.preprocess' must be a JSON object; fix or remove it in the model")
    if meta:
        cfg.update(meta)
    cfg.update({k: v for k, v in overrides.items() if v is not None})
    return cfg


def resolve_preprocess(model: onnx.ModelProto, preset: str | None, overrides: dict[str, Any],
                       implied: str | None = None) -> PreprocessConfig:
    """Preprocessing from preset, then model metadata, then explicit options (later wins).

    ``implied`` is a preset used when none of those says the normalization (YOLO decoders imply
    "yolo"); a preset's letterbox takes the model's own square size unless --letterbox is given.
    """
    spec = input_spec(model)
    meta = metadata(model).get("preprocess")
    given = any(k in overrides and overrides[k] is not None for k in ("mean", "std", "scale"))
    if not preset and not meta and not given:
        if not implied:
            raise EdgeInferError("the model carries no preprocessing metadata: pass --preset imagenet|inception|yolo|raw "
                                 "or --mean R,G,B --std R,G,B (and --resize/--crop or --letterbox)")
        preset = implied
    cfg = merged_preprocess(model, preset, overrides)
    h, w = spec["shape"][2], spec["shape"][3]
    if preset and not overrides.get("letterbox") and isinstance(cfg.get("letterbox"), dict) and h == w \
            and not (meta or {}).get("letterbox"):
        cfg["letterbox"] = dict(cfg["letterbox"], size=h)
    cfg.setdefault("color", "gray" if spec["shape"][1] == 1 else "rgb")
    if "resize" not in cfg and cfg.get("resize_mode", "stretch") == "stretch":
        cfg["resize"] = spec["shape"][2]
    pc = PreprocessConfig.from_dict(cfg)
    if pc.channels != spec["shape"][1]:
        raise EdgeInferError(f"--color {pc.color} gives {pc.channels} channel(s) but the model input has {spec['shape'][1]}")
    hw = pc.output_hw()
    if hw is not None and hw != (spec["shape"][2], spec["shape"][3]):
        raise EdgeInferError(f"preprocessing produces {hw[1]}x{hw[0]} but the model takes "
                             f"{spec['shape'][3]}x{spec['shape'][2]}; fix --resize/--crop/--letterbox")
    return pc


def resolve_labels(model: onnx.ModelProto, labels_file: str | Path | None) -> list[str] | None:
    if labels_file:
        p = Path(labels_file)
        if not p.is_file():
            raise EdgeInferError(f"labels file not found: {p}")
        labels = read_label_lines(p)
        if not labels:
            raise EdgeInferError(f"labels file {p} is empty")
        return labels
    meta = metadata(model).get("labels")
    if meta is not None and not (isinstance(meta, list) and all(isinstance(x, str) for x in meta)):
        raise EdgeInferError("model metadata 'edgeinfer.labels' must be a JSON list of strings")
    return meta


def resolve_task(model: onnx.ModelProto, task: str | None) -> str:
    task = task or metadata(model).get("task") or "classify"
    if task not in ("classify", "detect"):
        raise EdgeInferError(f"unknown --task {task!r}; choose classify or detect")
    return task


def ends_with_softmax(model: onnx.ModelProto) -> bool:
    first_output = model.graph.output[0].name
    return any(n.op_type == "Softmax" and first_output in n.output for n in model.graph.node)


def classify_postprocess(model: onnx.ModelProto, labels: list[str] | None) -> dict[str, Any]:
    outs = output_specs(model)
    shape = outs[0]["shape"]
    if sum(1 for d in shape[1:] if d != 1) > 1:
        raise EdgeInferError(f"output {outs[0]['name']!r} has shape {shape}, not [N, classes]: a classifier needs class "
                             "scores; for a detector pass --task detect --decoder yolov5|yolov8|ssd")
    classes = shape[-1] if shape else None
    if labels is not None and classes and len(labels) != classes:
        raise EdgeInferError(f"the labels list has {len(labels)} entries but the model outputs {classes} classes; fix --labels")
    return {"kind": "classify", "softmax": not ends_with_softmax(model), "top_k": 5}
