"""Weight compression recipes for an ML Program, thin wrappers over ``coremltools.optimize.coreml``.

``compress(mlmodel, precision, options, target)`` returns ``(model, notes)``:
  precision "int8"           linear symmetric per-channel int8 weights
  (precision "int4" is not here: it stores the shared int4 plan, see ``coreml/int4.py``)
  options["palettize"] = n   n-bit palettization on top of fp16/fp32 (n in 1,2,3,4,6,8)
  options["prune"] = s       magnitude pruning to sparsity s (0 < s < 1), applied first
Weights with fewer than ``options["weight_threshold"]`` elements (default 512) stay float.
"""
from __future__ import annotations

import importlib.util

from edgeinfer.errors import EdgeInferError

DEFAULT_WEIGHT_THRESHOLD = 512


def _opt():
    import coremltools.optimize.coreml as oc
    return oc


def palettize_mode(options: dict) -> str:
    mode = options.get("palettize_mode")
    if mode is None:
        mode = "kmeans" if importlib.util.find_spec("sklearn") is not None else "uniform"
    if mode not in ("kmeans", "uniform"):
        raise EdgeInferError(f"palettize_mode {mode!r} is not one of kmeans, uniform")
    return mode


def palettize(model, nbits: int, options: dict, thr: int):
    oc = _opt()
    if nbits not in (1, 2, 3, 4, 6, 8):
        raise EdgeInferError(f"palettize bits {nbits} is not one of 1, 2, 3, 4, 6, 8")
    mode = palettize_mode(options)
    kw = {"num_kmeans_workers": int(options.get("kmeans_workers", 1))} if mode == "kmeans" else {}
    cfg = oc.OpPalettizerConfig(mode=mode, nbits=nbits, weight_threshold=thr, **kw)
    return oc.palettize_weights(model, oc.OptimizationConfig(global_config=cfg)), f"{nbits}-bit {mode} palettization"


def linear(model, dtype: str, granularity: str, thr: int, block_size: int = 32):
    oc = _opt()
    kw = dict(mode="linear_symmetric", dtype=dtype, granularity=granularity, weight_threshold=thr)
    if granularity == "per_block":
        kw["block_size"] = block_size
    cfg = oc.OpLinearQuantizerConfig(**kw)
    return oc.linear_quantize_weights(model, oc.OptimizationConfig(global_config=cfg)), f"{dtype} linear {granularity.replace('_', '-')} weights"


def prune(model, sparsity: float, thr: int):
    oc = _opt()
    if not 0 < float(sparsity) < 1:
        raise EdgeInferError(f"prune sparsity {sparsity} must be between 0 and 1")
    cfg = oc.OpMagnitudePrunerConfig(target_sparsity=float(sparsity), weight_threshold=thr)
    return oc.prune_weights(model, oc.OptimizationConfig(global_config=cfg)), f"magnitude pruning to {float(sparsity):.0%} sparsity"


def compress(model, precision: str, options: dict, target_is_ios18: bool):
    """Apply the recipe for ``precision``/``options``; returns (model, list of notes)."""
    thr = int(options.get("weight_threshold", DEFAULT_WEIGHT_THRESHOLD))
    notes: list[str] = []
    if options.get("prune"):
        if precision in ("int8", "int4") or options.get("palettize"):
            raise EdgeInferError("Core ML: combining pruning with int8/int4/palettization is not supported yet; "
                                 "use --quant fp16 with pruning, or drop pruning")
        model, n = prune(model, options["prune"], thr)
        notes.append(n)
    if precision == "int8":
        model, n = linear(model, "int8", "per_channel", thr)
        notes.append(n)
    elif options.get("palettize"):
        model, n = palettize(model, int(options["palettize"]), options, thr)
        notes.append(n)
    return model, notes
