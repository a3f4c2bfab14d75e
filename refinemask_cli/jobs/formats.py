"""Conversions between a COCO dataset and COCO results, LabelMe and YOLO-seg (pure dict/text work).

Each converter returns what it made plus ``Loss`` notes for what the target format cannot hold
(holes, several parts, box-only objects, crowd regions), counted so the CLI can warn once per kind.
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
from pycocotools import mask as mask_utils

from ..geometry import encode_rle, mask_bbox, mask_to_outline, segmentation_to_mask
from ..geometry.masks import finite_number, segmentation_to_rle
from ..geometry.polygons import ring_area
from ..io.coco import CocoError, segmentation_kind_safe
from ..io.images import held_image, image_exists
from ..io.sources import label_path_for
from .paths import safe_relative, with_suffix


@dataclass
class Losses:
    counts: Counter = field(default_factory=Counter)
    examples: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # about the whole output, not counted annotations

    def add(self, kind: str, ann_id: int) -> None:
        self.counts[kind] += 1
        self.examples.setdefault(kind, ann_id)

    def lines(self, target: str) -> list[str]:
        return [f"{target}: {n} annotation(s) {kind} (e.g. annotation {self.examples[kind]})"
                for kind, n in sorted(self.counts.items())] + [f"{target}: {note}" for note in self.notes]


def _image_index(doc: dict) -> dict[int, dict]:
    return {im["id"]: im for im in doc["images"]}


def _mask(ann: dict, img: dict) -> np.ndarray | None:
    if segmentation_kind_safe(ann.get("segmentation")) in ("none", "invalid"):
        return None
    return segmentation_to_mask(ann["segmentation"], img["height"], img["width"])


def _outline(ann: dict, img: dict, mask: np.ndarray | None = None) -> tuple[list[list[float]], int] | None:
    """Polygons (pixel-edge trace for RLE) and hole count; None for box-only annotations.
    ``mask``: the annotation's mask where the caller has already decoded it."""
    kind = segmentation_kind_safe(ann.get("segmentation"))
    if kind in ("none", "invalid"):
        return None
    if kind == "polygon":
        return [list(map(float, p)) for p in ann["segmentation"]], 0
    out = mask_to_outline(_mask(ann, img) if mask is None else mask)
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
            res["bbox"] = mask_bbox(mask)
        out.append(res)
    return out, losses


def results_as_dataset(results: list, like: dict) -> dict:
    """A COCO results list (a detector's output: boxes, masks or both, with scores) as a dataset of
    ``like``'s images and categories, to refine: annotation ``k + 1`` is result ``k``. Checked the way
    ``check_results`` checks detections (a missing score is allowed: refine does not rank); the first
    error raises ``CocoError`` naming the result."""
    from ..io.coco import check_results, first_error

    if not isinstance(results, list):
        raise CocoError("with --like, the input must be a COCO results list (a list of detections); leave --like out for a dataset")
    scored = [{"score": 1.0, **r} if isinstance(r, dict) else r for r in results]
    problem = first_error(check_results(scored, like))
    if problem:
        raise CocoError(str(problem))
    images = _image_index(like)
    anns = []
    for k, r in enumerate(results):
        ann = {"id": k + 1, "image_id": r["image_id"], "category_id": r["category_id"], "iscrowd": 0}
        img = images[r["image_id"]]
        if segmentation_kind_safe(r.get("segmentation")) != "none":
            ann["segmentation"] = r["segmentation"]
            rle = segmentation_to_rle(r["segmentation"], img["height"], img["width"])  # never decoded whole
            # a dataset's bbox and area: the result's box where it has one (pycocotools' loadRes
            # keeps it), else the mask's; the area is the mask's pixel count
            ann["bbox"] = r["bbox"] if "bbox" in r else [float(v) for v in mask_utils.toBbox(rle)]
            ann["area"] = float(mask_utils.area(rle))
        else:
            ann["bbox"] = r["bbox"]
            ann["area"] = float(r["bbox"][2] * r["bbox"][3])
        if "score" in r:
            ann["score"] = r["score"]
        anns.append(ann)
    return {"info": like.get("info", {}), "images": like["images"], "annotations": anns,
            "categories": like["categories"]}


def refined_results(results: list, refined: dict) -> list[dict]:
    """``results`` with each entry's mask replaced by its refined one (annotation ``k + 1`` of
    ``refined``, made by ``results_as_dataset``) as compressed RLE, the form ``loadRes`` reads;
    everything else kept as it was (image, category, score, box, other keys: the contract of a
    refiner), ``area`` updated where the entry has one."""
    images = _image_index(refined)
    out = []
    for r, ann in zip(results, refined["annotations"]):
        new = dict(r)
        segm = ann.get("segmentation")
        if segmentation_kind_safe(segm) == "rle" and isinstance(segm["counts"], str):
            new["segmentation"] = segm  # as refined (refine writes results' masks as RLE)
            if "area" in new:
                new["area"] = float(mask_utils.area(segm))  # what loadRes computes too
        else:
            mask = _mask(ann, images[ann["image_id"]])
            if mask is not None:
                new["segmentation"] = encode_rle(mask)
                if "area" in new:
                    new["area"] = float(mask.sum())
        out.append(new)
    return out


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


def _mask_shape(mask: np.ndarray, base: dict) -> dict:
    """A LabelMe ``mask`` shape: the mask's bounding pixels as two corner points (inclusive, as
    LabelMe pastes ``mask[y1:y2+1, x1:x2+1]``) and the crop as a base64 PNG."""
    import base64

    import cv2

    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = int(ys.min()), int(ys.max()), int(xs.min()), int(xs.max())
    ok, png = cv2.imencode(".png", mask[y0 : y1 + 1, x0 : x1 + 1].astype(np.uint8) * 255)
    if not ok:  # pragma: no cover - encoding a uint8 array does not fail
        raise ValueError("could not encode a mask as PNG")
    return {**base, "points": [[float(x0), float(y0)], [float(x1), float(y1)]], "shape_type": "mask",
            "mask": base64.b64encode(png.tobytes()).decode("ascii")}


def to_labelme(doc: dict, image_path_for: dict[int, str]) -> tuple[dict[int, dict], Losses]:
    """One LabelMe document per image id. Shapes are painted largest object first (LabelMe's
    ``shapes_to_label`` paints in order, so a small object drawn before a large one would vanish);
    an object's parts share its annotation id as ``group_id``; masks with holes become ``mask``
    shapes (LabelMe >= 5.3); box-only annotations rectangles; a ``score`` is kept on every shape."""
    images = _image_index(doc)
    names = {c["id"]: c["name"] for c in doc.get("categories", [])}
    losses = Losses()
    per_image: dict[int, list] = {i: [] for i in images}
    for ann in doc["annotations"]:
        img = images[ann["image_id"]]
        base = {"label": str(names.get(ann["category_id"], ann["category_id"])), "group_id": ann["id"],
                "flags": {}, "description": ""}
        if "score" in ann and finite_number(ann["score"]):
            base["score"] = float(ann["score"])
            base["description"] = f"score {float(ann['score']):.3f}"
        if ann.get("iscrowd", 0):
            losses.add("are crowd regions exported as ordinary shapes", ann["id"])
        mask = _mask(ann, img)  # decoded once: paint order (its area), outline and mask shape
        outline = _outline(ann, img, mask)
        if outline is None:
            x, y, w, h = ann["bbox"]
            area = float(w * h)
            shapes = [{**base, "points": [[x, y], [x + w, y + h]], "shape_type": "rectangle"}]
        else:
            area = float(mask.sum())
            if outline[1]:  # holes: polygons would fill them
                shapes = [_mask_shape(mask, base)] if mask.any() else []
            else:
                shapes = [{**base, "points": [[poly[i], poly[i + 1]] for i in range(0, len(poly), 2)],
                           "shape_type": "polygon"} for poly in outline[0]]
        per_image[img["id"]].append((-area, len(per_image[img["id"]]), shapes))
    docs = {}
    for img_id, objects in per_image.items():
        img = images[img_id]
        shapes = [shape for _, _, group in sorted(objects, key=lambda o: o[:2]) for shape in group]
        docs[img_id] = {"version": "5.4.1", "flags": {}, "shapes": shapes,
                        "imagePath": image_path_for.get(img_id, img["file_name"]), "imageData": None,
                        "imageHeight": img["height"], "imageWidth": img["width"]}
    return docs, losses


def labelme_files(doc: dict, images_dir: Path | None, out_dir: Path) -> tuple[dict[str, dict], Losses]:
    """``{JSON path under out_dir: LabelMe document}``: the images' folders mirrored, each
    ``imagePath`` relative to its JSON. Without ``images_dir`` the image is taken to sit beside its
    JSON (LabelMe's own layout), noted in the losses."""
    targets = _labelme_targets(doc)
    paths = {}
    for im in doc["images"]:
        rel = safe_relative(im["file_name"], f"image {im['id']}")
        if images_dir is None:
            paths[im["id"]] = rel.name
        else:
            paths[im["id"]] = Path(os.path.relpath(images_dir / rel, out_dir / targets[im["id"]].parent)).as_posix()
    docs, losses = to_labelme(doc, paths)
    if images_dir is not None:  # images read from a LabelMe file's imageData go on in the same way
        for im in doc["images"]:
            held = held_image(images_dir / im["file_name"])
            if held is not None:
                docs[im["id"]]["imageData"] = base64.b64encode(held).decode("ascii")
    if images_dir is None and doc["images"]:
        losses.notes.append("no --images: each imagePath assumes the image sits beside its JSON (LabelMe's own "
                            "layout); pass --images DIR to point at the images instead")
    return {str(targets[i]): d for i, d in docs.items()}, losses


def _labelme_targets(doc: dict) -> dict[int, PurePosixPath]:
    """Each image's LabelMe JSON path (its file name's folders mirrored), checked."""
    targets = {im["id"]: with_suffix(im["file_name"], ".json", f"image {im['id']}") for im in doc["images"]}
    _check_unique(targets, "LabelMe JSON")
    return targets


def _yolo_paths(doc: dict) -> dict[int, tuple[PurePosixPath, PurePosixPath]]:
    """Each image's path in a YOLO dataset and its label file's, where Ultralytics looks for it (the
    last ``images`` folder of the image's path made ``labels``), checked, and a class to write. The
    image's folders are mirrored under ``images/``, less a leading ``images/`` of its own (a YOLO
    dataset's file names, or a COCO set kept in ``images/``), which would nest ``images/images/``."""
    if not yolo_classes(doc):
        raise CocoError("no categories to make YOLO classes of; a YOLO dataset needs at least one")
    paths = {}
    for im in doc["images"]:
        rel = safe_relative(im["file_name"], f"image {im['id']}")
        if len(rel.parts) > 1 and rel.parts[0] == "images":
            rel = PurePosixPath(*rel.parts[1:])
        image = PurePosixPath("images") / rel
        paths[im["id"]] = (image, label_path_for(image))
    _check_unique({i: label for i, (_, label) in paths.items()}, "YOLO label file")
    return paths


def check_folder_output(doc: dict, target: str) -> None:
    """The ``CocoError`` writing ``doc`` as ``target`` (``labelme``, ``yolo-seg``) would meet over its
    file names and categories, raised before a long job rather than after it."""
    if target == "labelme":
        _labelme_targets(doc)
    elif target == "yolo-seg":
        _yolo_paths(doc)


def _check_unique(targets: dict[int, PurePosixPath], what: str) -> None:
    seen: dict[PurePosixPath, int] = {}
    for image_id, t in targets.items():
        if t in seen:
            raise CocoError(f"image {image_id}: its {what} {t} would overwrite image {seen[t]}'s; "
                            "file names must differ after the suffix")
        seen[t] = image_id


def join_rings(rings: list[list[float]]) -> list[float]:
    """The parts of one object as ONE ring, the way YOLO-seg keeps multi-part objects: parts are
    visited in order, each entered and left at its vertices closest to the next part, and the
    bridges are walked there and back (zero width), so the rasterised ring covers every part."""
    pts = [np.asarray(r, dtype=np.float64).reshape(-1, 2) for r in rings if len(r) >= 6]
    if len(pts) <= 1:
        return [float(v) for v in pts[0].reshape(-1)] if pts else []
    exits, entries = [0] * len(pts), [0] * len(pts)
    for i in range(len(pts) - 1):
        d = ((pts[i][:, None, :] - pts[i + 1][None, :, :]) ** 2).sum(-1)
        a, b = np.unravel_index(int(d.argmin()), d.shape)
        exits[i], entries[i + 1] = int(a), int(b)
    entries[0] = exits[0]
    forward, back = [], []
    for i, ring in enumerate(pts):
        n, e = len(ring), entries[i]
        if i == len(pts) - 1:
            forward += [ring[(e + k) % n] for k in range(n + 1)]
            continue
        steps = (exits[i] - e) % n
        forward += [ring[(e + k) % n] for k in range(steps + 1)]
        back.append([ring[(exits[i] + k) % n] for k in range(n - steps + 1)])
    out = forward + [p for seg in reversed(back) for p in seg]
    return [float(v) for p in out for v in p]


# LabelMe-to-COCO converters add these as categories that are not objects
PLACEHOLDER_CATEGORIES = ("__ignore__", "_background_")


def yolo_classes(doc: dict) -> list[dict]:
    """The categories that become YOLO classes, in id order (placeholders left out)."""
    return [c for c in sorted(doc.get("categories", []), key=lambda c: c["id"])
            if str(c.get("name")) not in PLACEHOLDER_CATEGORIES]


def to_yolo_seg(doc: dict) -> tuple[dict[int, str], list[str], Losses]:
    """Per image id the label text (``class x1 y1 ...`` normalised), and the class names in order.

    Classes are the categories in id order (``names`` index = line class); a multi-part object is one
    ring (``join_rings``); holes cannot be kept; placeholder categories are no class."""
    images = _image_index(doc)
    cats = yolo_classes(doc)
    index = {c["id"]: i for i, c in enumerate(cats)}
    losses = Losses()
    lines: dict[int, list[str]] = {i: [] for i in images}
    for ann in doc["annotations"]:
        if ann.get("iscrowd", 0):
            losses.add("are crowd regions, left out", ann["id"])
            continue
        if ann["category_id"] not in index:
            losses.add(f"belong to a placeholder category ({', '.join(PLACEHOLDER_CATEGORIES)}), left out", ann["id"])
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
            if not polygons:
                continue
            ring = join_rings(sorted(polygons, key=ring_area, reverse=True))
        w, h = img["width"], img["height"]
        coords = [min(max(v / (w if k % 2 == 0 else h), 0.0), 1.0) for k, v in enumerate(ring)]
        lines[img["id"]].append(" ".join([str(index[ann["category_id"]])] + [f"{c:.6f}" for c in coords]))
    return {i: "\n".join(v) + ("\n" if v else "") for i, v in lines.items()}, [c["name"] for c in cats], losses


def yolo_dataset(doc: dict, images_dir: Path | None) -> tuple[dict[str, str], dict[str, Path | bytes], Losses]:
    """An Ultralytics dataset: ``data.yaml``, ``labels/`` mirroring the images' folders and, with
    ``images_dir``, ``images/`` (files to copy: ``{relative path: source file, or the bytes of an image
    held in memory}``)."""
    paths = _yolo_paths(doc)
    texts, names, losses = to_yolo_seg(doc)
    files: dict[str, str] = {}
    copies: dict[str, Path | bytes] = {}
    for im in doc["images"]:
        image, label = paths[im["id"]]
        files[str(label)] = texts[im["id"]]
        if images_dir is not None:
            src = images_dir / safe_relative(im["file_name"], f"image {im['id']}")
            if not image_exists(src):
                raise CocoError(f"image {im['id']}: {src} not found; --images must hold the dataset's file_names")
            held = held_image(src)
            copies[str(image)] = src if held is None else held
    if images_dir is None and doc["images"]:
        losses.notes.append("no --images: labels/ written without images/; pass --images DIR to add the images "
                            "(hard-linked or copied) as Ultralytics expects")
    yaml_names = "\n".join(f"  {i}: {json.dumps(str(n), ensure_ascii=False)}" for i, n in enumerate(names))
    files["data.yaml"] = ("# YOLO-seg dataset written by `refinemask export --to yolo-seg`.\n"
                          "# train and val are the same images; point them at your own split as needed.\n"
                          f"train: images\nval: images\nnc: {len(names)}\nnames:\n{yaml_names}\n")
    return files, copies, losses


def write_dir_atomic(files: dict[str, str], out_dir: Path, overwrite: bool,
                     copies: dict[str, Path | bytes] | None = None) -> None:
    """Write ``{relative name: text}`` (and ``copies``: ``{relative name: source file}``, hard-linked
    where the file system allows, else copied, or the bytes to write) into a new folder that replaces
    ``out_dir`` in one rename."""
    if out_dir.exists() and not overwrite:
        raise ValueError(f"{out_dir} exists; pass --overwrite to replace it")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        for name, text in files.items():
            p = tmp / name
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(text, encoding="utf-8")
        for name, src in (copies or {}).items():
            p = tmp / name
            p.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(src, bytes):
                p.write_bytes(src)
                continue
            try:
                os.link(src, p)
            except OSError:
                shutil.copy2(src, p)
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


__all__ = [
    "Losses",
    "check_folder_output",
    "join_rings",
    "labelme_files",
    "to_coco_results",
    "to_labelme",
    "to_polygon_coco",
    "to_yolo_seg",
    "write_dir_atomic",
    "yolo_dataset",
]
