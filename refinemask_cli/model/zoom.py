"""Zoom-in refinement (beyond the paper): each object is refined in its own crop at one working size.

A crop is a square region of the image around the object's box (the box's long side plus ``margin`` of
it on every side), resampled to ``size × size`` pixels. Small objects gain resolution, large ones stop
being squeezed into a whole image of a few hundred pixels, and the network always sees objects at about
the same scale, in training and at inference alike.

Conventions: boxes and regions are ``x1, y1, x2, y2`` floats in pixel units, pixel ``(r, c)`` covering
``[c, c+1) × [r, r+1)`` (its centre at ``c + 0.5``). Crops are sampled with RoIAlign (``aligned=True``):
bilinear at the output pixel centres when enlarging, the average of several bilinear samples per
output pixel when shrinking (no aliasing). Outside the image the crop is ``fill`` (the network's mean
colour, i.e. zero after normalisation, like batch padding).

The masks the head predicts live in each box's own coordinates, which a zoom does not change: the
result is pasted back over the original box exactly as in whole-image mode.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torchvision.ops import roi_align


@dataclass(frozen=True)
class ZoomSpec:
    size: int = 320  # working size: side of the square crop, pixels
    margin: float = 0.3  # context on each side, as a fraction of the box's long side
    max_zoom: float = 8.0  # never enlarge more than this (boxes of a few pixels, or less than one)
    # > size: a region larger than ``size`` pixels is not shrunk below its own resolution, up to this
    # side (rounded up to a multiple of 32); 0 = every crop at ``size``
    max_size: int = 0

    def __post_init__(self) -> None:
        if self.size < 32:
            raise ValueError(f"zoom size must be >= 32 pixels, got {self.size}")
        if not 0.0 <= self.margin <= 4.0:
            raise ValueError(f"zoom margin must be in [0, 4], got {self.margin}")
        if not self.max_zoom >= 1.0:
            raise ValueError(f"max zoom must be >= 1, got {self.max_zoom}")
        if self.max_size and self.max_size < self.size:
            raise ValueError(f"zoom max size must be 0 or >= size {self.size}, got {self.max_size}")

    def crop_sizes(self, regions: torch.Tensor) -> list[int]:
        """The side of each region's crop: ``size``, or with ``max_size`` the region's own side in
        pixels rounded up to a multiple of 32, between ``size`` and ``max_size``."""
        if not self.max_size:
            return [self.size] * regions.shape[0]
        sides = torch.ceil((regions[:, 2] - regions[:, 0]) / 32) * 32
        return [int(v) for v in sides.clamp(min=self.size, max=self.max_size).tolist()]


def zoom_regions(boxes: torch.Tensor, spec: ZoomSpec, margin: torch.Tensor | float | None = None) -> torch.Tensor:
    """Square regions ``(K, 4)`` centred on ``boxes``: side = long side × (1 + 2·margin), at least
    ``size / max_zoom``. Regions may reach outside the image (filled there)."""
    boxes = boxes.reshape(-1, 4).float()
    m = spec.margin if margin is None else margin
    w = (boxes[:, 2] - boxes[:, 0]).clamp(min=0)
    h = (boxes[:, 3] - boxes[:, 1]).clamp(min=0)
    side = (torch.maximum(w, h) * (1 + 2 * torch.as_tensor(m, dtype=boxes.dtype, device=boxes.device)))
    side = side.clamp(min=spec.size / spec.max_zoom)
    cx = (boxes[:, 0] + boxes[:, 2]) / 2
    cy = (boxes[:, 1] + boxes[:, 3]) / 2
    half = side / 2
    return torch.stack([cx - half, cy - half, cx + half, cy + half], dim=1)


def to_crop(boxes: torch.Tensor, regions: torch.Tensor, size: int) -> torch.Tensor:
    """Boxes in image pixels → the same boxes in the pixels of their crops (one region per box)."""
    scale = size / (regions[:, 2] - regions[:, 0])
    origin = regions[:, :2].repeat(1, 2)
    return (boxes.reshape(-1, 4).float() - origin) * scale[:, None]


def from_crop(boxes: torch.Tensor, regions: torch.Tensor, size: int) -> torch.Tensor:
    """The inverse of ``to_crop``."""
    scale = (regions[:, 2] - regions[:, 0]) / size
    return boxes.reshape(-1, 4).float() * scale[:, None] + regions[:, :2].repeat(1, 2)


def crop_regions(image: torch.Tensor, regions: torch.Tensor, size: int,
                 fill: torch.Tensor | None = None) -> torch.Tensor:
    """``(C, H, W)`` float image → ``(K, C, size, size)`` crops of the ``regions``; ``fill`` ``(C,)``
    outside the image (zeros when None)."""
    k = regions.shape[0]
    if k == 0:
        return image.new_zeros((0, image.shape[0], size, size))
    src = image.float()
    if fill is not None:
        fill = fill.to(src).reshape(-1, 1, 1)
        src = src - fill
    src = src.contiguous()  # RoIAlign copies any other layout (an HWC image permuted) on every call
    rois = torch.cat([regions.new_zeros((k, 1)), regions], dim=1).to(src)
    rows = band_rows(regions, size) if src.device.type == "cpu" else size
    if rows >= size:
        out = roi_align(src[None], rois, (size, size), spatial_scale=1.0, sampling_ratio=0, aligned=True)
    else:  # the same bins, a band of output rows at a time
        bin_h = (rois[:, 4] - rois[:, 2]) / size
        bands = []
        for r0 in range(0, size, rows):
            r1 = min(size, r0 + rows)
            band = rois.clone()
            band[:, 2], band[:, 4] = rois[:, 2] + r0 * bin_h, rois[:, 2] + r1 * bin_h
            bands.append(roi_align(src[None], band, (r1 - r0, size), spatial_scale=1.0, sampling_ratio=0,
                                   aligned=True))
        out = torch.cat(bands, dim=2)
    return out + fill if fill is not None else out


# RoIAlign's CPU kernel precomputes every bilinear sample of an RoI before averaging them (32 bytes
# each): a region shrunk n-fold needs n² samples per output pixel, 2 GB for an object 8,000 px wide
# in a 320-px crop. Regions past this many samples per call are cropped a band of rows at a time.
CPU_SAMPLE_BUDGET = 1 << 22  # 128 MB


def band_rows(regions: torch.Tensor, size: int) -> int:
    """Output rows per RoIAlign call that keep the CPU kernel's samples within ``CPU_SAMPLE_BUDGET``
    for the largest of ``regions`` cropped to ``size × size`` (``size``: all at once)."""
    side = (regions[:, 2:] - regions[:, :2]).amax().item() if len(regions) else 0.0
    per_bin = max(1, math.ceil(side / size)) ** 2
    return max(1, min(size, CPU_SAMPLE_BUDGET // (per_bin * size)))


def crop_masks(masks: torch.Tensor, indices: torch.Tensor, regions: torch.Tensor, size: int) -> torch.Tensor:
    """Binary ``(n, H, W)`` masks → ``(K, size, size)`` uint8 crops of ``masks[indices[k]]`` over ``regions[k]``."""
    if regions.shape[0] == 0:
        return masks.new_zeros((0, size, size), dtype=torch.uint8)
    rois = torch.cat([indices.to(regions).reshape(-1, 1), regions], dim=1).float()
    out = roi_align(masks[:, None].float(), rois.to(masks.device), (size, size), 1.0, 0, True)[:, 0]
    return (out >= 0.5).to(torch.uint8)


def flip_boxes(boxes: torch.Tensor, width: float) -> torch.Tensor:
    """Mirror xyxy boxes in an image ``width`` pixels wide."""
    return torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], dim=1)
