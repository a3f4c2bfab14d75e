"""Refinement quality on coco-mval-dev: refine from boxes and from poly8 polygons, beside baselines.

In ONE run, on the same annotations: (a) the coarse poly8 input itself, (b) OpenCV GrabCut from the
box, (c) `refine` from boxes.json, (d) `refine` from poly8.json (plain and with --min-agreement),
each scored by annotation id against instances.json (mIoU, mBIoU).

    python benchmarks/bench_refine_quality.py --weights W.pt [--device auto] [--precision auto|fp32|fp16|bf16] [--split holdout|all]
        [--data ../shared/data/coco-mval-dev] [--limit N] [--min-agreement 0.5]
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
from refinemask_cli.io.images import read_image
from refinemask_cli.jobs import refine as job
from refinemask_cli.predictor import Predictor
from refinemask_cli.weights import load_model


def grabcut_doc(doc: dict, images_dir: Path, iters: int = 5) -> dict:
    out = {**doc, "annotations": []}
    images = {im["id"]: im for im in doc["images"]}
    for ann in doc["annotations"]:
        im = images[ann["image_id"]]
        img = read_image(images_dir / im["file_name"])[:, :, ::-1].copy()
        x, y, w, h = (int(round(v)) for v in ann["bbox"])
        w, h = max(w, 2), max(h, 2)
        mask = np.zeros(img.shape[:2], np.uint8)
        bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
        try:
            cv2.grabCut(img, mask, (x, y, w, h), bgd, fgd, iters, cv2.GC_INIT_WITH_RECT)
            m = (mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)
        except cv2.error:
            m = np.zeros(img.shape[:2], bool)
            m[y : y + h, x : x + w] = True
        from refinemask_cli.geometry import encode_rle

        out["annotations"].append({**ann, "segmentation": encode_rle(m)})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", required=True)
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "fp16", "bf16"])
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/data/coco-mval-dev"))
    ap.add_argument("--split", default="holdout", choices=["holdout", "all"])
    ap.add_argument("--limit", type=int, default=0, help="first N images of the split (0 = all)")
    ap.add_argument("--min-agreement", type=float, default=0.5)
    ap.add_argument("--no-grabcut", action="store_true")
    args = ap.parse_args()
    data = Path(args.data)
    if not data.is_dir():
        sys.exit(f"{data}: data folder not found")
    gt = json.loads((data / "instances.json").read_text())
    ids = holdout_ids(im["id"] for im in gt["images"]) if args.split == "holdout" else {im["id"] for im in gt["images"]}
    if args.limit:
        ids = set(sorted(ids)[: args.limit])
    gt = subset(gt, ids)
    boxes = subset(json.loads((data / "coarse/boxes.json").read_text()), ids)
    poly8 = subset(json.loads((data / "coarse/poly8.json").read_text()), ids)
    model, ckpt = load_model(args.weights)
    predictor = Predictor(model, device=args.device, precision=args.precision)
    images = data / "images"
    rows = []

    def score(name, doc, seconds=None):
        r = evaluate_by_id(gt, doc)
        rows.append((name, r["mIoU"], r["mBIoU"], r["boundary_acc"], r["interior_acc"], seconds))

    score("coarse input: poly8 polygons", poly8)
    if not args.no_grabcut:
        t = time.perf_counter()
        score("OpenCV GrabCut from the box", grabcut_doc(boxes, images), time.perf_counter() - t)
    for name, doc, opts in (
        ("refine from boxes", boxes, job.RefineOptions(prompt="box")),
        ("refine from poly8", poly8, job.RefineOptions(prompt="auto")),
        (f"refine from poly8, --min-agreement {args.min_agreement}", poly8,
         job.RefineOptions(prompt="auto", min_agreement=args.min_agreement)),
    ):
        t = time.perf_counter()
        out, _, _ = job.refine_dataset(doc, images, predictor, opts)
        score(name, out, time.perf_counter() - t)
    dev = predictor.device
    print(f"coco-mval-dev split={args.split}: {len(gt['images'])} images, {len(gt['annotations'])} annotations")
    print(f"weights {Path(args.weights).name} (sha256 {ckpt['sha256'][:12]}), device {dev}, {predictor.precision}")
    print("| method | mIoU | mBIoU | boundary acc | interior acc | seconds |")
    print("|---|---|---|---|---|---|")
    for name, miou, mbiou, accb, acci, sec in rows:
        print(f"| {name} | {miou:.3f} | {mbiou:.3f} | {accb:.3f} | {acci:.3f} | {'' if sec is None else f'{sec:.0f}'} |")


if __name__ == "__main__":
    main()
