"""Verification: every artifact against the fp32 source model on held-out inputs.

Figures per artifact: max/mean abs error and cosine similarity of the first output, plus the
task's agreement figure (top-1 agreement for classifiers, mAP agreement for detectors).
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import onnx

from edgeinfer.backends import BackendOptions, open_backend
from edgeinfer.errors import EdgeInferError
from edgeinfer.preprocess import Transform, to_layout
from edgeinfer.progress import Progress

from edgeinfer.int8_arith import host_arithmetic, host_int8_kernels, saturates

from .emitters.api import EmittedArtifact
from .exact_int import ARITHMETIC as EXACT_ARITHMETIC, run_exact
from .ort_session import cpu_session

BATCH = 8
# agreement with the float model below which a lossy recipe (pruning, int4, int8 search) is refused
# unless the user sets --min-agreement; one rule for every recipe
DEFAULT_AGREEMENT_FLOOR = 0.9


def run_reference(model: onnx.ModelProto, samples: np.ndarray, layout: str = "NCHW") -> list[np.ndarray]:
    """Outputs of the source model as given under ONNX Runtime (the ground truth of verification):
    NCHW float32 ``samples`` are fed in the model's own ``layout`` and input dtype (fp16 sources)."""
    sess = cpu_session(model)
    inp = sess.get_inputs()[0]
    fixed = inp.shape[0]
    step = 1 if fixed == 1 else BATCH
    feed = to_layout(samples, layout).astype(np.float16 if inp.type == "tensor(float16)" else np.float32, copy=False)
    parts = [sess.run(None, {inp.name: feed[i:i + step]}) for i in range(0, len(feed), step)]
    return [np.concatenate([p[k] for p in parts]).astype(np.float32) for k in range(len(parts[0]))]


def arithmetic_of(artifact: EmittedArtifact) -> str:
    """The arithmetic that verifies ``artifact`` faithfully to its target (recorded per figure):
    ``exact-int`` for a full-8-bit ONNX int8 artifact on a host whose int8 kernels saturate (x86
    without VNNI), else this host's engine (``host-ort-<kernels>``, ``host-litert-<kernels>``; TFLite's
    integer kernels are exact on every CPU), or the numpy MIL evaluator for Core ML."""
    if artifact.format == "coreml":
        return "mil-eval-numpy"
    if artifact.format == "onnx" and artifact.precision == "int8" and saturates(host_int8_kernels()) \
            and not artifact.details.get("pair_safe_weights", False):
        return EXACT_ARITHMETIC
    return host_arithmetic("ort" if artifact.format == "onnx" else "litert")


def run_artifact(artifact: EmittedArtifact, samples: np.ndarray, threads: int | None = None,
                 arithmetic: str | None = None, progress: bool = False) -> list[np.ndarray]:
    """Outputs of an emitted artifact for NCHW float samples, executed the way the device would."""
    if artifact.format == "coreml":
        from .emitters.coreml.verify import run_mlpackage
        return run_mlpackage(artifact.path, samples)
    if arithmetic == EXACT_ARITHMETIC:
        with Progress("verifying (exact-int)", len(samples), progress) as bar:
            return run_exact(onnx.load(str(artifact.path)), samples, bar)
    backend = open_backend(artifact.format, artifact.path, BackendOptions(threads=threads))
    parts = [backend.run(to_layout(samples[i:i + BATCH], artifact.input_layout)) for i in range(0, len(samples), BATCH)]
    return [np.concatenate([p[k] for p in parts]) for k in range(len(parts[0]))]


def numeric_figures(ref: np.ndarray, out: np.ndarray) -> dict[str, float]:
    ref = ref.reshape(len(ref), -1).astype(np.float64)
    out = out.reshape(len(out), -1).astype(np.float64)
    if ref.shape != out.shape:
        raise EdgeInferError(f"artifact output shape {out.shape} differs from the source model's {ref.shape}")
    err = np.abs(ref - out)
    norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(out, axis=1)
    cos = np.where(norms > 0, (ref * out).sum(axis=1) / np.maximum(norms, 1e-30), 1.0)
    return {"max_abs_error": float(err.max()), "mean_abs_error": float(err.mean()),
            "cosine": float(cos.mean()), "min_cosine": float(cos.min())}


def classify_agreement(ref: list[np.ndarray], out: list[np.ndarray], **_: Any) -> dict[str, float]:
    a = ref[0].reshape(len(ref[0]), -1).argmax(axis=1)
    b = out[0].reshape(len(out[0]), -1).argmax(axis=1)
    return {"top1_agreement": float((a == b).mean())}


EVAL_SCORE_THRESHOLD = 0.001


def ranked_postprocessor(post):
    """The tested side of a detector's mAP agreement: ``post`` (a ``DetectPostprocessor``) with
    detections ranked down to ``EVAL_SCORE_THRESHOLD``, as COCO mAP is computed; the reference side
    keeps the bundle's score threshold."""
    return post.with_overrides(score_threshold=min(EVAL_SCORE_THRESHOLD, post.config["score_threshold"]))


def detect_agreement(ref: list[np.ndarray], out: list[np.ndarray], *, postprocess: dict, labels, input_hw) -> dict[str, float]:
    from edgeinfer.detection.metrics import map_agreement
    from edgeinfer.detection.postprocess import DetectPostprocessor
    post = DetectPostprocessor(postprocess, labels)
    test_post = ranked_postprocessor(post)
    t = Transform((input_hw[1], input_hw[0]))
    ref_res = [post([o[i:i + 1] for o in ref], t) for i in range(len(ref[0]))]
    out_res = [test_post([o[i:i + 1] for o in out], t) for i in range(len(out[0]))]
    figures = map_agreement(ref_res, out_res, score_threshold=post.config["score_threshold"])
    return {k: float(v) for k, v in figures.items() if isinstance(v, (int, float))}


AGREEMENT: dict[str, Callable[..., dict[str, float]]] = {"classify": classify_agreement, "detect": detect_agreement}
AGREEMENT_KEY = {"classify": "top1_agreement", "detect": "map50_agreement"}


def _figures(artifact: EmittedArtifact, outputs: list[np.ndarray], reference: list[np.ndarray], *, task: str,
             postprocess: dict, labels, input_hw) -> dict[str, Any]:
    if len(outputs) != len(reference):
        raise EdgeInferError(f"{artifact.path.name} has {len(outputs)} outputs; the source model has {len(reference)}")
    figures = numeric_figures(reference[0], outputs[0])
    figures.update(AGREEMENT[task](reference, outputs, postprocess=postprocess, labels=labels, input_hw=input_hw))
    return figures


def verify_artifact(artifact: EmittedArtifact, samples: np.ndarray, reference: list[np.ndarray], *, task: str,
                    postprocess: dict, labels, input_hw, synthetic: bool = False,
                    progress: bool = False) -> dict[str, Any]:
    """Figures of ``artifact`` against the fp32 ``reference``, computed with ``arithmetic_of(artifact)``.
    When that is not this host's engine, ``host_check`` adds the figures this host's engine gives."""
    arithmetic = arithmetic_of(artifact)
    kw = dict(task=task, postprocess=postprocess, labels=labels, input_hw=input_hw)
    figures: dict[str, Any] = {"inputs": int(len(samples)), "synthetic_inputs": synthetic, "arithmetic": arithmetic}
    figures.update(_figures(artifact, run_artifact(artifact, samples, arithmetic=arithmetic, progress=progress),
                            reference, **kw))
    if arithmetic == EXACT_ARITHMETIC:
        host = _figures(artifact, run_artifact(artifact, samples), reference, **kw)
        figures["host_check"] = {"arithmetic": host_arithmetic("ort"), **host,
                                 "note": "this host's int8 kernels saturate 16-bit pair sums; the target's do not"}
    return figures


def below_default_floor(figures: dict[str, Any], task: str, minimum: float | None) -> str | None:
    """Without ``--min-agreement``: a warning line when the artifact's agreement figure is below
    ``DEFAULT_AGREEMENT_FLOOR`` (the bundle is still written), else None."""
    key = AGREEMENT_KEY.get(task)
    value = figures.get(key) if key else None
    if minimum is not None or value is None or value >= DEFAULT_AGREEMENT_FLOOR:
        return None
    n = figures.get("inputs")
    on = f" on {n} held-out inputs" if n else ""
    return (f"{key} with the float model is {value:.4f}{on}, below {DEFAULT_AGREEMENT_FLOOR}; check it on your own "
            "images before shipping (--min-agreement X makes this an error)")


MIN_VERIFY_BOXES = 50   # a detector's verification needs about this many fp32 boxes to mean much


def thin_verification(figures: dict[str, Any], task: str) -> str | None:
    """A warning line when a detector's agreement figure rests on fewer than ``MIN_VERIFY_BOXES``
    fp32 boxes (COCO YOLOv8n: 1.000 on 11 boxes, 0.873 on 1,532), else None."""
    boxes = figures.get("ref_detections")
    if task != "detect" or boxes is None or boxes >= MIN_VERIFY_BOXES:
        return None
    return (f"detection agreement was verified on only {int(boxes)} fp32 boxes in {figures.get('inputs')} held-out "
            f"images (fewer than {MIN_VERIFY_BOXES}): the figure can be far off; measure on more photos "
            "(--verify-data DIR with more images, or edgeinfer eval)")


def check_min_agreement(figures: dict[str, Any], task: str, minimum: float | None, artifact_name: str) -> None:
    if minimum is None:
        return
    key = AGREEMENT_KEY[task]
    value = figures.get(key)
    if value is None or value < minimum:
        raise EdgeInferError(f"{artifact_name}: {key} {value:.4f} is below --min-agreement {minimum}; "
                             "try --calib-method percentile/entropy, more calibration images, or a higher precision")
