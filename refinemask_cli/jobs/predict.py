"""Predict masks for a folder of images and build a COCO dataset from them."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from ..io.images import SUFFIXES, read_image
from ..predictor import Predictor
from .refine import encode_output


def list_images(folder: Path) -> list[Path]:
    """Image files directly in ``folder`` (by suffix), sorted by name."""
    if not folder.is_dir():
        raise ValueError(f"{folder}: images folder not found")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in SUFFIXES)
    if not files:
        raise ValueError(f"{folder}: no images ({', '.join(sorted(SUFFIXES))}) found")
    return files


def categories_of(predictor: Predictor) -> list[dict]:
    names = predictor.class_names or tuple(f"class_{i}" for i in range(predictor.model.cfg.num_classes))
    return [{"id": i + 1, "name": n, "supercategory": ""} for i, n in enumerate(names)]


def predict_folder(
    folder: Path,
    predictor: Predictor,
    score_threshold: float = 0.5,
    output_format: str = "polygon",
    simplify: float = 0.0,
    on_image: Callable[[int, int], None] | None = None,
    on_result: Callable[[dict, object, list[dict]], None] | None = None,
) -> dict:
    """A COCO dataset: images from the folder, one annotation (with ``score``) per detection."""
    images, annotations = [], []
    ann_id = 1
    for image_id, path in enumerate(list_images(folder), start=1):
        image = read_image(path)
        h, w = image.shape[:2]
        info = {"id": image_id, "file_name": path.name, "width": w, "height": h}
        images.append(info)
        det = predictor.predict([image], score_threshold=score_threshold)[0]
        anns = []
        for mask, label, score in zip(det.masks, det.labels, det.scores):
            if mask.area == 0:
                continue
            fields, _ = encode_output(mask, h, w, output_format, simplify)
            anns.append({"id": ann_id, "image_id": image_id, "category_id": int(label) + 1, **fields,
                         "iscrowd": 0, "score": round(float(score), 5)})
            ann_id += 1
        annotations.extend(anns)
        if on_result:
            on_result(info, image, anns)
        if on_image:
            on_image(1, len(anns))
    return {"info": {"description": "refinemask predict"}, "images": images, "annotations": annotations,
            "categories": categories_of(predictor)}
