"""A COCO instance dataset yielding ``(image float (3,H,W) in [0,1], target)`` for the model.

Targets: ``boxes`` (n, 4) xyxy, ``labels`` (n,) 0-based model classes, ``masks`` (n, H, W) uint8.
``every_object`` (bool) says whether every object of the image is labelled (see ``CocoInstances``).
Crowd annotations are not instances (they are left out of targets), and neither are annotations
without a segmentation (a box alone cannot supervise a mask); ``skipped`` counts both.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from pycocotools import mask as mask_utils
from torch.utils.data import Dataset

from ..geometry import segmentation_kind, segmentation_to_mask
from ..geometry.masks import segmentation_to_rle
from ..io.coco import CocoError, read_recorded_image
from ..io.images import (
    held_image,
    hold_image,
    image_exists,
    image_path,
    looks_readable,
    not_found_messages,
)
from ..io.sources import load_dataset


class CocoInstances(Dataset):
    def __init__(self, json_path: str | Path, images_dir: str | Path | None, flip_prob: float = 0.5,
                 class_names: Sequence[str] | None = None, class_agnostic: bool = False,
                 image_ids: Sequence[int] | None = None, min_box_size: float = 1.0, every_object: bool = True):
        """``json_path``: a COCO file (its images in ``images_dir``), a LabelMe folder or a YOLO-seg
        dataset (their own images; ``images_dir`` for a LabelMe folder's kept elsewhere). What reading
        normalised or left out is in ``notes``. ``every_object=False``: a partly labelled set, its
        images' unlabelled objects are not background (the model's training reads the flag from each
        target)."""
        self.every_object = every_object
        notes: list = []
        doc, self.images_dir = load_dataset(json_path, images_dir, notes)  # a bad file: one line naming it
        self.notes = [str(n) for n in notes]
        # images a LabelMe file holds as imageData: carried with the set to loader processes that
        # start afresh (spawn) rather than fork, where the reader's in-memory copies are not
        self.held = {im["file_name"]: data for im in doc["images"]
                     if (data := held_image(image_path(self.images_dir, im["file_name"]))) is not None}
        cats = sorted(doc["categories"], key=lambda c: c["id"])
        self.category_names = [c["name"] for c in cats]
        self.class_agnostic = class_agnostic
        if class_agnostic:
            self.cat_to_label = {c["id"]: 0 for c in cats}
        else:
            names = list(class_names) if class_names else self.category_names
            by_name = {n: i for i, n in enumerate(names)}
            self.cat_to_label = {c["id"]: by_name[c["name"]] for c in cats if c["name"] in by_name}
        self.images = {im["id"]: im for im in doc["images"]}
        self.anns: dict[int, list] = {i: [] for i in self.images}
        self.skipped = 0
        for a in doc["annotations"]:
            if a.get("iscrowd", 0) or a["category_id"] not in self.cat_to_label:
                self.skipped += 1
                continue
            if segmentation_kind(a.get("segmentation")) == "none":
                self.skipped += 1
                continue
            if "bbox" not in a:  # optional where there is a segmentation: its extent, as pycocotools makes it
                im = self.images[a["image_id"]]
                rle = segmentation_to_rle(a["segmentation"], im["height"], im["width"])
                a = {**a, "bbox": [float(v) for v in mask_utils.toBbox(rle)]}
            _, _, w, h = a["bbox"]
            if w < min_box_size or h < min_box_size:
                continue
            self.anns.setdefault(a["image_id"], []).append(a)
        ids = image_ids if image_ids is not None else sorted(self.images)
        # a partly labelled image with no labelled object teaches nothing (none of it is background),
        # and a batch of only such images has no sample at all: its losses are 0/0 (nan at step 0)
        self.ids = [i for i in ids if i in self.images and (every_object or self.anns.get(i))]
        self.flip_prob = flip_prob

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        for name, data in self.held.items():
            hold_image(image_path(self.images_dir, name), data)

    def restrict(self, image_ids: set[int]) -> None:
        """Only the images of ``image_ids``, in the same order."""
        self.ids = [i for i in self.ids if i in image_ids]

    def check_files(self, source: str | Path) -> None:
        """A ``CocoError`` naming ``source`` (the JSON) and the image id when an image this set will
        read is not in its folder, or is not an image (its first bytes match no decoder): said before
        training starts, not from inside a loader worker."""
        for i in self.ids:
            name = self.images[i]["file_name"]
            path = image_path(self.images_dir, name)
            if not image_exists(path):
                raise CocoError(f"{source}: image {i}: {not_found_messages(self.images_dir, [name])[name]}")
            if not looks_readable(path):
                raise CocoError(f"{source}: image {i}: {path} is not a readable image (corrupt or unsupported "
                                "format); replace the file or drop the image from the JSON")

    def __len__(self) -> int:
        return len(self.ids)

    def load(self, idx: int):
        """``(image uint8 HWC, masks (n,H,W) uint8, boxes (n,4) xyxy, labels (n,), image_id)``, no augmentation."""
        info = self.images[self.ids[idx]]
        # the frame the annotations were drawn in (EXIF rotation or not), as refine reads it
        img, _ = read_recorded_image(image_path(self.images_dir, info["file_name"]), info)
        h, w = img.shape[:2]
        anns = self.anns.get(info["id"], [])
        masks = np.zeros((len(anns), h, w), dtype=np.uint8)
        boxes = np.zeros((len(anns), 4), dtype=np.float32)
        labels = np.zeros(len(anns), dtype=np.int64)
        for k, a in enumerate(anns):
            masks[k] = segmentation_to_mask(a["segmentation"], h, w)
            x, y, bw, bh = a["bbox"]
            boxes[k] = [x, y, x + bw, y + bh]
            labels[k] = self.cat_to_label[a["category_id"]]
        return img, masks, boxes, labels, int(info["id"])

    def __getitem__(self, idx: int):
        img, masks, boxes, labels, image_id = self.load(idx)
        if self.flip_prob and torch.rand(()) < self.flip_prob:
            img, masks, boxes = hflip(img, masks, boxes)
        return to_sample(img, masks, boxes, labels, image_id, self.every_object)


def hflip(img: np.ndarray, masks: np.ndarray, boxes: np.ndarray):
    w = img.shape[1]
    boxes = np.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], axis=1).reshape(-1, 4)
    return img[:, ::-1], masks[:, :, ::-1], boxes


def to_sample(img, masks, boxes, labels, image_id, every_object: bool = True):
    """Model input: float (3,H,W) in [0,1] and the target dict."""
    image = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float().div_(255.0)
    target = {
        "boxes": torch.from_numpy(np.asarray(boxes, dtype=np.float32).reshape(-1, 4)),
        "labels": torch.from_numpy(np.asarray(labels, dtype=np.int64)),
        "masks": torch.from_numpy(np.ascontiguousarray(masks)),
        "image_id": int(image_id),
        "every_object": bool(every_object),
    }
    return image, target


def collate(batch):
    images, targets = zip(*batch)
    return list(images), list(targets)
