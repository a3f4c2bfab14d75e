"""RefineMask R-CNN on torchvision parts: transform → backbone+FPN → RPN → box head → RefineMask head.

Public conventions (everything outside this module): images are float ``(3, H, W)`` tensors in [0, 1],
RGB; boxes are ``x1, y1, x2, y2`` in pixels of the image as given; class labels are 0-based indices
into the model's classes. Internally torchvision's box head keeps background at index 0.

- ``forward(images, targets)`` in train mode returns the loss dict; targets hold ``boxes`` (n, 4),
  ``labels`` (n,) and ``masks`` (n, H, W) uint8.
- ``forward(images)`` in eval mode returns per image ``boxes``, ``labels``, ``scores`` and
  ``mask_logits`` (n, 1, 112, 112): merged logits in each box's own coordinates, not pasted; with
  ``mask_scoring`` the scores are scaled by each mask's confidence and re-ranked; with
  ``part_overlap`` detections whose mask lies mostly inside a better one's are demoted.
- ``refine(images, boxes, labels, priors)``: the same masks for given boxes, skipping the RPN.
- ``mask_losses(images, targets)``: train only the mask branch (semantic + refine heads) from the
  ground-truth boxes, for datasets where only some objects are labelled.
- A target with ``every_object`` false (a partly labelled image) teaches the RPN and box head its
  labelled objects only, never the rest of the image as background, and not the semantic head.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection._utils import Matcher
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.roi_heads import RoIHeads, fastrcnn_loss
from torchvision.models.detection.rpn import RegionProposalNetwork
from torchvision.models.detection.transform import (
    GeneralizedRCNNTransform,
    resize_boxes,
)
from torchvision.ops import boxes as box_ops
from torchvision.ops import roi_align

from . import bar
from .config import ModelConfig
from .poolers import MultiLevelRoIAlign, boxes_to_rois
from .prior import sample_priors
from .refine_head import SEMANTIC_STRIDE, RefineMaskHead
from .zoom import (
    ZoomSpec,
    crop_masks,
    crop_regions,
    flip_boxes,
    from_crop,
    to_crop,
    zoom_regions,
)


def partly_labelled(targets) -> list[bool]:
    """Per image, whether only some of its objects are labelled (target ``every_object`` false)."""
    return [not bool(t.get("every_object", True)) for t in targets]


class RefineRPN(RegionProposalNetwork):
    """torchvision's RPN; in a partly labelled image no anchor is taken as background (those that
    would be are ignored), so its unlabelled objects are not taught as "nothing here"."""

    def assign_targets_to_anchors(self, anchors, targets):
        labels, matched = super().assign_targets_to_anchors(anchors, targets)
        for lbl, partial in zip(labels, partly_labelled(targets)):
            if partial:
                lbl[lbl == 0] = -1.0
        return labels, matched


class RefineRoIHeads(RoIHeads):
    """torchvision's box head (sampling, loss, post-processing) plus the RefineMask mask branch."""

    def __init__(
        self,
        cfg: ModelConfig,
        box_roi_pool: MultiLevelRoIAlign,
        box_head: nn.Module,
        box_predictor: nn.Module,
        mask_roi_pool: MultiLevelRoIAlign,
        mask_head: RefineMaskHead,
    ):
        super().__init__(
            box_roi_pool,
            box_head,
            box_predictor,
            0.5,
            0.5,
            cfg.box_batch_size_per_image,
            cfg.box_positive_fraction,
            (10.0, 10.0, 5.0, 5.0),
            cfg.box_score_thresh,
            cfg.box_nms_thresh,
            cfg.detections_per_img,
            mask_roi_pool=mask_roi_pool,
            mask_head=mask_head,
        )
        # mmdet's R-CNN assigner keeps low-quality matches (spec §3.1, §5.4.10)
        self.proposal_matcher = Matcher(0.5, 0.5, allow_low_quality_matches=True)
        self.box_loss_weight = cfg.box_loss_weight
        self.stage_sizes = cfg.stage_sizes
        self.stage_loss_weights = cfg.stage_loss_weights
        self.semantic_loss_weight = cfg.semantic_loss_weight
        self.boundary_width = cfg.boundary_width
        self.prior_probability = cfg.prior_probability if cfg.coarse_prior else 0.0
        self.roi_chunk_size = cfg.roi_chunk_size
        self.mask_scoring = cfg.mask_scoring
        self.mask_threshold = cfg.mask_threshold
        self.box_vote_iou = cfg.box_vote_iou
        self.part_overlap, self.part_score_factor = cfg.part_overlap, cfg.part_score_factor
        self.vote_floor = cfg.box_score_thresh
        # inference: run the semantic head only over the part of P2 the RoIs can read (exact)
        self.semantic_window = True
        # inference: run the mask branch (semantic and instance heads) under autocast in this dtype,
        # the rest of the model as it is (Predictor's "bf16-masks"; None: no autocast of its own)
        self.mask_dtype: torch.dtype | None = None
        # training: positive RoIs per image that train the mask branch (0: all, up to 128 of the
        # 512 sampled); fewer make full-mode steps much cheaper, the mask head being the costly part
        self.mask_rois_per_image = 0
        # training: per image of the batch being sampled, whether it is partly labelled
        self._partial: list[bool] | None = None

    # -- training ---------------------------------------------------------------------------
    def forward(self, features, proposals, image_shapes, targets=None, with_masks: bool = True):
        if self.training:
            proposals, matched_idxs, labels, regression_targets = self.select_training_samples(proposals, targets)
        box_feats = self.box_head(self.box_roi_pool(features, proposals, image_shapes))
        class_logits, box_regression = self.box_predictor(box_feats)
        if not self.training:
            boxes, scores, labels = self.postprocess_detections(class_logits, box_regression, proposals, image_shapes)
            head_labels = [lbl - 1 for lbl in labels]
            mask_logits = self.predict_masks(features, boxes, head_labels)
            if self.mask_scoring:
                for i, (s, m) in enumerate(zip(scores, mask_logits)):
                    scores[i], order = rescore_by_mask(s, m, self.mask_threshold)
                    boxes[i], head_labels[i], mask_logits[i] = boxes[i][order], head_labels[i][order], m[order]
            if self.part_overlap:
                for i, (b, s, lbl, m) in enumerate(zip(boxes, scores, head_labels, mask_logits)):
                    scores[i], order = demote_parts(b, s, lbl, m, self.part_overlap, self.part_score_factor,
                                                    self.mask_threshold)
                    boxes[i], head_labels[i], mask_logits[i] = b[order], lbl[order], m[order]
            return [
                {"boxes": b, "labels": lbl, "scores": s, "mask_logits": m}
                for b, lbl, s, m in zip(boxes, head_labels, scores, mask_logits)
            ]
        loss_cls, loss_box = fastrcnn_loss(class_logits, box_regression, labels, regression_targets)
        losses = {"loss_classifier": self.box_loss_weight * loss_cls, "loss_box_reg": self.box_loss_weight * loss_box}
        if not with_masks:
            return losses
        pos_boxes, pos_labels, pos_inds = [], [], []
        for props, lbl, idx in zip(proposals, labels, matched_idxs):
            pos = torch.nonzero(lbl > 0).flatten()
            if self.mask_rois_per_image and len(pos) > self.mask_rois_per_image:  # a random subset
                pos = pos[torch.randperm(len(pos), device=pos.device)[: self.mask_rois_per_image]]
            pos_boxes.append(props[pos])
            pos_labels.append(lbl[pos] - 1)
            pos_inds.append(idx[pos])
        losses.update(self.mask_losses(features, pos_boxes, pos_labels, pos_inds, [t["masks"] for t in targets],
                                       semantic=[not p for p in partly_labelled(targets)]))
        return losses

    def select_training_samples(self, proposals, targets):
        """torchvision's sampling, with no proposal of a partly labelled image sampled as background."""
        self._partial = partly_labelled(targets)
        try:
            return super().select_training_samples(proposals, targets)
        finally:
            self._partial = None

    def assign_targets_to_proposals(self, proposals, gt_boxes, gt_labels):
        matched_idxs, labels = super().assign_targets_to_proposals(proposals, gt_boxes, gt_labels)
        for lbl, partial in zip(labels, self._partial or ()):
            if partial:
                lbl[lbl == 0] = -1  # the sampler takes negatives only from label 0
        return matched_idxs, labels

    def postprocess_detections(self, class_logits, box_regression, proposals, image_shapes):
        """torchvision's (decode, clip, drop background, low scores and empty boxes, NMS per class,
        keep the best ``detections_per_img``), then with ``box_vote_iou`` each kept box voted.

        The voters are every candidate down to the model's own score floor (``vote_floor``), also
        when a caller raised ``score_thresh`` to keep fewer detections; greedy NMS keeps the same
        boxes above the raised threshold either way."""
        if not self.box_vote_iou:
            return super().postprocess_detections(class_logits, box_regression, proposals, image_shapes)
        own = (self.score_thresh, self.nms_thresh, self.detections_per_img)
        self.score_thresh = min(self.score_thresh, self.vote_floor)
        self.nms_thresh, self.detections_per_img = 1.0, sum(len(p) for p in proposals) * class_logits.shape[-1]
        try:  # every candidate, best first (NMS at IoU 1 suppresses nothing)
            candidates = super().postprocess_detections(class_logits, box_regression, proposals, image_shapes)
        finally:
            self.score_thresh, self.nms_thresh, self.detections_per_img = own
        out: tuple[list, list, list] = ([], [], [])
        for b, s, lbl in zip(*candidates):
            keep = box_ops.batched_nms(b, s, lbl, self.nms_thresh)
            keep = keep[s[keep] > self.score_thresh][: self.detections_per_img]
            for acc, v in zip(out, (vote_boxes(b, s, lbl, keep, self.box_vote_iou), s[keep], lbl[keep])):
                acc.append(v)
        return out

    def mask_losses(
        self,
        features: dict[str, torch.Tensor],
        boxes: Sequence[torch.Tensor],
        labels: Sequence[torch.Tensor],
        gt_indices: Sequence[torch.Tensor],
        gt_masks: Sequence[torch.Tensor],
        semantic: Sequence[bool] | None = None,
    ) -> dict[str, torch.Tensor]:
        """``loss_instance`` and ``loss_semantic`` for RoIs ``boxes`` matched to ``gt_masks[gt_indices]``.
        ``semantic``: per image, whether the semantic head learns from it (every object labelled);
        the semantic loss is the mean over those images' pixels (0 when there are none)."""
        p2 = features["0"]
        rois = boxes_to_rois(boxes).to(p2)
        head_labels = torch.cat(list(labels)).to(p2.device) if len(labels) else torch.zeros(0, dtype=torch.long)
        per_image = [
            bar.stage_targets(m.to(p2.device), b, i, self.stage_sizes) for m, b, i in zip(gt_masks, boxes, gt_indices)
        ]
        targets = [torch.cat([t[s] for t in per_image]) for s in range(len(self.stage_sizes))]
        priors = sample_priors(targets[-1], self.prior_probability) if self.mask_head.use_prior else None
        roi_feats = self.mask_roi_pool.forward_rois(features, rois)
        stage_logits, semantic_logits = self.mask_head(roi_feats, p2, rois, head_labels, priors)
        loss_instance, _ = bar.refine_mask_loss(
            stage_logits, targets, self.stage_loss_weights, self.boundary_width, start_stage=1
        )
        padded_hw = (p2.shape[-2] * 4, p2.shape[-1] * 4)
        sem_target = bar.semantic_target([m.to(p2.device) for m in gt_masks], padded_hw, tuple(p2.shape[-2:]))
        if semantic is not None and not all(semantic):
            use = torch.as_tensor(list(semantic), dtype=torch.bool, device=p2.device)
            semantic_logits, sem_target = semantic_logits[use], sem_target.to(p2.device)[use]
        if semantic_logits.shape[0]:
            loss_semantic = self.semantic_loss_weight * bar.semantic_loss(semantic_logits, sem_target.to(p2))
        else:  # no fully labelled image in the batch: a zero that keeps the graph (DDP)
            loss_semantic = semantic_logits.sum() * 0.0
        return {"loss_instance": loss_instance, "loss_semantic": loss_semantic}

    # -- inference ----------------------------------------------------------------------------
    def predict_masks(
        self,
        features: dict[str, torch.Tensor],
        boxes: Sequence[torch.Tensor],
        labels: Sequence[torch.Tensor],
        priors: Sequence[torch.Tensor] | None = None,
    ) -> list[torch.Tensor]:
        """Merged 112×112 mask logits per image for ``boxes`` (network-input coordinates), RoIs chunked;
        with ``mask_dtype`` computed under autocast in it and returned in float32."""
        if self.mask_dtype is None:
            return self._predict_masks(features, boxes, labels, priors)
        with torch.autocast(features["0"].device.type, dtype=self.mask_dtype):
            return [m.float() for m in self._predict_masks(features, boxes, labels, priors)]

    def _predict_masks(self, features, boxes, labels, priors) -> list[torch.Tensor]:
        head: RefineMaskHead = self.mask_head
        p2 = features["0"]
        size = self.stage_sizes[-1]
        rois = boxes_to_rois(boxes).to(p2)
        all_labels = torch.cat(list(labels)).to(p2.device) if len(labels) else torch.zeros(0, dtype=torch.long)
        all_priors = torch.cat(list(priors)).to(p2) if priors is not None and len(priors) else None
        counts = [b.shape[0] for b in boxes]
        if rois.shape[0] == 0:
            return [p2.new_zeros((n, 1, size, size)) for n in counts]
        sem_rois = rois
        if self.semantic_window:
            window = semantic_window(rois, tuple(p2.shape[-2:]), len(head.semantic_convs))
            if window is not None:
                x0, y0, x1, y1 = window
                p2 = p2[..., y0:y1, x0:x1]
                shift = SEMANTIC_STRIDE * torch.tensor([0, x0, y0, x0, y0], dtype=rois.dtype, device=rois.device)
                sem_rois = rois - shift
        semantic_feat, semantic_logits = head.semantic_forward(p2)
        maps, prob = head.prepare_semantic(semantic_feat, semantic_logits)
        out = []
        for start in range(0, rois.shape[0], self.roi_chunk_size):
            sl = slice(start, start + self.roi_chunk_size)
            feats = self.mask_roi_pool.forward_rois(features, rois[sl])
            prior = all_priors[sl] if all_priors is not None else None
            stage_logits = head.instance_forward(feats, maps, prob, sem_rois[sl], all_labels[sl], prior)
            out.append(bar.merge_stage_logits(stage_logits))
        return list(torch.cat(out).split(counts))

    def regress_boxes(
        self, features, boxes: Sequence[torch.Tensor], labels: Sequence[torch.Tensor], image_shapes
    ) -> list[torch.Tensor]:
        """One pass of the box head's class-specific regression on given boxes, clipped to the image."""
        feats = self.box_head(self.box_roi_pool(features, boxes, image_shapes))
        _, deltas = self.box_predictor(feats)
        decoded = self.box_coder.decode(deltas, list(boxes))  # (K, C+1, 4)
        flat_labels = torch.cat(list(labels)) + 1
        chosen = decoded[torch.arange(decoded.shape[0]), flat_labels.clamp(max=decoded.shape[1] - 1)]
        out = []
        for b, shape in zip(chosen.split([len(b) for b in boxes]), image_shapes):
            out.append(box_ops.clip_boxes_to_image(b, shape))
        return out


def vote_boxes(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, keep: torch.Tensor,
               vote_iou: float) -> torch.Tensor:
    """Boxes ``keep`` (indices) each replaced by the score-weighted mean of the candidates of its
    label overlapping it by at least ``vote_iou`` (itself among them)."""
    if keep.numel() == 0:
        return boxes[keep]
    weights = (box_ops.box_iou(boxes[keep], boxes) >= vote_iou) & (labels[keep][:, None] == labels[None])
    weights = weights.float() * scores.float()[None]  # in float32 whatever autocast made of boxes and scores
    return ((weights @ boxes.float()) / weights.sum(1, keepdim=True).clamp(min=1e-12)).to(boxes.dtype)


def rescore_by_mask(scores: torch.Tensor, mask_logits: torch.Tensor, threshold: float = 0.5):
    """``scores`` × each mask's mean foreground probability (over its pixels at or above
    ``threshold``; 0 for an empty mask), and the order that ranks them best first."""
    prob = mask_logits.flatten(1).float().sigmoid()
    fg = prob >= threshold
    maskness = (prob * fg).sum(1) / fg.sum(1).clamp(min=1)
    new = scores * maskness.to(scores.dtype)
    order = torch.argsort(new, descending=True, stable=True)
    return new[order], order


def demote_parts(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, mask_logits: torch.Tensor,
                 overlap: float, factor: float, threshold: float = 0.5, grid: int = 28, chunk: int = 256):
    """Scores of detections that look like a part of another one, times ``factor``: at least
    ``overlap`` of the detection's mask lies inside the mask of a detection of the same label that
    scores higher and whose mask is larger (the legs of a found person, half of a found bus). Returns
    the new scores, best first, and that order.

    Masks are ``mask_logits`` (n, 1, S, S) over each box, compared on a ``grid`` × ``grid`` sample of
    each mask (cell centres, the probability averaged over the cell): a point of one mask is inside
    the other when the other's probability there, read bilinearly, is at least ``threshold``."""
    n = scores.shape[0]
    if n < 2 or factor == 1.0:
        order = torch.argsort(scores, descending=True, stable=True)
        return scores[order], order
    prob = mask_logits[:, 0].float().sigmoid()  # (n, S, S)
    cells = F.adaptive_avg_pool2d(prob[:, None], grid)[:, 0] >= threshold  # (n, G, G)
    b = boxes.float()
    wh = (b[:, 2:] - b[:, :2]).clamp(min=1e-6)
    area = cells.flatten(1).float().mean(1) * wh[:, 0] * wh[:, 1]
    rank = torch.empty(n, dtype=torch.long, device=scores.device)
    rank[torch.argsort(scores, descending=True, stable=True)] = torch.arange(n, device=scores.device)
    # [i, j]: j may make i a part (ranks better, same label, larger mask, boxes overlap)
    pairs = ((rank[None, :] < rank[:, None]) & (labels[None, :] == labels[:, None])
             & (area[None, :] > area[:, None]) & (box_ops.box_iou(b, b) > 0)).nonzero()
    part = torch.zeros(n, dtype=torch.bool, device=scores.device)
    centres = (torch.arange(grid, device=b.device, dtype=torch.float32) + 0.5) / grid
    for start in range(0, pairs.shape[0], chunk):
        i, j = pairs[start : start + chunk].unbind(1)
        # the cell centres of mask i in image coordinates, then in box j's [-1, 1] coordinates
        xs = b[i, 0, None] + centres[None] * wh[i, 0, None]
        ys = b[i, 1, None] + centres[None] * wh[i, 1, None]
        gx = (xs - b[j, 0, None]) / wh[j, 0, None] * 2 - 1
        gy = (ys - b[j, 1, None]) / wh[j, 1, None] * 2 - 1
        pts = torch.stack(torch.broadcast_tensors(gx[:, None, :], gy[:, :, None]), dim=-1)  # (p, G, G, 2)
        inside = F.grid_sample(prob[j][:, None], pts, align_corners=False)[:, 0] >= threshold
        own = cells[i]
        frac = (inside & own).flatten(1).sum(1) / own.flatten(1).sum(1).clamp(min=1)
        part[i[frac >= overlap]] = True
    new = torch.where(part, scores * factor, scores)
    order = torch.argsort(new, descending=True, stable=True)
    return new[order], order


def semantic_window(rois: torch.Tensor, size: tuple[int, int], reach: int, min_saving: float = 0.1):
    """The ``(x0, y0, x1, y1)`` window of the stride-4 semantic map that RoIAlign can read for these
    RoIs, widened by the semantic convs' reach (``reach`` stacked 3×3 convs see ``reach`` cells
    around), so that the head run on the window gives exactly the full map's values wherever the
    RoIs sample. ``None`` when the window would save less than ``min_saving`` of the map.

    RoIAlign (aligned) samples box points at ``coord / 4 − 0.5`` and reads the two cells around each."""
    height, width = size
    xs = rois[:, [1, 3]] / SEMANTIC_STRIDE - 0.5
    ys = rois[:, [2, 4]] / SEMANTIC_STRIDE - 0.5
    margin = reach + 1
    x0 = max(int(math.floor(xs.min().item())) - margin, 0)
    y0 = max(int(math.floor(ys.min().item())) - margin, 0)
    x1 = min(int(math.floor(xs.max().item())) + 2 + margin, width)
    y1 = min(int(math.floor(ys.max().item())) + 2 + margin, height)
    if x1 <= x0 or y1 <= y0 or (x1 - x0) * (y1 - y0) > (1 - min_saving) * height * width:
        return None
    return x0, y0, x1, y1


def remap_priors(priors: torch.Tensor, old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """Resample ``(K, S, S)`` priors drawn in boxes ``old`` into boxes ``new`` (zeros outside)."""
    size = priors.shape[-1]
    w = (old[:, 2] - old[:, 0]).clamp(min=1e-6)
    h = (old[:, 3] - old[:, 1]).clamp(min=1e-6)
    rel = torch.stack(
        [(new[:, 0] - old[:, 0]) * size / w, (new[:, 1] - old[:, 1]) * size / h,
         (new[:, 2] - old[:, 0]) * size / w, (new[:, 3] - old[:, 1]) * size / h], dim=1,
    )
    rois = torch.cat([torch.arange(len(rel), device=rel.device, dtype=rel.dtype)[:, None], rel], dim=1)
    return roi_align(priors[:, None].float(), rois, (size, size), 1.0, 0, True)[:, 0]


class ImageTransform(GeneralizedRCNNTransform):
    """torchvision's transform, normalising with one full-size temporary instead of two (the
    quotient is written over the difference: the same numbers); a 48-Mpx photo held 1.7 GB of float
    copies at once, now 1.2 GB."""

    def resize(self, image: torch.Tensor, target: dict | None = None) -> tuple[torch.Tensor, dict | None]:
        """torchvision's resize, except for images thinner than ``max_size`` : 1 (2 × 2000 pixels at
        704): the long side sets the scale and the short one rounded to 0 rows, which failed in
        interpolate. Those keep at least one row (column); every other image is resized as before."""
        h, w = image.shape[-2:]
        if self.fixed_size is not None or min(h, w) * self.max_size >= max(h, w) or (
                self.training and getattr(self, "_skip_resize", False)):
            return super().resize(image, target)
        scale = self.max_size / max(h, w)
        size = (max(1, int(h * scale)), max(1, int(w * scale)))
        image = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]
        if target is not None:
            target["boxes"] = resize_boxes(target["boxes"], (h, w), size)
            if "masks" in target:
                target["masks"] = F.interpolate(target["masks"][:, None].float(), size=size)[:, 0].byte()
        return image, target

    def normalize(self, image: torch.Tensor) -> torch.Tensor:
        if not image.is_floating_point():
            raise TypeError(f"images must be float tensors, got {image.dtype}")
        mean = torch.as_tensor(self.image_mean, dtype=image.dtype, device=image.device)
        std = torch.as_tensor(self.image_std, dtype=image.dtype, device=image.device)
        return (image - mean[:, None, None]).div_(std[:, None, None])


class RefineMaskRCNN(nn.Module):
    def __init__(
        self,
        cfg: ModelConfig,
        backbone: nn.Module,
        rpn: nn.Module,
        roi_heads: RefineRoIHeads,
        transform: GeneralizedRCNNTransform,
    ):
        super().__init__()
        self.cfg = cfg
        self.transform = transform
        self.backbone = backbone
        self.rpn = rpn
        self.roi_heads = roi_heads

    @staticmethod
    def _check_images(images: Sequence[torch.Tensor]) -> None:
        for i, img in enumerate(images):
            if img.dim() != 3 or img.shape[0] != 3:
                raise ValueError(f"image {i}: expected a (3, H, W) tensor, got shape {tuple(img.shape)}")
            if not img.is_floating_point():
                raise ValueError(f"image {i}: expected a float tensor in [0, 1], got {img.dtype}")

    @staticmethod
    def _to_torchvision_targets(targets):
        return [{**t, "labels": t["labels"].long() + 1} for t in targets]

    def forward(self, images: Sequence[torch.Tensor], targets: Sequence[dict] | None = None, mask_only: bool = False,
                zoom: ZoomSpec | None = None, zoom_crops: int = 2, zoom_margin_jitter: float = 0.0,
                detector_only: bool = False):
        """Train mode: the loss dict (``mask_only``: mask-branch losses from the target boxes only,
        in zoom crops when ``zoom`` is given; ``detector_only``: RPN and box-head losses only).
        Eval mode: detections."""
        self._check_images(images)
        if self.training:
            if targets is None:
                raise ValueError("targets are required in training mode")
            if mask_only:
                return self.mask_losses(images, targets, zoom, zoom_crops, zoom_margin_jitter)
            images_t, targets_t = self.transform(list(images), self._to_torchvision_targets(targets))
            features = self.backbone(images_t.tensors)
            proposals, rpn_losses = self.rpn(images_t, features, targets_t)
            losses = self.roi_heads(features, proposals, images_t.image_sizes, targets_t, with_masks=not detector_only)
            return {**rpn_losses, **losses}
        original_sizes = [tuple(img.shape[-2:]) for img in images]
        images_t, _ = self.transform(list(images))
        features = self.backbone(images_t.tensors)
        proposals, _ = self.rpn(images_t, features)
        detections = self.roi_heads(features, proposals, images_t.image_sizes)
        for det, net_size, orig in zip(detections, images_t.image_sizes, original_sizes):
            det["boxes"] = resize_boxes(det["boxes"], net_size, orig)
        return detections

    def mask_losses(self, images: Sequence[torch.Tensor], targets: Sequence[dict], zoom: ZoomSpec | None = None,
                    zoom_crops: int = 2, zoom_margin_jitter: float = 0.0) -> dict[str, torch.Tensor]:
        """Mask-branch losses with the (already jittered, if wanted) target boxes as RoIs.

        With ``zoom``: up to ``zoom_crops`` objects per image, each in its own crop (margin drawn
        within ``± zoom_margin_jitter`` of the spec's); the semantic target of a crop is every
        labelled object in it."""
        self._check_images(images)
        if zoom is not None:
            images_t, targets_t = self._zoom_training_batch(images, targets, zoom, zoom_crops, zoom_margin_jitter)
            if images_t is None:  # no object in any image of the batch
                zero = sum(p.sum() for p in self.roi_heads.mask_head.parameters()) * 0.0
                return {"loss_instance": zero, "loss_semantic": zero}
        else:
            images_t, targets_t = self.transform(list(images), [dict(t) for t in targets])
        features = self.backbone(images_t.tensors)
        boxes = [t["boxes"] for t in targets_t]
        labels = [t["labels"].long() for t in targets_t]
        inds = [torch.arange(len(b), device=b.device) for b in boxes]
        return self.roi_heads.mask_losses(features, boxes, labels, inds, [t["masks"] for t in targets_t],
                                          semantic=[not p for p in partly_labelled(targets_t)])

    def _normalized_batch(self, images: Sequence[torch.Tensor]) -> ImageList:
        """Normalised and padded to a multiple of 32, without resizing (zoom crops: one size per
        batch already, so a larger canvas would only add work)."""
        imgs = [self.transform.normalize(im) for im in images]
        sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in imgs]
        return ImageList(self.transform.batch_images(imgs, size_divisible=32), sizes)

    def set_canvas(self, canvas: int = 0) -> None:
        """Pad every whole-image batch to multiples of ``canvas`` pixels (0: of 32, the default).
        With ``canvas`` at least the input's long side every batch has ONE shape, so kernels chosen
        per shape (reduced precision on CUDA) are chosen once; smaller values give a few size buckets.
        Padding is zeros after normalisation, at the right and bottom: boxes and masks away from those
        edges are unchanged, near them within the network's border effects."""
        if canvas and (canvas < 32 or canvas % 32):
            raise ValueError(f"canvas must be 0 or a multiple of 32 pixels, got {canvas}")
        self.transform.size_divisible = canvas or 32

    def _fill(self, like: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(self.transform.image_mean, dtype=torch.float32, device=like.device)

    def _zoom_training_batch(self, images, targets, zoom: ZoomSpec, per_image: int, margin_jitter: float):
        crops, out_targets = [], []
        for img, t in zip(images, targets):
            n = len(t["boxes"])
            if n == 0:
                continue
            pick = torch.randperm(n)[:per_image].to(img.device)
            margin = zoom.margin * (1 + margin_jitter * (2 * torch.rand(len(pick)) - 1))
            boxes = t["boxes"][pick].float()
            regions = zoom_regions(boxes, zoom, margin.to(boxes))
            masks = t["masks"]
            inst = crop_masks(masks, pick, regions, zoom.size)
            union = crop_masks((masks > 0).any(dim=0, keepdim=True), torch.zeros_like(pick), regions, zoom.size)
            crop_boxes = to_crop(boxes, regions, zoom.size)
            images_k = crop_regions(img, regions, zoom.size, self._fill(img))
            for j in range(len(pick)):
                crops.append(images_k[j])
                out_targets.append({"boxes": crop_boxes[j : j + 1], "labels": t["labels"][pick[j : j + 1]],
                                    "masks": torch.stack([inst[j], union[j]]),
                                    "every_object": t.get("every_object", True)})
        if not crops:
            return None, None
        return self._normalized_batch(crops), out_targets

    def refine(
        self,
        images: Sequence[torch.Tensor],
        boxes: Sequence[torch.Tensor],
        labels: Sequence[torch.Tensor],
        priors: Sequence[torch.Tensor | None] | None = None,
        regress_boxes: bool = False,
        zoom: ZoomSpec | None = None,
        flip: bool = False,
        passes: int = 1,
        crop_batch: int = 8,
        second_zoom: ZoomSpec | None = None,
    ) -> list[dict[str, torch.Tensor]]:
        """Masks for given boxes (image coordinates): per image ``boxes`` (maybe tightened), ``mask_logits``.

        ``priors[i]`` is ``(n_i, 112, 112)`` coarse masks in box coordinates (0.5 = box only).
        ``zoom``: each box refined in its own crop (``crop_batch`` crops per forward pass); else the
        whole image at the transform's size. ``flip``: logits averaged with those of the mirrored
        input. ``passes`` > 1: the previous pass's mask is fed back as the coarse prior (features reused).
        ``second_zoom`` (with ``zoom``): the same boxes refined again in crops of that geometry, logits
        averaged in box coordinates (the boxes must stay as given: not with ``regress_boxes``).
        """
        self._check_images(images)
        if second_zoom is not None and (zoom is None or regress_boxes):
            raise ValueError("a second zoom size needs zoom mode and boxes kept as given (no box regression)")
        if passes < 1:
            raise ValueError(f"passes must be >= 1, got {passes}")
        if passes > 1 and not self.roi_heads.mask_head.use_prior:
            raise ValueError("several passes feed the mask back as a coarse prior; this model has no prior input")
        dev = images[0].device if len(images) else torch.device("cpu")
        boxes = [b.to(dev).reshape(-1, 4).float() for b in boxes]
        labels = [lbl.to(dev).long() for lbl in labels]
        size = self.cfg.stage_sizes[-1]
        if self.roi_heads.mask_head.use_prior and (priors is not None or passes > 1):
            priors = [p.to(dev).float() if p is not None else boxes[i].new_full((len(boxes[i]), size, size), 0.5)
                      for i, p in enumerate(priors if priors is not None else [None] * len(boxes))]
        else:
            priors = None
        if zoom is None:
            out_boxes, logits = self._refine_views(list(images), boxes, labels, priors, regress_boxes, flip, passes,
                                                   resize=True)
        else:
            out_boxes, logits = self._refine_zoom(list(images), boxes, labels, priors, regress_boxes, flip, passes,
                                                  zoom, crop_batch)
            if second_zoom is not None:
                _, more = self._refine_zoom(list(images), boxes, labels, priors, False, flip, passes, second_zoom,
                                            crop_batch)
                logits = [(a + b) / 2 for a, b in zip(logits, more)]
        return [{"boxes": b, "labels": lbl, "mask_logits": m} for b, lbl, m in zip(out_boxes, labels, logits)]

    def _refine_zoom(self, images, boxes, labels, priors, regress_boxes, flip, passes, zoom: ZoomSpec, crop_batch: int):
        counts = [len(b) for b in boxes]
        all_boxes = torch.cat(boxes) if boxes else torch.zeros((0, 4))
        size = self.cfg.stage_sizes[-1]
        if all_boxes.shape[0] == 0:
            return boxes, [all_boxes.new_zeros((0, 1, size, size)) for _ in boxes]
        regions = torch.cat([zoom_regions(b, zoom) for b in boxes])
        sizes = zoom.crop_sizes(regions)
        all_labels = torch.cat(labels)
        all_priors = torch.cat(priors) if priors is not None else None
        owner = [i for i, n in enumerate(counts) for _ in range(n)]
        # chunks of up to crop_batch crops of one size, in input order within a size
        order = sorted(range(len(owner)), key=lambda k: (sizes[k], k))
        chunks, step = [], max(1, crop_batch)
        for k in order:
            if chunks and len(chunks[-1]) < step and sizes[chunks[-1][0]] == sizes[k]:
                chunks[-1].append(k)
            else:
                chunks.append([k])
        out_boxes: list = [None] * len(owner)
        out_logits: list = [None] * len(owner)
        # the image less the fill colour, once: outside the image RoIAlign reads 0, i.e. the fill
        fills = [self._fill(img).reshape(-1, 1, 1) for img in images]
        shifted = [img.float() - f for img, f in zip(images, fills)]
        for idx in chunks:  # within a chunk, indices (and so owners) ascend
            side = sizes[idx[0]]
            crop_boxes = to_crop(all_boxes[idx], regions[idx], side)
            crops = []
            for i in sorted({owner[k] for k in idx}):  # each image read once per chunk
                ks = [k for k in idx if owner[k] == i]
                crops += list((crop_regions(shifted[i], regions[ks], side) + fills[i]).unbind(0))
            b, lg = self._refine_views(
                crops, [crop_boxes[j : j + 1] for j in range(len(idx))], [all_labels[k : k + 1] for k in idx],
                [all_priors[k : k + 1] for k in idx] if all_priors is not None else None,
                regress_boxes, flip, passes, resize=False,
            )
            back = from_crop(torch.cat(b), regions[idx], side)
            for j, k in enumerate(idx):
                out_boxes[k], out_logits[k] = back[j : j + 1], lg[j]
        return list(torch.cat(out_boxes).split(counts)), list(torch.cat(out_logits).split(counts))

    def _refine_views(self, images, boxes, labels, priors, regress_boxes, flip, passes, resize: bool):
        """The image as given and, with ``flip``, mirrored: logits averaged in box coordinates."""
        out_boxes, logits, used_priors = self._refine_once(images, boxes, labels, priors, regress_boxes, passes, resize)
        if not flip:
            return out_boxes, logits
        widths = [img.shape[-1] for img in images]
        mirrored = [flip_boxes(b, w) for b, w in zip(out_boxes, widths)]
        m_priors = [p.flip(-1) for p in used_priors] if used_priors is not None else None
        _, m_logits, _ = self._refine_once([img.flip(-1) for img in images], mirrored, labels, m_priors, False,
                                           passes, resize)
        return out_boxes, [(a + b.flip(-1)) / 2 for a, b in zip(logits, m_logits)]

    def _refine_once(self, images, boxes, labels, priors, regress_boxes, passes, resize: bool):
        """One view: ``(boxes in image coordinates, logits, priors after any box regression)``."""
        original_sizes = [tuple(img.shape[-2:]) for img in images]
        images_t = self.transform(list(images))[0] if resize else self._normalized_batch(images)
        features = self.backbone(images_t.tensors)
        net_boxes = [
            resize_boxes(b.to(features["0"]).reshape(-1, 4), orig, net)
            for b, orig, net in zip(boxes, original_sizes, images_t.image_sizes)
        ]
        labels = [lbl.to(features["0"].device).long() for lbl in labels]
        use_priors = [p.to(features["0"]) for p in priors] if priors is not None else None
        if regress_boxes:
            new_boxes = self.roi_heads.regress_boxes(features, net_boxes, labels, images_t.image_sizes)
            if use_priors is not None:
                use_priors = [remap_priors(p, o, n) if len(o) else p for p, o, n in zip(use_priors, net_boxes, new_boxes)]
            net_boxes = new_boxes
        logits = self.roi_heads.predict_masks(features, net_boxes, labels, use_priors)
        for _ in range(passes - 1):
            fed_back = [(lg[:, 0].float().sigmoid() >= 0.5).to(features["0"].dtype) for lg in logits]
            logits = self.roi_heads.predict_masks(features, net_boxes, labels, fed_back)
        back = [resize_boxes(b, net, orig) for b, net, orig in zip(net_boxes, images_t.image_sizes, original_sizes)]
        return back, logits, None if use_priors is None else [p.float() for p in use_priors]
