"""Small islands and holes out of a binary mask: what a refined mask's noise looks like.

Connectivity follows the outline tracing (``polygons.py``): foreground parts are 8-connected, holes
4-connected background regions that do not reach the mask's border (a crop's border is outside).
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class Cleaned:
    mask: np.ndarray  # bool (h, w)
    islands_removed: int
    holes_filled: int


def remove_small_regions(mask: np.ndarray, min_area: float) -> Cleaned:
    """Drop foreground parts smaller than ``min_area`` pixels (the largest part is always kept) and
    fill holes smaller than ``min_area``. ``min_area <= 0`` leaves the mask as it is."""
    m = np.ascontiguousarray(mask, dtype=bool)
    if min_area <= 0 or m.size == 0 or not m.any():
        return Cleaned(m, 0, 0)
    out = m.copy()
    n, lab, stats, _ = cv2.connectedComponentsWithStats(m.view(np.uint8), connectivity=8)
    areas = stats[1:, cv2.CC_STAT_AREA]
    small = np.flatnonzero(areas < min_area) + 1
    small = small[small != int(np.argmax(areas)) + 1]
    if len(small):
        out[np.isin(lab, small)] = False
    bg = np.pad(~out, 1, constant_values=True).view(np.uint8)
    n_bg, lab_bg, stats_bg, _ = cv2.connectedComponentsWithStats(bg, connectivity=4)
    outside = lab_bg[0, 0]  # the padding ring joins every region that reaches the border
    holes = [k for k in range(1, n_bg) if k != outside and stats_bg[k, cv2.CC_STAT_AREA] < min_area]
    if holes:
        out[np.isin(lab_bg[1:-1, 1:-1], holes)] = True
    return Cleaned(out, len(small), len(holes))
