"""Boundary-aware refinement (BAR): band maps, stage targets, stage losses and the inference merge.

Plain functions, no parameters, so each can be tested alone (spec §2). Conventions:
masks and maps are ``[row=y, col=x]``; boxes are ``x1, y1, x2, y2`` floats in pixels, where pixel
``(r, c)`` covers ``[c, c+1) x [r, r+1)``; RoIs are ``(K, 5)`` rows ``[batch_index, x1, y1, x2, y2]``.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

BAND = 1
INTERIOR = 2


def boundary_band(masks: torch.Tensor, width: int) -> torch.Tensor:
    """Band map of binary masks ``(N, H, W)``: 1 = boundary, 2 = foreground off the band, 0 = the rest.

    With ``k = 2*width + 1``: a foreground pixel is on the band when more than a tenth of its k×k
    window is background (pixels outside the map count as background); a background pixel is on
    the band when more than a tenth of its window is foreground (outside pixels are not foreground).
    """
    if masks.dim() != 3:
        raise ValueError(f"boundary_band expects (N, H, W) masks, got shape {tuple(masks.shape)}")
    fg = masks > 0
    if masks.numel() == 0:
        return torch.zeros(masks.shape, dtype=torch.long, device=masks.device)
    k = 2 * width + 1
    kernel = torch.ones(1, 1, k, k, dtype=torch.float32, device=masks.device)
    padded = F.pad(fg[:, None].float(), (width, width, width, width))
    fg_count = F.conv2d(padded, kernel)[:, 0].round()
    bg_count = k * k - fg_count
    # count / k^2 > 0.1  <=>  10 * count > k^2 (k^2 is odd, so never equal)
    pos = fg & (10 * bg_count > k * k)
    neg = ~fg & (10 * fg_count > k * k)
    out = torch.zeros(masks.shape, dtype=torch.long, device=masks.device)
    out[fg & ~pos] = INTERIOR
    out[pos | neg] = BAND
    return out


def _resize_binary(masks: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear (align_corners=True) resize of a binary ``(N, S, S)`` map, then >= 0.5."""
    up = F.interpolate(masks[:, None].float(), size=(size, size), mode="bilinear", align_corners=True)
    return up[:, 0] >= 0.5


def _upsample_logits(logits: torch.Tensor, size: int) -> torch.Tensor:
    return F.interpolate(logits, size=(size, size), mode="bilinear", align_corners=True)


def crop_and_resize(
    masks: torch.Tensor, boxes: torch.Tensor, indices: torch.Tensor, size: int, binarize: bool = True
) -> torch.Tensor:
    """Sample ``masks[indices[k]]`` inside ``boxes[k]`` on a ``size × size`` grid.

    ``masks`` is ``(M, H, W)`` (any numeric dtype); boxes are clipped to ``[0, W] x [0, H]`` first.
    Uses RoIAlign (aligned=True, adaptive sampling), then ``>= 0.5`` when ``binarize``: the
    bitmap target path of spec §2.2. Returns ``(K, size, size)`` float.
    """
    k = boxes.shape[0]
    if k == 0:
        return masks.new_zeros((0, size, size), dtype=torch.float32)
    h, w = masks.shape[-2:]
    clipped = boxes.to(torch.float32).clone()
    clipped[:, 0::2] = clipped[:, 0::2].clamp(0, w)
    clipped[:, 1::2] = clipped[:, 1::2].clamp(0, h)
    rois = torch.cat([indices.to(clipped)[:, None], clipped], dim=1).to(masks.device)
    out = roi_align(masks[:, None].float(), rois, (size, size), 1.0, 0, True)[:, 0]
    return (out >= 0.5).float() if binarize else out


def stage_targets(
    masks: torch.Tensor, boxes: torch.Tensor, gt_indices: torch.Tensor, sizes: Sequence[int]
) -> list[torch.Tensor]:
    """Per-stage instance targets ``(K, S, S)`` (0/1 float) for every size in ``sizes``."""
    return [crop_and_resize(masks, boxes, gt_indices, s) for s in sizes]


def semantic_target(
    masks_per_image: Sequence[torch.Tensor], padded_hw: tuple[int, int], out_hw: tuple[int, int]
) -> torch.Tensor:
    """Union of each image's instance masks, zero-padded to ``padded_hw``, resized to ``out_hw``.

    Resizing is bilinear with align_corners=False, then ``>= 0.5`` (spec §2.2). Returns ``(B, h, w)``.
    """
    full = torch.zeros((len(masks_per_image), *padded_hw), dtype=torch.float32)
    for i, m in enumerate(masks_per_image):
        if m.numel():
            union = (m > 0).any(dim=0).float()
            full = full.to(union.device)
            full[i, : union.shape[0], : union.shape[1]] = union
    small = F.interpolate(full[:, None], size=out_hw, mode="bilinear", align_corners=False)[:, 0]
    return (small >= 0.5).float()


def refine_mask_loss(
    stage_logits: Sequence[torch.Tensor],
    targets: Sequence[torch.Tensor],
    stage_weights: Sequence[float],
    boundary_width: int = 2,
    start_stage: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted instance loss over the stages and the unweighted per-stage terms (spec §2.3).

    Stages up to ``start_stage`` use BCE over every pixel; later stages use BCE over the union of
    the band of the previous (merged) prediction and the band of the previous target, both at the
    previous size, upsampled. ``stage_logits[i]`` is ``(K, 1, S_i, S_i)``, ``targets[i]`` ``(K, S_i, S_i)``.
    """
    terms = []
    pre = None
    for idx, (logits, target) in enumerate(zip(stage_logits, targets)):
        pred = logits[:, 0]
        if idx <= start_stage:
            if pred.numel() == 0:
                term = pred.sum() * 0.0
            else:
                term = F.binary_cross_entropy_with_logits(pred, target, reduction="mean")
            if idx == start_stage:
                pre = pred.detach().sigmoid() >= 0.5
        else:
            size = pred.shape[-1]
            with torch.no_grad():
                region = (boundary_band(pre, boundary_width) == BAND) | (
                    boundary_band(targets[idx - 1], boundary_width) == BAND
                )
                region = _resize_binary(region, size).float()
            per_pixel = F.binary_cross_entropy_with_logits(pred, target, reduction="none")
            term = (per_pixel * region).sum() / region.sum().clamp(min=1.0)
            with torch.no_grad():
                replace = _resize_binary(boundary_band(pre, 1) == BAND, size)
                prev_up = _upsample_logits(stage_logits[idx - 1].detach(), size)[:, 0]
                merged = torch.where(replace, pred.detach(), prev_up)
                pre = merged.sigmoid() >= 0.5
        terms.append(term)
    stacked = torch.stack(terms)
    weights = torch.as_tensor(list(stage_weights), dtype=stacked.dtype, device=stacked.device)
    return (stacked * weights).sum(), stacked


def semantic_loss(semantic_logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE-with-logits over every pixel of the padded batch; ``semantic_logits`` is ``(B, 1, h, w)``."""
    return F.binary_cross_entropy_with_logits(semantic_logits[:, 0], target, reduction="mean")


def merge_stage_logits(stage_logits: Sequence[torch.Tensor], return_all: bool = False):
    """Inference merge (spec §2.5): drop the first stage, then chain 28 → 56 → 112.

    Off the width-1 band of the current merged map, the next map takes the bilinear
    (align_corners=True) upsampling of the current logits; on the band it keeps its own logits.
    Returns the final ``(K, 1, S, S)`` logits (and every merged map when ``return_all``).
    """
    current = stage_logits[1]
    merged = [current]
    for nxt in stage_logits[2:]:
        size = nxt.shape[-1]
        keep_coarse = _resize_binary(boundary_band(current[:, 0].sigmoid() >= 0.5, 1) != BAND, size)
        current = torch.where(keep_coarse[:, None], _upsample_logits(current, size), nxt)
        merged.append(current)
    return (current, merged) if return_all else current
