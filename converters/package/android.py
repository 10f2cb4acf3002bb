"""Android target: each TFLite artifact of the bundle made app-ready for LiteRT ``Interpreter``,
MediaPipe Tasks and the TFLite Task Library / ML Model Binding.

- Classifiers: SOFTMAX appended when the bundle applies softmax itself (scores are probabilities);
  a grayscale or BGR model gets an RGB input (a 1x1 CONV_2D in front: luma weights / channel swap),
  an NCHW one an NHWC input; metadata: ImageProperties RGB + NormalizationOptions in 0..255 units,
  labels as TENSOR_AXIS_LABELS.
- Detectors (yolov8, yolov5 exported form): the ``TFLite_Detection_PostProcess`` 4-output form
  (locations, classes, scores, count), thresholds and NMS from the bundle, labels as
  TENSOR_VALUE_LABELS.
Labels are zipped (stored) inside the .tflite and also written next to it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeinfer.errors import EdgeInferError, NotSupportedYet

from ..emitters.tflite.edit import EditableModel
from ..emitters.tflite.metadata import METADATA_NAME, ModelInfo, TensorInfo, append_files, model_metadata
from .common import Bundle, TargetPackage, max_abs, write_labels
from .readme import android_readme

# PIL's "L" conversion (ITU-R 601-2 luma, 16-bit fixed point): the runtime's own gray conversion
LUMA = np.array([19595, 38470, 7471], np.float64) / 65536.0
DETECTORS = ("yolov8", "yolov5")


def check(bundle: Bundle) -> None:
    bundle.require("tflite", "android")
    if bundle.task == "detect":
        dec = bundle.postprocess.get("decoder")
        if dec not in DETECTORS:
            raise NotSupportedYet(f"--target android: detectors with the {dec!r} decoder cannot be packaged yet "
                                  f"(supported: {', '.join(DETECTORS)}); use --target ios or ort-mobile")


def channel_maps(color: str) -> list[np.ndarray] | None:
    """1x1-conv matrices taking RGB to the model's channels; None when the model takes RGB.

    Gray is computed as G + wr*(R-G) + wb*(B-G) (= the luma weights): exact in float when R=G=B,
    so a gray photo gives bit-identical input to the bundle's model."""
    if color == "gray":
        return [np.array([[0, 1, 0], [1, -1, 0], [0, -1, 1]], np.float32),
                np.array([[1.0, LUMA[0], LUMA[2]]], np.float32)]
    if color == "bgr":
        return [np.eye(3, dtype=np.float32)[::-1].copy()]
    return None


def _rgb_normalization(bundle: Bundle, channels: int) -> tuple[list[float], list[float]]:
    mean, std = bundle.normalization_255(channels)
    color = bundle.preprocess.color
    if color == "gray":
        return mean * 3, std * 3
    if color == "bgr":
        return mean[::-1], std[::-1]
    return mean, std


def _info(bundle: Bundle, name: str, art: dict, h: int, w: int, outputs: list[TensorInfo]) -> ModelInfo:
    c = int(bundle.manifest["input"]["shape"][1])
    mean, std = _rgb_normalization(bundle, c)
    src = bundle.manifest.get("source", {}).get("file", name)
    what = "image classifier" if bundle.task == "classify" else "object detector"
    return ModelInfo(
        name=name, version=str(bundle.manifest.get("edgeinfer_version", "")), author="edgeinfer",
        license="see the source model's license",
        description=f"{what} converted by edgeinfer from {src} ({art['precision']}, profile "
                    f"{bundle.manifest.get('profile', {}).get('name', '?')})",
        inputs=[TensorInfo("image", f"RGB image {w}x{h}; resized by the app (stretch); normalization below",
                           kind="image", color="rgb", size=(w, h), mean=mean, std=std)],
        outputs=outputs)


def _classifier(em: EditableModel, bundle: Bundle, labels_file: str | None, notes: list[str]) -> list[TensorInfo]:
    if bundle.postprocess.get("softmax", True):
        em.softmax_output(0)
        notes.append("SOFTMAX appended: the model outputs probabilities (the bundle's runtime applied softmax itself)")
    return [TensorInfo("probability", "class probabilities, one per label", value_min=0.0, value_max=1.0,
                       labels_file=labels_file, labels_kind="axis")]


def _yolo_head(em: EditableModel, bundle: Bundle, n_classes: int) -> tuple[int, int]:
    """(boxes [1, N, 4] as y, x, log h, log w in input pixels, scores [1, N, C]) from the YOLO output."""
    post = bundle.postprocess
    out = em.float_copy(em.outputs[0], "raw_float")
    shape = em.shape(out)
    fixed = 4 if post["decoder"] == "yolov8" else 5
    if len(shape) != 3 or shape[0] != 1:
        raise NotSupportedYet(f"--target android: a {post['decoder']} output of shape {shape} cannot be packaged "
                              "(expected [1, 4+C, N] or [1, N, 4+C])")
    layout = post.get("layout")
    cf = layout == "channels_first" if layout else (shape[1] == fixed + n_classes != shape[2] or shape[1] < shape[2])
    if cf:
        t = em.add_tensor("raw_rows", [1, shape[2], shape[1]], em.ttype(out))
        em.add_op("TRANSPOSE", [out, em.add_const("raw_perm", np.array([0, 2, 1], np.int32))], [t], None)
        out = t
    yx = em.gather_last(out, [1, 0], "box_center_yx")
    hw = em.gather_last(out, [3, 2], "box_size_hw")
    log_hw = em.add_tensor("box_log_size_hw", em.shape(hw), em.ttype(hw))
    em.add_op("LOG", [hw], [log_hw], None)
    boxes = em.add_tensor("box_encodings", em.shape(yx)[:-1] + [4], em.ttype(yx))
    from ai_edge_litert import schema_py_generated as fb
    copt = fb.ConcatenationOptionsT()
    copt.axis = 2
    em.add_op("CONCATENATION", [yx, log_hw], [boxes], copt)
    scores = em.gather_last(out, list(range(fixed, fixed + n_classes)), "class_scores")
    if fixed == 5:   # yolov5: objectness x class score
        obj = em.gather_last(out, [4], "objectness")
        prod = em.add_tensor("class_scores_x_obj", em.shape(scores), em.ttype(scores))
        em.add_op("MUL", [scores, obj], [prod], None)
        scores = prod
    return boxes, scores


def _detector(em: EditableModel, bundle: Bundle, labels_file: str | None, notes: list[str]) -> list[TensorInfo]:
    post = bundle.postprocess
    labels = bundle.labels or []
    n_classes = int(post.get("num_classes") or len(labels))
    if not n_classes:
        raise EdgeInferError("--target android: the detector bundle has no labels and no num_classes; re-convert with --labels")
    if post.get("apply_sigmoid") or post.get("normalized_boxes"):
        raise NotSupportedYet("--target android: YOLO heads with logit scores or normalized boxes cannot be packaged yet")
    boxes, scores = _yolo_head(em, bundle, n_classes)
    agnostic = bool(post.get("class_agnostic"))
    if not agnostic:   # the runtime keeps each anchor's best class only; regular NMS would see all of them
        scores = em.only_class_max(scores)
    h, w = post.get("input_size") or bundle.input_hw
    n = em.shape(boxes)[1]
    anchors = np.tile(np.array([0.0, 0.0, 1.0 / h, 1.0 / w], np.float32), (n, 1))
    em.detection_postprocess(boxes, scores, anchors, num_classes=n_classes,
                             max_detections=int(post.get("max_detections", 100)),
                             score_threshold=float(post.get("score_threshold", 0.25)),
                             iou_threshold=float(post.get("iou_threshold", 0.45)), class_agnostic=agnostic)
    if post.get("nms", "hard") != "hard":
        notes.append(f"the bundle's {post['nms']} NMS is replaced by hard NMS (what TFLite_Detection_PostProcess does)")
    notes.append("boxes are 0..1 of the model input; the app maps them to the image (MediaPipe and the Task Library do)")
    return [TensorInfo("location", "boxes: ymin, xmin, ymax, xmax in 0..1", kind="boxes", dims_range=(2, 2), box_index=[1, 0, 3, 2]),
            TensorInfo("category", "class index of each box", dims_range=(2, 2), labels_file=labels_file, labels_kind="value"),
            TensorInfo("score", "score of each box", dims_range=(2, 2), value_min=0.0, value_max=1.0),
            TensorInfo("number of detections", "how many boxes are valid")]


def make_app_model(bundle: Bundle, art: dict, name: str, labels_file: str | None, notes: list[str]) -> bytes:
    """The bundle's .tflite ``art`` with the app-facing input/outputs and TFLite Metadata (labels zipped)."""
    data = (bundle.path / art["file"]).read_bytes()
    em = EditableModel(data)
    layout = art.get("input_layout", "NHWC")
    h, w = bundle.input_hw
    maps = channel_maps(bundle.preprocess.color)
    if maps is not None or layout == "NCHW":
        em.rgb_input(maps or [np.eye(3, dtype=np.float32)], layout)
        if maps is not None:
            notes.append(f"{bundle.preprocess.color} model: RGB input added in the graph "
                         + ("(luma weights of the runtime's gray conversion)" if bundle.preprocess.color == "gray" else "(channel swap)"))
    elif em.ttype(em.inputs[0]) != 0:   # quantized input: apps feed the raw 0..255 pixels
        notes.append(f"input is {art.get('io_dtype')}: MediaPipe/Task Library feed raw pixels; the normalization "
                     "metadata is correct for float input only")
    outputs = _classifier(em, bundle, labels_file, notes) if bundle.task == "classify" else _detector(em, bundle, labels_file, notes)
    meta = model_metadata(_info(bundle, name, art, h, w, outputs))
    packed = em.to_bytes({METADATA_NAME: meta})
    files = {labels_file: ("\n".join(bundle.labels or []) + "\n").encode("utf-8")} if labels_file else {}
    return append_files(packed, files)


def self_check(path: Path, bundle: Bundle, art: dict) -> dict:
    """Run the packaged classifier and the bundle's artifact in LiteRT on the same inputs."""
    from edgeinfer.backends.litert_backend import LiteRTBackend
    from edgeinfer.postprocess import softmax

    from edgeinfer.preprocess import to_layout

    x = bundle.sample_inputs(2)
    ref = LiteRTBackend(bundle.path / art["file"]).run(to_layout(x, art.get("input_layout", "NHWC")))[0]
    if bundle.postprocess.get("softmax", True):
        ref = softmax(ref.reshape(ref.shape[0], -1))
    got = _run_rgb(path, x, bundle)
    return {"max_abs_diff_vs_bundle": max_abs(got.reshape(ref.shape), ref), "inputs": int(len(x))}


def _run_rgb(path: Path, x_nchw: np.ndarray, bundle: Bundle) -> np.ndarray:
    """Feed the packaged model the RGB normalized version of model-order inputs ``x_nchw``."""
    from ai_edge_litert.interpreter import Interpreter

    color = bundle.preprocess.color
    x = np.repeat(x_nchw, 3, axis=1) if color == "gray" else (x_nchw[:, ::-1] if color == "bgr" else x_nchw)
    it = Interpreter(model_path=str(path))
    it.allocate_tensors()
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    outs = []
    for sample in x:   # one at a time: the file's batch is 1
        it.set_tensor(inp["index"], np.ascontiguousarray(sample.transpose(1, 2, 0)[None], np.float32))
        it.invoke()
        outs.append(it.get_tensor(out["index"]).copy())
    return np.concatenate(outs, axis=0)


def build(bundle: Bundle, folder: Path, name: str) -> TargetPackage:
    pkg = TargetPackage()
    labels_file = write_labels(folder, bundle.labels)
    if labels_file:
        pkg.files[labels_file] = "labels (also zipped inside each .tflite as its associated file)"
    models = []
    for art in bundle.require("tflite", "android"):
        notes: list[str] = []
        out = f"{name}-{art['precision']}" + ("" if art.get("io_dtype", "float32") == "float32" else f"-{art['io_dtype']}") + ".tflite"
        (folder / out).write_bytes(make_app_model(bundle, art, name, labels_file, notes))
        pkg.files[out] = f"LiteRT model ({art['precision']}) with TFLite Metadata"
        if bundle.task == "classify":
            pkg.checks[out] = self_check(folder / out, bundle, art)
        pkg.notes.extend(f"{out}: {n}" for n in notes)
        models.append(out)
        pkg.details.setdefault("sources", {})[out] = art["file"]
    pre = bundle.preprocess
    if pre.resize_mode != "stretch" or pre.crop:
        pkg.notes.append(f"the bundle preprocesses with {pre.resize_mode}{' + crop' if pre.crop else ''}; MediaPipe and "
                         "the Task Library stretch the whole image: pass a region of interest (or crop) in the app")
    (folder / "README.md").write_text(android_readme(bundle, name, models, labels_file, pkg.notes))
    pkg.files["README.md"] = "how to use it on Android"
    pkg.details["models"] = models
    return pkg
