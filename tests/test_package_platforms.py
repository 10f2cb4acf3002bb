"""The platforms' own code loads `edgeinfer package` output and agrees with `edgeinfer run`.

MediaPipe Tasks (ImageClassifier, ObjectDetector) and the TFLite Task Library (tflite-support
0.4.4: MetadataDisplayer, ImageClassifier, ObjectDetector) run in throw-away venvs that
`tools/setup_verifier_venvs.sh` builds (`make test` calls it; cached in ~/.cache/edgeinfer-verifiers).
Images are first put through the bundle's own geometry step (resize / crop / letterbox) and saved
at the model's input size, so the apps' own resize is the identity and the comparison sees the
packaged model alone: same top-1 and scores within 1e-3; detections with the same labels and
IoU >= 0.9. A venv that could not be built skips its tests with the reason.
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, edgeinfer_cli, iou, square_detector_images

from edgeinfer.bundle import read_manifest
from edgeinfer.predictor import Predictor
from edgeinfer.preprocess import GEOMETRY, PreprocessConfig, load_image

VERIFIERS = Path(os.environ.get("EDGEINFER_VERIFIERS") or Path.home() / ".cache" / "edgeinfer-verifiers")
CHECKS = Path(__file__).parent / "platform_checks"
REALDATA = Path(os.environ.get("EDGEINFER_REALDATA", "/work/realdata"))
PLATFORMS = {"mediapipe": "mediapipe_check.py", "tflite-support": "tflite_support_check.py"}


def platform_run(name: str, request: dict) -> dict:
    py = VERIFIERS / name / "bin" / "python"
    if not py.exists():
        why = VERIFIERS / f"{name}.reason"
        pytest.skip(f"{name} verifier venv missing: {why.read_text().strip() if why.exists() else 'run tools/setup_verifier_venvs.sh'}")
    proc = subprocess.run([str(py), str(CHECKS / PLATFORMS[name]), json.dumps(request)], capture_output=True, text=True,
                          timeout=900, env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def model_size_images(bundle: Path, images: list[Path], out: Path) -> list[Path]:
    """Each image after the bundle's own geometry step, saved as an RGB PNG of the model's input size."""
    m = read_manifest(bundle)
    cfg = PreprocessConfig.from_dict(m["preprocess"])
    hw = tuple(m["input"]["shape"][2:])
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for p in images:
        im, _ = GEOMETRY[cfg.resize_mode](load_image(p, cfg.color), cfg, hw)
        dst = out / (Path(p).stem + ".png")
        im.convert("RGB").save(dst)
        paths.append(dst)
    return paths


def check_classifier(bundle: Path, package: Path, images: list[Path], tmp: Path, platform: str) -> dict:
    """Run ``platform`` on every packaged .tflite; compare with the bundle's same artifact in the runtime."""
    doc = json.loads((package / "android" / "package.json").read_text())
    resized = model_size_images(bundle, images, tmp / "resized")
    figures = {}
    for model in doc["models"]:
        got = platform_run(platform, {"task": "classify", "model": str(package / "android" / model),
                                      "images": [str(p) for p in resized]})
        pred = Predictor(bundle, artifact=doc["sources"][model])
        worst, top1 = 0.0, 0
        for img, cats in zip(images, got["results"]):
            ref = pred.predict([img], top_k=10_000)[0]
            scores = dict(zip(ref.class_ids, ref.scores))     # by index: ImageNet repeats some names
            assert cats[0][0] == ref.class_ids[0] and cats[0][1] == ref.labels[0], (platform, model, img)
            top1 += 1
            worst = max(worst, max(abs(s - scores[i]) for i, _, s in cats))
        # int8: this model's input scale (2/255 for mean = std = 0.5) puts every 8-bit pixel on a rounding
        # tie, so the last float bit of each app's normalization picks the input step (measured 1.5e-3)
        assert worst <= (1e-3 if "int8" not in model else 2.5e-3), (platform, model, worst)
        figures[model] = {"images": len(images), "top1_same": top1, "max_score_diff": worst}
        if platform == "tflite-support":
            assert got["packed_files"] == ["labels.txt"]
            meta = got["metadata"]["subgraph_metadata"][0]
            assert meta["input_tensor_metadata"][0]["content"]["content_properties"]["color_space"] == "RGB"
    return figures


@pytest.mark.parametrize("platform", list(PLATFORMS))
def test_digits_classifier_on_platform(package_bundles, app_packages, tmp_path, platform):
    images = sorted((ROOT / "samples" / "digits" / "images").glob("*.png"))
    figs = check_classifier(package_bundles["digits"], app_packages["digits"], images, tmp_path, platform)
    assert set(figs) == {"digits-fp32.tflite", "digits-int8.tflite"}


@pytest.mark.parametrize("platform", list(PLATFORMS))
def test_detector_on_platform(package_bundles, app_packages, platform):
    images = square_detector_images()
    post = read_manifest(package_bundles["det"])["postprocess"]
    got = platform_run(platform, {"task": "detect", "model": str(app_packages["det"] / "android" / "shapes_det-fp32.tflite"),
                                  "images": [str(p) for p in images], "score_threshold": post["score_threshold"]})
    pred = Predictor(package_bundles["det"], artifact="shapes_det-fp32.tflite")
    n = 0
    for img, dets in zip(images, got["results"]):
        ref = pred.predict([img])[0].detections
        assert len(dets) == len(ref), (platform, img)
        for (label, score, x, y, w, h), d in zip(sorted(dets, key=lambda t: -t[1]), ref):
            # the platforms report integer pixel rectangles (MediaPipe truncates origin and size: an edge
            # moves < 2 px): compare with the runtime's box on that grid
            grid = [float(np.floor(v)) for v in d.box]
            assert label == d.label and abs(score - d.score) <= 1e-3 and iou((x, y, x + w, y + h), grid) >= 0.9
            assert max(abs(a - b) for a, b in zip((x, y, x + w, y + h), d.box)) < 2.0
            n += 1
    assert n > 0


@pytest.mark.slow
@pytest.mark.skipif(not (REALDATA / "mobilenet_v2.onnx").exists(), reason=f"no real pretrained model at {REALDATA}")
@pytest.mark.parametrize("platform", list(PLATFORMS))
def test_real_imagenet_classifier_on_platform(tmp_path_factory, platform):
    root = tmp_path_factory.getbasetemp() / "real-imagenet"
    bundle, package = root / "mobilenet_v2-pixel-8", root / "package"
    if not package.exists():
        edgeinfer_cli("convert", REALDATA / "mobilenet_v2.onnx", "--profile", "pixel-8", "--formats", "tflite",
                      "--quant", "fp32,int8", "--calib", REALDATA / "calib", "--calib-limit", "32",
                      "--labels", REALDATA / "labels.txt", "-o", root, "--quiet", check=True)
        edgeinfer_cli("package", bundle, "--target", "android", "-o", package, "--quiet", check=True)
    images = sorted(p for p in (REALDATA / "eval").iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:8]
    figs = check_classifier(bundle, package, images, tmp_path_factory.mktemp(platform), platform)
    assert all(f["top1_same"] == len(images) for f in figs.values())
