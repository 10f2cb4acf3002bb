"""PyTorch sources -> ONNX with torch's own exporter (the optional ``[torch]`` extra).

Accepted: ``torch.export`` programs saved with ``torch.export.save`` (``.pt2``; exported with the
dynamo exporter), TorchScript archives (``torch.jit.save``; the TorchScript exporter), an
``nn.Module`` in memory (``export_module``). Plain pickles (``torch.save(model)``, state dicts)
run arbitrary code when loaded: refused unless the caller passes ``trust_pickle``.
The runtime never imports torch; only this module does, lazily.
"""
from __future__ import annotations

import contextlib
import io
import logging
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from edgeinfer.errors import EdgeInferError

DYNAMO_OPSET = 18     # the dynamo exporter's lowest opset
TORCHSCRIPT_OPSET = 17
KINDS = ("torch-export", "torchscript", "torch-pickle")


def sniff(path: Path) -> str | None:
    """"torch-export" | "torchscript" | "torch-pickle" for PyTorch files, None for anything else."""
    with open(path, "rb") as fh:
        head = fh.read(4)
    if head.startswith(b"\x80"):  # a legacy (non-zip) torch.save pickle
        return "torch-pickle"
    if not head.startswith(b"PK"):
        return None
    try:
        with zipfile.ZipFile(path) as zf:
            names = [n.split("/", 1)[-1] for n in zf.namelist()]
    except (zipfile.BadZipFile, OSError):
        return None
    if "archive_format" in names or any(n.startswith("models/") and n.endswith(".json") for n in names):
        return "torch-export"
    if "constants.pkl" in names or any(n.startswith("code/") for n in names):
        return "torchscript"
    if "data.pkl" in names:
        return "torch-pickle"
    return None


def import_torch():
    try:
        import torch
    except ModuleNotFoundError:
        raise EdgeInferError("converting a PyTorch model needs torch: pip install 'edgeinfer[torch]' "
                             "(or export it to ONNX yourself)") from None
    return torch


@contextlib.contextmanager
def quiet():
    """torch's exporter prints progress and warnings; the pipeline reports its own steps."""
    logging.getLogger("torch").setLevel(logging.ERROR)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def _example(shape: list[int] | None, what: str):
    torch = import_torch()
    if shape is None:
        raise EdgeInferError(f"{what} does not record its input size; pass --input-shape N,C,H,W "
                             "(or --resize/--crop/--letterbox)")
    return torch.from_numpy(np.random.default_rng(0).standard_normal(shape).astype(np.float32))


def _export_program(ep, out: Path, opset: int | None) -> None:
    torch = import_torch()
    with quiet():
        try:
            prog = torch.onnx.export(ep, (), dynamo=True, opset_version=max(opset or DYNAMO_OPSET, DYNAMO_OPSET),
                                     verbose=False)
            prog.save(str(out))
        except ModuleNotFoundError as exc:
            raise EdgeInferError(f"torch's ONNX exporter needs {exc.name}: pip install 'edgeinfer[torch]'") from None
        except Exception as exc:  # torch raises many private exception types
            raise EdgeInferError(f"torch.onnx.export failed: {first_line(exc)}") from None


def first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return f"{exc.__class__.__name__}: {text[0] if text else ''}"


def _input_shape_of_program(ep) -> list[int | None]:
    """The example input shape a torch.export program records (None for dynamic dims)."""
    torch = import_torch()
    specs = [s for s in ep.graph_signature.input_specs if s.kind.name == "USER_INPUT"]
    if len(specs) != 1:
        names = ", ".join(s.arg.name for s in specs)
        raise EdgeInferError(f"the program has {len(specs)} user inputs ({names}); edgeinfer converts single-image models")
    node = next(n for n in ep.graph.nodes if n.op == "placeholder" and n.name == specs[0].arg.name)
    return [int(d) if isinstance(d, int) else (int(d) if isinstance(d, torch.SymInt) and d.node.is_constant() else None)
            for d in node.meta["val"].shape]


def _export_check(fn, onnx_path: Path, shape: list[int]) -> float:
    """max |torch - ONNX Runtime| on one random input: the exporter's own error."""
    import onnxruntime as ort
    torch = import_torch()
    x = _example(shape, "the model")
    with torch.no_grad():
        ref = fn(x)
    ref = ref if isinstance(ref, (tuple, list)) else [ref]
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    outs = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    return float(max(np.abs(np.asarray(o, np.float32) - r.detach().numpy()).max() for o, r in zip(outs, ref)))


def capture(module, example):
    """``torch.export`` program of an ``nn.Module`` (put in eval mode) on one example input tensor."""
    torch = import_torch()
    with quiet():
        try:
            return torch.export.export(module.eval(), (example,))
        except Exception as exc:
            raise EdgeInferError(f"torch.export could not capture the module: {first_line(exc)}") from None


def export_module(module, example, out: Path, opset: int | None = None) -> dict[str, Any]:
    """An ``nn.Module`` + example input tensor -> ONNX at ``out``; returns manifest facts."""
    return _from_program(capture(module, example), out, opset, list(example.shape), "nn.Module")


def _from_program(ep, out: Path, opset: int | None, shape: list[int] | None, fmt: str) -> dict[str, Any]:
    recorded = _input_shape_of_program(ep)
    _export_program(ep, out, opset)
    check_shape = shape or ([d for d in recorded] if None not in recorded else None)
    facts: dict[str, Any] = {"format": fmt, "exporter": "torch.onnx dynamo", "torch_input_shape": recorded}
    if check_shape:
        facts["export_max_abs_error"] = _export_check(ep.module(), out, check_shape)
    return facts


def to_onnx(path: Path, kind: str, out: Path, *, shape: list[int] | None, opset: int | None,
            trust_pickle: bool) -> dict[str, Any]:
    """Export the PyTorch file ``path`` of ``kind`` to ONNX at ``out``; returns manifest facts."""
    if kind == "torch-pickle" and not trust_pickle:
        raise EdgeInferError(f"{path} is a pickled PyTorch checkpoint: loading it runs arbitrary code. Save the model "
                             "with torch.export.save (.pt2) or torch.jit.save, or pass --trust-pickle if you trust the file")
    torch = import_torch()
    if kind == "torch-export":
        try:
            ep = torch.export.load(str(path))
        except Exception as exc:
            raise EdgeInferError(f"{path} is not a readable torch.export program: {first_line(exc)}") from None
        return _from_program(ep, out, opset, shape, "torch.export (.pt2)")
    if kind == "torchscript":
        try:
            module = torch.jit.load(str(path), map_location="cpu").eval()
        except Exception as exc:
            raise EdgeInferError(f"{path} is not a readable TorchScript archive: {first_line(exc)}") from None
        example = _example(shape, f"{path.name} (TorchScript)")
        with quiet():
            try:
                torch.onnx.export(module, (example,), str(out), dynamo=False, opset_version=opset or TORCHSCRIPT_OPSET,
                                  input_names=["input"], do_constant_folding=True)
            except Exception as exc:
                raise EdgeInferError(f"torch.onnx.export (TorchScript) failed: {first_line(exc)}") from None
        return {"format": "TorchScript", "exporter": "torch.onnx TorchScript",
                "export_max_abs_error": _export_check(module, out, list(example.shape))}
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=False)
    except (ModuleNotFoundError, AttributeError) as exc:
        raise EdgeInferError(f"{path}: the pickled model's code is not importable here ({first_line(exc)}); "
                             "run where its classes import, or save it with torch.export.save (.pt2)") from None
    except Exception as exc:
        raise EdgeInferError(f"{path} is not a readable PyTorch checkpoint: {first_line(exc)}") from None
    if not isinstance(obj, torch.nn.Module):
        raise EdgeInferError(f"{path} holds a {type(obj).__name__} (weights without the architecture); build the "
                             "model in Python and call edgeinfer.convert(module, example_input, ...)")
    facts = export_module(obj, _example(shape, f"{path.name} (pickled module)"), out, opset)
    return dict(facts, format="pickled nn.Module (--trust-pickle)")
