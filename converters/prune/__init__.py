"""Structured channel pruning of ONNX graphs without training (issue 5).

``prune_model(model, PruneConfig(ratio=0.3), calib_samples) -> (model, PruneReport)``.
Modules: ``groups`` (channel dependency analysis), ``importance`` (criteria), ``surgery``
(physical removal), ``reconstruct`` (least-squares refit), ``flops`` (params/MACs).
"""
from .api import PruneConfig, PruneReport, keep_count, prune_model

__all__ = ["PruneConfig", "PruneReport", "keep_count", "prune_model"]
