"""Post-processing registry (task -> postprocessor) and classification (softmax, top-k).

A postprocessor is built from the manifest's ``postprocess`` dict and the labels, and is called
per image: ``post(outputs_for_one_image, transform) -> result`` where the result has
``to_dict()`` (JSON-able) and ``format_lines()`` (human-readable lines).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import EdgeInferError
from .registry import import_target
from .preprocess import Transform


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    z = x - x.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def topk_indices(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and values of the k largest scores of a 1-D array, highest first (ties: lower index first)."""
    k = max(1, min(int(k), scores.shape[-1]))
    idx = np.argpartition(-scores, k - 1)[:k] if k < scores.shape[-1] else np.arange(scores.shape[-1])
    idx = idx[np.lexsort((idx, -scores[idx]))]
    return idx, scores[idx]


@dataclass
class Classification:
    class_ids: list[int]
    scores: list[float]
    labels: list[str]

    def to_dict(self) -> dict[str, Any]:
        return {"top_k": [{"class_id": c, "label": lab, "score": s}
                          for c, s, lab in zip(self.class_ids, self.scores, self.labels)]}

    def format_lines(self) -> list[str]:
        return [f"{lab:<16} {s:7.4f}  (class {c})" for c, s, lab in zip(self.class_ids, self.scores, self.labels)]

    @property
    def top1(self) -> int:
        return self.class_ids[0]


class ClassifyPostprocessor:
    """Config: {"kind": "classify", "softmax": true, "top_k": 5, "output": 0}."""

    def __init__(self, config: dict[str, Any], labels: list[str] | None):
        k, out = config.get("top_k", 5), config.get("output", 0)
        if not (isinstance(k, int) and k >= 1 and isinstance(out, int) and out >= 0):
            raise EdgeInferError(f"postprocess top_k {k!r} / output {out!r} must be whole numbers; re-run `edgeinfer convert`")
        self.apply_softmax = bool(config.get("softmax", True))
        self.k = k
        self.output_index = out
        self.labels = labels

    def __call__(self, outputs: list[np.ndarray], transform: Transform | None = None, top_k: int | None = None) -> Classification:
        logits = np.asarray(outputs[self.output_index], dtype=np.float32).reshape(-1)
        if self.labels and len(self.labels) != logits.size:
            raise EdgeInferError(f"the bundle's labels file has {len(self.labels)} labels but the model outputs "
                                 f"{logits.size} scores; fix the labels file (one label per class) or re-convert")
        scores = softmax(logits) if self.apply_softmax else logits
        idx, vals = topk_indices(scores, top_k or self.k)
        names = [self.labels[i] if self.labels and i < len(self.labels) else str(i) for i in idx]
        return Classification([int(i) for i in idx], [float(v) for v in vals], names)


POSTPROCESSORS: dict[str, str] = {
    "classify": "edgeinfer.postprocess:ClassifyPostprocessor",
    "detect": "edgeinfer.detection.postprocess:DetectPostprocessor",
}


def make_postprocessor(task: str, config: dict[str, Any], labels: list[str] | None):
    target = POSTPROCESSORS.get(task)
    if target is None:
        raise EdgeInferError(f"task {task!r} has no postprocessor; known tasks: {', '.join(POSTPROCESSORS)}")
    try:
        cls = import_target(target)
    except (ModuleNotFoundError, AttributeError):
        raise EdgeInferError(f"the {task} postprocessor is not available in this edgeinfer build") from None
    return cls(config, labels)
