"""Metrics that show boundary quality (spec §6.2).

- Boundary of a mask: its inner band of width ``d = max(1, round(0.02 * image diagonal))``: the mask
  minus its erosion by a 3×3 square ``d`` times, with the mask padded by zeros first (so parts cut by
  the image border count as boundary). Boundary IoU = IoU of two such bands (Cheng et al. 2021).
- ``evaluate_by_id``: PRED is a refined copy of GT's annotations (matched by id): mean mask IoU, mean
  Boundary IoU, and pixel accuracy split into the boundary band (within ``d`` of the GT contour,
  both sides) and the interior (the rest of the box around both masks), per category and size.
- ``evaluate_detections``: COCO mask AP and Boundary AP (IoU = min(mask IoU, boundary IoU) for
  non-crowd GT) for a results list, through pycocotools; box AP beside them (each result's ``bbox``,
  else its mask's extent), which tells finding objects apart from outlining them.
"""
from __future__ import annotations

import contextlib
import io
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from ..geometry import segmentation_to_mask
from ..io.coco import (
    CocoError,
    bbox_shape_problem,
    check_results,
    check_segmentation,
    first_error,
    is_id,
    segmentation_kind_safe,
)

DILATION_RATIO = 0.02
KERNEL = np.ones((3, 3), np.uint8)


def boundary_width(height: int, width: int, ratio: float = DILATION_RATIO) -> int:
    return max(1, int(round(ratio * np.sqrt(height**2 + width**2))))


def mask_boundary(mask: np.ndarray, d: int) -> np.ndarray:
    """Inner boundary band of width ``d`` (bool)."""
    m = np.pad(mask.astype(np.uint8), 1)
    eroded = cv2.erode(m, KERNEL, iterations=d)[1:-1, 1:-1]
    return mask.astype(bool) & ~eroded.astype(bool)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def boundary_iou(gt: np.ndarray, pred: np.ndarray, d: int) -> float:
    return iou(mask_boundary(gt, d), mask_boundary(pred, d))


def band_accuracies(gt: np.ndarray, pred: np.ndarray, d: int) -> tuple[float, float]:
    """Pixel accuracy within ``d`` of the GT contour (both sides), and over the rest of the region
    (the box around both masks, grown by ``d``)."""
    g = gt.astype(np.uint8)
    pad = np.pad(g, 1)
    band = (cv2.dilate(pad, KERNEL, iterations=d) != cv2.erode(pad, KERNEL, iterations=d))[1:-1, 1:-1]
    ys, xs = np.nonzero(gt | pred)
    if len(ys) == 0:
        return 1.0, 1.0
    h, w = gt.shape
    y0, y1 = max(ys.min() - d, 0), min(ys.max() + d + 1, h)
    x0, x1 = max(xs.min() - d, 0), min(xs.max() + d + 1, w)
    correct = (gt == pred)[y0:y1, x0:x1]
    band = band[y0:y1, x0:x1]
    acc_band = float(correct[band].mean()) if band.any() else 1.0
    acc_int = float(correct[~band].mean()) if (~band).any() else 1.0
    return acc_band, acc_int


SIZE_RANGES = (("small", 0, 32**2), ("medium", 32**2, 96**2), ("large", 96**2, float("inf")))


def size_name(area: float) -> str:
    return next(name for name, lo, hi in SIZE_RANGES if lo <= area < hi)


@dataclass
class PairScore:
    annotation_id: int
    category_id: int
    size: str
    iou: float
    biou: float
    acc_band: float
    acc_interior: float
    missing: bool = False


def annotation_mask(ann: dict | None, h: int, w: int) -> np.ndarray | None:
    """The mask of an annotation; a box-only one is its box; None for no annotation."""
    if ann is None:
        return None
    kind = segmentation_kind_safe(ann.get("segmentation"))
    if kind in ("none", "invalid"):
        if "bbox" not in ann:
            return None
        x, y, bw, bh = ann["bbox"]  # box-only: the box is the mask
        m = np.zeros((h, w), bool)
        m[int(round(y)) : int(round(y + bh)), int(round(x)) : int(round(x + bw))] = True
        return m
    return segmentation_to_mask(ann["segmentation"], h, w)


def copy_problem(ann: dict, height: int, width: int) -> str | None:
    """Why the refined copy of an object cannot be scored against it (an image ``height × width``):
    no readable segmentation and no usable box; None where it can be."""
    segm = ann.get("segmentation")
    if segmentation_kind_safe(segm) == "none":
        if "bbox" not in ann:
            return "its copy in PRED has neither segmentation nor bbox"
        shape = bbox_shape_problem(ann["bbox"])
        return f"its copy in PRED: {shape}" if shape else None
    reason = check_segmentation(segm, height, width)
    return f"its copy in PRED: {reason}" if reason else None


def evaluate_by_id(gt: dict, pred: dict, ignore_key: str | None = None) -> dict:
    """Refinement metrics of PRED against GT matched by annotation id (crowd GT is skipped).

    A GT annotation missing from PRED scores 0 everywhere. With ``ignore_key``, a GT annotation may
    carry a segmentation under that key whose pixels are left out of every score.
    """
    images = {im["id"]: im for im in gt["images"]}
    # entries without an integer id match no ground-truth object (they are not refined copies of one)
    pred_by_id = {a["id"]: a for a in pred.get("annotations", [])
                  if isinstance(a, dict) and is_id(a.get("id"))}
    scores: list[PairScore] = []
    for ann in gt["annotations"]:
        if ann.get("iscrowd", 0):
            continue
        im = images[ann["image_id"]]
        h, w = im["height"], im["width"]
        g = annotation_mask(ann, h, w)
        copy = pred_by_id.get(ann["id"])
        problem = copy_problem(copy, h, w) if copy is not None else None
        if problem:
            raise CocoError(f"annotation {ann['id']}: {problem}")
        p = annotation_mask(copy, h, w)
        size = size_name(float(ann.get("area", g.sum())))
        if p is None:
            scores.append(PairScore(ann["id"], ann["category_id"], size, 0.0, 0.0, 0.0, 0.0, missing=True))
            continue
        if ignore_key and ann.get(ignore_key):
            keep = ~segmentation_to_mask(ann[ignore_key], h, w)
            g, p = g & keep, p & keep
        d = boundary_width(h, w)
        acc_b, acc_i = band_accuracies(g, p, d)
        scores.append(PairScore(ann["id"], ann["category_id"], size, iou(g, p), boundary_iou(g, p, d), acc_b, acc_i))
    return summarise(scores, gt)


def _mean(values) -> float:
    values = list(values)
    return float(np.mean(values)) if values else float("nan")


def summarise(scores: list[PairScore], gt: dict) -> dict:
    names = {c["id"]: c["name"] for c in gt.get("categories", [])}
    out = {
        "count": len(scores),
        "missing": sum(s.missing for s in scores),
        "mIoU": _mean(s.iou for s in scores),
        "mBIoU": _mean(s.biou for s in scores),
        "boundary_acc": _mean(s.acc_band for s in scores),
        "interior_acc": _mean(s.acc_interior for s in scores),
    }
    groups: dict[str, dict] = {"per_category": defaultdict(list), "per_size": defaultdict(list)}
    for s in scores:
        groups["per_category"][names.get(s.category_id, str(s.category_id))].append(s)
        groups["per_size"][s.size].append(s)
    for key, by in groups.items():
        out[key] = {
            name: {"count": len(ss), "mIoU": _mean(s.iou for s in ss), "mBIoU": _mean(s.biou for s in ss)}
            for name, ss in sorted(by.items())
        }
    out["per_annotation"] = [s.__dict__ for s in scores]
    return out


# -- choosing predict's score threshold: F1 of matched masks -----------------------------------------
SCORE_THRESHOLDS = tuple(round(0.05 * k, 2) for k in range(1, 20))  # 0.05 .. 0.95


def f1_by_threshold(gt: dict, results: list[dict], class_agnostic: bool = True) -> list[dict]:
    """Precision, recall and F1 of masks matched at IoU 0.5 for each score threshold of
    ``SCORE_THRESHOLDS`` (crowd GT ignored; each object matched at most once, best score first; with
    ``class_agnostic`` false only within a category), and what the false positives are:
    ``duplicate`` (IoU >= 0.5 with an object another detection already took), ``part_or_loose``
    (0.1 <= best IoU < 0.5: a part of an object, a loose outline, or a group) and ``no_object``
    (best IoU < 0.1: background, or an object the set does not label). Masks are read as
    ``evaluate_detections`` reads them (a box-only object is its box)."""
    images = {im["id"]: im for im in gt["images"]}
    by_image: dict[int, list[dict]] = {}
    for r in _as_rle(results, images, polygons_only=True):
        by_image.setdefault(r["image_id"], []).append(r)
    gts: dict[int, list[dict]] = {}
    for a in _as_rle([a for a in gt["annotations"] if not a.get("iscrowd", 0)], images):
        gts.setdefault(a["image_id"], []).append(a)
    n_gt = sum(len(v) for v in gts.values())
    ious = {}  # per image, detections best score first: their IoU with each object
    for image_id, dets in by_image.items():
        dets.sort(key=lambda d: -d["score"])
        g = gts.get(image_id, [])
        if not g:
            ious[image_id] = np.zeros((len(dets), 0))
            continue
        m = np.asarray(mask_utils.iou([d["segmentation"] for d in dets], [a["segmentation"] for a in g],
                                      [0] * len(g))).reshape(len(dets), len(g))
        if not class_agnostic:
            m = m * (np.asarray([d["category_id"] for d in dets])[:, None]
                     == np.asarray([a["category_id"] for a in g])[None])
        ious[image_id] = m
    rows = []
    for thr in SCORE_THRESHOLDS:
        tp = 0
        fps = {"duplicate": 0, "part_or_loose": 0, "no_object": 0}
        kept_in = {}  # image id -> detections kept at this threshold
        for image_id, dets in by_image.items():
            n = kept_in[image_id] = sum(1 for d in dets if d["score"] >= thr)
            taken = np.zeros(ious[image_id].shape[1], bool)
            for row in ious[image_id][:n]:
                free = np.where(taken, -1, row)
                j = int(free.argmax()) if len(row) else -1
                if j >= 0 and free[j] >= 0.5:
                    taken[j] = True
                    tp += 1
                else:
                    best = float(row.max()) if len(row) else 0.0
                    fps["duplicate" if best >= 0.5 else "part_or_loose" if best >= 0.1 else "no_object"] += 1
        fp = sum(fps.values())
        precision = tp / max(tp + fp, 1)
        recall = tp / max(n_gt, 1)
        f1 = 2 * precision * recall / max(precision + recall, 1e-9)
        kept = [kept_in.get(im["id"], 0) for im in gt["images"]]
        rows.append({"threshold": thr, "precision": precision, "recall": recall, "f1": f1,
                     "detections_per_image": sum(kept) / max(len(gt["images"]), 1),
                     "max_detections_in_an_image": max(kept, default=0), "false_positives": fps})
    return rows


def predict_defaults(curve: list[dict]) -> tuple[dict, dict] | None:
    """``predict``'s defaults from an ``f1_by_threshold`` curve, and the row they come from: the
    threshold with the best F1 (the first of equal ones), and at most 1.5 × the most detections it
    kept in one image, rounded up to tens, at least 20. None when no threshold matched anything."""
    best = max(curve, key=lambda r: r["f1"], default=None)
    if best is None or best["f1"] <= 0:
        return None
    most = max(20, -(-int(1.5 * best["max_detections_in_an_image"]) // 10) * 10)
    return {"predict_score_threshold": float(best["threshold"]), "predict_max_detections": most}, best


# -- detection files: mask AP and Boundary AP ---------------------------------------------------------
def _quiet_coco(doc: dict) -> COCO:
    coco = COCO()
    # pycocotools 2.0.10's loadRes copies the ground truth's "info", which a COCO file need not have
    # (KeyError there; 2.0.11 copies it only when present)
    coco.dataset = {"info": {}, **doc}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _boundary_rle(rle: dict, d: int) -> dict:
    m = mask_utils.decode(rle)
    return mask_utils.encode(np.asfortranarray(mask_boundary(m, d).astype(np.uint8)))


class BoundaryCOCOeval(COCOeval):
    """COCOeval whose IoU is min(mask IoU, boundary IoU) for non-crowd GT (Boundary AP)."""

    def __init__(self, gt: COCO, dt: COCO):
        super().__init__(gt, dt, "segm")
        self._boundary_cache: dict[tuple[str, int], dict] = {}

    def _boundary(self, side: str, ann: dict) -> dict:
        key = (side, ann["id"])
        if key not in self._boundary_cache:
            im = self.cocoGt.imgs[ann["image_id"]]
            self._boundary_cache[key] = _boundary_rle(ann["segmentation"], boundary_width(im["height"], im["width"]))
        return self._boundary_cache[key]

    def computeIoU(self, imgId, catId):  # noqa: N802 (pycocotools API)
        mask_ious = super().computeIoU(imgId, catId)
        if len(mask_ious) == 0:
            return mask_ious
        mask_ious = np.asarray(mask_ious)
        p = self.params
        if p.useCats:
            gt, dt = self._gts[imgId, catId], self._dts[imgId, catId]
        else:
            gt = [a for c in p.catIds for a in self._gts[imgId, c]]
            dt = [a for c in p.catIds for a in self._dts[imgId, c]]
        order = np.argsort([-d["score"] for d in dt], kind="mergesort")
        dt = [dt[i] for i in order[: p.maxDets[-1]]]
        crowd = [int(g["iscrowd"]) for g in gt]
        b_ious = mask_utils.iou([self._boundary("dt", d) for d in dt], [self._boundary("gt", g) for g in gt], crowd)
        b_ious = np.asarray(b_ious).reshape(mask_ious.shape)
        out = np.minimum(mask_ious, b_ious)
        crowd_cols = np.asarray(crowd, dtype=bool)
        out[:, crowd_cols] = mask_ious[:, crowd_cols]
        return out


def _as_rle(anns: list[dict], images: dict[int, dict], polygons_only: bool = False) -> list[dict]:
    """Annotations with their segmentation as compressed RLE (what loadRes/COCOeval work on) and an
    ``area`` where they lack one; ``polygons_only``: only polygon ones are converted (results, whose
    RLE loadRes takes as is; a result with only a box gets the box as its polygon first), and records
    of images not in ``images`` are left for loadRes to refuse."""
    out = []
    for a in anns:
        if polygons_only and segmentation_kind_safe(a.get("segmentation")) == "none" and "bbox" in a:
            x, y, w, h = (float(v) for v in a["bbox"])  # a box-only detection: its box is its mask
            a = {**a, "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]]}
        im = images.get(a["image_id"]) if polygons_only else images[a["image_id"]]
        if im is None or (polygons_only and not isinstance(a.get("segmentation"), list)):
            out.append(a)
            continue
        m = annotation_mask(a, im["height"], im["width"])
        a = {**a, "segmentation": mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))}
        a.setdefault("area", float(m.sum()))
        if not polygons_only:
            a.setdefault("bbox", [float(v) for v in mask_utils.toBbox(a["segmentation"])])
        out.append(a)
    return out


def as_one_class(gt: dict, results: list[dict]) -> tuple[dict, list[dict]]:
    """GT and results with every category made one, "object" (class-agnostic AP)."""
    gt = {**gt, "annotations": [{**a, "category_id": 1} for a in gt["annotations"]],
          "categories": [{"id": 1, "name": "object", "supercategory": ""}]}
    return gt, [{**r, "category_id": 1} for r in results]


def match_images_by_name(gt: dict, pred: dict) -> tuple[dict, bool]:
    """``pred`` (a dataset of detections) with its annotations' image ids made ``gt``'s, where the two
    files number the same images differently (``predict`` without ``--like`` numbers a folder from
    1): each image matched by its file name, else by the name's last part where that is unique.
    Returned unchanged (and False) where the ids already agree or a name matches no single image."""
    gt_ids = {im["id"] for im in gt["images"]}
    used = {a.get("image_id") for a in pred.get("annotations", []) if isinstance(a, dict)}
    if used <= gt_ids:
        return pred, False
    full: dict = {}
    last: dict = {}
    for im in gt["images"]:
        name = str(im.get("file_name", ""))
        full.setdefault(name, []).append(im["id"])
        last.setdefault(Path(name).name, []).append(im["id"])
    images = pred.get("images") if isinstance(pred.get("images"), list) else []
    names = {im.get("id"): str(im.get("file_name", "")) for im in images if isinstance(im, dict)}
    mapping = {}
    for image_id in used:
        name = names.get(image_id)
        ids = full.get(name) or last.get(Path(name).name) if name else None
        if not ids or len(ids) != 1:
            return pred, False
        mapping[image_id] = ids[0]
    return {**pred, "annotations": [{**a, "image_id": mapping[a["image_id"]]} for a in pred["annotations"]]}, True


def is_refined_copy(gt: dict, pred: dict) -> bool:
    """Whether dataset ``pred`` holds ``gt``'s objects by id (a refined copy, scored by id): every
    non-crowd ground-truth id is there, on the same image. Ids alone are not enough: ``predict
    --like`` numbers its detections from 1, as small datasets number their objects."""
    pred_by_id = {a.get("id"): a for a in pred["annotations"] if isinstance(a, dict)}
    gt_anns = [a for a in gt["annotations"] if not a.get("iscrowd", 0)]
    return bool(gt_anns) and all(a["id"] in pred_by_id and pred_by_id[a["id"]].get("image_id") == a["image_id"]
                                 for a in gt_anns)


def align_predictions(gt: dict, pred: dict, class_agnostic: bool = False) -> tuple[dict, list[str]]:
    """``pred`` (a dataset of detections) made to load against ``gt`` where it can be
    (``match_images_by_name``), and notes for the user: images matched by name; a category with one
    of ``gt``'s ids but another name (one-class "object" against COCO's 1, "person"), unless
    ``class_agnostic``."""
    pred, matched = match_images_by_name(gt, pred)
    notes = ["its image ids are not the ground truth's; images matched by file name"] if matched else []
    names = {c.get("id"): c.get("name") for c in gt.get("categories", []) if isinstance(c, dict)}
    cats = pred.get("categories") if isinstance(pred.get("categories"), list) else []
    # the same names under other ids (a set read from LabelMe numbers its labels in name order):
    # matched by name, where every category of the predictions has a name of the ground truth's
    by_name = {n: i for i, n in names.items()}
    if cats and all(isinstance(c, dict) and c.get("name") in by_name for c in cats):
        remap = {c["id"]: by_name[c["name"]] for c in cats}
        if any(k != v for k, v in remap.items()):
            pred = {**pred, "categories": [{**c, "id": remap[c["id"]]} for c in cats],
                    "annotations": [{**a, "category_id": remap.get(a.get("category_id"), a.get("category_id"))}
                                    for a in pred["annotations"]]}
            notes.append("its category ids are not the ground truth's; categories matched by name")
            cats = pred["categories"]
    other = next((c for c in cats if isinstance(c, dict) and c.get("id") in names
                  and c.get("name") != names[c.get("id")]), None)
    if other is not None and not class_agnostic:
        notes.append(f"its category {other['id']} is {other.get('name')!r}, the ground truth's is "
                     f"{names[other['id']]!r}; pass --class-agnostic to count every category as one")
    return pred, notes


def evaluate_detections(gt: dict, results: list[dict], class_agnostic: bool = False,
                        kinds: tuple[str, ...] = ("segm", "boundary", "bbox")) -> dict:
    """``segm_AP``, ``boundary_AP`` and ``bbox_AP`` (each with AP50/AP75) of a results list against
    a dataset (``class_agnostic``: every category counted as one; ``kinds``: which of the three).
    Raises ``CocoError`` naming the first detection that cannot be scored (``check_results``)."""
    problem = first_error(check_results(results, gt, any_category=class_agnostic))
    if problem:
        raise CocoError(str(problem))
    if class_agnostic:
        gt, results = as_one_class(gt, results)
    images = {im["id"]: im for im in gt["images"]}
    # copies: loadRes writes id, area and bbox into the records it is given, the caller's included
    results = [dict(r) for r in _as_rle(results, images, polygons_only=True)]
    gt_coco = _quiet_coco({**gt, "annotations": _as_rle(gt["annotations"], images)})
    out = {}
    if not results:
        return {**{f"{name}_{k}": 0.0 for name in kinds for k in ("AP", "AP50", "AP75")}, "detections": 0}
    boxes = []  # box AP: each result's own box, else its mask's extent (taken before loadRes edits the records)
    if "bbox" in kinds:
        boxes = [{"image_id": r["image_id"], "category_id": r["category_id"], "score": r["score"],
                  "bbox": list(r["bbox"]) if len(r.get("bbox") or ()) == 4
                  else [float(v) for v in mask_utils.toBbox(r["segmentation"])]} for r in results]
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt_coco.loadRes(results)
        evals = {"segm": lambda: COCOeval(gt_coco, dt, "segm"), "boundary": lambda: BoundaryCOCOeval(gt_coco, dt),
                 "bbox": lambda: COCOeval(gt_coco, gt_coco.loadRes(boxes), "bbox")}
        for name in kinds:
            ev = evals[name]()
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
            out[f"{name}_AP"], out[f"{name}_AP50"], out[f"{name}_AP75"] = (float(v) for v in ev.stats[:3])
    out["detections"] = len(results)
    return out
