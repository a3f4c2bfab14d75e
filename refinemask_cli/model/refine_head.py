"""The RefineMask mask head: semantic head on P2, instance convs and three SFM stages (spec §1.2-1.4).

Attribute names follow the official ``RefineMaskHead`` so that its state dict loads strictly with a
pure prefix rename. The head computes logits only; targets, losses and the merge live in ``bar``.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import roi_align

SEMANTIC_STRIDE = 4
PRIOR_UNKNOWN = 0.5  # the prior of a box without a coarse mask: says nothing either way
PRIOR_SCALE_INIT = 2.0


class ConvReLU(nn.Module):
    """A bias conv with optional ReLU, kept under the attribute ``conv`` (mmcv ConvModule, no norm)."""

    def __init__(self, cin: int, cout: int, kernel: int, dilation: int = 1, relu: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, padding=dilation * (kernel // 2), dilation=dilation)
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        return F.relu(x, inplace=True) if self.relu else x  # in place: conv's backward needs only its input


class MultiBranchFusion(nn.Module):
    """Three dilated 3×3 branches summed, then a 1×1 merge conv without activation."""

    def __init__(self, channels: int, dilations: Sequence[int] = (1, 3, 5)):
        super().__init__()
        for i, d in enumerate(dilations, start=1):
            setattr(self, f"dilation_conv_{i}", ConvReLU(channels, channels, 3, dilation=d))
        self.num_branches = len(dilations)
        self.merge_conv = ConvReLU(channels, channels, 1, relu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.dilation_conv_1(x)
        for i in range(2, self.num_branches + 1):
            out = out + getattr(self, f"dilation_conv_{i}")(x)
        return self.merge_conv(out)


def label_logits(conv: nn.Conv2d, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``(K, 1, S, S)``: each RoI's own label channel of the 1×1 ``conv`` applied to ``x`` (the only
    channel when the conv is class-agnostic), computed as a per-RoI dot product over the input
    channels instead of all C output maps (at 112×112 with 80 classes, 1/80 of the work)."""
    if conv.out_channels == 1:
        return conv(x)
    labels = labels.to(x.device)
    weight = conv.weight[labels, :, 0, 0]  # (K, Cin)
    # (K, S, S, Cin) @ (K, 1, Cin, 1): no layout copy when x is channels-last
    out = torch.matmul(x.permute(0, 2, 3, 1), weight[:, None, :, None]).permute(0, 3, 1, 2)
    return out + conv.bias[labels].to(out.dtype)[:, None, None, None]


def _roi_align_semantic(x: torch.Tensor, rois: torch.Tensor, size: int) -> torch.Tensor:
    return roi_align(x, rois, (size, size), 1.0 / SEMANTIC_STRIDE, 0, True)


def _same_layout(parts: list[torch.Tensor], like: torch.Tensor) -> list[torch.Tensor]:
    """``parts`` in ``like``'s dtype and memory layout, so that concatenating them does not promote
    (bf16 + fp32 → fp32) or change layout: either would copy the whole (K, C, S, S) result once more
    before the next conv casts or reorders it back."""
    if like.is_contiguous(memory_format=torch.channels_last) and like.shape[1] > 1:
        return [t.to(dtype=like.dtype, memory_format=torch.channels_last) for t in parts]
    return [t.to(like.dtype) for t in parts]


class SFMStage(nn.Module):
    """One semantic fusion stage: S×S×C in, 2S×2S×(C/2) out, plus this stage's mask logits."""

    def __init__(
        self,
        semantic_channels: int,
        channels: int,
        size: int,
        num_classes: int,
        dilations: Sequence[int] = (1, 3, 5),
        prior_channels: int = 0,
    ):
        super().__init__()
        self.size = size
        self.semantic_transform_in = nn.Conv2d(semantic_channels, channels, 1)
        self.semantic_transform_out = nn.Conv2d(channels, channels, 1)
        self.instance_logits = nn.Conv2d(channels, num_classes, 1)
        self.fuse_conv = nn.ModuleList(
            [nn.Conv2d(2 * channels + 2 + prior_channels, channels, 1), MultiBranchFusion(channels, dilations)]
        )
        self.fuse_transform_out = nn.Conv2d(channels, channels // 2 - 2, 1)
        self.upsample = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        if prior_channels:
            # the prior also shifts this stage's logits: scale * (prior - 0.5), 0 where it says nothing
            self.prior_scale = nn.Parameter(torch.tensor(PRIOR_SCALE_INIT))

    def transform_semantic(self, semantic_feat: torch.Tensor) -> torch.Tensor:
        """The per-stage 1×1 transform of the whole semantic map (computed once per batch)."""
        return F.relu(self.semantic_transform_in(semantic_feat), inplace=True)

    def forward(
        self,
        x: torch.Tensor,
        semantic_map: torch.Tensor,
        semantic_prob: torch.Tensor,
        rois: torch.Tensor,
        labels: torch.Tensor,
        prior: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        size = self.size
        logits = label_logits(self.instance_logits, x, labels)
        if prior is not None:
            logits = logits + self.prior_scale * (prior - 0.5)
        instance_mask = logits.sigmoid()
        sem_feat = F.relu(self.semantic_transform_out(_roi_align_semantic(semantic_map, rois, size)), inplace=True)
        sem_mask = _roi_align_semantic(semantic_prob, rois, size)
        parts = [x, sem_feat, instance_mask, sem_mask]
        if prior is not None:
            parts.append(prior)
        parts = _same_layout(parts, x)
        x = F.relu(self.fuse_conv[0](torch.cat(parts, dim=1)), inplace=True)
        x = F.relu(self.fuse_conv[1](x), inplace=True)
        x = F.relu(self.fuse_transform_out(x), inplace=True)
        # the official head applies ReLU after the upsampling too; bilinear weights are non-negative
        # and x >= 0 already, so that ReLU is the identity and is skipped (one 112² pass less per RoI)
        x = self.upsample(x)
        up = 2 * size
        masks = torch.cat([instance_mask, sem_mask], dim=1)
        masks = F.interpolate(masks, size=(up, up), mode="bilinear", align_corners=True)
        return torch.cat(_same_layout([x, masks], x), dim=1), logits


class RefineMaskHead(nn.Module):
    """Semantic head + instance convs + SFM stages + final 112×112 logits.

    ``in_channels`` is the FPN width (256 in the official configs); stage widths halve from it.
    ``stage_num_classes`` gives each stage's logit channels (last entry: the final logits); a 1 makes
    that stage class-agnostic. ``prior=True`` (not in the paper; off for official checkpoints) adds
    one coarse-mask channel to every fusion and a learned prior bias to every stage's logits.
    """

    def __init__(
        self,
        in_channels: int = 256,
        stage_num_classes: Sequence[int] = (80, 80, 80, 80),
        stage_sizes: Sequence[int] = (14, 28, 56, 112),
        num_convs_instance: int = 2,
        num_convs_semantic: int = 4,
        dilations: Sequence[int] = (1, 3, 5),
        prior: bool = False,
    ):
        super().__init__()
        if len(stage_num_classes) != len(stage_sizes):
            raise ValueError("stage_num_classes and stage_sizes must have the same length")
        self.stage_sizes = tuple(stage_sizes)
        self.use_prior = prior
        self.instance_convs = nn.ModuleList(
            [ConvReLU(in_channels, in_channels, 3) for _ in range(num_convs_instance)]
        )
        self.semantic_convs = nn.ModuleList(
            [ConvReLU(in_channels, in_channels, 3) for _ in range(num_convs_semantic)]
        )
        stages = []
        channels = in_channels
        for size, ncls in zip(stage_sizes[:-1], stage_num_classes[:-1]):
            stages.append(SFMStage(in_channels, channels, size, ncls, dilations, int(prior)))
            channels //= 2
        self.stages = nn.ModuleList(stages)
        self.final_instance_logits = nn.Conv2d(channels, stage_num_classes[-1], 1)
        self.semantic_logits = nn.Conv2d(in_channels, 1, 1)
        if prior:
            self.final_prior_scale = nn.Parameter(torch.tensor(PRIOR_SCALE_INIT))
        self._init_weights()

    def _init_weights(self) -> None:
        # official: kaiming-normal (fan_out, relu) everywhere, bias 0. For the 1×1 logit layers that
        # gives std sqrt(2 / num_outputs): sqrt(2) for a class-agnostic head, whose logits then start
        # in the hundreds and the first losses explode; those layers start small instead.
        prediction = {id(self.final_instance_logits), id(self.semantic_logits)}
        prediction |= {id(stage.instance_logits) for stage in self.stages}
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                if id(m) in prediction:
                    nn.init.normal_(m.weight, std=0.01)
                else:
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def semantic_forward(self, p2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Semantic feature (B, C, h, w) and 1-channel semantic logits at stride 4."""
        x = p2
        for conv in self.semantic_convs:
            x = conv(x)
        return x, self.semantic_logits(x)

    def prepare_semantic(self, semantic_feat: torch.Tensor, semantic_logits: torch.Tensor):
        """Whole-map inputs of every stage, so RoI chunks can share them."""
        # RoIAlign reads float32 NCHW (it converts anything else on every call): convert once here
        maps = [stage.transform_semantic(semantic_feat).float().contiguous() for stage in self.stages]
        return maps, semantic_logits.float().sigmoid().contiguous()

    def instance_forward(
        self,
        roi_feats: torch.Tensor,
        semantic_maps: Sequence[torch.Tensor],
        semantic_prob: torch.Tensor,
        rois: torch.Tensor,
        labels: torch.Tensor,
        prior: torch.Tensor | None = None,
    ) -> list[torch.Tensor]:
        """Stage logits ``[(K,1,14,14), (K,1,28,28), (K,1,56,56), (K,1,112,112)]``.

        ``prior`` is ``(K, S, S)`` with S the final size, a coarse mask in RoI coordinates (1 = inside,
        0 = outside, 0.5 = unknown: a box without a mask). It joins every fusion as a channel and
        shifts every stage's logits by a learned ``scale * (prior - 0.5)``.
        """
        if self.use_prior and prior is None:
            prior = roi_feats.new_full((roi_feats.shape[0], self.stage_sizes[-1], self.stage_sizes[-1]), PRIOR_UNKNOWN)
        x = roi_feats
        for conv in self.instance_convs:
            x = conv(x)
        outputs = []
        for stage, sem_map in zip(self.stages, semantic_maps):
            stage_prior = None
            if self.use_prior:
                stage_prior = F.adaptive_avg_pool2d(prior[:, None].to(x.dtype), stage.size)
            x, logits = stage(x, sem_map, semantic_prob, rois, labels, stage_prior)
            outputs.append(logits)
        final = label_logits(self.final_instance_logits, x, labels)
        if self.use_prior:
            final = final + self.final_prior_scale * (prior[:, None].to(final.dtype) - PRIOR_UNKNOWN)
        outputs.append(final)
        return outputs

    def forward(
        self,
        roi_feats: torch.Tensor,
        p2: torch.Tensor,
        rois: torch.Tensor,
        labels: torch.Tensor,
        prior: torch.Tensor | None = None,
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Stage logits and semantic logits for RoIs ``(K, 5)`` with 0-based ``labels``."""
        semantic_feat, semantic_logits = self.semantic_forward(p2)
        maps, prob = self.prepare_semantic(semantic_feat, semantic_logits)
        return self.instance_forward(roi_feats, maps, prob, rois, labels, prior), semantic_logits
