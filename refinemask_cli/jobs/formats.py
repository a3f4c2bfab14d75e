"""Conversions between a COCO dataset and COCO results, LabelMe and YOLO-seg (pure dict/text work).

Each converter returns what it made plus ``Loss`` notes for what the target format cannot hold
(holes, several parts, box-only objects, crowd regions), counted so the CLI can warn once per kind.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

from ..geometry import encode_rle, mask_to_outline, segmentation_to_mask
from ..io.coco import segmentation_kind_safe


@dataclass
class Losses:
    counts: Counter = field(default_factory=Counter)
    examples: dict[str, int] = field(default_factory=dict)

    def add(self, kind: str, ann_id: int) -> None:
        self.counts[kind] += 1
        self.examples.setdefault(kind, ann_id)

    def lines(self, target: str) -> list[str]:
        return [f"{target}: {n} annotation(s) {kind} (e.g. annotation {self.examples[kind]})"
                for kind, n in sorted(self.counts.items())]


def _image_index(doc: dict) -> dict[int, dict]:
    return {im["id"]: im for im in doc["images"]}


def _mask(ann: dict, img: dict) -> np.ndarray | None:
    if segmentation_kind_safe(ann.get("segmentation")) in ("none", "invalid"):
        return None
    return segmentation_to_mask(ann["segmentation"], img["height"], img["width"])


def _outline(ann: dict, img: dict) -> tuple[list[list[float]], int] | None:
    """Polygons (pixel-edge trace for RLE) and hole count; None for box-only annotations."""
    kind = segmentation_kind_safe(ann.get("segmentation"))
    if kind in ("none", "invalid"):
        return None
    if kind == "polygon":
        return [list(map(float, p)) for p in ann["segmentation"]], 0
    out = mask_to_outline(_mask(ann, img))
    return out.polygons, out.holes


def _box_ring(bbox: list[float]) -> list[float]:
    x, y, w, h = bbox
    return [x, y, x + w, y, x + w, y + h, x, y + h]


def to_coco_results(doc: dict) -> tuple[list[dict], Losses]:
    """A results list (``loadRes`` input): RLE segmentation, bbox, score (1.0 where absent)."""
    images = _image_index(doc)
    losses = Losses()
    out = []
    for ann in doc["annotations"]:
        if ann.get("iscrowd", 0):
            losses.add("are crowd regions, left out of the results", ann["id"])
            continue
        img = images[ann["image_id"]]
        res = {"image_id": ann["image_id"], "category_id": ann["category_id"], "bbox": ann.get("bbox"),
               "score": float(ann.get("score", 1.0))}
        mask = _mask(ann, img)
        if mask is None:
            losses.add("have no mask (box-only results)", ann["id"])
        else:
            res["segmentation"] = encode_rle(mask)
        if res["bbox"] is None:
            from ..geometry import mask_bbox
            res["bbox"] = mask_bbox(mask)
        out.append(res)
    return out, losses


def to_polygon_coco(doc: dict) -> tuple[dict, Losses]:
    """The same dataset with RLE segmentations as polygons where that is faithful (no holes)."""
    images = _image_index(doc)
    losses = Losses()
    out = dict(doc)
    anns = []
    for ann in doc["annotations"]:
        kind = segmentation_kind_safe(ann.get("segmentation"))
        if kind in ("rle", "uncompressed_rle") and not ann.get("iscrowd", 0):
            outline = mask_to_outline(_mask(ann, images[ann["image_id"]]))
            if outline.holes:
                losses.add("keep RLE because their masks have holes", ann["id"])
            else:
                ann = {**ann, "segmentation": outline.polygons}
        anns.append(ann)
    out["annotations"] = anns
    return out, losses


def to_labelme(doc: dict, image_path_for: dict[int, str]) -> tuple[dict[int, dict], Losses]:
    """One LabelMe document per image id: polygons grouped by annotation id, rectangles for boxes."""
    images = _image_index(doc)
    names = {c["id"]: c["name"] for c in doc.get("categories", [])}
    losses = Losses()
    per_image: dict[int, list] = {i: [] for i in images}
    for ann in doc["annotations"]:
        img = images[ann["image_id"]]
        label = names.get(ann["category_id"], str(ann["category_id"]))
        outline = _outline(ann, img)
        if ann.get("iscrowd", 0):
            losses.add("are crowd regions exported as ordinary polygons", ann["id"])
        if outline is None:
            x, y, w, h = ann["bbox"]
            per_image[img["id"]].append({"label": label, "points": [[x, y], [x + w, y + h]], "group_id": ann["id"],
                                         "shape_type": "rectangle", "flags": {}, "description": ""})
            continue
        polygons, holes = outline
        if holes:
            losses.add("lose their holes (LabelMe polygons cannot subtract)", ann["id"])
        for poly in polygons:
            pts = [[poly[i], poly[i + 1]] for i in range(0, len(poly), 2)]
            per_image[img["id"]].append({"label": label, "points": pts, "group_id": ann["id"],
                                         "shape_type": "polygon", "flags": {}, "description": ""})
    docs = {}
    for img_id, shapes in per_image.items():
        img = images[img_id]
        docs[img_id] = {"version": "5.4.1", "flags": {}, "shapes": shapes,
                        "imagePath": image_path_for.get(img_id, img["file_name"]), "imageData": None,
                        "imageHeight": img["height"], "imageWidth": img["width"]}
    return docs, losses


def _ring_area(poly: list[float]) -> float:
    x, y = np.asarray(poly[0::2]), np.asarray(poly[1::2])
    return 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


def to_yolo_seg(doc: dict) -> tuple[dict[int, str], list[str], Losses]:
    """Per image id the label text (``class x1 y1 ...`` normalised), and the class names in order."""
    images = _image_index(doc)
    cats = sorted(doc.get("categories", []), key=lambda c: c["id"])
    index = {c["id"]: i for i, c in enumerate(cats)}
    losses = Losses()
    lines: dict[int, list[str]] = {i: [] for i in images}
    for ann in doc["annotations"]:
        if ann.get("iscrowd", 0):
            losses.add("are crowd regions, left out", ann["id"])
            continue
        img = images[ann["image_id"]]
        outline = _outline(ann, img)
        if outline is None:
            ring = _box_ring(ann["bbox"])
            losses.add("are box-only, written as rectangles", ann["id"])
        else:
            polygons, holes = outline
            if holes:
                losses.add("lose their holes (one ring per instance)", ann["id"])
            if len(polygons) > 1:
                losses.add("have several parts; only the largest is kept", ann["id"])
            if not polygons:
                continue
            ring = max(polygons, key=_ring_area)
        w, h = img["width"], img["height"]
        coords = [min(max(v / (w if k % 2 == 0 else h), 0.0), 1.0) for k, v in enumerate(ring)]
        lines[img["id"]].append(" ".join([str(index[ann["category_id"]])] + [f"{c:.6f}" for c in coords]))
    return {i: "\n".join(v) + ("\n" if v else "") for i, v in lines.items()}, [c["name"] for c in cats], losses


def write_dir_atomic(files: dict[str, str], out_dir: Path, overwrite: bool) -> None:
    """Write ``{relative name: text}`` into a new folder that replaces ``out_dir`` in one rename."""
    if out_dir.exists() and not overwrite:
        raise ValueError(f"{out_dir} exists; pass --overwrite to replace it")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        for name, text in files.items():
            p = tmp / name
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(text, encoding="utf-8")
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out_dir, old)
            os.replace(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def stem_names(doc: dict) -> dict[int, str]:
    """A unique file stem per image (its file name's stem; the image id is added on a clash)."""
    stems: dict[int, str] = {}
    seen: Counter = Counter(PurePosixPath(im["file_name"]).stem for im in doc["images"])
    for im in doc["images"]:
        stem = PurePosixPath(im["file_name"]).stem
        stems[im["id"]] = stem if seen[stem] == 1 else f"{stem}_{im['id']}"
    return stems


def relative_image_path(file_name: str, images_dir: Path | None, out_dir: Path) -> str:
    if images_dir is None:
        return file_name
    return os.path.relpath(images_dir / file_name, out_dir)


__all__ = ["to_coco_results", "to_polygon_coco", "to_labelme", "to_yolo_seg", "write_dir_atomic",
           "stem_names", "relative_image_path", "Losses"]
