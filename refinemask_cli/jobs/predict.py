"""Predict masks for a folder of images and build a COCO dataset from them."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from ..io.images import SUFFIXES, read_image
from ..predictor import Predictor
from .pipeline import batch_groups, run_pipeline
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
    """A COCO dataset: images from the folder, one annotation (with ``score``) per detection.

    Runs on the shared pipeline: images read ahead, ``predictor.batch_size`` per forward pass,
    polygons encoded while the next batch runs; ids follow the sorted file names."""
    images, annotations = [], []

    def forward(items):
        return predictor.predict([image for _, image in items], score_threshold=score_threshold)

    def finish(items, dets):
        per_image = []
        for (_, image), det in zip(items, dets):
            h, w = image.shape[:2]
            fields = []
            for mask, label, score in zip(det.masks, det.labels, det.scores):
                if mask.area:
                    enc, _ = encode_output(mask, h, w, output_format, simplify)
                    fields.append({"category_id": int(label) + 1, **enc, "iscrowd": 0, "score": round(float(score), 5)})
            per_image.append(fields)
        return per_image

    def hand_on(items, per_image):
        for (path, image), fields in zip(items, per_image):
            image_id = len(images) + 1
            info = {"id": image_id, "file_name": path.name, "width": image.shape[1], "height": image.shape[0]}
            images.append(info)
            anns = [{"id": len(annotations) + k + 1, "image_id": image_id, **f} for k, f in enumerate(fields)]
            annotations.extend(anns)
            if on_result:
                on_result(info, image, anns)
            if on_image:
                on_image(1, len(anns))

    run_pipeline(batch_groups(list_images(folder), predictor.batch_size), read_image, forward, finish, hand_on)
    return {"info": {"description": "refinemask predict"}, "images": images, "annotations": annotations,
            "categories": categories_of(predictor)}
