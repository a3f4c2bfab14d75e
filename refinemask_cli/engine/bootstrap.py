"""Paired bootstrap over images: is one set of weights better than another on the same held-back
images, or is the difference within what the choice of images gives?

Both weights are scored on the same images; each resample draws that many images with replacement
(the same draw for both), and the statistic of each is computed on the draw. What is reported is
the difference (new minus base) on all images, how many draws had it above zero, and the 5th and
95th percentiles of the drawn differences (a 90 % interval). Images, not objects, are the unit:
objects of one image share its lighting, clutter and annotator, so they are not independent.

- ``mean_differences``: for per-object scores (refine's IoU and Boundary IoU), each column's mean.
- ``resampled``: a dataset and results restricted to a draw of image ids, repeated images given new
  ids, for statistics that need whole images (COCO AP).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Difference:
    """One statistic: its value for base and new on all images, and the bootstrap of new - base."""

    base: float
    new: float
    higher: int  # draws in which new - base > 0
    resamples: int
    low: float  # 5th percentile of the drawn differences
    high: float  # 95th percentile

    @property
    def diff(self) -> float:
        return self.new - self.base

    def __str__(self) -> str:
        return (f"{self.base:.3f} -> {self.new:.3f} ({self.diff:+.4f}; higher in {self.higher}/{self.resamples}, "
                f"90% {self.low:+.4f}..{self.high:+.4f})")


def draws(image_ids: Sequence, resamples: int, seed: int = 0) -> list[np.ndarray]:
    """``resamples`` draws of len(image_ids) ids with replacement (fixed by ``seed``)."""
    ids = np.asarray(list(image_ids))
    if len(ids) == 0:
        raise ValueError("no images to resample")
    rng = np.random.default_rng(seed)
    return [ids[rng.integers(0, len(ids), len(ids))] for _ in range(resamples)]


def _difference(base: float, new: float, drawn: np.ndarray) -> Difference:
    lo, hi = (float(v) for v in np.percentile(drawn, [5, 95])) if len(drawn) else (0.0, 0.0)
    return Difference(float(base), float(new), int(np.sum(drawn > 0)), len(drawn), lo, hi)


def mean_differences(image_of: Sequence, base: np.ndarray, new: np.ndarray, resamples: int = 1000,
                     seed: int = 0) -> list[Difference]:
    """Per-object scores ``base`` and ``new`` (rows: the same objects in the same order; columns:
    statistics, e.g. IoU and Boundary IoU), ``image_of`` each object's image id: one Difference per
    column, of the column's mean, resampling images."""
    base, new = np.asarray(base, float), np.asarray(new, float)
    base, new = base.reshape(len(base), -1), new.reshape(len(new), -1)  # one column per statistic
    image_of = np.asarray(list(image_of))
    if base.shape != new.shape or len(image_of) != len(base):
        raise ValueError(f"scores of different objects: base {base.shape}, new {new.shape}, {len(image_of)} image ids")
    rows_of = {i: np.nonzero(image_of == i)[0] for i in np.unique(image_of)}
    d = new - base
    drawn = []
    for draw in draws(list(rows_of), resamples, seed):
        rows = np.concatenate([rows_of[i] for i in draw])
        drawn.append(d[rows].mean(0))
    drawn = np.asarray(drawn).reshape(resamples, d.shape[1])
    return [_difference(base[:, k].mean(), new[:, k].mean(), drawn[:, k]) for k in range(d.shape[1])]


def _by_image(records: list[dict]) -> dict:
    out: dict = {}
    for r in records:
        out.setdefault(r["image_id"], []).append(r)
    return out


def resampled(gt: dict, draw: Sequence, *results: list[dict]) -> tuple:
    """GT and each results list restricted to the images of ``draw`` (image ids, repeats allowed):
    the k-th image of the draw becomes image id k + 1, its annotations and results copied with new
    ids. Returns ``(gt, results_1, results_2, ...)``."""
    images = {im["id"]: im for im in gt["images"]}
    anns = _by_image(gt["annotations"])
    out_images, out_anns = [], []
    for k, old in enumerate(draw, 1):
        out_images.append({**images[old], "id": k})
        for a in anns.get(old, []):
            out_anns.append({**a, "image_id": k, "id": len(out_anns) + 1})
    out_res = []
    for res in map(_by_image, results):
        out_res.append([{**r, "image_id": k} for k, old in enumerate(draw, 1) for r in res.get(old, [])])
    return ({**gt, "images": out_images, "annotations": out_anns}, *out_res)


def statistic_differences(gt: dict, base: list[dict], new: list[dict], statistic: Callable[[dict, list[dict]], Sequence[float]],
                          resamples: int = 200, seed: int = 0) -> list[Difference]:
    """For statistics of whole images (``statistic(gt, results)`` -> numbers, e.g. mask AP and AP50):
    one Difference per number, base and new results drawn on the same images."""
    full_b, full_n = statistic(gt, base), statistic(gt, new)
    drawn = []
    for draw in draws([im["id"] for im in gt["images"]], resamples, seed):
        g, b, n = resampled(gt, draw, base, new)
        drawn.append(np.asarray(statistic(g, n), float) - np.asarray(statistic(g, b), float))
    drawn = np.asarray(drawn).reshape(resamples, len(full_b))
    return [_difference(full_b[k], full_n[k], drawn[:, k]) for k in range(len(full_b))]
