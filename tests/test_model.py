"""Detector contract: shapes, empty inputs, the given-boxes path, and a real learning test."""
import math

import numpy as np
import pytest
import torch

from refinemask_cli.model import ModelConfig, build_model
from refinemask_cli.model.refine_head import RefineMaskHead
from refinemask_cli.predictor import Predictor

from .helpers import ellipse_scene, image_tensor, iou, tiny_config, to_target


def test_stage_shapes_and_semantic_stride():
    head = RefineMaskHead(in_channels=32, stage_num_classes=(3, 3, 3, 1))
    p2 = torch.randn(2, 32, 24, 32)
    rois = torch.tensor([[0, 4.0, 4.0, 60.0, 50.0], [1, 10.0, 0.0, 90.0, 96.0]])
    logits, sem = head(torch.randn(2, 32, 14, 14), p2, rois, torch.tensor([0, 2]))
    assert [tuple(x.shape) for x in logits] == [(2, 1, s, s) for s in (14, 28, 56, 112)]
    assert tuple(sem.shape) == (2, 1, 24, 32)  # stride 4 of a 96x128 padded batch


def test_mask_head_parameter_count_coco():
    head = RefineMaskHead(in_channels=256, stage_num_classes=(80, 80, 80, 80))
    assert sum(p.numel() for p in head.parameters()) == 6_407_003  # spec §1.9: 6.41 M


def test_prior_head_changes_fusion_width_only():
    head = RefineMaskHead(in_channels=32, stage_num_classes=(1, 1, 1, 1), prior=True)
    assert head.stages[0].fuse_conv[0].in_channels == 2 * 32 + 3
    rois = torch.tensor([[0, 4.0, 4.0, 60.0, 50.0]])
    a, _ = head(torch.randn(1, 32, 14, 14), torch.randn(1, 32, 16, 16), rois, torch.tensor([0]),
                prior=torch.zeros(1, 112, 112))
    b, _ = head(torch.randn(1, 32, 14, 14), torch.randn(1, 32, 16, 16), rois, torch.tensor([0]))
    assert a[-1].shape == b[-1].shape == (1, 1, 112, 112)
    # the prior shifts the logits: a full prior raises them against an empty one, by about 2 * scale
    feats, p2 = torch.randn(1, 32, 14, 14), torch.randn(1, 32, 16, 16)
    lo, _ = head(feats, p2, rois, torch.tensor([0]), prior=torch.zeros(1, 112, 112))
    hi, _ = head(feats, p2, rois, torch.tensor([0]), prior=torch.ones(1, 112, 112))
    assert (hi[0] - lo[0]).mean() > 1.0 and (hi[-1] - lo[-1]).mean() > 1.0


def _train_losses(model, images, targets):
    model.train()
    return model(images, targets)


def test_losses_with_images_without_objects():
    model = build_model(tiny_config())
    img, mask, box = ellipse_scene()
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long),
             "masks": torch.zeros(0, 64, 80, dtype=torch.uint8)}
    losses = _train_losses(model, [image_tensor(img), image_tensor(img)], [to_target(mask, box), empty])
    assert set(losses) == {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg",
                           "loss_instance", "loss_semantic"}
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    only_empty = _train_losses(model, [image_tensor(img)], [empty])
    assert all(torch.isfinite(v) for v in only_empty.values())


def test_eval_zero_detections_and_zero_boxes():
    model = build_model(tiny_config(box_score_thresh=1.1)).eval()  # nothing passes the threshold
    img, _, _ = ellipse_scene()
    with torch.no_grad():
        det = model([image_tensor(img)])[0]
        assert det["boxes"].shape == (0, 4) and det["mask_logits"].shape == (0, 1, 112, 112)
        out = model.refine([image_tensor(img)], [torch.zeros(0, 4)], [torch.zeros(0, dtype=torch.long)])[0]
        assert out["mask_logits"].shape == (0, 1, 112, 112)


def test_training_requires_targets():
    model = build_model(tiny_config()).train()
    with pytest.raises(ValueError, match="targets"):
        model([torch.rand(3, 32, 32)])


def test_learning_overfits_one_image():
    """A tiny model learns one synthetic object from its box: mask IoU rises past 0.85."""
    torch.manual_seed(0)
    model = build_model(tiny_config(num_classes=1, class_names=("obj",), class_agnostic="all"))
    img, mask, box = ellipse_scene()

    def current_iou():  # a Predictor runs a snapshot of the model, so take a new one each time
        det = Predictor(model, device="cpu").refine(img, box[None], np.array([0]))
        return iou(det.masks[0].full(*mask.shape), mask)

    before = current_iou()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    images, targets = [image_tensor(img)], [to_target(mask, box)]
    first = None
    for step in range(40):
        model.train()
        losses = model.mask_losses(images, targets)
        loss = sum(losses.values())
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = current_iou()
    assert loss.item() < 0.5 * first
    print(f"mask IoU {before:.3f} -> {after:.3f}, loss {first:.3f} -> {loss.item():.3f}")
    assert after > 0.85, (before, after)
    assert after > before


def test_rescore_by_mask_golden():
    from refinemask_cli.model.detector import rescore_by_mask

    logits = torch.full((3, 1, 4, 4), -5.0)
    logits[0, 0, :2] = math.log(0.6 / 0.4)  # half the box at p = 0.6: maskness 0.6
    logits[1, 0, :3] = math.log(0.99 / 0.01)  # sure: 0.99
    # mask 2 is empty: maskness 0
    scores, order = rescore_by_mask(torch.tensor([0.9, 0.8, 0.95]), logits)
    assert order.tolist() == [1, 0, 2]
    assert scores.tolist() == pytest.approx([0.8 * 0.99, 0.9 * 0.6, 0.0], abs=1e-6)


def test_mask_scoring_reranks_the_same_detections():
    """With ``mask_scoring`` the model returns the same boxes and masks, each score times its mask's
    confidence, best first."""
    from refinemask_cli.model.detector import rescore_by_mask

    torch.manual_seed(0)
    plain = build_model(tiny_config(box_score_thresh=0.0)).eval()
    scored = build_model(tiny_config(box_score_thresh=0.0, mask_scoring=True)).eval()
    scored.load_state_dict(plain.state_dict())
    img, _, _ = ellipse_scene()
    with torch.no_grad():
        a = plain([image_tensor(img)])[0]
        b = scored([image_tensor(img)])[0]
    assert len(a["scores"]) > 2
    expected, order = rescore_by_mask(a["scores"], a["mask_logits"])
    assert torch.allclose(b["scores"], expected)
    assert torch.equal(b["boxes"], a["boxes"][order]) and torch.equal(b["mask_logits"], a["mask_logits"][order])
    assert (b["scores"][:-1] >= b["scores"][1:]).all() and (b["scores"] <= a["scores"][order]).all()


def test_anchor_sizes_are_the_rpns_and_checked():
    """``anchor_sizes`` sets the RPN's anchor side per level (state dict unchanged, so a checkpoint
    trained with one set loads into another); a malformed set is refused with what is expected."""
    from refinemask_cli.model.config import ModelConfig

    def level_sides(model):
        return [s[0] for s in model.rpn.anchor_generator.sizes]

    default = build_model(tiny_config())
    small = build_model(tiny_config(anchor_sizes=(16, 32, 64, 128, 256)))
    assert level_sides(default) == [32, 64, 128, 256, 512]
    assert level_sides(small) == [16, 32, 64, 128, 256]
    small.load_state_dict(default.state_dict())
    cfg = ModelConfig.from_dict(tiny_config(anchor_sizes=(24, 48, 96, 192, 384)).to_dict())
    assert cfg.anchor_sizes == (24, 48, 96, 192, 384)
    for bad in [(32, 64, 128, 256), (64, 32, 128, 256, 512), (2, 8, 16, 32, 64)]:
        with pytest.raises(ValueError, match="anchor_sizes"):
            tiny_config(anchor_sizes=bad)
    # the anchors the RPN lays over an image are half as wide with the halved sides
    img, _, _ = ellipse_scene()

    def narrowest_anchor(model):
        images, _ = model.eval().transform([image_tensor(img)])
        with torch.no_grad():
            anchors = model.rpn.anchor_generator(images, list(model.backbone(images.tensors).values()))[0]
        return (anchors[:, 2] - anchors[:, 0]).min().item()

    # base anchors are rounded to whole pixels, hence the tolerance
    assert narrowest_anchor(small) == pytest.approx(narrowest_anchor(default) / 2, rel=0.1)


def test_vote_boxes_golden():
    from refinemask_cli.model.detector import vote_boxes

    boxes = torch.tensor([[0.0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60], [0, 0, 10, 12]])
    scores = torch.tensor([0.9, 0.3, 0.8, 0.6])
    labels = torch.tensor([0, 0, 0, 1])  # the last one overlaps the first but is another class
    voted = vote_boxes(boxes, scores, labels, torch.tensor([0, 2]), 0.5)  # IoU(0, 1) = 81 / 119
    assert torch.allclose(voted, torch.tensor([[0.25, 0.25, 10.25, 10.25], [50, 50, 60, 60]]), atol=1e-5)
    assert vote_boxes(boxes, scores, labels, torch.tensor([0]), 0.7).tolist() == [[0, 0, 10, 10]]
    assert vote_boxes(boxes, scores, labels, torch.tensor([], dtype=torch.long), 0.5).shape == (0, 4)


def test_box_voting_keeps_the_detections_and_moves_their_boxes():
    """``box_vote_iou`` changes where kept boxes lie, never which detections NMS keeps or their scores."""
    torch.manual_seed(0)
    plain = build_model(tiny_config(box_score_thresh=0.0)).eval()
    voting = build_model(tiny_config(box_score_thresh=0.0, box_vote_iou=0.6)).eval()
    voting.load_state_dict(plain.state_dict())
    img, _, _ = ellipse_scene()
    with torch.no_grad():
        a = plain([image_tensor(img)])[0]
        b = voting([image_tensor(img)])[0]
    assert len(a["scores"]) > 2 and torch.equal(a["scores"], b["scores"])
    moved = (a["boxes"] - b["boxes"]).abs().amax(1)
    assert (moved > 1e-3).any() and (moved < 0.5 * (a["boxes"][:, 2:] - a["boxes"][:, :2]).amax(1)).all()
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="box_vote_iou"):
            tiny_config(box_vote_iou=bad)


def _box_logits(mask: torch.Tensor) -> torch.Tensor:
    return (mask.float() * 20 - 10)[None]  # sure logits: +10 inside, -10 outside


def test_demote_parts_golden():
    """A detection mostly inside a larger, better one of its label is demoted; one that sticks out,
    one of another label, and the larger one itself are not; the order follows the new scores."""
    from refinemask_cli.model.detector import demote_parts

    full = torch.ones(112, 112)
    left = torch.zeros(112, 112)
    left[:, :56] = 1  # only the left half of its box is object
    boxes = torch.tensor([[0.0, 0, 100, 100],   # the whole object
                          [10, 10, 40, 40],     # inside it: a part
                          [80, 0, 140, 100],    # a third inside it: another object
                          [20, 20, 50, 50],     # inside it, but another label
                          [76, 10, 136, 50]])   # box mostly outside 0, but its mask (left half) 4/5 inside
    scores = torch.tensor([0.9, 0.8, 0.7, 0.75, 0.6])
    labels = torch.tensor([0, 0, 0, 1, 0])
    logits = torch.stack([_box_logits(m) for m in (full, full, full, full, left)])
    new, order = demote_parts(boxes, scores, labels, logits, overlap=0.7, factor=0.5)
    assert order.tolist() == [0, 3, 2, 1, 4]
    assert torch.allclose(new, torch.tensor([0.9, 0.75, 0.7, 0.4, 0.3]))
    # a smaller detection scoring higher does not make the larger one a part
    new, order = demote_parts(boxes[[1, 0]], torch.tensor([0.9, 0.8]), labels[:2], logits[:2], 0.7, 0.5)
    assert order.tolist() == [0, 1] and torch.allclose(new, torch.tensor([0.9, 0.8]))
    # overlap 0.9: a fifth of the left-half mask lies outside box 0, so it is no part then
    _, order = demote_parts(boxes, scores, labels, logits, overlap=0.9, factor=0.5)
    assert order.tolist() == [0, 3, 2, 4, 1]
    for bad in ({"part_overlap": 1.5}, {"part_score_factor": -0.1}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            tiny_config(**bad)


def test_inference_changes_parse_the_settings_a_bench_row_or_shipped_file_may_change():
    from refinemask_cli.model.config import ModelConfig, inference_changes

    changes, rest = inference_changes("min_size=448,max_size=704,mask_threshold=0.4,vote=0.75,mask_scoring=1,"
                                      "part=0.7,part_factor=0.5,masks=zoom")
    assert changes == {"min_size": 448, "max_size": 704, "mask_threshold": 0.4, "box_vote_iou": 0.75,
                       "mask_scoring": True, "part_overlap": 0.7, "part_score_factor": 0.5}
    assert rest == {"masks": "zoom"}
    assert ModelConfig().replace(**changes).box_vote_iou == 0.75
    assert inference_changes("") == ({}, {})
    for bad, says in (("min_size=big", "min_size='big': expected an integer"), ("vote", "not key=value"),
                      ("mask_scoring=yes", "expected 0 or 1"), ("vote=high", "expected a number")):
        with pytest.raises(ValueError, match=says):
            inference_changes(bad)
    with pytest.raises(ValueError, match="mask_threshold"):
        ModelConfig().replace(mask_threshold=1.0)


def test_vote_boxes_mixed_precision():
    """Under autocast boxes and scores may come in different float types: the vote runs in float32
    and returns the boxes' own type."""
    from refinemask_cli.model.detector import vote_boxes

    boxes = torch.tensor([[0.0, 0, 10, 10], [1, 1, 11, 11]], dtype=torch.bfloat16)
    voted = vote_boxes(boxes, torch.tensor([0.9, 0.3]), torch.tensor([0, 0]), torch.tensor([0]), 0.5)
    assert voted.dtype == torch.bfloat16 and torch.allclose(voted.float(), torch.tensor([[0.25, 0.25, 10.25, 10.25]]), atol=0.1)


def test_config_values_of_the_wrong_type_are_named():
    """A [model] table or a checkpoint's config with "320" for an integer: named with its setting
    (the range checks raised "'<' not supported between 'str' and 'int'")."""
    with pytest.raises(ValueError, match=r"invalid model config: mask_scoring must be true or false, got 1; "
                                         r"zoom_size must be an integer, got '320'$"):
        ModelConfig.from_dict({**tiny_config().to_dict(), "zoom_size": "320", "mask_scoring": 1})
    with pytest.raises(ValueError, match="min_size must be an integer, got 384.0"):
        tiny_config(min_size=384.0)
    assert tiny_config(box_nms_thresh=1).box_nms_thresh == 1  # an int is a number


def test_image_transform_normalises_as_torchvision_does():
    """The model's transform normalises with one full-size temporary (the quotient written over the
    difference): bit for bit torchvision's numbers, and the same refusal of integer images."""
    from torchvision.models.detection.transform import GeneralizedRCNNTransform

    from refinemask_cli.model.detector import ImageTransform

    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    ours, theirs = ImageTransform(64, 96, mean, std), GeneralizedRCNNTransform(64, 96, mean, std)
    image = torch.rand(40, 30, 3).permute(2, 0, 1)  # laid out as Predictor hands it over (from HWC)
    assert torch.equal(ours.normalize(image), theirs.normalize(image))
    assert torch.equal(ours([image])[0].tensors, theirs([image])[0].tensors)
    assert isinstance(build_model(ModelConfig(num_classes=2)).transform, ImageTransform)
    with pytest.raises(TypeError, match="float"):
        ours.normalize(torch.zeros(3, 4, 4, dtype=torch.uint8))
