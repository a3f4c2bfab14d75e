"""Detection quality of `predict` on a held-back fifth of ../shared/data: class-agnostic mask AP,
AP50, AP75, Boundary AP and box AP50 (finding objects, apart from outlining them), the speed, and the
score threshold that suits annotation.

Every object of the held-back images (`data/splits.py`) is one class, "object" (crowd regions stay
crowd: detections on them are neither rewarded nor punished). Each `--variant` row runs the model
with other settings, all in ONE run on the same images:

    python benchmarks/bench_predict_quality.py --weights W.pt [--device auto] [--precision auto]
        [--set coco-extra] [--limit N] [--variant min_size=512 --variant masks=zoom ...] [--json OUT]

Variant fields: the inference settings of the weights (``model.config.INFERENCE_SETTINGS``):
``min_size`` / ``max_size`` (the input size of the detector), ``max_dets``, ``mask_scoring`` (0/1:
scores times mask confidence), ``mask_threshold`` (the mask probability kept as object),
``box_nms`` (the box head's NMS IoU), ``score_thresh`` (its lowest score), ``vote`` (box voting IoU,
0 = off), ``part`` / ``part_factor`` (a detection mostly inside a better one's mask demoted, 0 =
off), ``rpn_pre`` / ``rpn_post`` (RPN proposals kept before / after its NMS); and ``masks``
(``whole``: the masks of the detection pass; ``zoom``: each detection refined in its own crop, as
`refine` does, ``flip`` 0/1 with it). `tools/ship_predict.py` writes a row's inference settings into
the shipped file.

The threshold printed is the detection score that maximises F1 of matched masks at IoU 0.5 (each
ground-truth object matched at most once, best score first): what `predict` should keep by default.
Beside it, what the false positives at that threshold are: duplicates of a found object, parts or
loose outlines (IoU 0.1-0.5 with an object), or no labelled object at all (class-agnostic detection
also finds things outside the set's categories, which count here as wrong).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from refinemask_cli.data.splits import holdout_ids, subset
from refinemask_cli.engine.evaluate import (
    as_one_class,
    evaluate_detections,
    f1_by_threshold,
)
from refinemask_cli.io.coco import read_coco
from refinemask_cli.io.images import read_image
from refinemask_cli.model.config import inference_changes
from refinemask_cli.predictor import Predictor, RefineSettings
from refinemask_cli.weights import load_model
from refinemask_cli.weights.checkpoint import default_weights_path

DATA = Path(__file__).resolve().parents[2] / "shared/data"


def agnostic_holdout(data: Path, limit: int | None = None) -> dict:
    """The held-back fifth of a fully labelled set with every category made "object"."""
    doc = read_coco(data / "instances.json")
    held = holdout_ids(im["id"] for im in doc["images"])
    doc = subset(doc, held)
    if limit:
        doc = subset(doc, {im["id"] for im in doc["images"][:limit]})
    return as_one_class(doc, [])[0]


def parse_variant(text: str) -> dict:
    """A row's settings: ``config`` (the model's inference settings, model.config.INFERENCE_SETTINGS)
    and this benchmark's own ``masks`` and ``flip``."""
    try:
        changes, rest = inference_changes(text)
    except ValueError as e:
        raise SystemExit(f"bad variant {text!r}: {e}") from None
    out: dict = {"config": changes}
    for key, value in rest.items():
        if key == "flip" and value in ("0", "1"):
            out[key] = int(value)
        elif key == "masks" and value in ("whole", "zoom"):
            out[key] = value
        else:
            raise SystemExit(f"bad variant field {key}={value!r}")
    return out


def detect(model, gt: dict, images_dir: Path, variant: dict, device: str, precision: str) -> tuple[list[dict], float]:
    """Every detection (score threshold 0) on the images of ``gt`` as COCO results with RLE masks,
    and the seconds the model took."""
    if variant.get("config"):
        from refinemask_cli.model import with_settings

        model = with_settings(model, **variant["config"]).eval()
    predictor = Predictor(model, device=device, precision=precision)
    settings = RefineSettings(mode="zoom", flip=bool(variant.get("flip", 0)))
    results, seconds = [], 0.0
    for im in gt["images"]:
        image = read_image(images_dir / im["file_name"])
        t = time.perf_counter()
        det = predictor.predict([image], score_threshold=0.0)[0]
        if variant.get("masks") == "zoom" and len(det):
            scores = det.scores
            det = predictor.refine(image, det.boxes, det.labels, settings=settings)
            det.scores = scores
        seconds += time.perf_counter() - t
        h, w = image.shape[:2]
        for mask, score, (x0, y0, x1, y1) in zip(det.masks, det.scores, np.asarray(det.boxes, dtype=float)):
            results.append({"image_id": im["id"], "category_id": 1, "score": float(score),
                            "bbox": [x0, y0, x1 - x0, y1 - y0],
                            "segmentation": mask_utils.encode(np.asfortranarray(mask.full(h, w).astype(np.uint8)))})
    return results, seconds


def run_variant(model, gt: dict, images_dir: Path, variant: dict, device: str, precision: str) -> dict:
    results, seconds = detect(model, gt, images_dir, variant, device, precision)
    scores = evaluate_detections(gt, results)
    curve = f1_by_threshold(gt, results)
    best = max(curve, key=lambda r: r["f1"])
    return {**scores, "images_per_s": len(gt["images"]) / max(seconds, 1e-9), "best": best, "curve": curve}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", type=Path, default=default_weights_path("predict"),
                    help="Checkpoint (default: the shipped predict weights).")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--set", dest="set_name", default="coco-extra", choices=["coco-extra", "coco128", "davis345"])
    ap.add_argument("--limit", type=int, default=None, help="Only the first N held-back images.")
    ap.add_argument("--variant", action="append", default=[], help="Settings of one more row (see the module doc).")
    ap.add_argument("--json", type=Path, default=None, help="Also write every number here.")
    args = ap.parse_args()
    data = DATA / args.set_name
    if not data.is_dir():
        print(f"{data}: not found (this benchmark needs ../shared/data)", file=sys.stderr)
        return 1
    model, _ = load_model(args.weights)
    gt = agnostic_holdout(data, args.limit)
    rows = {}
    names = ["default"] + args.variant
    n_objects = sum(1 for a in gt["annotations"] if not a.get("iscrowd", 0))
    print(f"{args.set_name} held-back fifth: {len(gt['images'])} images, {n_objects} objects; weights {args.weights.name}")
    print(f"{'variant':<28} {'AP':>6} {'AP50':>6} {'AP75':>6} {'BndAP':>6} {'boxAP50':>7} {'img/s':>6}  best thr (P/R/F1, dets/img, max)")
    for name in names:
        variant = {} if name == "default" else parse_variant(name)
        res = run_variant(model, gt, data / "images", variant, args.device, args.precision)
        rows[name] = res
        b = res["best"]
        print(f"{name:<28} {res['segm_AP']:6.3f} {res['segm_AP50']:6.3f} {res['segm_AP75']:6.3f} "
              f"{res['boundary_AP']:6.3f} {res['bbox_AP50']:7.3f} {res['images_per_s']:6.2f}  {b['threshold']:.2f} "
              f"({b['precision']:.2f}/{b['recall']:.2f}/{b['f1']:.2f}, {b['detections_per_image']:.1f}, "
              f"max {b['max_detections_in_an_image']}; false: {b['false_positives']['duplicate']} duplicate, "
              f"{b['false_positives']['part_or_loose']} part/loose, {b['false_positives']['no_object']} no object)",
              flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
