"""Coarse-mask prior (beyond the paper): simulated hasty annotations for training.

A prior is a ``(K, S, S)`` map in RoI coordinates (1 = inside the object, 0 = outside). With no
coarse mask it is 0.5 everywhere: the box alone says nothing about which pixels are the object. In training, ``sample_priors`` replaces that with a degraded copy
of the ground truth for a share of RoIs, so the model learns to use a coarse mask and to correct it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

MODES = ("dilate", "erode", "down_up", "affine")


def _dilate(m: torch.Tensor, r: int) -> torch.Tensor:
    return F.max_pool2d(m[:, None], 2 * r + 1, stride=1, padding=r)[:, 0]


def _erode(m: torch.Tensor, r: int) -> torch.Tensor:
    return 1.0 - _dilate(1.0 - m, r)


def _down_up(m: torch.Tensor, res: int) -> torch.Tensor:
    size = m.shape[-1]
    small = F.interpolate(m[:, None], size=(res, res), mode="area")
    return (F.interpolate(small, size=(size, size), mode="bilinear", align_corners=False)[:, 0] >= 0.5).float()


def _affine(m: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Shift and rescale inside the RoI: what a loose or shifted box does to a mask."""
    k = m.shape[0]
    scale = 1.0 + (torch.rand(k, 2, generator=g) - 0.5) * 0.3
    shift = (torch.rand(k, 2, generator=g) - 0.5) * 0.3
    theta = torch.zeros(k, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1] = scale[:, 0], scale[:, 1]
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta.to(m), [k, 1, *m.shape[-2:]], align_corners=False)
    return F.grid_sample(m[:, None], grid, mode="nearest", padding_mode="zeros", align_corners=False)[:, 0]


def degrade_masks(masks: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Each ``(S, S)`` 0/1 mask degraded by one randomly chosen mode (dilate, erode, down-up, affine)."""
    if masks.shape[0] == 0:
        return masks.clone()
    g = generator if generator is not None else torch.Generator().manual_seed(int(torch.randint(0, 2**31, ())))
    size = masks.shape[-1]
    m = masks.float()
    radius = 1 + int(torch.randint(0, max(1, size // 16), (1,), generator=g))
    res = int(torch.randint(5, 17, (1,), generator=g))
    variants = torch.stack([_dilate(m, radius), _erode(m, radius), _down_up(m, res), _affine(m, g)])
    choice = torch.randint(0, len(MODES), (m.shape[0],), generator=g).to(m.device)
    return variants[choice, torch.arange(m.shape[0], device=m.device)]


def sample_priors(
    targets: torch.Tensor, probability: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Training priors: a degraded target with ``probability``, else "unknown" (0.5: a box alone)."""
    g = generator if generator is not None else torch.Generator().manual_seed(int(torch.randint(0, 2**31, ())))
    priors = torch.full_like(targets, 0.5, dtype=torch.float32)
    use = (torch.rand(targets.shape[0], generator=g) < probability).to(targets.device)
    if use.any():
        priors[use] = degrade_masks(targets[use], g)
    return priors
