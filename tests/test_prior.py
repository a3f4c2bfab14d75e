"""Coarse-mask prior simulation: degraded targets stay close to, but differ from, the truth."""
import torch

from refinemask_cli.model.prior import MODES, degrade_masks, sample_priors


def _disc(n=6, size=112):
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    return (((yy - 56) ** 2 + (xx - 56) ** 2) < 35**2).float().expand(n, size, size).clone()


def test_degrade_masks_close_but_not_equal():
    g = torch.Generator().manual_seed(0)
    target = _disc(32)
    out = degrade_masks(target, g)
    assert out.shape == target.shape and set(out.unique().tolist()) <= {0.0, 1.0}
    inter = (out * target).sum((1, 2))
    union = ((out + target) > 0).float().sum((1, 2))
    iou = inter / union
    assert (iou > 0.5).all(), iou
    assert (iou < 1.0).float().mean() > 0.5  # most are really changed
    assert len(MODES) == 4


def test_sample_priors_probability_extremes():
    target = _disc(8)
    assert (sample_priors(target, 0.0) == 0.5).all()  # box only: unknown
    g = torch.Generator().manual_seed(1)
    p = sample_priors(target, 1.0, g)
    assert not (p == 0.5).all(dim=(1, 2)).any()


def test_empty():
    assert degrade_masks(torch.zeros(0, 112, 112)).shape == (0, 112, 112)
