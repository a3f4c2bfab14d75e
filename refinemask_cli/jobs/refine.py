"""Refine every non-crowd annotation of a COCO dataset; the output is the same document with only
``segmentation``, ``area`` and ``bbox`` of refined annotations replaced.

Plain functions over a parsed document and a ``Predictor``; progress goes through a callback and
a journal (``journal.py``: one JSON line per finished image) makes an interrupted run resumable with
exactly the result of an uninterrupted one.
"""
from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..geometry import encode_rle, mask_bbox, mask_to_outline, remove_small_regions
from ..geometry.masks import segmentation_to_crop
from ..io.coco import (
    CocoError,
    Problem,
    check_dataset,
    dumps,
    first_error,
    read_recorded_image,
    segmentation_kind_safe,
)
from ..io.images import ImageReadError, image_path
from ..predictor import InstanceMask, Predictor, RefineSettings
from .journal import Journal, fingerprint, resume_batches
from .pipeline import batch_groups, run_pipeline
from .shard import Shard

PROMPTS = ("auto", "box", "mask")
FORMATS = ("polygon", "rle")
CROWD = ("keep", "refine")


@dataclass(frozen=True)
class RefineOptions:
    prompt: str = "auto"
    output_format: str = "polygon"
    simplify: float = 0.0
    min_agreement: float | None = None
    regress_boxes: bool = False
    # how the network runs (see predictor.RefineSettings) and the clean-up after it; the defaults
    # are the measured best (README, "Measured"): zoom for zoom-trained weights, flip averaging on,
    # one pass, islands/holes under 64 pixels removed (halves the outputs that fall back to RLE)
    mode: str = RefineSettings.mode
    zoom_size: int | None = RefineSettings.zoom_size
    flip: bool = RefineSettings.flip
    passes: int = RefineSettings.passes
    min_area: float = 64.0
    zoom_max_size: int = RefineSettings.zoom_max_size
    snap_edges: bool = RefineSettings.snap_edges
    second_zoom_size: int = RefineSettings.second_zoom_size
    mask_threshold: float | None = RefineSettings.mask_threshold
    # crowd annotations: "keep" passes them through; "refine" refines their masks like any other
    # and writes them as single objects (iscrowd 0): CVAT exports brush masks as crowd RLE
    crowd: str = "keep"

    @property
    def settings(self) -> RefineSettings:
        return RefineSettings(self.mode, self.zoom_size, self.flip, self.passes, self.zoom_max_size, self.snap_edges,
                              self.second_zoom_size, self.mask_threshold)

    def __post_init__(self) -> None:
        self.settings  # validates mode, zoom size and passes
        if self.second_zoom_size and self.regress_boxes:
            raise ValueError("--second-zoom-size refines the boxes as given: not with --regress-boxes")
        if self.min_area < 0:
            raise ValueError("--min-area must be >= 0 pixels")
        if self.crowd not in CROWD:
            raise ValueError(f"crowd must be one of {CROWD}")
        if self.prompt not in PROMPTS:
            raise ValueError(f"prompt must be one of {PROMPTS}")
        if self.output_format not in FORMATS:
            raise ValueError(f"output format must be one of {FORMATS}")
        if self.simplify < 0:
            raise ValueError("--simplify must be >= 0 pixels")
        if self.min_agreement is not None and not 0.0 <= self.min_agreement <= 1.0:
            raise ValueError("--min-agreement must be an IoU in [0, 1]")


@dataclass
class ReportRow:
    annotation_id: int
    image_id: int
    category_id: int
    prompt: str
    iou_input_output: float
    area_input: float
    area_output: float
    flags: str = ""
    confidence: float | None = None  # the refined mask's stability (predictor.stability); None: kept input


@dataclass
class RefineStats:
    images: int = 0
    annotations: int = 0
    crowd_skipped: int = 0
    crowd_refined: int = 0
    kept_input: int = 0
    by_prompt: dict[str, int] = field(default_factory=dict)
    flags: dict[str, int] = field(default_factory=dict)
    resumed_images: int = 0


# -- geometry helpers ---------------------------------------------------------------------------
def crop_iou(a: InstanceMask, b: InstanceMask) -> float:
    """IoU of two cropped masks, computed over the union of their crops only."""
    if a.mask.size == 0 and b.mask.size == 0:
        return 1.0
    if a.mask.size == 0 or b.mask.size == 0:
        return 0.0
    x0, y0 = min(a.x0, b.x0), min(a.y0, b.y0)
    x1 = max(a.x0 + a.mask.shape[1], b.x0 + b.mask.shape[1])
    y1 = max(a.y0 + a.mask.shape[0], b.y0 + b.mask.shape[0])
    canvas = np.zeros((2, y1 - y0, x1 - x0), dtype=bool)
    for k, m in enumerate((a, b)):
        canvas[k, m.y0 - y0 : m.y0 - y0 + m.mask.shape[0], m.x0 - x0 : m.x0 - x0 + m.mask.shape[1]] = m.mask
    union = np.logical_or(canvas[0], canvas[1]).sum()
    return float(np.logical_and(canvas[0], canvas[1]).sum() / union) if union else 1.0


def box_mask(box: np.ndarray, height: int, width: int) -> InstanceMask:
    """The pixels whose centres lie in an xyxy box."""
    x0, y0 = max(int(np.ceil(box[0] - 0.5)), 0), max(int(np.ceil(box[1] - 0.5)), 0)
    x1, y1 = min(int(np.ceil(box[2] - 0.5)), width), min(int(np.ceil(box[3] - 0.5)), height)
    return InstanceMask(x0, y0, np.ones((max(y1 - y0, 0), max(x1 - x0, 0)), dtype=bool))


def encode_output(mask: InstanceMask, height: int, width: int, output_format: str = "polygon",
                  simplify: float = 0.0) -> tuple[dict, list[str]]:
    """New ``segmentation``, ``area``, ``bbox`` for a mask, and flags (``holes->rle``)."""
    flags = []
    area = float(mask.area)
    bbox = mask_bbox(mask.mask, (mask.x0, mask.y0))
    if output_format == "rle":
        segm = encode_rle(mask.mask, (mask.x0, mask.y0), (height, width))
    else:
        outline = mask_to_outline(mask.mask, simplify, (mask.x0, mask.y0))
        if outline.holes:
            segm = encode_rle(mask.mask, (mask.x0, mask.y0), (height, width))
            flags.append("holes->rle")
        else:
            segm = outline.polygons
    return {"segmentation": segm, "area": area, "bbox": [round(v, 2) for v in bbox]}, flags


# -- planning -----------------------------------------------------------------------------------
def model_labels(doc: dict, predictor: Predictor) -> dict[int, int]:
    """category_id → model class index (all 0 for a class-agnostic model)."""
    cfg = predictor.model.cfg
    cats = doc.get("categories", [])
    if cfg.class_agnostic == "all":
        return {c["id"]: 0 for c in cats}
    index = {n: i for i, n in enumerate(cfg.class_names)}
    out = {}
    for c in cats:
        if c.get("name") not in index:
            raise CocoError(f"category {c['id']} ({c.get('name')!r}) is not one of the model's "
                            f"{cfg.num_classes} classes; use class-agnostic weights or rename the category")
        out[c["id"]] = index[c["name"]]
    return out


def annotation_prompt(ann: dict, prompt: str) -> str:
    has_mask = segmentation_kind_safe(ann.get("segmentation")) not in ("none", "invalid")
    if prompt == "auto":
        return "mask" if has_mask else "box"
    if prompt == "mask" and not has_mask:
        raise CocoError(f"annotation {ann['id']}: --prompt mask but it has no segmentation; use --prompt auto")
    return prompt


def validate_for_refine(doc: dict, images_dir: Path, options: RefineOptions) -> dict[int, list[dict]]:
    """Check the whole document before any work; returns the annotations to refine per image id."""
    problem = first_error(check_dataset(doc, images_dir))
    if problem:
        hint = ("; `refinemask validate --fix` lists them all and repairs what it can"
                if problem.where.startswith("annotation") else "")
        raise CocoError(f"{problem}{hint}")
    per_image: dict[int, list[dict]] = {}
    for ann in doc["annotations"]:
        if ann.get("iscrowd", 0) and options.crowd == "keep":
            continue
        annotation_prompt(ann, options.prompt)  # raises for --prompt mask without a mask
        per_image.setdefault(ann["image_id"], []).append(ann)
    return per_image


# -- one image ----------------------------------------------------------------------------------
@dataclass
class Prepared:
    """One image's model inputs, made from its annotations (off the model's thread)."""

    boxes: np.ndarray  # float32 (N, 4) xyxy, clipped to the image
    labels: np.ndarray  # int64 (N,)
    coarse: list  # InstanceMask or None per annotation: the given mask
    prompts: list[str]
    image_flags: tuple[str, ...] = ()  # flags of every object of the image (how the image was read)

    @property
    def priors(self) -> list:
        return [m if p == "mask" else None for m, p in zip(self.coarse, self.prompts)]


def prepare_image(height: int, width: int, anns: list[dict], labels: dict[int, int],
                  options: RefineOptions) -> Prepared:
    boxes, coarse, prompts = [], [], []
    for ann in anns:
        prompt = annotation_prompt(ann, options.prompt)
        mask = None
        if segmentation_kind_safe(ann.get("segmentation")) not in ("none", "invalid"):
            mask = InstanceMask(*segmentation_to_crop(ann["segmentation"], height, width))
        if "bbox" in ann:
            x, y, bw, bh = ann["bbox"]
        else:
            x, y, bw, bh = mask_bbox(mask.mask, (mask.x0, mask.y0))
        boxes.append(np.clip(np.array([x, y, x + bw, y + bh], dtype=np.float32), 0, [width, height, width, height]))
        coarse.append(mask)
        prompts.append(prompt)
    return Prepared(
        boxes=np.stack(boxes).astype(np.float32) if boxes else np.zeros((0, 4), np.float32),
        labels=np.array([labels[a["category_id"]] for a in anns], dtype=np.int64),
        coarse=coarse, prompts=prompts,
    )


def finish_image(det, prep: Prepared, info: dict, anns: list[dict], options: RefineOptions) -> list[dict]:
    """Per annotation: ``{"id", "fields" (or None to keep the input), "report"}``."""
    h, w = info["height"], info["width"]
    results = []
    for ann, refined, given, prompt, box in zip(anns, det.masks, prep.coarse, prep.prompts, prep.boxes):
        reference = given if prompt == "mask" else box_mask(box, h, w)
        flags = list(prep.image_flags)
        if options.min_area > 0:
            cleaned = remove_small_regions(refined.mask, options.min_area)
            refined = refined.with_mask(cleaned.mask)
            flags += ["islands-removed"] * bool(cleaned.islands_removed) + ["holes-filled"] * bool(cleaned.holes_filled)
        iou = crop_iou(reference, refined)
        fields = None
        if refined.area == 0:
            flags.append("empty-output:kept-input")
        elif prompt == "mask" and options.min_agreement is not None and iou < options.min_agreement:
            flags.append("low-agreement:kept-input")
        else:
            fields, enc_flags = encode_output(refined, h, w, options.output_format, options.simplify)
            flags += enc_flags
            if ann.get("iscrowd", 0):
                fields["iscrowd"] = 0
                flags.append("crowd-refined")
        report = ReportRow(
            annotation_id=ann["id"], image_id=info["id"], category_id=ann["category_id"], prompt=prompt,
            iou_input_output=round(iou, 6), area_input=float(reference.area),
            area_output=float(refined.area if fields else reference.area), flags=";".join(flags),
            confidence=refined.confidence if fields else None,
        )
        results.append({"id": ann["id"], "fields": fields, "report": asdict(report)})
    return results


# -- the whole dataset ----------------------------------------------------------------------------
ProgressFn = Callable[[int, int], None]  # (images done, instances in that image)


def iter_images(doc: dict, per_image: dict[int, list[dict]]) -> Iterator[dict]:
    for info in doc["images"]:
        if info["id"] in per_image:
            yield info


class UnreadableImage(CocoError):
    """An image file that cannot be decoded (``predict --skip-unreadable`` leaves such images out)."""


EXIF_AS_STORED = "exif-as-stored"  # the flag of objects whose image was read without its EXIF rotation


def read_checked_image(path: Path, info: dict) -> tuple[np.ndarray, bool]:
    """``read_recorded_image``, an image that cannot be read named by its id (``UnreadableImage``)."""
    try:
        return read_recorded_image(path, info)
    except ImageReadError as e:
        raise UnreadableImage(f"image {info['id']}: {e}") from None


def load_checked_image(images_dir: Path, info: dict) -> tuple[np.ndarray, bool]:
    return read_checked_image(image_path(images_dir, info["file_name"]), info)


def image_problems(doc: dict, images_dir: Path, problems: list[Problem]) -> list[Problem]:
    """What refine would meet reading the images the document's problems leave alone: unreadable
    files, sizes that disagree with the record, photos read as stored."""
    found = []
    bad_images = {p.where for p in problems if p.level == "error" and p.where.startswith("image ")}
    for info in doc["images"]:
        if not isinstance(info, dict) or f"image {info.get('id')}" in bad_images:
            continue
        try:
            _, as_stored = load_checked_image(images_dir, info)
        except CocoError as e:
            where, _, message = str(e).partition(": ")
            found.append(Problem("error", where, message))
            continue
        if as_stored:  # read so by refine and train too: told, since other tools may rotate it
            found.append(Problem("warning", f"image {info['id']}",
                                 f"{info['file_name']} is {info['width']}x{info['height']} only as stored, "
                                 "before its EXIF rotation: read so (the annotations fit that); a tool "
                                 "that applies the rotation will not match them"))
    return found


def refine_dataset(
    doc: dict,
    images_dir: Path,
    predictor: Predictor,
    options: RefineOptions,
    journal: Journal | None = None,
    resume: bool = False,
    on_image: ProgressFn | None = None,
    on_result: Callable[[dict, np.ndarray, list[dict]], None] | None = None,
    shard: Shard | None = None,
) -> tuple[dict, list[dict], RefineStats]:
    """The refined document, the report rows and counts. ``doc`` itself is not modified.

    A pipeline: worker threads read images and rasterise coarse masks ahead; the calling thread runs
    ``predictor.batch_size`` images per forward pass and pastes; one thread turns masks into
    polygons/RLE and report rows while the next batch runs. Results are handed on in document order.

    With ``shard`` (several processes): this process refines its share of the batches (its own
    journal holds them) and the results of all are gathered, so every rank returns the whole result.
    """
    predictor.check_settings(options.settings)  # before any image is read or journal started
    shard = shard or Shard()
    per_image = validate_for_refine(doc, images_dir, options)
    labels = model_labels(doc, predictor)
    stats = RefineStats(crowd_skipped=sum(1 for a in doc["annotations"] if a.get("iscrowd", 0))
                        if options.crowd == "keep" else 0)
    infos = list(iter_images(doc, per_image))
    # the shard is cut from the batches of the whole document, so resuming never moves an image
    groups, done = resume_batches(journal, resume, shard.take(batch_groups(infos, predictor.batch_size)),
                                  lambda info: info["id"])
    stats.resumed_images = len(done)
    # kept per image until the end: the new fields by annotation id and the report rows, nothing
    # else (the per-annotation result wrappers go to the journal and are dropped)
    new_fields: dict[int, dict] = {}
    reports: dict[int, list[dict]] = {}

    def keep(image_id: int, results: list[dict]) -> None:
        reports[image_id] = [res["report"] for res in results]
        for res in results:
            if res["fields"] is not None:
                new_fields[res["id"]] = res["fields"]
            else:
                new_fields.pop(res["id"], None)

    for image_id, results in done.items():
        keep(image_id, results)
        if on_image:
            on_image(1, len(results))
    done.clear()  # the journal's copies are not needed any more

    def load(info: dict):
        image, as_stored = load_checked_image(images_dir, info)
        prep = prepare_image(image.shape[0], image.shape[1], per_image[info["id"]], labels, options)
        prep.image_flags = (EXIF_AS_STORED,) if as_stored else ()
        return image, prep

    def finish(items, dets):
        return [finish_image(det, prep, info, per_image[info["id"]], options)
                for (info, (_, prep)), det in zip(items, dets)]

    def hand_on(items, results_list):
        for (info, (image, _)), results in zip(items, results_list):
            if journal:
                journal.append(info["id"], results)
            if on_result:
                on_result(info, image, results)
            keep(info["id"], results)
            if on_image:
                on_image(1, len(results))

    def forward(items):
        return predictor.refine_many(
            [(image, prep.boxes, prep.labels, prep.priors) for _, (image, prep) in items], options.regress_boxes,
            options.settings,
        )

    run_pipeline(groups, load, forward, finish, hand_on)
    if shard.world > 1:
        parts = shard.gather((reports, new_fields, stats.resumed_images))
        reports = {k: v for part in parts for k, v in part[0].items()}
        new_fields = {k: v for part in parts for k, v in part[1].items()}
        stats.resumed_images = sum(part[2] for part in parts)
    rows = []
    for info in infos:
        stats.images += 1
        for rep in reports[info["id"]]:
            stats.annotations += 1
            stats.by_prompt[rep["prompt"]] = stats.by_prompt.get(rep["prompt"], 0) + 1
            for flag in filter(None, rep["flags"].split(";")):
                stats.flags[flag] = stats.flags.get(flag, 0) + 1
            if "kept-input" in rep["flags"]:
                stats.kept_input += 1
            if "crowd-refined" in rep["flags"]:
                stats.crowd_refined += 1
            rows.append(rep)
    # a shallow copy: unchanged annotations are shared with the input, refined ones are new dicts
    # whose keys keep their order (segmentation/area/bbox replaced in place, added at the end if absent)
    out = dict(doc)
    out["annotations"] = [{**a, **new_fields[a["id"]]} if a["id"] in new_fields else a for a in doc["annotations"]]
    return out, rows, stats


def iter_report_csv(rows: list[dict], chunk: int = 1000) -> Iterator[str]:
    """The report as CSV text in pieces of ``chunk`` rows (never one report-sized string)."""
    fields = ["annotation_id", "image_id", "category_id", "prompt", "iou_input_output", "area_input",
              "area_output", "area_change", "confidence", "flags"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for k, r in enumerate(rows, start=1):
        change = (r["area_output"] - r["area_input"]) / r["area_input"] if r["area_input"] else 0.0
        writer.writerow({**r, "area_change": round(change, 6)})
        if k % chunk == 0:
            yield buf.getvalue()
            buf.seek(0)
            buf.truncate()
    yield buf.getvalue()


def report_csv(rows: list[dict]) -> str:
    return "".join(iter_report_csv(rows))


__all__ = ["Journal", "RefineOptions", "dumps", "fingerprint", "refine_dataset", "report_csv"]
