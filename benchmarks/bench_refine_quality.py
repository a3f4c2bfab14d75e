"""Refinement quality on the held-back fifths of ../shared/data, beside the coarse input and GrabCut.

For every set asked for, in ONE run and on the same annotations (every non-crowd object of the
held-back images, `data/splits.py`): (a) the coarse poly8 polygons themselves (the set's
`coarse/poly8.json` where it has one, else each GT mask's outer contour simplified to 4 % of its
perimeter), (b) OpenCV GrabCut from the box, then `refine` from boxes and from poly8 for every
`--variant`. Scored by annotation id (mIoU, mBIoU) overall and per COCO size (small < 32², medium
< 96², large), with the refine speed in objects/s and how many outputs fell back to RLE (holes).

    python benchmarks/bench_refine_quality.py --weights W.pt [--device auto] [--precision auto]
        [--sets coco-mval-dev coco-extra davis345 duts-tr-2k] [--limit N] [--no-grabcut] [--no-poly]
        [--variant mode=whole --variant mode=zoom,flip=1,passes=2,min_area=16 ...] [--loose 0.15] [--json OUT]

A variant is comma-separated RefineOptions fields: mode (auto|whole|zoom), zoom_size, zoom_max_size,
flip (0/1), snap_edges (0/1), regress_boxes (0/1), passes, min_area, min_agreement, second_zoom_size,
mask_threshold. ``--loose F`` adds
a row from loose boxes: each box grown by F of its width and height on every side, clipped to the image.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from refinemask_cli.data.splits import holdout_ids, subset
from refinemask_cli.engine.evaluate import evaluate_by_id
from refinemask_cli.geometry import encode_rle, segmentation_to_mask
from refinemask_cli.io.images import read_image
from refinemask_cli.jobs import refine as job
from refinemask_cli.jobs.demo import hasty_polygon
from refinemask_cli.predictor import PRECISIONS, Predictor
from refinemask_cli.weights import load_model

DATA = Path(__file__).resolve().parents[2] / "shared/data"
SIZES = ("small", "medium", "large")


def grabcut_doc(doc: dict, images_dir: Path, iters: int = 5) -> dict:
    out = {**doc, "annotations": []}
    images = {im["id"]: im for im in doc["images"]}
    cache: dict[int, np.ndarray] = {}
    for ann in doc["annotations"]:
        im = images[ann["image_id"]]
        if im["id"] not in cache:
            cache.clear()
            cache[im["id"]] = read_image(images_dir / im["file_name"])[:, :, ::-1].copy()
        img = cache[im["id"]]
        x, y, w, h = (round(v) for v in ann["bbox"])
        w, h = max(w, 2), max(h, 2)
        mask = np.zeros(img.shape[:2], np.uint8)
        bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
        try:
            cv2.grabCut(img, mask, (x, y, w, h), bgd, fgd, iters, cv2.GC_INIT_WITH_RECT)
            m = (mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)
        except cv2.error:
            m = np.zeros(img.shape[:2], bool)
            m[y : y + h, x : x + w] = True
        out["annotations"].append({**ann, "segmentation": encode_rle(m)})
    return out


def coarse_docs(data: Path, gt: dict) -> tuple[dict, dict]:
    """(boxes, poly8) over the annotations of ``gt``: the set's own coarse files where it has them."""
    ids = {a["id"] for a in gt["annotations"]}
    if (data / "coarse/boxes.json").is_file():
        keep = {im["id"] for im in gt["images"]}
        boxes = subset(json.loads((data / "coarse/boxes.json").read_text()), keep)
        poly8 = subset(json.loads((data / "coarse/poly8.json").read_text()), keep)
        return boxes, poly8
    images = {im["id"]: im for im in gt["images"]}
    box_anns, poly_anns = [], []
    for a in gt["annotations"]:
        if a["id"] not in ids:
            continue
        base = {k: v for k, v in a.items() if k != "segmentation"}
        box_anns.append(base)
        im = images[a["image_id"]]
        poly_anns.append({**base, "segmentation": hasty_polygon(segmentation_to_mask(a["segmentation"], im["height"], im["width"]))})
    return {**gt, "annotations": box_anns}, {**gt, "annotations": poly_anns}


def loosen(doc: dict, frac: float) -> dict:
    """``doc`` with every box grown by ``frac`` of its side on every side, clipped to its image."""
    sizes = {im["id"]: (im["width"], im["height"]) for im in doc["images"]}
    anns = []
    for a in doc["annotations"]:
        x, y, w, h = a["bbox"]
        width, height = sizes[a["image_id"]]
        x0, y0 = max(0.0, x - frac * w), max(0.0, y - frac * h)
        x1, y1 = min(float(width), x + w + frac * w), min(float(height), y + h + frac * h)
        anns.append({**a, "bbox": [x0, y0, x1 - x0, y1 - y0]})
    return {**doc, "annotations": anns}


def prompts(boxes: dict, poly8: dict, loose: float = 0.0, poly: bool = True) -> list[tuple[str, dict, str]]:
    """The coarse inputs refined from, as (name, document, refine prompt): the exact boxes, poly8
    (unless not ``poly``) and, with ``loose``, the boxes grown by that fraction per side."""
    docs = [(boxes, "box")] + ([(poly8, "auto")] if poly else []) + ([(loosen(boxes, loose), "box")] if loose else [])
    return [(name, doc, prompt) for name, (doc, prompt) in zip(prompt_names(loose, poly), docs)]


def prompt_names(loose: float = 0.0, poly: bool = True) -> list[str]:
    """The names of ``prompts``' coarse inputs, in its order."""
    return ["boxes"] + (["poly8"] if poly else []) + ([f"boxes +{loose:.0%}"] if loose else [])


def parse_variant(text: str) -> dict:
    out: dict = {}
    for part in filter(None, text.split(",")):
        key, _, value = part.partition("=")
        if key == "mode":
            out[key] = value
        elif key in ("flip", "snap_edges", "regress_boxes"):
            out[key] = value not in ("0", "false", "")
        elif key in ("passes", "zoom_size", "zoom_max_size", "second_zoom_size"):
            out[key] = int(value)
        elif key in ("min_area", "min_agreement", "mask_threshold"):
            out[key] = float(value)
        else:
            raise SystemExit(f"unknown variant key {key!r} in {text!r}")
    return out


def score_row(name: str, gt: dict, label: str, doc: dict, seconds: float | None = None,
              report: list[dict] | None = None, weights: str = "") -> dict:
    """One row of the table and the JSON: ``doc`` scored against ``gt`` by annotation id, with every
    object's score ([image id, annotation id, IoU, Boundary IoU]: what compare_weights.py reads)."""
    r = evaluate_by_id(gt, doc)
    n = r["count"]
    image_of = {a["id"]: a["image_id"] for a in gt["annotations"]}
    return {"set": name, "method": label, "mIoU": r["mIoU"], "mBIoU": r["mBIoU"], "per_size": r["per_size"],
            "count": n, "rle_fallbacks": sum("holes->rle" in row["flags"] for row in report) if report is not None else None,
            "objects_per_s": (n / seconds) if seconds else None, "weights": weights,
            "objects": [[image_of[o["annotation_id"]], o["annotation_id"], o["iou"], o["biou"]] for o in r["per_annotation"]]}


def load_set(name: str, limit: int) -> tuple[Path, dict]:
    data = DATA / name
    if not (data / "instances.json").is_file():
        sys.exit(f"{data}: data folder not found")
    gt = json.loads((data / "instances.json").read_text())
    ids = sorted(holdout_ids(im["id"] for im in gt["images"]))
    if limit:
        ids = ids[:limit]
    gt = subset(gt, set(ids))
    gt["annotations"] = [a for a in gt["annotations"] if not a.get("iscrowd", 0)]
    return data, gt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", required=True)
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--precision", default="auto", choices=PRECISIONS)
    ap.add_argument("--sets", nargs="+", default=["coco-mval-dev", "coco-extra", "davis345", "duts-tr-2k"])
    ap.add_argument("--limit", type=int, default=0, help="first N held-back images of each set (0 = all)")
    ap.add_argument("--variant", action="append", default=None,
                    help="refine options, e.g. mode=zoom,flip=1 (repeatable; default: the defaults)")
    ap.add_argument("--no-grabcut", action="store_true")
    ap.add_argument("--no-poly", action="store_true", help="refine from boxes only")
    ap.add_argument("--loose", type=float, default=0.0, help="also refine from boxes grown by this fraction per side")
    ap.add_argument("--json", default=None,
                    help="also write every score as JSON here (with each object's, which compare_weights.py reads)")
    args = ap.parse_args()
    model, ckpt = load_model(args.weights)
    predictor = Predictor(model, device=args.device, precision=args.precision)
    variants = args.variant or [""]
    for v in variants:  # a variant these weights cannot run stops here, not after the first set's rows
        try:
            predictor.check_settings(job.RefineOptions(**parse_variant(v)).settings)
        except ValueError as e:
            raise SystemExit(f"variant {v!r}: {e}") from None
    print(f"weights {Path(args.weights).name} (sha256 {ckpt['sha256'][:12]}), device {predictor.device}, "
          f"{predictor.precision}")
    results = []
    for name in args.sets:
        data, gt = load_set(name, args.limit)
        images = data / "images"
        boxes, poly8 = coarse_docs(data, gt)
        rows = []
        sha = ckpt["sha256"][:12]
        if not args.no_poly:
            rows.append(score_row(name, gt, "coarse input: poly8", poly8))
        if not args.no_grabcut:
            t = time.perf_counter()
            grabcut = grabcut_doc(boxes, images)
            rows.append(score_row(name, gt, "OpenCV GrabCut from the box", grabcut, time.perf_counter() - t))
        for v in variants:
            fields = parse_variant(v)
            label = v or "defaults"
            for pname, doc, prompt in prompts(boxes, poly8, args.loose, poly=not args.no_poly):
                opts = job.RefineOptions(prompt=prompt, **fields)
                t = time.perf_counter()
                out, report, _ = job.refine_dataset(doc, images, predictor, opts)
                rows.append(score_row(name, gt, f"refine from {pname} [{label}]", out, time.perf_counter() - t, report, sha))
        counts = {s: gt_n["count"] for s, gt_n in rows[0]["per_size"].items()} if rows else {}
        print(f"\n{name} held-back fifth: {len(gt['images'])} images, {len(gt['annotations'])} objects "
              f"({', '.join(f'{s} {counts.get(s, 0)}' for s in SIZES)})")
        print("| method | mIoU | mBIoU | small | medium | large | objects/s | RLE (holes) |")
        print("|---|---|---|---|---|---|---|---|")
        for r in rows:
            sizes = " | ".join(
                f"{r['per_size'][s]['mIoU']:.3f} / {r['per_size'][s]['mBIoU']:.3f}" if s in r["per_size"] else "—"
                for s in SIZES)
            speed = "" if r["objects_per_s"] is None else f"{r['objects_per_s']:.1f}"
            rle = "" if r["rle_fallbacks"] is None else str(r["rle_fallbacks"])
            print(f"| {r['method']} | {r['mIoU']:.3f} | {r['mBIoU']:.3f} | {sizes} | {speed} | {rle} |")
        sys.stdout.flush()
        results += rows
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
