"""Model intake, in front of ``load``: models as users have them -> the graph the converter works on.

``open_source(path, ...)`` accepts ONNX (NCHW or NHWC input, dynamic dimensions, fp16 weights) and
PyTorch files (``.pt2`` torch.export programs, TorchScript; pickles only with ``trust_pickle``) and
returns a ``Source``: ``model`` is float32 with an NCHW input of static height/width (what
cleaning, calibration, pruning and every emitter expect), ``reference`` is the model as given,
run by verification with inputs in its own ``layout``.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import onnx

from edgeinfer.errors import EdgeInferError

from ..load import load_model, opset_of, real_inputs
from .fp16 import has_fp16_weights, upcast_fp16
from .layout import detect_layout, nchw_view
from .shapes import declared_dims, show_dims, fix_input_shape, fixed_shape


@dataclass
class Source:
    model: onnx.ModelProto          # float32, NCHW input, static H/W
    reference: onnx.ModelProto      # the source as given (ONNX export of a PyTorch file)
    layout: str                     # input layout of the source: "NCHW" | "NHWC"
    facts: dict[str, Any] = field(default_factory=dict)   # manifest["source"] additions
    notes: list[str] = field(default_factory=list)         # what intake did, one line each (manifest "notes")


Hint = Callable[[onnx.ModelProto | None], "tuple[int, int] | None"]


def open_source(path: str | Path, *, input_shape: list[int] | None = None, size_hint: Hint | None = None,
                channels: int = 3, trust_pickle: bool = False, opset: int | None = None) -> Source:
    """Read, export (PyTorch) and normalise a source model; every refusal is one line.

    ``size_hint(model)`` gives the (height, width) the preprocessing fixes (``model`` is None for
    PyTorch files, which carry no ONNX metadata); it fixes dynamic height/width without --input-shape.
    """
    path = Path(path)
    hint = size_hint or (lambda model: None)
    kind = _torch_kind(path)
    if kind is None:
        model = load_model(path)
        return prepare(model, input_shape=input_shape, size_hint=hint(model))
    from .torch_source import to_onnx
    hw = hint(None)
    shape = input_shape or ([1, channels, *hw] if hw else None)
    with tempfile.TemporaryDirectory(prefix="edgeinfer-torch-") as tmp:
        out = Path(tmp) / (path.stem + ".onnx")
        facts = to_onnx(path, kind, out, shape=shape, opset=opset, trust_pickle=trust_pickle)
        model = load_model(out)
    src = prepare(model, input_shape=input_shape, size_hint=hw)
    src.facts.update(facts)
    err = facts.get("export_max_abs_error")
    src.notes.insert(0, f"{facts['format']} exported to ONNX opset {opset_of(model)} by {facts['exporter']}"
                     + (f"; max |torch - ONNX| {err:.2e} on a random input" if err is not None else ""))
    return src


def _torch_kind(path: Path) -> str | None:
    if not path.is_file() or path.stat().st_size == 0:
        return None  # load_model says what is wrong
    from .torch_source import sniff
    return sniff(path)


def prepare(model: onnx.ModelProto, *, input_shape: list[int] | None = None,
            size_hint: tuple[int, int] | None = None) -> Source:
    """A loaded ONNX model -> ``Source`` (fp16 upcast, dynamic dims fixed, NHWC seen as NCHW)."""
    inp = real_inputs(model)[0]
    declared = declared_dims(inp)
    facts: dict[str, Any] = {"declared_input_shape": declared}
    notes: list[str] = []
    if len(declared) != 4:
        raise EdgeInferError(f"input {inp.name!r} has rank {len(declared)} ({declared}); edgeinfer converts image "
                             "models with an [N,C,H,W] or [N,H,W,C] input")
    layout = detect_layout([d if isinstance(d, int) else None for d in declared])
    if layout is None and input_shape is not None:
        layout = detect_layout(input_shape)
    if layout is None:
        raise EdgeInferError(f"input {inp.name!r} has shape {declared}: expected an image input [N,C,H,W] or "
                             "[N,H,W,C] with 1 or 3 channels (pass --input-shape to say which)")
    work = model
    if has_fp16_weights(model) or inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT16:
        work = upcast_fp16(model)
        facts["weights_dtype"] = "float16"
        notes.append("fp16 weights: converted from their exact float32 values; verified against the fp16 source as given")
    shape = fixed_shape(inp.name, declared, layout, input_shape, size_hint)
    if shape is not None:
        work = fix_input_shape(work, inp.name, shape)
        facts["fixed_input_shape"] = shape
        notes.append(f"dynamic input {show_dims(declared)} fixed to {shape}")
    if layout == "NHWC":
        work = nchw_view(work)
        notes.append("NHWC input: the ONNX artifact takes NHWC as the source did; the graph is converted through "
                     "an NCHW view whose input transposes cancel")
    facts["layout"] = layout
    return Source(model=work, reference=model, layout=layout, facts=facts, notes=notes)

