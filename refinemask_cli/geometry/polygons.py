"""Binary mask → COCO polygons / RLE, with a stated policy for parts and holes.

- Polygons trace the outline a quarter pixel inside the pixel edges (a pixel ``(r, c)`` covers
  ``[c, c+1) x [r, r+1)``, so a lone pixel becomes the square ``c+0.25 .. c+0.75``); pycocotools
  rasterises them back to the same mask up to isolated diagonal-contact pixels.
- A multi-part object becomes a list of polygons, one per part.
- A mask with holes cannot be a COCO polygon list (pycocotools takes the union of the rings), so
  ``mask_to_segmentation`` falls back to RLE for it and says so; no hole is ever filled silently.
- Every ring has at least 3 distinct points; optional Douglas-Peucker simplification in pixels.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from pycocotools import mask as mask_utils


@dataclass(frozen=True)
class Outline:
    polygons: list[list[float]]  # flat [x0, y0, x1, y1, ...] rings, one per part
    holes: int  # number of holes found


def mask_to_outline(mask: np.ndarray, simplify: float = 0.0, offset: tuple[float, float] = (0.0, 0.0)) -> Outline:
    """Outer rings of every part of ``mask`` (bool ``(h, w)``) and the count of holes.

    ``offset`` (x, y) is added to every vertex (use it for masks cropped out of an image).
    """
    m = np.ascontiguousarray(mask, dtype=np.uint8)
    if m.size == 0 or not m.any():
        return Outline([], 0)
    # pad so parts on the border close; upsample 2x so contours run along pixel edges
    up = cv2.resize(np.pad(m, 1), None, fx=2, fy=2, interpolation=cv2.INTER_NEAREST)
    contours, hierarchy = cv2.findContours(up, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    polygons, holes = [], 0
    for contour, h in zip(contours, hierarchy[0]):
        if h[3] >= 0:  # has a parent: a hole
            holes += 1
            continue
        if simplify > 0:
            contour = cv2.approxPolyDP(contour, 2 * simplify, True)
        pts = (contour.reshape(-1, 2).astype(np.float64) + 0.5) / 2 - 1
        pts += np.asarray(offset, dtype=np.float64)
        pts = _dedupe(pts)
        if len(pts) >= 3:
            polygons.append([round(float(v), 2) for v in pts.reshape(-1)])
    return Outline(polygons, holes)


def _dedupe(pts: np.ndarray) -> np.ndarray:
    keep = np.ones(len(pts), dtype=bool)
    keep[1:] = np.any(np.diff(pts, axis=0) != 0, axis=1)
    pts = pts[keep]
    if len(pts) > 1 and np.all(pts[0] == pts[-1]):
        pts = pts[:-1]
    return pts


def encode_rle(mask: np.ndarray, offset: tuple[int, int] = (0, 0), size: tuple[int, int] | None = None) -> dict:
    """Compressed RLE with ``counts`` as str (JSON-ready).

    With ``size=(H, W)``, ``mask`` is a crop whose top-left pixel sits at ``offset=(x0, y0)`` in an
    H×W image: the runs are computed over the crop's columns only (no H×W array is made)."""
    if size is None:
        rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}
    height, width = (int(v) for v in size)
    runs = _crop_runs(mask, offset, height, width)
    rle = mask_utils.frPyObjects({"size": [height, width], "counts": runs}, height, width)
    return {"size": [height, width], "counts": rle["counts"].decode("ascii")}


def _crop_runs(mask: np.ndarray, offset: tuple[int, int], height: int, width: int) -> list[int]:
    """COCO run lengths (column-major, zeros first) of an H×W image holding ``mask`` at ``offset``."""
    x0, y0 = offset
    h, w = mask.shape
    if h == 0 or w == 0 or not mask.any():
        return [height * width]  # one run of zeros
    slab = np.zeros((w, height), dtype=bool)  # the crop's columns, full height, column-major
    slab[:, y0 : y0 + h] = mask.T
    flat = slab.ravel()
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    runs = np.diff(np.concatenate([[0], change, [flat.size]])).tolist()
    if flat[0]:
        runs.insert(0, 0)  # COCO runs start with zeros
    runs[0] += x0 * height
    trailing = (width - x0 - w) * height
    if len(runs) % 2:  # ends on zeros
        runs[-1] += trailing
    elif trailing:
        runs.append(trailing)
    return runs


def mask_bbox(mask: np.ndarray, offset: tuple[int, int] = (0, 0)) -> list[float]:
    """Tight COCO ``[x, y, w, h]`` of a mask (zeros for an empty one)."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return [0.0, 0.0, 0.0, 0.0]
    x0, y0 = int(xs.min()) + offset[0], int(ys.min()) + offset[1]
    return [float(x0), float(y0), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]


def ring_area(ring: list[float]) -> float:
    """Area enclosed by one flat ``[x0, y0, x1, y1, ...]`` ring (shoelace formula)."""
    x, y = np.asarray(ring[0::2], dtype=np.float64), np.asarray(ring[1::2], dtype=np.float64)
    return 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


def polygons_area(polygons: list[list[float]], height: int, width: int) -> float:
    if not polygons:
        return 0.0
    return float(mask_utils.area(mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))))
