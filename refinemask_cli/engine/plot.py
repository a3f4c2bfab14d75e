"""A loss plot PNG drawn with OpenCV (no plotting dependency): one line per loss term, log scale."""
from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np

COLORS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
          (227, 119, 194), (127, 127, 127)]


def smooth(values: list[float], k: int) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64)
    if k <= 1 or len(v) < k:
        return v
    c = np.cumsum(np.insert(v, 0, 0.0))
    head = c[1:k] / np.arange(1, k)
    return np.concatenate([head, (c[k:] - c[:-k]) / k])


def loss_plot(records: list[dict], path: Path, size: tuple[int, int] = (900, 520)) -> None:
    keys = [k for k in records[0] if k.startswith("loss")] if records else []
    w, h = size
    img = np.full((h, w, 3), 255, np.uint8)
    left, right, top, bottom = 70, 200, 30, 50
    if records and keys:
        its = np.asarray([r["iter"] for r in records], dtype=np.float64)
        k = max(1, len(records) // 50)
        series = {key: smooth([max(r[key], 1e-6) for r in records], k) for key in keys}
        lo = min(float(s.min()) for s in series.values())
        hi = max(float(s.max()) for s in series.values())
        lo, hi = math.log10(lo), math.log10(hi) + 1e-9
        x0, x1 = its.min(), max(its.max(), its.min() + 1)

        def px(i, v):
            x = left + (i - x0) / (x1 - x0) * (w - left - right)
            y = top + (1 - (math.log10(v) - lo) / (hi - lo)) * (h - top - bottom)
            return int(x), int(y)

        for n, key in enumerate(keys):
            pts = np.array([px(i, v) for i, v in zip(its, series[key])], np.int32)
            color = COLORS[n % len(COLORS)][::-1]
            cv2.polylines(img, [pts], False, color, 2, cv2.LINE_AA)
            cv2.putText(img, key, (w - right + 10, top + 20 * n + 10), cv2.FONT_HERSHEY_SIMPLEX, 0.45, color, 1,
                        cv2.LINE_AA)
        for frac in np.linspace(0, 1, 5):
            v = 10 ** (lo + frac * (hi - lo))
            y = px(x0, v)[1]
            cv2.putText(img, f"{v:.3g}", (5, y + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
        cv2.putText(img, f"iteration {int(x0)}..{int(x1)} (log-scale losses)", (left, h - 15),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.rectangle(img, (left, top), (w - right, h - bottom), (0, 0, 0), 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), img)
