"""The TFLite Task Library (tflite-support 0.4.4, the platform's own code) reads a packaged .tflite:
MetadataDisplayer (metadata JSON + packed files), then ImageClassifier or ObjectDetector.

Request: {"task": "classify"|"detect", "model": PATH, "images": [PATH, ...], "score_threshold": F}
Answer: {"metadata": {...}, "packed_files": [...], "results": [...]} (same result shapes as mediapipe_check).
"""
import json
import sys

import numpy as np
from PIL import Image
from tflite_support import metadata
from tflite_support.task import core, processor, vision


def tensor_image(path):
    return vision.TensorImage.create_from_array(np.ascontiguousarray(np.asarray(Image.open(path).convert("RGB"))))


def main(req):
    disp = metadata.MetadataDisplayer.with_model_file(req["model"])
    out = {"metadata": json.loads(disp.get_metadata_json()), "packed_files": disp.get_packed_associated_file_list()}
    base = core.BaseOptions(file_name=req["model"])
    res = []
    if req["task"] == "classify":
        clf = vision.ImageClassifier.create_from_options(vision.ImageClassifierOptions(
            base_options=base, classification_options=processor.ClassificationOptions(max_results=1000)))
        for p in req["images"]:
            cats = clf.classify(tensor_image(p)).classifications[0].categories
            res.append([[c.index, c.category_name, float(c.score)] for c in cats])
    else:
        det = vision.ObjectDetector.create_from_options(vision.ObjectDetectorOptions(
            base_options=base, detection_options=processor.DetectionOptions(score_threshold=req.get("score_threshold", 0.0))))
        for p in req["images"]:
            res.append([[d.categories[0].category_name, float(d.categories[0].score), d.bounding_box.origin_x,
                         d.bounding_box.origin_y, d.bounding_box.width, d.bounding_box.height]
                        for d in det.detect(tensor_image(p)).detections])
    out["results"] = res
    return out


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))))
