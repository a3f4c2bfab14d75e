"""Repair what ``check_dataset`` finds where the repair is not a guess (``validate --fix``).

A plain function over a parsed document; the input is never modified. What it repairs, each named in
a note:

- polygon rings of fewer than 6 numbers (or an odd count) are dropped: they hold no area (pycocotools
  reads a 4-number ring as a box); an annotation left with no ring keeps its box, as a box-only one;
- a missing or unusable ``bbox`` (absent, not 4 numbers, zero width or height, outside the image) is
  made from the segmentation, as pycocotools makes it: the extent of the polygons or the RLE;
- an image without usable ``width``/``height`` gets its file's size (``image_size``: the image read
  as ``refine`` reads it), where a function to read it is given;
- an annotation without an id, or with the id of an earlier one, gets the next free id (an exact
  copy of the earlier annotation is dropped instead).

Everything else (an image or category id that does not exist, a segmentation that cannot be read,
a crowd flag that is not 0 or 1, image-level problems) is not repaired. With ``drop_invalid``, the
annotations still in error afterwards are dropped, each named; image-level problems never are.
"""
from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pycocotools import mask as mask_utils

from ..geometry.masks import (
    finite_number,
    segmentation_problem,
    segmentation_to_rle,
)
from .coco import (
    Problem,
    bbox_shape_problem,
    by_id,
    check_bbox,
    check_dataset,
    is_id,
    segmentation_kind_safe,
)


@dataclass
class Repair:
    doc: dict
    fixes: list[Problem] = field(default_factory=list)  # what was changed, level "fixed"
    dropped: list[Problem] = field(default_factory=list)  # annotations dropped (drop_invalid), level "dropped"
    remaining: list[Problem] = field(default_factory=list)  # problems left (errors and warnings)


def _positive_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def _drop_degenerate_rings(ann: dict, fixes: list[Problem]) -> None:
    segm = ann.get("segmentation")
    if not isinstance(segm, list) or not segm:
        return
    keep, gone = [], []
    for k, ring in enumerate(segm):
        if isinstance(ring, list) and all(finite_number(v) for v in ring) and (len(ring) < 6 or len(ring) % 2):
            gone.append(f"{k} ({len(ring)} numbers)")
        else:
            keep.append(ring)
    if not gone:
        return
    ann["segmentation"] = keep
    what = "polygon" + ("s " if len(gone) > 1 else " ") + ", ".join(gone)
    left = "; no polygon is left, so it is a box-only annotation (refine draws it from its box)" if not keep else ""
    fixes.append(Problem("fixed", f"annotation {ann['id']}", f"dropped {what}: fewer than 6 numbers or an odd "
                                                             f"count hold no area{left}"))


def _segmentation_bbox(segm: Any, height: int, width: int) -> list[float] | None:
    """The box pycocotools gives a segmentation: polygons' extent, else the RLE's; None where there
    is none or it cannot be read."""
    kind = segmentation_kind_safe(segm)  # "invalid": not a segmentation at all; the checks name it
    if kind in ("none", "invalid") or segmentation_problem(segm, height, width):
        return None
    if kind == "polygon":
        xs = [float(v) for ring in segm for v in ring[0::2]]
        ys = [float(v) for ring in segm for v in ring[1::2]]
        x0, y0 = max(0.0, min(xs)), max(0.0, min(ys))
        x1, y1 = min(float(width), max(xs)), min(float(height), max(ys))
        box = [x0, y0, x1 - x0, y1 - y0]
    else:
        box = [float(v) for v in mask_utils.toBbox(segmentation_to_rle(segm, height, width))]
    return [round(v, 2) for v in box] if box[2] > 0 and box[3] > 0 else None


def _fix_bbox(ann: dict, height: int, width: int, fixes: list[Problem]) -> None:
    has = "bbox" in ann
    bad = check_bbox(ann["bbox"], height, width) if has else ("error", "no bbox")
    if bad is None or bad[0] != "error":
        return
    box = _segmentation_bbox(ann.get("segmentation"), height, width)
    if box is None:
        return
    before = "no bbox" if not has else (bbox_shape_problem(ann["bbox"]) or f"bbox {ann['bbox']}")
    ann["bbox"] = box
    fixes.append(Problem("fixed", f"annotation {ann['id']}", f"{before}: bbox {box} made from its segmentation"))


def repair_dataset(doc: dict, image_size: Callable[[dict], tuple[int, int]] | None = None,
                   drop_invalid: bool = False, images_dir=None) -> Repair:
    """``doc`` repaired (a copy) with what was fixed, dropped and is left (``check_dataset`` of the
    result, with ``images_dir``: files present); see the module's doc. ``image_size(image_record)``
    -> ``(height, width)`` of its file, or raises ``ValueError`` / ``OSError``."""
    out = copy.deepcopy(doc)
    rep = Repair(out)
    images = out.get("images") if isinstance(out.get("images"), list) else []
    anns = out.get("annotations") if isinstance(out.get("annotations"), list) else []
    if image_size is not None:
        for img in images:
            if not isinstance(img, dict) or "id" not in img:
                continue
            if _positive_int(img.get("width")) and _positive_int(img.get("height")):
                continue
            try:
                h, w = image_size(img)
            except (OSError, ValueError):  # the file's own problem: left for the checks to name
                continue
            before = f"width/height {img.get('width')!r}/{img.get('height')!r}"
            img["width"], img["height"] = int(w), int(h)
            rep.fixes.append(Problem("fixed", f"image {img['id']}", f"{before}: set to its file's {w}x{h}"))
    # ids: the first of each id keeps it; later ones are renumbered, exact copies dropped
    valid_ids = [a["id"] for a in anns if isinstance(a, dict) and is_id(a.get("id"))]
    next_id = max(valid_ids, default=0) + 1
    seen: dict[int, str] = {}
    kept = []
    for i, ann in enumerate(anns):
        if not isinstance(ann, dict):
            kept.append(ann)
            continue
        aid = ann.get("id")
        usable = is_id(aid)
        text = json.dumps(ann, sort_keys=True, default=str)
        if usable and aid in seen:
            if seen[aid] == text:
                rep.fixes.append(Problem("fixed", f"annotation {aid}", "an exact copy of an earlier annotation "
                                                                       "with this id: dropped"))
                continue
            rep.fixes.append(Problem("fixed", f"annotation {aid}", f"duplicate id (a different annotation): "
                                                                   f"this one renumbered {next_id}"))
            ann["id"], next_id = next_id, next_id + 1
        elif not usable:
            what = "no 'id'" if "id" not in ann else f"id {aid!r} is not an integer"
            rep.fixes.append(Problem("fixed", f"annotation #{i}", f"{what}: given id {next_id}"))
            ann["id"], next_id = next_id, next_id + 1
        seen[ann["id"]] = text
        kept.append(ann)
    anns[:] = kept
    sizes = {img["id"]: (img.get("height"), img.get("width")) for img in images
             if isinstance(img, dict) and is_id(img.get("id"))}
    for ann in anns:
        if not isinstance(ann, dict):
            continue
        _drop_degenerate_rings(ann, rep.fixes)
        h, w = by_id(sizes, ann.get("image_id")) or (None, None)
        if _positive_int(h) and _positive_int(w):
            _fix_bbox(ann, h, w, rep.fixes)
    problems = check_dataset(out, images_dir)
    if drop_invalid:
        bad = {p.where for p in problems if p.level == "error" and p.where.startswith("annotation ")}
        if bad:
            reasons = {p.where: p.message for p in reversed(problems) if p.where in bad}
            kept = []
            for i, ann in enumerate(anns):
                where = f"annotation {ann.get('id')}" if isinstance(ann, dict) else f"annotation #{i}"
                if where in bad:
                    rep.dropped.append(Problem("dropped", where, reasons[where]))
                else:
                    kept.append(ann)
            anns[:] = kept
            problems = check_dataset(out, images_dir)
    rep.remaining = problems
    return rep


def image_size_reader(images_dir) -> Callable[[dict], tuple[int, int]]:
    """``(height, width)`` of an image record's file under ``images_dir``, read as ``refine`` reads it."""
    from .images import image_path, read_image

    def size(img: dict) -> tuple[int, int]:
        h, w = read_image(image_path(images_dir, img["file_name"])).shape[:2]
        return h, w

    return size
