"""Fixed, documented data splits (so every number in the project compares)."""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import PurePath


def holdout_ids(image_ids: Iterable[int], fraction_den: int = 5) -> set[int]:
    """The held-back images: every ``fraction_den``-th image id in sorted order (a fifth by default)."""
    ids = sorted(set(image_ids))
    return set(ids[fraction_den - 1 :: fraction_den])


def subset(doc: dict, image_ids: set[int]) -> dict:
    """The dataset restricted to ``image_ids`` (other top-level keys kept)."""
    return {**doc, "images": [im for im in doc["images"] if im["id"] in image_ids],
            "annotations": [a for a in doc["annotations"] if a["image_id"] in image_ids]}


def held_back_names(doc: dict) -> set[str]:
    """File names (without folders) of a dataset's held-back images: another set that shares images
    with it (COCO subsets do) drops these so that they stay unseen."""
    held = holdout_ids(im["id"] for im in doc["images"])
    return {PurePath(im["file_name"]).name for im in doc["images"] if im["id"] in held}
