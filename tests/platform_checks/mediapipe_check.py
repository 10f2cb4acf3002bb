"""MediaPipe Tasks (the platform's own code) runs a packaged .tflite: ImageClassifier or ObjectDetector.

Request: {"task": "classify"|"detect", "model": PATH, "images": [PATH, ...], "score_threshold": F}
Answer: {"results": [...]} per image: classify -> [[class index, label, score], ...] best first (all classes);
detect -> [[label, score, x, y, w, h], ...] in image pixels.
"""
import json
import sys

import numpy as np
from PIL import Image
import mediapipe as mp
from mediapipe.tasks.python import BaseOptions, vision


def rgb(path):
    # an Android Bitmap is RGB(A): grayscale files are expanded to RGB as the app would receive them
    return mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(np.asarray(Image.open(path).convert("RGB"))))


def main(req):
    base = BaseOptions(model_asset_path=req["model"])
    out = []
    if req["task"] == "classify":
        with vision.ImageClassifier.create_from_options(vision.ImageClassifierOptions(base_options=base)) as clf:
            for p in req["images"]:
                cats = clf.classify(rgb(p)).classifications[0].categories
                out.append([[c.index, c.category_name, float(c.score)] for c in cats])
    else:
        opts = vision.ObjectDetectorOptions(base_options=base, score_threshold=req.get("score_threshold", 0.0))
        with vision.ObjectDetector.create_from_options(opts) as det:
            for p in req["images"]:
                out.append([[d.categories[0].category_name, float(d.categories[0].score), d.bounding_box.origin_x,
                             d.bounding_box.origin_y, d.bounding_box.width, d.bounding_box.height]
                            for d in det.detect(rgb(p)).detections])
    return {"engine": f"mediapipe {mp.__version__}", "results": out}


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))))
