"""Edge-aware smoothing of a probability map with the image as guide (He, Sun and Tang's guided
filter): inside every window the output is a linear function of the guide's brightness, so a soft
mask edge that the network drew on a coarse grid moves towards a nearby image edge (part of the way:
the filter is local, and it never moves an edge past the image's)."""
from __future__ import annotations

import cv2
import numpy as np


def guided_filter(guide: np.ndarray, src: np.ndarray, radius: int, eps: float) -> np.ndarray:
    """``src`` (float ``(H, W)``) filtered with ``guide`` (float ``(H, W)``, values in [0, 1]) over
    square windows of side ``2 * radius + 1``; ``eps`` is the guide variance below which a window is
    only averaged (flat regions stay as they were). Returns float32 ``(H, W)``."""
    if guide.shape != src.shape:
        raise ValueError(f"guide {guide.shape} and source {src.shape} differ in shape")
    if radius < 1 or eps <= 0:
        raise ValueError("radius must be >= 1 and eps > 0")
    guide = np.ascontiguousarray(guide, dtype=np.float32)
    src = np.ascontiguousarray(src, dtype=np.float32)
    window = (2 * radius + 1, 2 * radius + 1)

    def mean(x: np.ndarray) -> np.ndarray:
        return cv2.boxFilter(x, -1, window, borderType=cv2.BORDER_REFLECT)

    mean_g, mean_s = mean(guide), mean(src)
    var_g = mean(guide * guide) - mean_g * mean_g
    a = (mean(guide * src) - mean_g * mean_s) / (var_g + eps)
    b = mean_s - a * mean_g
    return mean(a) * guide + mean(b)
