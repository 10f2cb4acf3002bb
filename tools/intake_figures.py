"""Intake figures on real models: each source converted by the CLI, its fp32 artifacts compared
with the source model (max abs error on the outputs for real photos), conversion time.

    PYTHONPATH=$PWD python tools/intake_figures.py mobilenet-pt2 --realdata /work/realdata --out /tmp/fig
    PYTHONPATH=$PWD python tools/intake_figures.py yolov8-dynamic --onnx best.onnx --realdata /work/realdata --out /tmp/fig
    PYTHONPATH=$PWD python tools/intake_figures.py blazeface-nhwc --tflite face_detection_front.tflite --realdata ... --out ...

Sources (none is committed; each comes from a package or /work/realdata, see README "Model intake"):
- mobilenet-pt2: torchvision's MobileNetV2 structure (features / InvertedResidual / classifier)
  holding the real ImageNet weights of /work/realdata/mobilenet_v2.onnx (BatchNorm folded, TF
  "SAME" padding kept as a ZeroPad2d before stride-2 convs), saved with torch.export.save.
- yolov8-dynamic: the YOLOv8 architecture (tools/intake_real_models.py) with the weights of a real
  Ultralytics YOLOv8 ONNX export, re-exported with dynamic batch/height/width (anchors computed
  from the feature shapes, as Ultralytics' dynamic=True export does).
- blazeface-nhwc: the BlazeFace front architecture with the weights of MediaPipe's
  face_detection_front.tflite, exported to ONNX with its NHWC input (as tf2onnx gives it).
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

import intake_real_models as real  # noqa: E402

PROFILE = "generic-x86-64"


def cli(*args) -> tuple[str, str]:
    """Run the CLI as a user would; returns (timing text: wall and CPU seconds of the process, stdout)."""
    t0, c0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run([sys.executable, "-m", "edgeinfer.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT)
    if proc.returncode:
        raise SystemExit(f"edgeinfer {' '.join(map(str, args))} failed:\n{proc.stderr[-3000:]}")
    c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (c1.ru_utime - c0.ru_utime) + (c1.ru_stime - c0.ru_stime)
    return f"{time.perf_counter() - t0:.1f} s wall, {cpu:.1f} s CPU", proc.stdout


def photos(realdata: Path, n: int) -> list[Path]:
    return sorted((realdata / "eval").glob("*.JPEG"))[:n] or sorted((realdata / "eval").glob("*.*"))[:n]


def compare(bundle: Path, reference, images: list[Path]) -> dict[str, float]:
    """max |artifact - source| over the outputs of each fp32 artifact; ``reference(nchw) -> outputs``."""
    from edgeinfer import Predictor
    out = {}
    manifest = json.loads((bundle / "manifest.json").read_text())
    for a in manifest["artifacts"]:
        if a["precision"] != "fp32":
            continue
        pred = Predictor(bundle, artifact=a["file"])
        batch, _ = pred.preprocess(images)
        worst = 0.0
        for i in range(len(batch)):
            got = pred.run(batch[i:i + 1])
            ref = reference(batch[i:i + 1])
            worst = max(worst, max(float(np.abs(np.asarray(g) - np.asarray(r)).max()) for g, r in zip(got, ref)))
        out[a["file"]] = worst
    return out


def torch_outputs(net):
    """nchw numpy batch -> [outputs] of a torch module (the source model of a figure)."""
    import torch

    def run(x):
        with torch.no_grad():
            return [net(torch.from_numpy(x)).numpy()]
    return run


def export_onnx(net, shape, path: Path, inputs, outputs, dynamic_axes=None) -> Path:
    """torch's TorchScript-based exporter at opset 17 (what most published ONNX files came from)."""
    import torch
    with torch.no_grad():
        torch.onnx.export(net, (torch.randn(*shape),), str(path), dynamo=False, opset_version=17, input_names=inputs,
                          output_names=outputs, dynamic_axes=dynamic_axes)
    return path


def mobilenet_pt2(args) -> None:
    import torch
    net = real.mobilenet_v2_from_onnx(args.realdata / "mobilenet_v2.onnx")
    src = args.out / "mobilenet_v2.pt2"
    t0 = time.perf_counter()
    torch.export.save(torch.export.export(net, (torch.randn(1, 3, 224, 224),)), src)
    t_save = time.perf_counter() - t0
    wall, text = cli("convert", src, "--profile", PROFILE, "--quant", "fp32,int8", "--formats", "onnx,tflite",
                     "--mean", "0.50196,0.50196,0.50196", "--std", "0.50196,0.50196,0.50196", "--resize", "256",
                     "--crop", "224", "--labels", args.realdata / "labels.txt", "--calib", args.realdata / "calib",
                     "--calib-limit", "64", "-o", args.out, "--force", "--quiet")
    print(text)
    bundle = args.out / "mobilenet_v2-generic-x86-64"

    ref = torch_outputs(net)
    errs = compare(bundle, ref, photos(args.realdata, args.images))
    print(f"torch.export + save: {t_save:.1f} s; `edgeinfer convert` .pt2 -> fp32+int8 ONNX+TFLite: {wall}")
    print(f"fp32 max |artifact - torch| on {args.images} real photos: {errs}")


def yolov8_dynamic(args) -> None:
    net = real.yolov8_from_onnx(args.onnx)
    src = export_onnx(net, (1, 3, 640, 640), args.out / "yolov8_dynamic.onnx", ["images"], ["output0"],
                      {"images": {0: "batch", 2: "height", 3: "width"}, "output0": {0: "batch", 2: "anchors"}})
    wall, text = cli("convert", src, "--profile", PROFILE, "--task", "detect", "--decoder", "yolov8", "--letterbox",
                     args.size, "--quant", "fp32,int8", "--formats", "onnx,tflite", "--calib", args.realdata / "calib",
                     "--calib-limit", "32", "--no-auto-keep-float", "-o", args.out, "--force", "--quiet")
    print(text)

    ref = torch_outputs(net)
    errs = compare(args.out / "yolov8_dynamic-generic-x86-64", ref, photos(args.realdata, args.images))
    print(f"`edgeinfer convert` dynamic YOLOv8 at {args.size} -> fp32+int8 ONNX+TFLite: {wall}")
    print(f"fp32 max |artifact - torch source| on {args.images} real photos: {errs}")


def blazeface_nhwc(args) -> None:
    net = real.blazeface_from_tflite(args.tflite)
    src = export_onnx(net, (1, 128, 128, 3), args.out / "blazeface_front_nhwc.onnx", ["input"],
                      ["regressors", "classificators"])
    wall, text = cli("convert", src, "--profile", PROFILE, "--task", "detect", "--decoder", "ssd", "--anchors",
                     "blazeface-front-128", "--preset", "raw", "--scale", str(2 / 255), "--mean", "1,1,1",
                     "--quant", "fp32,int8", "--formats", "onnx,tflite", "--calib", args.realdata / "calib",
                     "--calib-limit", "64", "--no-auto-keep-float", "-o", args.out, "--force", "--quiet")
    print(text)
    from ai_edge_litert.interpreter import Interpreter
    tfl = Interpreter(model_path=str(args.tflite))
    tfl.allocate_tensors()

    def ref(x):  # the original MediaPipe TFLite model on the same NHWC input
        tfl.set_tensor(tfl.get_input_details()[0]["index"], np.ascontiguousarray(x.transpose(0, 2, 3, 1)))
        tfl.invoke()
        outs = {d["name"]: tfl.get_tensor(d["index"]) for d in tfl.get_output_details()}
        return sorted(outs.values(), key=lambda o: -o.shape[-1])
    errs = compare(args.out / "blazeface_front_nhwc-generic-x86-64", ref, photos(args.realdata, args.images))
    print(f"`edgeinfer convert` NHWC BlazeFace -> fp32+int8 ONNX+TFLite: {wall}")
    print(f"fp32 max |artifact - MediaPipe .tflite| on {args.images} real photos: {errs}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("which", choices=["mobilenet-pt2", "yolov8-dynamic", "blazeface-nhwc"])
    ap.add_argument("--realdata", type=Path, default=Path("/work/realdata"))
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--onnx", type=Path, help="a real Ultralytics YOLOv8 ONNX export (weights source)")
    ap.add_argument("--tflite", type=Path, help="MediaPipe face_detection_front.tflite (weights source)")
    ap.add_argument("--size", type=int, default=320)
    ap.add_argument("--images", type=int, default=16)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    {"mobilenet-pt2": mobilenet_pt2, "yolov8-dynamic": yolov8_dynamic, "blazeface-nhwc": blazeface_nhwc}[args.which](args)


if __name__ == "__main__":
    main()
