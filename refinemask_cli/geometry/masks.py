"""COCO segmentation (polygons, compressed or uncompressed RLE) → binary mask."""
from __future__ import annotations

from typing import Any

import numpy as np
from pycocotools import mask as mask_utils


def segmentation_kind(segm: Any) -> str:
    """"polygon", "rle" (compressed), "uncompressed_rle", or "none" (absent or empty)."""
    if segm is None or segm == [] or segm == {}:
        return "none"
    if isinstance(segm, list):
        return "polygon"
    if isinstance(segm, dict) and "counts" in segm and "size" in segm:
        return "uncompressed_rle" if isinstance(segm["counts"], list) else "rle"
    raise ValueError(f"unrecognised segmentation of type {type(segm).__name__}")


def segmentation_to_rle(segm: Any, height: int, width: int) -> dict:
    kind = segmentation_kind(segm)
    if kind == "polygon":
        polys = [list(map(float, p)) for p in segm]
        for p in polys:
            if len(p) < 6 or len(p) % 2:
                raise ValueError(f"polygon with {len(p)} coordinates; each needs an even count >= 6")
        return mask_utils.merge(mask_utils.frPyObjects(polys, height, width))
    if kind in ("rle", "uncompressed_rle"):
        h, w = (int(v) for v in segm["size"])
        if (h, w) != (height, width):
            raise ValueError(f"RLE size {h}x{w} does not match the image's {height}x{width}")
        if kind == "uncompressed_rle":
            return mask_utils.frPyObjects(segm, h, w)
        counts = segm["counts"]
        return {"size": [h, w], "counts": counts.encode() if isinstance(counts, str) else counts}
    raise ValueError("annotation has no segmentation")


def segmentation_to_mask(segm: Any, height: int, width: int) -> np.ndarray:
    return mask_utils.decode(segmentation_to_rle(segm, height, width)).astype(bool)
