"""Multi-level RoIAlign over P2-P5 with aligned=True and adaptive sampling (spec §5.4.3).

torchvision's ``MultiScaleRoIAlign`` hard-codes ``aligned=False``; this one is a drop-in with the
same call signature ``(features, boxes, image_shapes)`` so torchvision's ``RoIHeads`` can use it.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torchvision.ops import roi_align


def boxes_to_rois(boxes: Sequence[torch.Tensor]) -> torch.Tensor:
    """List of per-image ``(n_i, 4)`` boxes → ``(sum n_i, 5)`` rows ``[image_index, x1, y1, x2, y2]``."""
    if len(boxes) == 0:
        return torch.zeros((0, 5))
    parts = [torch.cat([b.new_full((b.shape[0], 1), i), b], dim=1) for i, b in enumerate(boxes)]
    return torch.cat(parts, dim=0)


def map_levels(rois: torch.Tensor, num_levels: int, finest_scale: int = 56) -> torch.Tensor:
    """mmdet's level rule: ``floor(log2(sqrt(w*h) / 56 + 1e-6))`` clamped to ``[0, num_levels-1]``."""
    scale = torch.sqrt((rois[:, 3] - rois[:, 1]).clamp(min=0) * (rois[:, 4] - rois[:, 2]).clamp(min=0))
    levels = torch.floor(torch.log2(scale / finest_scale + 1e-6))
    return levels.clamp(min=0, max=num_levels - 1).long()


class MultiLevelRoIAlign(nn.Module):
    def __init__(self, featmap_names: Sequence[str], output_size: int, strides: Sequence[int] = (4, 8, 16, 32)):
        super().__init__()
        self.featmap_names = list(featmap_names)
        self.output_size = (output_size, output_size)
        self.scales = [1.0 / s for s in strides]

    def forward_rois(self, features: dict[str, torch.Tensor], rois: torch.Tensor) -> torch.Tensor:
        maps = [features[n] for n in self.featmap_names]
        first = maps[0]
        out = first.new_zeros((rois.shape[0], first.shape[1], *self.output_size))
        if rois.shape[0] == 0:
            return out
        rois = rois.to(dtype=first.dtype, device=first.device)
        levels = map_levels(rois, len(maps))
        for level, (fmap, scale) in enumerate(zip(maps, self.scales)):
            idx = torch.nonzero(levels == level).flatten()
            if idx.numel() == 0:
                continue
            pooled = roi_align(fmap, rois[idx], self.output_size, scale, 0, True)
            out[idx] = pooled.to(out.dtype)
        return out

    def forward(self, features, boxes, image_shapes=None) -> torch.Tensor:
        return self.forward_rois(features, boxes_to_rois(boxes))


