"""Annotation inputs besides COCO, read into a COCO document in memory: a LabelMe folder (one JSON
per image) and a YOLO-seg dataset (``data.yaml`` with ``images/`` and ``labels/``).

``load_annotations(path)`` takes any of the three and returns the document and the folder its
``file_name``s are relative to. Ids are given in sorted path order (images) and file order
(annotations), so the same input always gives the same document.

- LabelMe: shapes with the same ``label`` and ``group_id`` are one object (a ``group_id`` of null is
  an object of its own); polygons become COCO polygons, rectangles box-only annotations (a box
  prompt for ``refine``), masks RLE; circles, lines and points are left out with a warning.
  Categories are the labels in sorted order, ids from 1. A ``score`` on the shapes (``predict
  --format labelme`` writes one) is the object's ``score``. An image that is not at its imagePath
  but inside the JSON (``imageData``) is read from there (``io.images`` holds it).
- YOLO-seg: ``class x1 y1 x2 y2 ...`` (normalised) lines become polygons, ``class cx cy w h``
  lines box-only annotations; category ``id = class + 1`` with the name from ``names``.
"""
from __future__ import annotations

import base64
import json
from pathlib import Path, PurePath, PurePosixPath, PureWindowsPath
from typing import Any

import cv2
import numpy as np

from ..geometry import encode_rle, mask_bbox, segmentation_to_mask
from ..geometry.masks import finite_number, segmentation_problem
from ..geometry.polygons import ring_area
from .coco import CocoError, Problem, check_dataset, first_error, read_coco
from .images import SUFFIXES, ImageReadError, hold_image, read_image

KINDS = ("coco", "labelme", "yolo")


def detect_kind(path: Path) -> str:
    if path.is_file():
        return "yolo" if path.suffix.lower() in (".yaml", ".yml") else "coco"
    if path.is_dir():
        if (path / "data.yaml").is_file() or (path / "data.yml").is_file():
            return "yolo"
        if any(path.rglob("*.json")):
            return "labelme"
        raise CocoError(f"{path}: neither a LabelMe folder (*.json) nor a YOLO dataset (data.yaml)")
    raise CocoError(f"{path}: file not found")


def _data_yaml(path: Path) -> Path:
    """A YOLO dataset's data.yaml: the path itself, or the one in the folder."""
    return path if path.is_file() else next(f for f in (path / "data.yaml", path / "data.yml") if f.is_file())


def load_annotations(path: str | Path, notes: list | None = None,
                     images_dir: str | Path | None = None) -> tuple[dict, Path | None, str]:
    """``(COCO document, images folder or None, kind)`` for a COCO file, LabelMe folder or YOLO dataset.

    For COCO the images folder is None (the user names it); the others carry their own images. A
    LabelMe folder's images may sit elsewhere (``export --to labelme --images DIR`` points imagePath
    there): with ``images_dir`` its file names are taken relative to that folder."""
    p = Path(path)
    kind = detect_kind(p)
    notes = notes if notes is not None else []
    if kind == "coco":
        return read_coco(p, notes), None, kind
    if kind == "labelme":
        root = Path(images_dir) if images_dir is not None else p
        doc = read_labelme_folder(p, notes, root)
    else:
        yaml_file = _data_yaml(p)
        doc, root = read_yolo_dataset(yaml_file, notes)
    # an "info" record, as COCO files have: pycocotools 2.0.10's loadRes needs one in the ground truth
    return {"info": {"description": f"converted by refinemask from {kind}"}, **doc}, root, kind


def load_dataset(path: str | Path, images_dir: str | Path | None, notes: list) -> tuple[dict, Path]:
    """``(COCO document, images folder)`` of a COCO file with its ``images_dir``, or of a LabelMe
    folder or YOLO dataset (their own images; a LabelMe folder's elsewhere with ``images_dir``)."""
    doc, own, _ = load_annotations(path, notes, images_dir if Path(path).is_dir() else None)
    root = own if own is not None else images_dir
    if root is None:
        raise CocoError(f"{path}: a COCO file needs the folder of its images (--images, or images in [[datasets]])")
    problem = first_error(check_dataset(doc))  # what refine refuses, training does not read either
    if problem:
        raise CocoError(f"{path}: {problem} (`refinemask validate` lists them all; with --fix it repairs what it can)")
    return doc, Path(root)


def dataset_categories(path: str | Path, images_dir: str | Path | None = None) -> list[dict]:
    """The categories of a COCO file, LabelMe folder or YOLO dataset (a YOLO dataset's from its
    data.yaml alone, without reading its images)."""
    p = Path(path)
    if detect_kind(p) == "yolo":
        yaml_file = _data_yaml(p)
        names = yolo_names(_read_yaml(yaml_file), yaml_file)
        return [{"id": i + 1, "name": n, "supercategory": ""} for i, n in enumerate(names)]
    return load_annotations(p, [], images_dir if p.is_dir() else None)[0].get("categories", [])


# -- LabelMe ------------------------------------------------------------------------------------
def _labelme_image(json_path: Path, raw: dict, root: Path) -> tuple[str, int, int, bool]:
    """The image's file name relative to ``root``, its size, and whether it is read from the JSON's
    ``imageData`` (held in memory, ``io.images``) because no file is at its ``imagePath``."""
    image_path = raw.get("imagePath")
    if not isinstance(image_path, str) or not image_path:
        raise CocoError(f"{json_path}: no imagePath; LabelMe files name their image")
    target = (json_path.parent / PureWindowsPath(image_path).as_posix()).resolve()
    try:
        rel = target.relative_to(root.resolve())
    except ValueError:
        raise CocoError(f"{json_path}: imagePath {image_path!r} lies outside {root}; keep the images inside "
                        "the LabelMe folder, or pass --images with the folder that holds them") from None
    embedded = bool(raw.get("imageData")) and not target.is_file()
    if embedded:  # LabelMe's "save with image data": the encoded image file, base64
        try:
            data = base64.b64decode(raw["imageData"], validate=False)
        except (TypeError, ValueError):
            data = b""
        if not data or cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED) is None:
            raise CocoError(f"{json_path}: {image_path} is not there and its imageData is not a readable image; "
                            "put the image at its imagePath, or save the file again in LabelMe")
        hold_image(target, data)
    h, w = raw.get("imageHeight"), raw.get("imageWidth")
    if not (isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0):
        try:
            h, w = read_image(target).shape[:2]
        except ImageReadError as e:
            raise CocoError(f"{json_path}: no imageHeight/imageWidth and the image cannot be read ({e})") from None
    return PurePosixPath(rel).as_posix(), int(h), int(w), embedded


def _decode_png_b64(text: str) -> np.ndarray:
    data = np.frombuffer(base64.b64decode(text), dtype=np.uint8)
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None  # OpenCV asserts on no bytes
    if img is None:
        raise ValueError("mask is not a base64 PNG")
    return (img if img.ndim == 2 else img[..., 0]) > 0


def _points(shape: dict, json_path: Path) -> np.ndarray:
    pts = shape.get("points")
    try:
        arr = np.asarray(pts, dtype=np.float64).reshape(-1, 2)
    except (TypeError, ValueError):
        raise CocoError(f"{json_path}: shape {shape.get('label')!r} has points that are not [x, y] pairs") from None
    if not np.isfinite(arr).all():
        raise CocoError(f"{json_path}: shape {shape.get('label')!r} has non-finite points")
    return arr


def read_labelme_folder(folder: Path, notes: list, root: Path | None = None) -> dict:
    """The LabelMe JSONs under ``folder`` as one COCO document; image file names relative to
    ``root`` (default: ``folder``), where every imagePath must lead."""
    root = folder if root is None else root
    files = sorted(f for f in folder.rglob("*.json") if f.is_file())
    images, anns, labels = [], [], set()
    objects: list[tuple[int, str, list[dict], Path]] = []
    skipped: dict[str, int] = {}
    embedded_only: list[str] = []  # JSONs whose image is only inside them (imageData), not beside them
    for json_path in files:
        try:
            raw = json.loads(json_path.read_text(encoding="utf-8-sig"))  # a byte-order mark skipped
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CocoError(f"{json_path}: not a readable LabelMe JSON ({e})") from None
        if not isinstance(raw, dict) or not isinstance(raw.get("shapes"), list):
            raise CocoError(f"{json_path}: not a LabelMe file (no 'shapes' list)")
        file_name, h, w, embedded = _labelme_image(json_path, raw, root)
        if embedded:
            embedded_only.append(json_path.relative_to(folder).as_posix())
        image_id = len(images) + 1
        images.append({"id": image_id, "file_name": file_name, "width": w, "height": h})
        groups: dict[tuple, list[dict]] = {}
        for k, shape in enumerate(raw["shapes"]):
            if not isinstance(shape, dict) or not isinstance(shape.get("label"), str):
                raise CocoError(f"{json_path}: shape #{k} has no label")
            kind = shape.get("shape_type") or "polygon"
            if not isinstance(kind, str):
                raise CocoError(f"{json_path}: shape #{k} ({shape['label']!r}) has shape_type {kind!r}; "
                                "LabelMe names it, e.g. \"polygon\"")
            if kind not in ("polygon", "rectangle", "mask"):
                skipped[kind] = skipped.get(kind, 0) + 1
                continue
            gid = shape.get("group_id")
            if isinstance(gid, (list, dict)):
                raise CocoError(f"{json_path}: shape #{k} ({shape['label']!r}) has group_id {gid!r}; "
                                "LabelMe's group_id is a number or null")
            key = (shape["label"], gid) if gid is not None else (shape["label"], None, k)
            groups.setdefault(key, []).append(shape)
        for key, shapes in groups.items():
            labels.add(key[0])
            objects.append((image_id, key[0], shapes, json_path))
    if embedded_only:  # said: a COCO output will name image files that are not there
        notes.append(Problem("warning", "file", f"{len(embedded_only)} LabelMe file(s) hold their image only as "
                                                f"imageData (e.g. {embedded_only[0]}): read from there, but a COCO "
                                                "output names image files that do not exist; save the images at "
                                                "their imagePath for other tools"))
    if skipped:
        kinds = ", ".join(f"{n} {k}" for k, n in sorted(skipped.items()))
        notes.append(Problem("warning", "file", f"LabelMe shapes left out (not areas): {kinds}"))
    cat_ids = {name: i + 1 for i, name in enumerate(sorted(labels))}
    sizes = {im["id"]: (im["height"], im["width"]) for im in images}
    no_area: list[str] = []
    for image_id, label, shapes, json_path in objects:
        ann = _labelme_object(shapes, sizes[image_id], json_path)
        if ann is None:  # told, not dropped silently: a user may have a click to redo there
            no_area.append(f"{json_path.relative_to(folder).as_posix()} {label!r}")
            continue
        scores = [s["score"] for s in shapes if finite_number(s.get("score"))]
        if scores:  # a prediction written as LabelMe (predict --format labelme): its score kept
            ann["score"] = float(max(scores))
        anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": cat_ids[label], "iscrowd": 0, **ann})
    if no_area:
        notes.append(Problem("warning", "file", f"{len(no_area)} LabelMe object(s) without area left out (fewer "
                                                f"than 3 points, or all on one line): {', '.join(no_area[:3])}"
                                                + (", ..." if len(no_area) > 3 else "")))
    if not images:
        raise CocoError(f"{folder}: no LabelMe JSON files found")
    return {"images": images, "annotations": anns,
            "categories": [{"id": i, "name": n, "supercategory": ""} for n, i in cat_ids.items()]}


def _labelme_object(shapes: list[dict], size: tuple[int, int], json_path: Path) -> dict[str, Any] | None:
    """COCO fields of one object made of LabelMe shapes (polygons and masks joined as one mask)."""
    h, w = size
    polys = [s for s in shapes if (s.get("shape_type") or "polygon") == "polygon"]
    masks = [s for s in shapes if s.get("shape_type") == "mask"]
    rects = [s for s in shapes if s.get("shape_type") == "rectangle"]
    if not polys and not masks:  # box only
        pts = np.concatenate([_points(s, json_path) for s in rects])
        if len(pts) < 2:  # no corners: no area (reported by the caller)
            return None
        # the part inside the image (LabelMe keeps the corners it draws there; an edited file may not)
        x0, y0 = np.clip(pts.min(axis=0), 0, (w, h))
        x1, y1 = np.clip(pts.max(axis=0), 0, (w, h))
        if x1 <= x0 or y1 <= y0:
            return None
        return {"bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)], "area": float((x1 - x0) * (y1 - y0))}
    rings = []
    for s in polys:
        pts = _points(s, json_path)
        if len(pts) >= 3:
            rings.append([round(float(v), 2) for v in pts.reshape(-1)])
    if rings:  # the check behind every decoding, named by file and label here
        reason = segmentation_problem(rings, h, w)
        if reason:
            raise CocoError(f"{json_path}: shape {polys[0].get('label')!r}: {reason}")
    if not masks:
        if not rings:
            return None
        m = segmentation_to_mask(rings, h, w)
        if not m.any():
            return None
        return {"segmentation": rings, "bbox": mask_bbox(m), "area": float(m.sum())}
    full = np.zeros((h, w), dtype=bool)
    if rings:
        full |= segmentation_to_mask(rings, h, w)
    for s in masks:
        pts = _points(s, json_path)
        try:
            crop = _decode_png_b64(s.get("mask") or "")
        except (ValueError, TypeError):
            raise CocoError(f"{json_path}: mask shape {s.get('label')!r} has no readable base64 PNG mask") from None
        if not len(pts):
            raise CocoError(f"{json_path}: mask shape {s.get('label')!r} has no points (its top-left corner)")
        x0, y0 = (int(v) for v in np.floor(pts.min(axis=0)))
        ch, cw = crop.shape
        ya, yb, xa, xb = max(y0, 0), min(y0 + ch, h), max(x0, 0), min(x0 + cw, w)
        if ya < yb and xa < xb:  # the part of the mask inside the image (none: no area there)
            full[ya:yb, xa:xb] |= crop[ya - y0 : yb - y0, xa - x0 : xb - x0]
    if not full.any():
        return None
    return {"segmentation": encode_rle(full), "bbox": mask_bbox(full), "area": float(full.sum())}


# -- YOLO-seg -----------------------------------------------------------------------------------
def _read_yaml(path: Path) -> dict:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise CocoError(f"{path}: not readable YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise CocoError(f"{path}: expected a mapping with 'names' and 'train'/'val'")
    return data


def yolo_names(data: dict, path: Path) -> list[str]:
    names = data.get("names")
    if isinstance(names, dict):
        try:
            order = sorted(int(k) for k in names)
        except (TypeError, ValueError):
            raise CocoError(f"{path}: 'names' keys must be class indices 0..n-1") from None
        if order != list(range(len(order))):
            raise CocoError(f"{path}: 'names' must number the classes 0..{len(order) - 1} without gaps")
        return [str(names[k] if k in names else names[str(k)]) for k in order]
    if isinstance(names, list):
        return [str(n) for n in names]
    if isinstance(data.get("nc"), int):
        return [f"class_{i}" for i in range(data["nc"])]
    raise CocoError(f"{path}: no 'names' (or 'nc'); a YOLO data.yaml lists its classes")


def _image_folders(data: dict, root: Path, path: Path) -> list[Path]:
    folders = []
    for split in ("train", "val", "test"):
        value = data.get(split)
        for entry in (value if isinstance(value, list) else [value] if value else []):
            p = Path(str(entry))
            p = p if p.is_absolute() else root / p
            if p.suffix == ".txt":
                raise CocoError(f"{path}: {split} is a list file ({p.name}); give image folders")
            if p not in folders:
                folders.append(p)
    if not folders:
        raise CocoError(f"{path}: no train/val image folders")
    return folders


def label_path_for(image: PurePath) -> PurePath:
    """Ultralytics' rule: the last ``/images/`` of the path becomes ``/labels/``, suffix ``.txt``
    (the same kind of path back)."""
    parts = list(image.parts)
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            return type(image)(*parts).with_suffix(".txt")
    return image.with_suffix(".txt")


def read_yolo_dataset(yaml_file: Path, notes: list) -> tuple[dict, Path]:
    data = _read_yaml(yaml_file)
    names = yolo_names(data, yaml_file)
    root = yaml_file.parent
    if data.get("path"):  # Ultralytics' dataset root; relative: to the YAML's folder here
        given = Path(str(data["path"]))
        root = given if given.is_absolute() else yaml_file.parent / given
    images, anns = [], []
    no_area: list[str] = []  # label lines of zero width or height, as ".../labels/x.txt:3"
    seen: set[Path] = set()
    folders = _image_folders(data, root, yaml_file)
    for folder in folders:
        if not folder.is_dir():
            raise CocoError(f"{yaml_file}: image folder {folder} not found")
        for img_path in sorted(f for f in folder.rglob("*") if f.suffix.lower() in SUFFIXES and f.is_file()):
            if img_path in seen:
                continue
            seen.add(img_path)
            try:
                h, w = read_image(img_path).shape[:2]
            except ImageReadError as e:
                raise CocoError(f"{img_path}: {e}") from None
            image_id = len(images) + 1
            images.append({"id": image_id, "file_name": img_path.relative_to(root).as_posix(), "width": w, "height": h})
            label_file = label_path_for(img_path)
            if not label_file.is_file():
                continue
            try:
                text = label_file.read_text(encoding="utf-8-sig")  # a byte-order mark skipped
            except UnicodeDecodeError:
                raise CocoError(f"{label_file}: not UTF-8 text; a YOLO label file has one "
                                "'class x1 y1 x2 y2 ...' line per object") from None
            for line_no, line in enumerate(text.splitlines(), 1):
                if not line.strip():
                    continue
                where = f"{label_file}:{line_no}"
                ann = _yolo_line(line, w, h, len(names), where)
                if ann is None:  # told, not dropped silently (as LabelMe objects without area are)
                    no_area.append(where)
                    continue
                anns.append({"id": len(anns) + 1, "image_id": image_id, "iscrowd": 0, **ann})
    if not images:
        raise CocoError(f"{yaml_file}: no images found under the train/val folders")
    if no_area:
        notes.append(Problem("warning", "file", f"{len(no_area)} YOLO object(s) of zero width or height left out: "
                                                f"{', '.join(no_area[:3])}" + (", ..." if len(no_area) > 3 else "")))
    # label files without an image are never read (Ultralytics finds labels from images): say so
    used = {label_path_for(img) for img in seen}
    for label_dir in dict.fromkeys(label_path_for(folder / "x.jpg").parent for folder in folders):
        orphans = sorted(f for f in label_dir.rglob("*.txt") if f not in used) if label_dir.is_dir() else []
        if orphans:
            notes.append(Problem("warning", "file", f"{len(orphans)} label file(s) in {label_dir} have no image "
                                                    f"(e.g. {orphans[0].name}); their objects are left out"))
    cats = [{"id": i + 1, "name": n, "supercategory": ""} for i, n in enumerate(names)]
    return {"images": images, "annotations": anns, "categories": cats}, root


def _yolo_line(line: str, w: int, h: int, n_classes: int, where: str) -> dict | None:
    """One label line as COCO fields; None for an object of zero width or height (no area to draw)."""
    fields = line.split()
    try:
        cls = int(fields[0])
        values = [float(v) for v in fields[1:]]
    except ValueError:
        raise CocoError(f"{where}: not 'class x y ...' numbers") from None
    if not 0 <= cls < n_classes:
        raise CocoError(f"{where}: class {cls} is not in data.yaml's {n_classes} names")
    if not all(np.isfinite(values)):
        raise CocoError(f"{where}: non-finite coordinates")
    if values and not -0.01 <= min(values) <= max(values) <= 1.01:  # rounding may step just outside
        raise CocoError(f"{where}: coordinates must be fractions 0..1 of the image's width and height, got "
                        f"{min(values):g}..{max(values):g} (pixels?)")
    if len(values) == 4:  # a detection box: cx cy w h
        cx, cy, bw, bh = values
        box = [(cx - bw / 2) * w, (cy - bh / 2) * h, bw * w, bh * h]
        if not (round(box[2], 3) > 0 and round(box[3], 3) > 0):
            return None
        return {"category_id": cls + 1, "bbox": [round(v, 3) for v in box], "area": round(box[2] * box[3], 3)}
    if len(values) < 6 or len(values) % 2:
        raise CocoError(f"{where}: a polygon needs an even number (>= 6) of coordinates, got {len(values)}")
    pts = np.asarray(values).reshape(-1, 2) * [w, h]
    ring = [round(float(v), 2) for v in pts.reshape(-1)]
    x0, y0 = pts.min(axis=0)
    x1, y1 = pts.max(axis=0)
    if not (x1 > x0 and y1 > y0):
        return None
    area = ring_area(pts.reshape(-1).tolist())
    return {"category_id": cls + 1, "segmentation": [ring], "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
            "area": round(area, 3)}
