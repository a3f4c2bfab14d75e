"""Overlay PNGs so a person can look: input outline (red) against refined outline (green)."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from ..geometry import segmentation_to_mask
from ..io.coco import segmentation_kind_safe
from .paths import safe_relative

RED = (255, 60, 60)
GREEN = (40, 220, 40)


def _outline(canvas: np.ndarray, mask: np.ndarray, color: tuple[int, int, int], thickness: int) -> None:
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(canvas, contours, -1, color, thickness, lineType=cv2.LINE_AA)


def _box(canvas: np.ndarray, bbox: list[float], color, thickness: int) -> None:
    x, y, w, h = bbox
    cv2.rectangle(canvas, (int(round(x)), int(round(y))), (int(round(x + w)), int(round(y + h))), color, thickness)


def draw_overlay(image: np.ndarray, before: list[dict], after: list[dict]) -> np.ndarray:
    """RGB image with the ``before`` annotations in red and the ``after`` ones in green."""
    h, w = image.shape[:2]
    canvas = np.ascontiguousarray(image.copy())
    t = max(1, round(max(h, w) / 500))
    for anns, color in ((before, RED), (after, GREEN)):
        for ann in anns:
            if segmentation_kind_safe(ann.get("segmentation")) in ("none", "invalid"):
                if "bbox" in ann:
                    _box(canvas, ann["bbox"], color, t)
                continue
            _outline(canvas, segmentation_to_mask(ann["segmentation"], h, w), color, t)
    return canvas


def write_overlay(path: Path, image: np.ndarray, before: list[dict], after: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ok = cv2.imwrite(str(path), draw_overlay(image, before, after)[:, :, ::-1])
    if not ok:
        raise OSError(f"{path}: could not write the overlay PNG")


def overlay_path(vis_dir: Path, info: dict) -> Path:
    """``vis_dir`` / the image's sub-folders / ``STEM_ID.png``: unique per image, never outside ``vis_dir``."""
    rel = safe_relative(info["file_name"], f"image {info['id']}")
    return vis_dir / rel.parent / f"{rel.stem}_{info['id']}.png"


def check_overlay_paths(doc: dict) -> None:
    """Fail before any work when an image's overlay would land outside the folder."""
    for info in doc.get("images", []):
        if isinstance(info, dict) and "file_name" in info and "id" in info:
            safe_relative(info["file_name"], f"image {info['id']}")
