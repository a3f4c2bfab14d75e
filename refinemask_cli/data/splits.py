"""Fixed, documented data splits (so every number in the project compares)."""
from __future__ import annotations

from typing import Iterable


def holdout_ids(image_ids: Iterable[int], fraction_den: int = 5) -> set[int]:
    """The held-back images: every ``fraction_den``-th image id in sorted order (a fifth by default)."""
    ids = sorted(set(image_ids))
    return set(ids[fraction_den - 1 :: fraction_den])


def subset(doc: dict, image_ids: set[int]) -> dict:
    """The dataset restricted to ``image_ids`` (other top-level keys kept)."""
    return {**doc, "images": [im for im in doc["images"] if im["id"] in image_ids],
            "annotations": [a for a in doc["annotations"] if a["image_id"] in image_ids]}
