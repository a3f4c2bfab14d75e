"""Predict masks for a folder of images and build a COCO dataset from them.

Image ids, file names and categories come either from the folder (ids 1..N in sorted file-name
order, the model's classes) or, with ``like``, from an existing COCO dataset, so that the results
load against it (pycocotools ``loadRes``, ``refinemask evaluate``). A journal (``journal.py``, the
one ``refine`` keeps) makes an interrupted run resumable with exactly the output of an uninterrupted one.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..io.coco import CocoError
from ..io.images import SUFFIXES
from ..predictor import Predictor, PredictSettings
from .journal import Journal, resume_batches
from .paths import safe_relative
from .pipeline import batch_groups, run_pipeline
from .refine import UnreadableImage, encode_output, read_checked_image
from .shard import Shard


@dataclass(frozen=True)
class Entry:
    """One image to predict: the image record written out (id, file_name, …) and where it is read."""

    info: dict
    path: Path


def _images_below(folder: Path, exclude: Sequence[Path]) -> list[Path]:
    """Image files in ``folder``'s sub-folders (hidden ones and those in ``exclude`` left out), sorted
    by path."""
    skip = {Path(p).resolve() for p in exclude}
    found = []
    for path in folder.rglob("*"):
        rel = path.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts[:-1]) or not path.is_file():
            continue
        if path.suffix.lower() in SUFFIXES and not skip.intersection(path.resolve().parents):
            found.append(path)
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


def list_images(folder: Path, recursive: bool = False, exclude: Sequence[Path] = ()) -> list[Path]:
    """Image files (by suffix) directly in ``folder``, sorted by name; with ``recursive``, in its
    sub-folders too (hidden folders and the ``exclude`` folders, outputs inside it, left out), sorted
    by their path below ``folder``."""
    if not folder.is_dir():
        raise ValueError(f"{folder}: images folder not found")
    if recursive:
        files = _images_below(folder, exclude)
    else:
        files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in SUFFIXES)
    if not files:
        below = [] if recursive else _images_below(folder, exclude)
        hint = (f"; {len(below)} in its sub-folders (e.g. {below[0].relative_to(folder).as_posix()}): pass "
                "--recursive to predict them") if below else ""
        raise ValueError(f"{folder}: no images ({', '.join(sorted(SUFFIXES))}) found{hint}")
    return files


def folder_entries(folder: Path, recursive: bool = False, exclude: Sequence[Path] = ()) -> list[Entry]:
    """The folder's images with ids 1..N in listing order; file names relative to ``folder``."""
    return [Entry({"id": i + 1, "file_name": p.relative_to(folder).as_posix()}, p)
            for i, p in enumerate(list_images(folder, recursive, exclude))]


def like_entries(doc: dict, folder: Path) -> list[Entry]:
    """The images of dataset ``doc``, read from ``folder`` / file_name, with their own ids."""
    if not folder.is_dir():
        raise ValueError(f"{folder}: images folder not found")
    out = []
    for im in doc["images"]:
        rel = safe_relative(im["file_name"], f"image {im['id']}")
        path = folder / rel
        if not path.is_file():
            raise CocoError(f"image {im['id']}: {path} not found; pass the --images folder that "
                            f"holds the dataset's file_names")
        out.append(Entry({k: im[k] for k in ("id", "file_name", "width", "height") if k in im}, path))
    if not out:
        raise ValueError("the --like dataset lists no images")
    return out


def require_one_class(predictor: Predictor, instead: str) -> None:
    """``--category`` names the one class of class-agnostic weights; weights with several classes
    (named or not) are refused, saying what happens to their classes ``instead``."""
    n = predictor.model.cfg.num_classes
    if n > 1:
        raise ValueError(f"--category is for one-class (class-agnostic) weights; these have {n} classes, {instead}")


def model_categories(predictor: Predictor, category: str | None = None) -> list[dict]:
    """The model's classes as categories 1..N; a one-class (class-agnostic) model's one class named
    ``category`` where given (what a LabelMe label or a YOLO class name should read, not "object")."""
    names = predictor.class_names or tuple(f"class_{i}" for i in range(predictor.model.cfg.num_classes))
    if category is not None:
        require_one_class(predictor, "written by their own names")
        if not category.strip():
            raise ValueError("--category: give the name detections are written as")
        names = (category,)
    return [{"id": i + 1, "name": n, "supercategory": ""} for i, n in enumerate(names)]


def like_categories(predictor: Predictor, doc: dict, category: str | None = None) -> tuple[list[dict], list[int]]:
    """The dataset's categories and, per model class, the dataset category id it is written as.

    By name where every model class is one of the dataset's categories; a one-class (class-agnostic)
    model's detections go to ``category`` (a name or id), else to the dataset's only category."""
    cats = doc.get("categories", [])
    by_name = {str(c["name"]): c["id"] for c in cats}
    by_id = {str(c["id"]): c["id"] for c in cats}
    names = list(predictor.class_names or ())
    if category is not None:
        require_one_class(predictor, "matched to the dataset's categories by name")
        cid = by_name.get(category, by_id.get(category))
        if cid is None:
            raise ValueError(f"--category {category!r}: no such category name or id in the --like dataset")
        return cats, [cid]
    if names and all(n in by_name for n in names):
        return cats, [by_name[n] for n in names]
    if len(names) <= 1 and len(cats) == 1:
        return cats, [cats[0]["id"]]
    missing = [n for n in names if n not in by_name]
    hint = ("pass --category NAME to write every detection as that category"
            if len(names) <= 1 else "use weights trained on these categories")
    raise ValueError(f"the model's classes ({', '.join(missing[:5])}) are not categories of the --like "
                     f"dataset; {hint}")


def predict_entries(
    entries: list[Entry],
    predictor: Predictor,
    settings: PredictSettings,
    categories: list[dict],
    category_ids: list[int],
    output_format: str = "polygon",
    simplify: float = 0.0,
    on_image: Callable[[int, int], None] | None = None,
    on_result: Callable[[dict, object, list[dict]], None] | None = None,
    shard: Shard | None = None,
    skipped: list[str] | None = None,
    journal: Journal | None = None,
    resume: bool = False,
    resumed: list[int] | None = None,
) -> dict:
    """A COCO dataset: the entries' images, one annotation (with ``score``) per detection.

    Runs on the shared pipeline: images read ahead, ``predictor.batch_size`` per forward pass,
    polygons encoded while the next batch runs; annotation ids count from 1 in image order. With
    ``shard``, this process predicts its share of the batches and every rank returns the whole.
    An image that cannot be decoded stops the run (``UnreadableImage``), unless ``skipped`` is a
    list: then it is left out of the output and its one-line reason appended there, in image order.

    With ``journal``, each finished image is appended to it (unreadable ones are not: a resumed run
    reads them again); with ``resume`` too, the images an interrupted run's journal holds are taken
    from it instead of predicted again (their batches whole, so every batch pads as before) and
    their ids appended to ``resumed``."""
    shard = shard or Shard()
    done: dict[int, tuple[dict, list[dict]]] = {}  # entry index -> (image record, annotation fields)
    unread: dict[int, str] = {}  # entry index -> why its image was left out (with ``skipped``)

    def read(item: tuple[int, Entry]):
        try:
            return read_checked_image(item[1].path, item[1].info)[0]  # in the frame of --like's sizes
        except UnreadableImage as e:
            if skipped is None:
                raise
            return e  # handed on in its place: no forward pass, no output record

    def forward(items):
        images = [image for _, image in items if not isinstance(image, UnreadableImage)]
        dets = iter(predictor.predict(images, score_threshold=settings.score_threshold,
                                      max_detections=settings.max_detections) if images else ())
        return [None if isinstance(image, UnreadableImage) else next(dets) for _, image in items]

    def finish(items, dets):
        per_image = []
        for (_, image), det in zip(items, dets):
            if det is None:
                per_image.append(None)
                continue
            h, w = image.shape[:2]
            fields = []
            for mask, label, score in zip(det.masks, det.labels, det.scores):
                if mask.area:
                    enc, _ = encode_output(mask, h, w, output_format, simplify)
                    fields.append({"category_id": category_ids[int(label)], **enc, "iscrowd": 0,
                                   "score": round(float(score), 5)})
            per_image.append(fields)
        return per_image

    def hand_on(items, per_image):
        for ((index, entry), image), fields in zip(items, per_image):
            if fields is None:
                unread[index] = str(image)
                if on_image:
                    on_image(1, 0)
                continue
            info = {**entry.info, "width": image.shape[1], "height": image.shape[0]}
            if journal:
                journal.append(info["id"], {"image": info, "annotations": fields})
            anns = [{"image_id": info["id"], **f} for f in fields]
            done[index] = (info, anns)
            if on_result:
                on_result(info, image, anns)
            if on_image:
                on_image(1, len(anns))

    # the shard is cut from the batches of all entries, so resuming never moves an image
    mine = shard.take(batch_groups(list(enumerate(entries)), predictor.batch_size))
    groups, journaled = resume_batches(journal, resume, mine, lambda item: item[1].info["id"])
    for g in mine:
        for index, entry in g:
            rec = journaled.get(entry.info["id"])
            if rec is None:
                continue
            info = rec["image"]
            done[index] = (info, [{"image_id": info["id"], **f} for f in rec["annotations"]])
            if resumed is not None:
                resumed.append(info["id"])
            if on_image:
                on_image(1, len(rec["annotations"]))
    journaled.clear()  # the journal's copies are not needed any more
    run_pipeline(groups, read, forward, finish, hand_on)
    if shard.world > 1:
        parts = shard.gather((done, unread, resumed or []))
        for part_done, part_unread, _ in parts:
            done.update(part_done)
            unread.update(part_unread)
        if resumed is not None:
            resumed[:] = [i for part in parts for i in part[2]]
    if skipped is not None:
        skipped.extend(unread[k] for k in sorted(unread))
    images, annotations = [], []
    for index in sorted(done):
        info, anns = done[index]
        images.append(info)
        base = len(annotations)
        annotations.extend([{"id": base + k + 1, **a} for k, a in enumerate(anns)])
    return {"info": {"description": "refinemask predict"}, "images": images, "annotations": annotations,
            "categories": categories}


def validate_detections(doc: dict, images_dir: Path, predictor: Predictor) -> dict:
    """Predict dataset ``doc``'s images (every detection the model keeps) and score them against it:
    mask / Boundary / box AP (class-agnostic for a one-class model), the F1 curve of matched masks
    and the predict defaults chosen from it (``defaults``: None when nothing was matched)."""
    from ..engine.evaluate import evaluate_detections, f1_by_threshold, predict_defaults

    agnostic = len(predictor.class_names or ()) <= 1
    if agnostic:
        cats = doc.get("categories") or [{"id": 1, "name": "object"}]
        categories, category_ids = cats, [cats[0]["id"]]
    else:
        categories, category_ids = like_categories(predictor, doc)
    settings = PredictSettings(score_threshold=0.0, max_detections=predictor.model.cfg.detections_per_img)
    out = predict_entries(like_entries(doc, images_dir), predictor, settings, categories, category_ids,
                          output_format="rle")
    results = out["annotations"]
    curve = f1_by_threshold(doc, results, class_agnostic=agnostic)
    return {**evaluate_detections(doc, results, class_agnostic=agnostic), "class_agnostic": agnostic,
            "images": len(out["images"]), "curve": curve, "defaults": predict_defaults(curve)}
