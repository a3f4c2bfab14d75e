"""COCO instance files: read with clear errors, check the way pycocotools and training code use them,
and write atomically.

``check_dataset`` returns every problem with the id it concerns; callers decide whether warnings
matter. Errors are what would make pycocotools, training or refinement fail or silently go wrong.
"""
from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..geometry.masks import finite_number, segmentation_kind, segmentation_problem
from .images import (
    image_exists,
    image_path,
    not_found_messages,
    read_image,
    read_image_as_recorded,
)


class CocoError(ValueError):
    """A COCO file that cannot be used; the message is one line naming the file and what to fix."""


class ResultsListError(CocoError):
    """A COCO results list where a dataset was expected (``refine --like`` takes one)."""


@dataclass(frozen=True)
class Problem:
    level: str  # "error" or "warning"
    where: str  # "image 12", "annotation 7", "category 3", "file"
    message: str

    def __str__(self) -> str:  # a problem of the whole file reads as its message after the file's name
        return self.message if self.where == "file" else f"{self.where}: {self.message}"


BOM_NOTE = ("starts with a UTF-8 byte-order mark (as some Windows editors save), which pycocotools "
            "cannot read; read without it")


def read_json(path: str | Path, notes: list | None = None) -> Any:
    """A JSON file's document; a UTF-8 byte-order mark before it is skipped (``notes`` gets a
    warning Problem: what this tool writes has none, so its outputs load where the input did not)."""
    p = Path(path)
    if not p.is_file():
        raise CocoError(f"{p}: file not found")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise CocoError(f"{p}: not UTF-8 text; is this a JSON file?") from None
    if text.startswith("\ufeff"):
        text = text[1:]
        if notes is not None:
            notes.append(Problem("warning", "file", BOM_NOTE))
    if not text.strip():
        raise CocoError(f"{p}: file is empty; expected a COCO JSON document")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise CocoError(f"{p}: malformed JSON at line {e.lineno}, column {e.colno} ({e.msg})") from None


def read_coco(path: str | Path, notes: list | None = None) -> dict:
    """A COCO dataset document with the top-level structure checked (not the contents), normalised
    the way pycocotools reads it (``normalize_dataset``; what it changed goes to ``notes``)."""
    bom: list[Problem] = []
    doc = read_json(path, bom)
    if not isinstance(doc, dict):
        if isinstance(doc, list):
            raise ResultsListError(f"{path}: this is a COCO results list, not a dataset; "
                            "a dataset has 'images', 'annotations' and 'categories'")
        raise CocoError(f"{path}: expected a JSON object with 'images', 'annotations' and 'categories'")
    for key in ("images", "annotations", "categories"):
        if key not in doc:
            raise CocoError(f"{path}: missing '{key}' list; a COCO instances file needs images, annotations "
                            "and categories")
        if not isinstance(doc[key], list):
            raise CocoError(f"{path}: '{key}' must be a list, got {type(doc[key]).__name__}")
    changed = normalize_dataset(doc)
    if notes is not None:
        notes.extend(bom + changed)
    return doc


# the integer fields of each list, as pycocotools and COCOeval use them
INTEGER_FIELDS = {"images": ("id", "width", "height"), "annotations": ("id", "image_id", "category_id", "iscrowd"),
                  "categories": ("id",)}
_WHERE = {"images": "image", "annotations": "annotation", "categories": "category"}


def as_integer(value: Any) -> int | None:
    """``value`` as an int where pycocotools would treat it as one: an integral float (``640.0``)
    or a string of digits (``"12"``); None otherwise (bools are not numbers here)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def normalize_dataset(doc: dict) -> list[Problem]:
    """In place: integral floats and digit strings in integer fields become ints, and a missing
    ``iscrowd`` becomes 0 (COCOeval reads it for every annotation). Returns one warning per kind of
    change, naming the first entry and how many there were; the output files carry the fixed values."""
    found: dict[tuple[str, str, str], list] = {}
    for key, fields in INTEGER_FIELDS.items():
        for item in doc.get(key, []) if isinstance(doc.get(key), list) else []:
            if not isinstance(item, dict):
                continue
            for name in fields:
                value = item.get(name)
                if isinstance(value, int) or name not in item:
                    continue
                number = as_integer(value)
                if number is not None:
                    kind = "a float" if isinstance(value, float) else "a string"
                    found.setdefault((key, name, kind), []).append((item.get("id"), value))
                    item[name] = number
    missing_crowd = []
    for ann in doc.get("annotations", []):
        if isinstance(ann, dict) and "iscrowd" not in ann:
            ann["iscrowd"] = 0
            missing_crowd.append(ann.get("id"))
    notes = []
    for (key, name, kind), items in found.items():
        first_id, value = items[0]
        more = f" (and {len(items) - 1} more)" if len(items) > 1 else ""
        notes.append(Problem("warning", f"{_WHERE[key]} {first_id}",
                             f"{name} {value!r} is {kind}{more}; read as the integer {as_integer(value)} "
                             "and written back as one"))
    if missing_crowd:
        more = f" (and {len(missing_crowd) - 1} more)" if len(missing_crowd) > 1 else ""
        notes.append(Problem("warning", f"annotation {missing_crowd[0]}",
                             f"no 'iscrowd'{more}; taken as 0 and written out (COCOeval needs it)"))
    return notes



def _check_ids(items: list, kind: str, problems: list[Problem]) -> dict:
    by_id: dict = {}
    for i, item in enumerate(items):
        if not isinstance(item, dict) or "id" not in item:
            problems.append(Problem("error", f"{kind} #{i}", "entry has no 'id'"))
            continue
        if not is_id(item["id"]):
            problems.append(Problem("error", f"{kind} #{i}", f"id {item['id']!r} is not an integer"))
            continue
        if item["id"] in by_id:
            problems.append(Problem("error", f"{kind} {item['id']}", "duplicate id; ids must be unique"))
            continue
        by_id[item["id"]] = item
    return by_id


def is_id(value: Any) -> bool:
    """An integer as COCO ids are (JSON's true/false are not ids, though Python counts them as ints)."""
    return isinstance(value, int) and not isinstance(value, bool)


def by_id(items: dict, value: Any) -> Any:
    """``items[value]`` for an id value as a file gives it, or None where it names none of them,
    including values that cannot be ids at all: a list or object (unhashable) and true/false
    (which Python would take as 1 and 0)."""
    if isinstance(value, bool):
        return None
    try:
        return items.get(value)
    except TypeError:
        return None


def unusable_id(doc: dict) -> str | None:
    """Where a document that is not checked as a dataset (predictions to score) has an id that is a
    list or object, which no lookup can take: "annotation #3: image_id [1] is not an id"; else None."""
    for key, what, fields in (("images", "image", ("id",)), ("categories", "category", ("id",)),
                              ("annotations", "annotation", ("id", "image_id", "category_id"))):
        items = doc.get(key) if isinstance(doc.get(key), list) else []
        for k, item in enumerate(items):
            for name in fields if isinstance(item, dict) else ():
                if isinstance(item.get(name), (list, dict)):
                    return f"{what} #{k}: {name} {item[name]!r} is not an id"
    return None


def check_segmentation(segm: Any, height: int, width: int) -> str | None:
    """Why a segmentation is unusable for an image of this size, or None (``segmentation_problem``:
    the same check guards every decoding)."""
    return segmentation_problem(segm, height, width)


def bbox_shape_problem(bbox: Any) -> str | None:
    """Why ``bbox`` is not a COCO ``[x, y, w, h]`` of finite numbers, or None."""
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(finite_number(v) for v in bbox)):
        return f"bbox {bbox!r} must be 4 finite numbers [x, y, width, height]"
    return None


def check_bbox(bbox: Any, height: int, width: int) -> tuple[str, str] | None:
    """(level, reason) for a bad COCO ``[x, y, w, h]`` box, or None."""
    shape = bbox_shape_problem(bbox)
    if shape:
        return "error", shape
    x, y, w, h = bbox
    if w <= 0 or h <= 0:
        return "error", f"bbox {bbox} has zero or negative width/height"
    if x >= width or y >= height or x + w <= 0 or y + h <= 0:
        return "error", f"bbox {bbox} lies outside the {width}x{height} image"
    if x < -1 or y < -1 or x + w > width + 1 or y + h > height + 1:
        return "warning", f"bbox {bbox} extends past the {width}x{height} image (will be clipped)"
    return None


def read_recorded_image(path: str | Path, info: dict) -> tuple[np.ndarray, bool]:
    """The image of record ``info`` read from ``path`` and whether it was read as stored, without its
    EXIF rotation, because only so does it have the record's size (``read_image_as_recorded``); a
    ``CocoError`` naming the image where its size disagrees with the record's width/height (where the
    record has them). An image that cannot be read raises ``ImageReadError``."""
    w, h = info.get("width"), info.get("height")
    if not (isinstance(w, int) and isinstance(h, int)):
        return read_image(path), False
    image, as_stored = read_image_as_recorded(path, h, w)
    if image.shape[:2] != (h, w):
        raise CocoError(f"image {info['id']} ({info['file_name']}): file is {image.shape[1]}x{image.shape[0]} "
                        f"but the JSON says {w}x{h}; fix width/height in the JSON")
    return image, as_stored


def check_dataset(doc: dict, images_dir: str | Path | None = None) -> list[Problem]:
    """Every problem of a COCO dataset document, each naming its image/annotation/category id."""
    problems: list[Problem] = []
    images = _check_ids(doc.get("images", []), "image", problems)
    anns = _check_ids(doc.get("annotations", []), "annotation", problems)
    if "categories" not in doc:
        problems.append(Problem("error", "file", "no 'categories' list"))
    categories = _check_ids(doc.get("categories", []), "category", problems)
    missing: dict[int, str] = {}  # image id -> file_name not found under images_dir
    for img_id, img in images.items():
        w, h = img.get("width"), img.get("height")
        if not (isinstance(w, int) and isinstance(h, int) and w > 0 and h > 0):
            problems.append(Problem("error", f"image {img_id}", f"width/height must be positive integers, got {w!r}/{h!r}"))
        if not isinstance(img.get("file_name"), str) or not img.get("file_name"):
            problems.append(Problem("error", f"image {img_id}", "missing 'file_name'"))
        elif images_dir is not None and not image_exists(image_path(images_dir, img["file_name"])):
            missing[img_id] = img["file_name"]
    if missing:
        messages = not_found_messages(images_dir, list(missing.values()))
        for img_id, name in missing.items():
            problems.append(Problem("error", f"image {img_id}", messages[name]))
    for ann_id, ann in anns.items():
        where = f"annotation {ann_id}"
        img = by_id(images, ann.get("image_id"))
        if img is None:
            problems.append(Problem("error", where, f"image_id {ann.get('image_id')!r} is not in 'images'"))
            continue
        if by_id(categories, ann.get("category_id")) is None:
            problems.append(Problem("error", where, f"category_id {ann.get('category_id')!r} is not in 'categories'"))
        w, h = img.get("width"), img.get("height")
        if not (isinstance(w, int) and isinstance(h, int) and w > 0 and h > 0):
            continue
        if "bbox" not in ann:
            if segmentation_kind_safe(ann.get("segmentation")) == "none":
                problems.append(Problem("error", where, "has neither bbox nor segmentation"))
        else:
            bad = check_bbox(ann["bbox"], h, w)
            if bad:
                problems.append(Problem(bad[0], where, bad[1]))
        if "segmentation" in ann and segmentation_kind_safe(ann["segmentation"]) != "none":
            reason = check_segmentation(ann["segmentation"], h, w)
            if reason:
                problems.append(Problem("error", where, reason))
        if ann.get("iscrowd", 0) not in (0, 1):
            problems.append(Problem("error", where, f"iscrowd must be 0 or 1, got {ann.get('iscrowd')!r}"))
    return problems


def check_results(results: Any, gt: dict, any_category: bool = False) -> list[Problem]:
    """Every problem of detections (a COCO results list, or a dataset's annotations with scores)
    scored against the dataset ``gt``: what would make pycocotools' loadRes or the mask scoring fail.
    ``any_category``: categories are not compared (class-agnostic scoring)."""
    if not isinstance(results, list):
        return [Problem("error", "file", "results must be a list of detections")]
    problems: list[Problem] = []
    images = {im["id"]: im for im in gt.get("images", []) if isinstance(im, dict) and "id" in im}
    categories = {c["id"]: c for c in gt.get("categories", []) if isinstance(c, dict) and "id" in c}
    for k, r in enumerate(results):
        if not isinstance(r, dict):
            problems.append(Problem("error", f"result #{k}", "entry is not a JSON object"))
            continue
        where = f"annotation {r['id']}" if is_id(r.get("id")) else f"result #{k}"
        img = by_id(images, r.get("image_id"))
        if img is None:
            problems.append(Problem("error", where, f"image_id {r.get('image_id')!r} is not an image of the ground "
                                                    "truth (predict --like GT_JSON writes its image ids)"))
            continue
        if not any_category and by_id(categories, r.get("category_id")) is None:
            problems.append(Problem("error", where, f"category_id {r.get('category_id')!r} is not a category of the "
                                                    "ground truth (--class-agnostic counts every category as one)"))
        if not finite_number(r.get("score")):
            problems.append(Problem("error", where, f"score {r.get('score')!r} must be a finite number"))
        shape = bbox_shape_problem(r["bbox"]) if "bbox" in r else None
        if shape:
            problems.append(Problem("error", where, shape))
        if segmentation_kind_safe(r.get("segmentation")) == "none":
            if "bbox" not in r:  # a box alone is scored as its mask, as pycocotools' loadRes does
                problems.append(Problem("error", where, "has neither segmentation nor bbox"))
            continue
        reason = check_segmentation(r["segmentation"], img["height"], img["width"])
        if reason:
            problems.append(Problem("error", where, reason))
    return problems


def segmentation_kind_safe(segm: Any) -> str:
    try:
        return segmentation_kind(segm)
    except ValueError:
        return "invalid"


def first_error(problems: Iterable[Problem]) -> Problem | None:
    return next((p for p in problems if p.level == "error"), None)


def dumps(doc: Any) -> str:
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":"))


def iter_dumps(doc: Any, chunk: int = 1000) -> Iterator[str]:
    """``dumps(doc)`` in pieces: the lists of a top-level object (images, annotations, a results
    list) are encoded ``chunk`` items at a time, so writing a 100k-annotation file never holds a
    second copy of it as one string. The pieces join to exactly ``dumps(doc)``."""

    def list_pieces(items: list) -> Iterator[str]:
        yield "["
        for start in range(0, len(items), chunk):
            yield ("," if start else "") + dumps(items[start : start + chunk])[1:-1]
        yield "]"

    if isinstance(doc, list):
        yield from list_pieces(doc)
        return
    if not isinstance(doc, dict):
        yield dumps(doc)
        return
    yield "{"
    for k, (key, value) in enumerate(doc.items()):
        yield ("," if k else "") + dumps(key) + ":"
        if isinstance(value, list) and len(value) > chunk:
            yield from list_pieces(value)
        else:
            yield dumps(value)
    yield "}"


def write_text_atomic(text: str | Iterable[str], path: str | Path, overwrite: bool = False) -> None:
    """Write through a temp file in the same folder and rename; refuse to replace without ``overwrite``.
    ``text`` may be a string or an iterable of pieces (written as they come)."""
    p = Path(path)
    if p.exists() and not overwrite:
        raise CocoError(f"{p} exists; pass --overwrite to replace it")
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            if isinstance(text, str):
                f.write(text)
            else:
                for piece in text:
                    f.write(piece)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(doc: Any, path: str | Path, overwrite: bool = False) -> None:
    write_text_atomic(iter_dumps(doc), path, overwrite)
