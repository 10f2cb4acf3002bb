"""iOS / macOS target: each Core ML artifact of the bundle made ready for Xcode and Vision.

- Classifiers: the package with ``com.apple.coreml.model.preview.type = imageClassifier`` and
  input/output descriptions; Vision returns ``VNClassificationObservation``.
- Detectors: a Pipeline of the bundle's ML Program, a small ML Program turning the raw head into
  ``raw_confidence`` [N, C] and ``raw_coordinates`` [N, 4] (x, y, w, h centre form, 0..1) and
  Core ML's ``NonMaximumSuppression`` (thresholds, class labels and per-class suppression from the
  bundle), so Vision returns ``VNRecognizedObjectObservation``.
Core ML does not run on Linux: the detector pipeline is checked by running its ML Programs with
the numpy MIL evaluator and the NMS stage with the runtime's NMS (``evaluate_detector``).
"""
from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path

import numpy as np

from edgeinfer.errors import EdgeInferError, NotSupportedYet

from .common import Bundle, TargetPackage, lean_imports, write_labels
from .readme import ios_readme

logging.getLogger("coremltools").setLevel(logging.ERROR)
PREVIEW = "com.apple.coreml.model.preview.type"
DETECTORS = ("yolov8", "yolov5")


def check(bundle: Bundle) -> None:
    bundle.require("coreml", "ios")
    if bundle.task == "detect" and bundle.postprocess.get("decoder") not in DETECTORS:
        raise NotSupportedYet(f"--target ios: detectors with the {bundle.postprocess.get('decoder')!r} decoder cannot "
                              f"be packaged yet (supported: {', '.join(DETECTORS)})")


def _ct():
    """coremltools, imported without PyTorch (see ``lean_imports``) and without progress bars."""
    import os

    os.environ.setdefault("TQDM_DISABLE", "1")   # coremltools' per-pass bars (read when tqdm is imported)
    with lean_imports():
        import coremltools as ct
        import coremltools.converters.mil  # noqa: F401
    return ct


def _load(path: Path):
    return _ct().models.MLModel(str(path), skip_model_load=True)


def _describe_classifier(model, bundle: Bundle) -> None:
    spec = model.get_spec()
    meta = model.user_defined_metadata
    meta[PREVIEW] = "imageClassifier"
    if meta.get("edgeinfer.postprocess", "{}") in ("", "{}"):
        meta["edgeinfer.postprocess"] = json.dumps(bundle.postprocess)
    inp = spec.description.input[0]
    if not model.input_description[inp.name]:
        model.input_description[inp.name] = "image; preprocessing is built in"
    for o in spec.description.output:
        if not model.output_description[o.name]:
            model.output_description[o.name] = ("class probabilities by label" if o.type.HasField("dictionaryType")
                                                else "most likely class label")


def _head_program(bundle: Bundle, raw_name: str, raw_shape: list[int], n_classes: int, target):
    """The ML Program: raw YOLO head -> (raw_confidence [N, C], raw_coordinates [N, 4] in 0..1)."""
    ct = _ct()
    from coremltools.converters.mil import Builder as mb

    post = bundle.postprocess
    fixed = 4 if post["decoder"] == "yolov8" else 5
    h, w = post.get("input_size") or bundle.input_hw
    layout = post.get("layout")
    cf = layout == "channels_first" if layout else (raw_shape[1] == fixed + n_classes != raw_shape[2] or raw_shape[1] < raw_shape[2])
    n = raw_shape[2] if cf else raw_shape[1]

    @mb.program(input_specs=[mb.TensorSpec(shape=tuple(raw_shape))], opset_version=target)
    def prog(raw):
        x = mb.squeeze(x=raw, axes=[0])
        if cf:
            x = mb.transpose(x=x, perm=[1, 0])
        box = mb.slice_by_index(x=x, begin=[0, 0], end=[n, 4])
        coords = mb.mul(x=box, y=np.array([1.0 / w, 1.0 / h, 1.0 / w, 1.0 / h], np.float32), name="raw_coordinates")
        conf = mb.slice_by_index(x=x, begin=[0, fixed], end=[n, fixed + n_classes])
        if fixed == 5:
            obj = mb.slice_by_index(x=x, begin=[0, 4], end=[n, 5])
            conf = mb.mul(x=conf, y=obj)
        conf = mb.identity(x=conf, name="raw_confidence")
        return conf, coords

    head = ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=target,
                      compute_precision=ct.precision.FLOAT32)
    spec = head.get_spec()
    ct.utils.rename_feature(spec, spec.description.input[0].name, raw_name)   # fed by the model's output
    return ct.models.MLModel(spec, weights_dir=head.weights_dir, skip_model_load=True), n


def _nms_model(n: int, labels: list[str], post: dict):
    ct = _ct()
    from coremltools.proto import FeatureTypes_pb2 as ft

    spec = ct.proto.Model_pb2.Model()
    spec.specificationVersion = 5
    c = len(labels)
    for name, width in (("confidence", c), ("coordinates", 4)):
        i = spec.description.input.add()
        i.name = "raw_" + name
        i.type.multiArrayType.dataType = ft.ArrayFeatureType.FLOAT32
        i.type.multiArrayType.shape.extend([n, width])
        o = spec.description.output.add()
        o.name = name
        o.type.multiArrayType.dataType = ft.ArrayFeatureType.FLOAT32
        o.type.multiArrayType.shape.extend([0, width])
        r = o.type.multiArrayType.shapeRange.sizeRanges
        r.add(lowerBound=0, upperBound=-1)
        r.add(lowerBound=width, upperBound=width)
    nms = spec.nonMaximumSuppression
    nms.confidenceInputFeatureName, nms.coordinatesInputFeatureName = "raw_confidence", "raw_coordinates"
    nms.confidenceOutputFeatureName, nms.coordinatesOutputFeatureName = "confidence", "coordinates"
    nms.iouThreshold = float(post.get("iou_threshold", 0.45))
    nms.confidenceThreshold = float(post.get("score_threshold", 0.25))
    nms.pickTop.perClass = not bool(post.get("class_agnostic"))
    nms.stringClassLabels.vector.extend([str(s) for s in labels])
    spec.description.output[0].shortDescription = "per box: confidence of each class (Vision: labels)"
    spec.description.output[1].shortDescription = "per box: x, y (centre), width, height in 0..1 of the image"
    return ct.models.MLModel(spec)


def detector_pipeline(bundle: Bundle, src: Path, out: Path, notes: list[str]) -> None:
    ct = _ct()

    post = bundle.postprocess
    labels = bundle.labels or []
    n_classes = int(post.get("num_classes") or len(labels))
    if not labels or len(labels) < n_classes:
        raise EdgeInferError("--target ios: a detector needs its labels (Vision names the boxes); re-convert with --labels")
    if post.get("apply_sigmoid") or post.get("normalized_boxes"):
        raise NotSupportedYet("--target ios: YOLO heads with logit scores or normalized boxes cannot be packaged yet")
    base = _load(src)
    spec = base.get_spec()
    if not spec.HasField("mlProgram") or len(spec.description.output) != 1:
        raise NotSupportedYet("--target ios: the detector pipeline needs a single-output ML Program")
    raw = spec.description.output[0]
    raw_shape = [int(d) for d in raw.type.multiArrayType.shape]
    if len(raw_shape) != 3:
        raise NotSupportedYet(f"--target ios: a detector output of shape {raw_shape} cannot be packaged (expected 3-D)")
    target = ct.target.iOS16 if spec.specificationVersion <= 7 else (ct.target.iOS17 if spec.specificationVersion == 8 else ct.target.iOS18)
    head, n = _head_program(bundle, raw.name, raw_shape, n_classes, target)
    nms = _nms_model(n, labels[:n_classes], post)
    pipe = ct.utils.make_pipeline(base, head, nms)
    pspec = pipe.get_spec()
    pspec.description.metadata.CopyFrom(spec.description.metadata)
    pspec.description.metadata.userDefined[PREVIEW] = "objectDetector"
    pspec.description.metadata.userDefined["edgeinfer.postprocess"] = json.dumps(post)
    pspec.description.metadata.shortDescription = spec.description.metadata.shortDescription + " + NMS"
    for o in pspec.description.output:
        o.shortDescription = {"confidence": "per box: confidence of each class", "coordinates":
                              "per box: x, y (centre), width, height in 0..1 of the model input"}.get(o.name, o.shortDescription)
    final = ct.models.MLModel(pspec, weights_dir=pipe.weights_dir, skip_model_load=True)
    final.save(str(out))
    if post.get("nms", "hard") != "hard":
        notes.append(f"the bundle's {post['nms']} NMS is replaced by Core ML's hard NonMaximumSuppression")
    notes.append("Core ML's NonMaximumSuppression has no detection limit: max_detections "
                 f"{post.get('max_detections')} is applied by the app")


def evaluate_detector(package: Path, batch_nchw: np.ndarray, post: dict) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Run a detector pipeline on Linux: its ML Programs in the MIL evaluator, its NMS stage with the
    runtime's NMS. Returns per image (xyxy boxes in model-input pixels, scores, class ids)."""
    from edgeinfer.backends.coreml_backend import pixels_from_normalized
    from edgeinfer.detection.nms import select

    from ..emitters.coreml.mil_eval import MilProgram

    spec = _load(package).get_spec()
    stages = list(spec.pipeline.models)
    progs = [MilProgram(package, spec=s) for s in stages if s.HasField("mlProgram")]
    nms = next(s for s in stages if s.HasField("nonMaximumSuppression")).nonMaximumSuppression
    pre = json.loads(spec.description.metadata.userDefined.get("edgeinfer.preprocess", "{}"))
    first = stages[0].description.input[0]
    x = pixels_from_normalized(np.asarray(batch_nchw, np.float32), pre) if first.type.HasField("imageType") else batch_nchw
    h, w = np.asarray(batch_nchw).shape[2:]
    results = []
    for i in range(len(x)):
        feeds = {first.name: x[i:i + 1]}
        for p, s in zip(progs, [s for s in stages if s.HasField("mlProgram")]):
            out = p.run({s.description.input[0].name: feeds[s.description.input[0].name]})
            feeds.update(out)
        conf = np.asarray(feeds[nms.confidenceInputFeatureName], np.float32)
        xywh = np.asarray(feeds[nms.coordinatesInputFeatureName], np.float32) * np.array([w, h, w, h], np.float32)
        boxes = np.concatenate([xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2], axis=1)
        ids = conf.argmax(axis=1)
        sel = select(boxes, conf.max(axis=1), ids, method="hard", iou_threshold=nms.iouThreshold,
                     score_threshold=nms.confidenceThreshold, top_k=None, max_detections=post.get("max_detections"),
                     class_agnostic=not nms.pickTop.perClass)
        results.append((sel.boxes, sel.scores, sel.class_ids))
    return results


def build(bundle: Bundle, folder: Path, name: str) -> TargetPackage:
    pkg = TargetPackage()
    models = []
    for art in bundle.require("coreml", "ios"):
        out = f"{name}-{art['precision']}.mlpackage"
        notes: list[str] = []
        with tempfile.TemporaryDirectory(prefix="edgeinfer-ios-") as tmp:
            staged = Path(tmp) / out
            if bundle.task == "detect":
                detector_pipeline(bundle, bundle.path / art["file"], staged, notes)
            else:
                model = _load(bundle.path / art["file"])
                _describe_classifier(model, bundle)
                model.save(str(staged))
            shutil.move(str(staged), folder / out)
        pkg.files[out] = f"Core ML package ({art['precision']})" + (": model + NMS pipeline" if bundle.task == "detect" else "")
        pkg.notes.extend(f"{out}: {n}" for n in notes)
        models.append(out)
    labels = write_labels(folder, bundle.labels)
    if labels:
        pkg.files[labels] = "labels (also inside the Core ML package)"
    (folder / "README.md").write_text(ios_readme(bundle, name, models, pkg.notes))
    pkg.files["README.md"] = "how to use it with Core ML and Vision"
    pkg.details["models"] = models
    return pkg
