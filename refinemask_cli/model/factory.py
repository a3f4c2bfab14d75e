"""Build a RefineMask R-CNN from a ``ModelConfig``: the one place that wires the parts together."""
from __future__ import annotations

from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.rpn import RPNHead

from .backbone import build_backbone
from .config import ModelConfig
from .detector import ImageTransform, RefineMaskRCNN, RefineRoIHeads, RefineRPN
from .poolers import MultiLevelRoIAlign
from .refine_head import RefineMaskHead

LEVELS = ["0", "1", "2", "3"]


def build_model(cfg: ModelConfig) -> RefineMaskRCNN:
    c = cfg.fpn_channels
    backbone = build_backbone(cfg.backbone, c, cfg.trainable_backbone_layers)
    anchors = AnchorGenerator(tuple((int(a),) for a in cfg.anchor_sizes), ((0.5, 1.0, 2.0),) * 5)
    rpn = RefineRPN(
        anchors,
        RPNHead(c, anchors.num_anchors_per_location()[0]),
        fg_iou_thresh=0.7,
        bg_iou_thresh=0.3,
        batch_size_per_image=256,
        positive_fraction=0.5,
        pre_nms_top_n={"training": cfg.rpn_pre_nms_top_n_train, "testing": cfg.rpn_pre_nms_top_n_test},
        post_nms_top_n={"training": cfg.rpn_post_nms_top_n_train, "testing": cfg.rpn_post_nms_top_n_test},
        nms_thresh=0.7,
    )
    mask_head = RefineMaskHead(
        in_channels=c,
        stage_num_classes=cfg.stage_num_classes,
        stage_sizes=cfg.stage_sizes,
        dilations=cfg.dilations,
        prior=cfg.coarse_prior,
    )
    roi_heads = RefineRoIHeads(
        cfg,
        box_roi_pool=MultiLevelRoIAlign(LEVELS, 7),
        box_head=TwoMLPHead(c * 7 * 7, 1024),
        box_predictor=FastRCNNPredictor(1024, cfg.num_classes + 1),
        mask_roi_pool=MultiLevelRoIAlign(LEVELS, cfg.stage_sizes[0]),
        mask_head=mask_head,
    )
    transform = ImageTransform(cfg.min_size, cfg.max_size, list(cfg.image_mean), list(cfg.image_std))
    return RefineMaskRCNN(cfg, backbone, rpn, roi_heads, transform)


def with_settings(model: RefineMaskRCNN, **changes) -> RefineMaskRCNN:
    """A copy of ``model`` (its tensors) whose config has ``changes``: inference settings such as the
    input size or the mask thresholds, which decide how the same tensors are run."""
    changed = build_model(model.cfg.replace(**changes))
    changed.load_state_dict(model.state_dict())
    return changed
