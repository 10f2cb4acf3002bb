"""``edgeinfer eval BUNDLE DATA``: accuracy of each artifact of a bundle on labelled data.

Detection bundles: DATA is a COCO-style JSON file, or a folder holding ``annotations.json`` (or one
``*.json``, also under ``annotations/``); image ``file_name``s resolve against that folder or its
``images/`` subfolder. Predicted class ids map to COCO categories by name when the bundle's labels
name every category, else class k -> the k-th category in id order. Reported: COCO mAP@0.5 and
mAP@0.5:0.95 (``detection.metrics.coco_map``), measured with a low score threshold (0.001, as
COCO evaluations do) unless ``score_threshold`` says otherwise.

Classification bundles: DATA is an image folder ``DATA/<label>/*.png|jpg|...``; folder names are
label names from the bundle's labels file (or class indices when the bundle has none). Reported:
top-1 and top-5 accuracy.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .bundle import read_labels, read_manifest
from .detection.metrics import coco_map, results_to_predictions, topk_accuracy
from .errors import EdgeInferError
from .preprocess import IMAGE_SUFFIXES
from .progress import Progress

EVAL_SCORE_THRESHOLD = 0.001


# ----------------------------------------------------------------------------- data sets


def _find_annotations(data: Path) -> Path:
    if data.is_file():
        return data
    for cand in (data / "annotations.json", data / "instances.json"):
        if cand.is_file():
            return cand
    found = sorted(data.glob("*.json")) or sorted((data / "annotations").glob("*.json"))
    if len(found) != 1:
        raise EdgeInferError(f"{data}: expected one COCO annotations JSON (annotations.json), found {len(found)}")
    return found[0]


def load_coco_set(data: str | Path) -> tuple[dict[str, Any], list[Path]]:
    """COCO ground truth and the image path of each of its images (in ``gt['images']`` order)."""
    data = Path(data)
    if not data.exists():
        raise EdgeInferError(f"evaluation data not found: {data}")
    ann = _find_annotations(data)
    try:
        gt = json.loads(ann.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EdgeInferError(f"{ann} is not valid JSON: {exc}") from None
    if not isinstance(gt, dict) or not all(isinstance(gt.get(k), list) for k in ("images", "annotations", "categories")):
        raise EdgeInferError(f"{ann} is not COCO-style: it needs images, annotations and categories lists")
    _check_coco(gt, ann)
    roots = [ann.parent, ann.parent / "images", ann.parent.parent / "images"]
    paths = []
    for im in gt["images"]:
        p = next((r / im["file_name"] for r in roots if (r / im["file_name"]).is_file()), None)
        if p is None:
            raise EdgeInferError(f"image {im['file_name']} of {ann} not found next to it or in images/")
        paths.append(p)
    return gt, paths


def _check_coco(gt: dict[str, Any], ann: Path) -> None:
    """The COCO fields the evaluation reads, each with the right type; one line naming the first bad entry."""
    def fail(what: str) -> EdgeInferError:
        return EdgeInferError(f"{ann}: {what}; fix the annotations file (COCO format)")
    if not gt["images"]:
        raise fail("no images listed")
    for im in gt["images"]:
        if not (isinstance(im, dict) and isinstance(im.get("file_name"), str) and "id" in im):
            raise fail(f"image entry {str(im)[:60]} needs 'id' and 'file_name'")
    for c in gt["categories"]:
        if not (isinstance(c, dict) and isinstance(c.get("id"), int)):
            raise fail(f"category entry {str(c)[:60]} needs an integer 'id'")
    for a in gt["annotations"]:
        box = a.get("bbox") if isinstance(a, dict) else None
        if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)
                and "image_id" in a and "category_id" in a):
            raise fail(f"annotation {str(a)[:60]} needs image_id, category_id and bbox [x, y, w, h]")


def category_map(gt: dict[str, Any], labels: list[str] | None) -> dict[int, int]:
    """Predicted class id -> COCO category id (by name when labels name every category)."""
    cats = sorted(gt["categories"], key=lambda c: c["id"])
    if labels:
        index = {name: i for i, name in enumerate(labels)}
        if all(c.get("name") in index for c in cats):
            return {index[c["name"]]: int(c["id"]) for c in cats}
    return {i: int(c["id"]) for i, c in enumerate(cats)}


def load_image_folder(data: str | Path, labels: list[str] | None) -> tuple[list[Path], list[int], list[str]]:
    """``DATA/<label>/*.png`` -> (paths, class ids, class names in id order)."""
    data = Path(data)
    if not data.exists():
        raise EdgeInferError(f"evaluation data not found: {data}")
    if not data.is_dir():
        raise EdgeInferError(f"{data} is not a folder of DATA/<label>/images")
    folders = sorted(p for p in data.iterdir() if p.is_dir())
    if not folders:
        raise EdgeInferError(f"{data} has no label folders; expected DATA/<label>/*.png")
    names = labels or [f.name for f in folders]
    if not labels and all(f.name.isdigit() for f in folders):
        names = [str(i) for i in range(max(int(f.name) for f in folders) + 1)]
    index = {n: i for i, n in enumerate(names)}
    paths, ids = [], []
    for f in folders:
        if f.name not in index:
            raise EdgeInferError(f"folder {f.name!r} in {data} is not a label of this bundle; labels: {', '.join(names[:10])}...")
        for p in sorted(f.iterdir()):
            if p.suffix.lower() in IMAGE_SUFFIXES:
                paths.append(p)
                ids.append(index[f.name])
    if not paths:
        raise EdgeInferError(f"{data} has label folders but no images in them")
    return paths, ids, names


# ----------------------------------------------------------------------------- running


def _predict_all(pred, paths: list[Path], label: str, progress: bool, top_k: int | None = None) -> list[Any]:
    shape = pred.manifest["input"]["shape"]
    batch = 1 if shape and shape[0] == 1 else 8
    out: list[Any] = []
    with Progress(label, total=len(paths), enabled=progress) as bar:
        for i in range(0, len(paths), batch):
            chunk = paths[i:i + batch]
            out.extend(pred.predict(chunk, top_k=top_k) if top_k else pred.predict(chunk))
            bar.update(len(chunk))
    return out


def _eval_detect(pred, gt, paths, cmap, progress, score_threshold) -> dict[str, Any]:
    if score_threshold is not None:
        pred.postprocessor = pred.postprocessor.with_overrides(score_threshold=score_threshold)
    results = _predict_all(pred, paths, f"eval {pred.artifact['file']}", progress)
    ids = [im["id"] for im in gt["images"]]
    m = coco_map(gt, results_to_predictions(results, ids, cmap))
    names = {c["id"]: c.get("name", str(c["id"])) for c in gt["categories"]}
    return {"map50": m["map50"], "map50_95": m["map50_95"], "map75": m["map75"],
            "per_class_ap50": {names[c]: v["ap50"] for c, v in m["per_category"].items()},
            "score_threshold": pred.postprocessor.config["score_threshold"], "_results": results}


def _eval_classify(pred, paths, truth, progress) -> dict[str, Any]:
    results = _predict_all(pred, paths, f"eval {pred.artifact['file']}", progress, top_k=5)
    return {**topk_accuracy([r.class_ids for r in results], truth, (1, 5)), "_results": results}


def _above(results: list[Any], threshold: float) -> list[Any]:
    """Detection results keeping only detections with score > threshold."""
    from .detection.postprocess import DetectionResult
    return [DetectionResult([d for d in r.detections if d.score > threshold], r.image_size, r.source) for r in results]


def _add_agreement(rows: list[dict[str, Any]], results: dict[str, list[Any]], threshold: float) -> None:
    """map50 agreement of each detector artifact with the fp32 one (else the first), at the bundle's threshold."""
    from .detection.metrics import map_agreement
    done = [r for r in rows if r["artifact"] in results]
    if len(done) < 2:
        return
    ref = next((r for r in done if r.get("precision") == "fp32"), done[0])["artifact"]
    ref_res = _above(results[ref], threshold)
    for r in done:
        if r["artifact"] != ref:
            a = map_agreement(ref_res, _above(results[r["artifact"]], threshold))
            r.update(agreement_with=ref, map50_agreement=a["map50_agreement"], map50_95_agreement=a["map50_95_agreement"])


def run_eval(bundle_dir: str | Path, data_path: str | Path, artifact: str | None = None, progress: bool = True,
             score_threshold: float | None = EVAL_SCORE_THRESHOLD, threads: int | None = None,
             verify_hash: bool = True, require_signature: str | Path | None = None) -> dict[str, Any]:
    """Evaluate ``artifact`` (default: every artifact of the bundle) on labelled data.

    Returns {"bundle", "task", "data", "images", "artifacts": [{"artifact", "format", "precision",
    metrics... | "skipped": reason}]}. For detectors, ``score_threshold`` (None: the bundle's) is the
    one used for mAP, and each artifact also gets ``map50_agreement`` with the fp32 artifact (its
    detections above the bundle's own score threshold taken as ground truth).
    """
    from .predictor import Predictor

    bundle_dir = Path(bundle_dir)
    manifest = read_manifest(bundle_dir)
    task = manifest["task"]
    labels = read_labels(bundle_dir, manifest)
    if task == "detect":
        gt, paths = load_coco_set(data_path)
        cmap = category_map(gt, labels)
    elif task == "classify":
        paths, truth, _ = load_image_folder(data_path, labels)
    else:
        raise EdgeInferError(f"eval does not know task {task!r}; it evaluates classify and detect bundles")
    names = [artifact] if artifact else [a["file"] for a in manifest["artifacts"]]
    rows: list[dict[str, Any]] = []
    all_results: dict[str, list[Any]] = {}
    for name in names:
        try:
            pred = Predictor(bundle_dir, artifact=name, threads=threads, verify_hash=verify_hash,
                             require_signature=require_signature)
        except EdgeInferError as exc:
            if artifact:
                raise
            rows.append({"artifact": name, "skipped": str(exc)})
            continue
        info = {"artifact": name, "format": pred.artifact.get("format"), "precision": pred.artifact.get("precision")}
        if task == "detect":
            figures = _eval_detect(pred, gt, paths, cmap, progress, score_threshold)
        else:
            figures = _eval_classify(pred, paths, truth, progress)
        all_results[name] = figures.pop("_results")
        rows.append({**info, **figures})
    if task == "detect":
        _add_agreement(rows, all_results, float(manifest["postprocess"].get("score_threshold", 0.25)))
    return {"bundle": str(bundle_dir), "task": task, "data": str(data_path), "images": len(paths), "artifacts": rows}


def format_report(report: dict[str, Any]) -> list[str]:
    """Human-readable lines for ``run_eval``'s report."""
    lines = [f"{report['bundle']}  task={report['task']}  data={report['data']}  images={report['images']}"]
    for r in report["artifacts"]:
        if "skipped" in r:
            lines.append(f"  {r['artifact']:<32} skipped: {r['skipped']}")
        elif report["task"] == "detect":
            extra = f"  agreement(mAP50 vs {r['agreement_with']})={r['map50_agreement']:.4f}" if "map50_agreement" in r else ""
            lines.append(f"  {r['artifact']:<32} {r['format']:<7} {r['precision'] or '':<5} "
                         f"mAP@0.5={r['map50']:.4f}  mAP@0.5:0.95={r['map50_95']:.4f}{extra}")
        else:
            lines.append(f"  {r['artifact']:<32} {r['format']:<7} {r['precision'] or '':<5} "
                         f"top-1={r['top1']:.4f}  top-5={r['top5']:.4f}")
    return lines
