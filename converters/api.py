"""``edgeinfer.convert``: the conversion pipeline as one Python call.

    import edgeinfer
    result = edgeinfer.convert(model, torch.randn(1, 3, 224, 224), profile="raspberry-pi-5",
                               out="out/", preset="imagenet", calib_dir="images/")

``model`` is a file (ONNX, ``.pt2``, TorchScript) or a torch ``nn.Module`` / ``ExportedProgram``
in memory (captured with ``torch.export`` on ``example_input`` and saved as ``NAME.pt2``, so the
bundle records it like a ``.pt2`` file). Other keyword arguments are ``ConvertOptions`` fields,
plus ``preset``/``mean``/``std``/``resize``/``crop``/``letterbox`` for the preprocessing.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from edgeinfer.errors import EdgeInferError

from .pipeline import ConvertOptions, ConvertResult
from .pipeline import convert as run_pipeline

PREPROCESS_KEYS = ("mean", "std", "scale", "color", "resize", "crop", "letterbox")


def _preprocess(kw: dict[str, Any]) -> dict[str, Any]:
    pre = {k: kw.pop(k) for k in PREPROCESS_KEYS if k in kw}
    if isinstance(pre.get("letterbox"), int):
        pre.update(resize_mode="letterbox", letterbox={"size": pre["letterbox"], "pad_value": 114, "stride": None})
    elif pre.get("resize") or pre.get("crop"):
        pre.update(resize=pre.get("resize") or pre["crop"], resize_mode="shorter" if pre.get("crop") else "stretch")
    return pre


def convert(model: Any, example_input: Any = None, *, profile: str | list[str], out: str | Path,
            name: str | None = None, **options: Any) -> ConvertResult:
    """Convert ``model`` for ``profile`` (one name or several) into bundles under ``out``."""
    profiles = [profile] if isinstance(profile, str) else list(profile)
    pre = _preprocess(options)
    options.setdefault("progress", False)
    try:
        opts_fields = ConvertOptions.__dataclass_fields__
        bad = sorted(set(options) - set(opts_fields))
        if bad:
            raise EdgeInferError(f"edgeinfer.convert got an unknown option {bad[0]!r}; options: "
                                 f"{', '.join(sorted(set(opts_fields) - {'model', 'profiles', 'out_dir'}))}")
        if isinstance(model, (str, Path)):
            return run_pipeline(ConvertOptions(model=Path(model), profiles=profiles, out_dir=Path(out), preprocess=pre,
                                               **options))
        with tempfile.TemporaryDirectory(prefix="edgeinfer-module-") as tmp:
            path = _save_program(model, example_input, Path(tmp), name)
            return run_pipeline(ConvertOptions(model=path, profiles=profiles, out_dir=Path(out), preprocess=pre, **options))
    except TypeError as exc:
        raise EdgeInferError(f"edgeinfer.convert: {exc}") from None


def _save_program(model: Any, example_input: Any, folder: Path, name: str | None) -> Path:
    """An nn.Module (with its example input) or an ExportedProgram, saved as ``NAME.pt2``."""
    from .intake.torch_source import capture, import_torch
    torch = import_torch()
    if isinstance(model, torch.export.ExportedProgram):
        program = model
    elif isinstance(model, torch.nn.Module):
        if example_input is None:
            raise EdgeInferError("edgeinfer.convert(module, example_input, ...): give an example input tensor, "
                                 "e.g. torch.randn(1, 3, 224, 224)")
        program = capture(model, example_input)
    else:
        raise EdgeInferError(f"edgeinfer.convert takes a model file, a torch nn.Module or an ExportedProgram, "
                             f"not {type(model).__name__}")
    stem = name or (type(model).__name__.lower() if isinstance(model, torch.nn.Module) else "model")
    path = folder / f"{stem}.pt2"
    torch.export.save(program, str(path))
    return path
