"""Predictor contract: odd sizes, bad dtypes, cropped masks, pasting geometry, priors."""
import numpy as np
import pytest
import torch

from refinemask_cli.model import build_model
from refinemask_cli.predictor import (
    Detections,
    InstanceMask,
    Predictor,
    masks_to_priors,
    paste_box_probs,
    snap_to_edges,
)

from .helpers import tiny_config


@pytest.fixture(scope="module")
def predictor():
    torch.manual_seed(0)
    return Predictor(build_model(tiny_config(box_score_thresh=0.0)), device="cpu")


def test_predict_odd_size(predictor):
    img = np.random.default_rng(0).integers(0, 255, (63, 97, 3), dtype=np.uint8)
    dets = predictor.predict([img, img[:50, :41]])
    assert len(dets) == 2 and isinstance(dets[0], Detections)
    assert dets[0].image_size == (63, 97) and dets[1].image_size == (50, 41)
    for d in dets:
        assert d.boxes.shape == (len(d), 4) and len(d.masks) == len(d)
        for m, b in zip(d.masks, d.boxes):
            full = m.full(*d.image_size)
            assert full.shape == d.image_size
            assert m.x0 >= np.floor(b[0]) - 1 and m.y0 >= np.floor(b[1]) - 1


def test_refine_odd_size_and_labels(predictor):
    img = np.random.default_rng(1).integers(0, 255, (63, 97, 3), dtype=np.uint8)
    boxes = np.array([[3.5, 4.0, 40.0, 60.0], [60.0, 0.0, 97.0, 63.0]], dtype=np.float32)
    det = predictor.refine(img, boxes, np.array([0, 1]))
    assert np.allclose(det.boxes, boxes) and det.labels.tolist() == [0, 1]
    assert [m.mask.shape for m in det.masks] == [(56, 37), (63, 37)]  # pixel centres inside
    empty = predictor.refine(img, np.zeros((0, 4)), np.zeros(0))
    assert len(empty) == 0 and empty.masks == []


def test_images_thinner_than_the_models_long_side_allows_are_read(predictor):
    """A 1 x 200 image at max_size 96: the long side sets the scale (0.48) and the short side came out
    as 0 rows, so interpolate raised (a traceback from predict and from refine --mode whole). Such
    images keep one row; detections and refined masks stay inside them."""
    from refinemask_cli.model.detector import ImageTransform

    rng = np.random.default_rng(3)
    images = [rng.integers(0, 255, shape, dtype=np.uint8) for shape in ((1, 200, 3), (300, 2, 3), (1, 1, 3))]
    for img, det in zip(images, predictor.predict(images)):
        h, w = img.shape[:2]
        assert det.image_size == (h, w)
        assert (det.boxes[:, [0, 2]] <= w + 1e-3).all() and (det.boxes[:, [1, 3]] <= h + 1e-3).all()
        for m in det.masks:
            assert m.full(h, w).shape == (h, w)
    det = predictor.refine(images[0], np.array([[20.0, 0.0, 120.0, 1.0]], dtype=np.float32), np.array([0]))
    assert len(det) == 1 and det.masks[0].full(1, 200).shape == (1, 200)
    # training: boxes and masks follow the image; an image of ordinary shape is resized as before
    t = ImageTransform(64, 96, [0.0] * 3, [1.0] * 3)
    masks = torch.zeros((1, 1, 200), dtype=torch.uint8)
    masks[0, 0, 50:150] = 1
    image, target = t.resize(torch.rand(3, 1, 200), {"boxes": torch.tensor([[50.0, 0.0, 150.0, 1.0]]), "masks": masks})
    assert image.shape == (3, 1, 96) and target["masks"].shape == (1, 1, 96)
    assert torch.allclose(target["boxes"], torch.tensor([[24.0, 0.0, 72.0, 1.0]]))
    assert target["masks"][0, 0, 30].item() == 1 and target["masks"][0, 0, 10].item() == 0
    from torchvision.models.detection.transform import GeneralizedRCNNTransform

    ordinary = torch.rand(3, 63, 97)
    assert torch.equal(t.resize(ordinary)[0], GeneralizedRCNNTransform(64, 96, [0.0] * 3, [1.0] * 3).eval().resize(ordinary)[0])


@pytest.mark.parametrize("bad", [
    np.zeros((20, 20, 3), dtype=np.float32),
    np.zeros((20, 20, 3), dtype=np.uint16),
])
def test_bad_dtype(predictor, bad):
    with pytest.raises(TypeError, match="uint8"):
        predictor.predict([bad])


@pytest.mark.parametrize("bad", [np.zeros((20, 20), dtype=np.uint8), np.zeros((20, 20, 4), dtype=np.uint8)])
def test_bad_shape(predictor, bad):
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        predictor.refine(bad, np.array([[0, 0, 5, 5]]))


def test_bad_boxes_and_labels(predictor):
    img = np.zeros((20, 20, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="x2 > x1"):
        predictor.refine(img, np.array([[5, 5, 5, 9]]))
    with pytest.raises(ValueError, match="finite"):
        predictor.refine(img, np.array([[0, 0, np.nan, 9]]))
    with pytest.raises(ValueError, match="labels must be"):
        predictor.refine(img, np.array([[0, 0, 5, 9]]), np.array([7]))


def test_paste_is_subpixel_correct():
    probs = torch.ones(112, 112)
    x0, y0, p = paste_box_probs(probs, torch.tensor([2.0, 3.0, 10.0, 7.0]), 20, 20)
    m = p >= 0.5
    assert (x0, y0) == (2, 3) and m.shape == (4, 8) and bool(m.all())
    # a left-half map over a box [0, 8) covers exactly pixels 0..3
    half = torch.zeros(112, 112)
    half[:, :56] = 1
    x0, _, p = paste_box_probs(half, torch.tensor([0.0, 0.0, 8.0, 4.0]), 10, 10)
    m = p >= 0.5
    assert m[0].tolist() == [True] * 4 + [False] * 4
    # a box partly outside the image is clipped
    x0, y0, m = paste_box_probs(probs, torch.tensor([-5.0, -5.0, 3.0, 3.0]), 10, 10)
    assert (x0, y0, m.shape) == (0, 0, (3, 3))


def test_guided_filter_moves_a_soft_edge_towards_the_image_edge():
    from refinemask_cli.geometry import guided_filter

    # the image steps from dark to bright at column 20; the mask's soft edge sits at column 16 (a
    # guided filter is local and linear: it moves the edge part of the way, never past the image's)
    guide = np.zeros((40, 40), np.float32)
    guide[:, 20:] = 1.0
    cols = np.arange(40, dtype=np.float32) + 0.5
    probs = np.tile(1 / (1 + np.exp(-(cols - 16) / 3)), (40, 1)).astype(np.float32)
    before = (probs >= 0.5)[0].argmax()
    after = (guided_filter(guide, probs, 4, 1e-3) >= 0.5)[0].argmax()
    assert before == 16 and 16 < after <= 20
    # a flat guide explains nothing: the source is only smoothed, its edge stays where it was
    flat = guided_filter(np.full((40, 40), 0.5, np.float32), probs, 2, 1e-3)
    assert (flat >= 0.5)[0].argmax() == 16 and np.allclose(flat, flat[:1])
    assert np.abs(flat - probs).max() < 0.05
    with pytest.raises(ValueError, match="differ in shape"):
        guided_filter(guide, probs[:, :10], 2, 1e-3)


def test_snap_to_edges_scales_with_the_grid_and_keeps_flat_regions():
    guide = np.zeros((60, 90), np.float32)
    guide[:, 45:] = 1.0
    probs = np.zeros((60, 90), np.float32)
    probs[:, 40:] = 1.0  # drawn 5 pixels left of the image's edge
    snapped = snap_to_edges(probs, guide, cells=28)  # 90 px over 28 cells: a radius of 6 px
    assert 40 < (snapped >= 0.5)[30].argmax() <= 45
    assert snapped.min() >= 0 and snapped.max() <= 1
    assert snap_to_edges(np.zeros((0, 0), np.float32), np.zeros((0, 0), np.float32), 28).shape == (0, 0)
    # a box of fewer pixels than the grid has cells: the grid is finer than the image, nothing to snap
    assert np.array_equal(snap_to_edges(probs[:20, 30:50], guide[:20, 30:50], 28), probs[:20, 30:50])
    uniform = np.full((60, 90), 0.8, np.float32)  # no edge in the mask: nothing to move
    assert np.allclose(snap_to_edges(uniform, guide, 28), 0.8, atol=1e-4)


def test_refine_snaps_edges_unless_told_not_to(predictor, monkeypatch):
    from refinemask_cli.predictor import RefineSettings

    # a bright square [50, 250) on a dark image; the network's map (faked) draws it 3 px too large:
    # a 240-px box over 112 cells is 2.1 px a cell, so the snapping window is 4 px either side
    img = np.full((300, 300, 3), 30, np.uint8)
    img[50:250, 50:250] = 220
    logits = torch.full((1, 1, 112, 112), -6.0)
    logits[..., 8:104, 8:104] = 6.0  # box [30, 270): cells 8..103 are pixels 47.1..252.9
    monkeypatch.setattr(predictor.model, "refine", lambda images, boxes, *a, **k: [
        {"boxes": boxes[0].float(), "labels": torch.ones(1, dtype=torch.int64), "mask_logits": logits}])
    truth = np.zeros((300, 300), bool)
    truth[50:250, 50:250] = True

    def iou(settings):
        m = predictor.refine(img, np.array([[30.0, 30.0, 270.0, 270.0]]), np.array([1]), settings=settings).masks[0]
        full = m.full(300, 300)
        return (full & truth).sum() / (full | truth).sum()

    plain, snapped = iou(RefineSettings(snap_edges=False)), iou(RefineSettings())
    assert plain < 0.95 and plain + 0.01 < snapped <= 1.0, (plain, snapped)


def test_instance_mask_round_trip():
    full = np.zeros((10, 12), dtype=bool)
    full[2:5, 3:9] = True
    full[7, 10] = True
    m = InstanceMask.from_full(full)
    assert (m.x0, m.y0, m.mask.shape, m.area) == (3, 2, (6, 8), 19)
    assert np.array_equal(m.full(10, 12), full)


def test_masks_to_priors():
    full = np.zeros((40, 40), dtype=bool)
    full[10:30, 10:20] = True  # the left half of the box [10, 30) x [10, 30)
    boxes = np.array([[10, 10, 30, 30], [0, 0, 5, 5]], dtype=np.float32)
    priors = masks_to_priors([InstanceMask.from_full(full), None], boxes)
    assert priors.shape == (2, 112, 112)
    assert priors[0, :, :50].min() > 0.999 and priors[0, :, 62:].max() < 1e-6
    assert (priors[1] == 0.5).all()  # box only: unknown


@pytest.mark.parametrize("mask_scoring,vote,part", [(False, 0.0, 0.0), (True, 0.0, 0.0), (True, 0.3, 0.0),
                                                     (False, 0.0, 0.3), (True, 0.3, 0.3)])
def test_threshold_and_max_detections_inside_the_model_keep_the_same_detections(tmp_path, mask_scoring, vote, part):
    """Dropping low scores before NMS and masking only the kept detections changes nothing kept;
    with mask scoring or part demotion the best max_detections are the best by the rescored score;
    with box voting the kept boxes are still voted over every candidate."""
    from refinemask_cli.weights import load_model

    from .cocofix import tiny_weights
    from .helpers import ellipse_scene

    model, _ = load_model(tiny_weights(tmp_path / "t.pt", box_score_thresh=0.0, mask_scoring=mask_scoring,
                                    box_vote_iou=vote, part_overlap=part, part_score_factor=0.2))
    img = ellipse_scene(64, 80)[0]
    p = Predictor(model, device="cpu")
    everything = p.predict([img])[0]
    assert len(everything) > 4
    thr = float(np.sort(everything.scores)[::-1][4])  # five detections score at least this
    kept = p.predict([img], score_threshold=thr, max_detections=4)[0]
    assert len(kept) == 4 and np.allclose(kept.scores, everything.scores[:4])
    assert np.allclose(kept.boxes, everything.boxes[:4], atol=1e-4)
    for a, b in zip(kept.masks, everything.masks[:4]):
        assert np.array_equal(a.full(64, 80), b.full(64, 80))
    assert (p.model.roi_heads.score_thresh, p.model.roi_heads.detections_per_img) == (0.0, 10)  # restored


def test_refine_cuts_objects_given_a_coarse_mask_at_the_weights_mask_prompt_threshold(monkeypatch):
    from refinemask_cli.predictor import RefineSettings

    torch.manual_seed(0)
    predictor = Predictor(build_model(tiny_config(mask_prompt_threshold=0.3)), device="cpu")
    assert (predictor.threshold, predictor.mask_prompt_threshold) == (0.5, 0.3)
    # the network's map (faked) falls from sure to unsure across each box, so the cut decides the width
    ramp = torch.linspace(4.0, -4.0, 112).expand(2, 1, 112, 112).clone()
    monkeypatch.setattr(predictor.model, "refine", lambda images, boxes, *a, **k: [
        {"boxes": boxes[0].float(), "labels": torch.zeros(2, dtype=torch.int64), "mask_logits": ramp}])
    img = np.full((120, 120, 3), 128, np.uint8)
    boxes = np.array([[4.0, 4.0, 116.0, 60.0], [4.0, 60.0, 116.0, 116.0]], np.float32)
    coarse = np.zeros((120, 120), bool)
    coarse[62:114, 6:100] = True

    def areas(settings=None, masks=(None, coarse)):
        det = predictor.refine(img, boxes, np.zeros(2), list(masks), settings=settings or RefineSettings(snap_edges=False))
        return [int(m.mask.sum()) for m in det.masks]

    box_only, from_mask = areas()
    at = {t: areas(RefineSettings(snap_edges=False, mask_threshold=t))[0] for t in (0.3, 0.5, 0.7)}
    assert at[0.7] < at[0.5] < at[0.3]
    assert (box_only, from_mask) == (at[0.5], at[0.3])  # each object at its prompt's threshold
    assert areas(masks=(None, None)) == [at[0.5], at[0.5]]  # no coarse mask: the box threshold for both
    assert areas(RefineSettings(snap_edges=False, mask_threshold=0.7)) == [at[0.7], at[0.7]]  # given: for all
    # weights without their own (0) cut every object at mask_threshold
    plain = Predictor(build_model(tiny_config()), device="cpu")
    assert plain.mask_prompt_threshold == plain.threshold == 0.5
    with pytest.raises(ValueError, match="mask threshold must be between 0 and 1"):
        RefineSettings(mask_threshold=1.0)
    with pytest.raises(ValueError, match="mask_prompt_threshold must be 0"):
        tiny_config(mask_prompt_threshold=1.0)


def test_stability_is_one_for_a_crisp_mask_and_falls_as_the_edge_softens():
    import torch

    from refinemask_cli.predictor import stability

    crisp = np.zeros((20, 20), np.float32)
    crisp[5:15, 5:15] = 0.99
    assert stability(crisp, 0.5) == 1.0
    ramp = np.tile(np.linspace(0.0, 1.0, 11, dtype=np.float32), (4, 1))  # 0, 0.1, ..., 1.0 in each row
    # >= 0.7: 4 columns (0.7..1.0); >= 0.3: 8 columns (0.3..1.0)
    assert stability(ramp, 0.5) == 0.5 and stability(torch.from_numpy(ramp), 0.5) == 0.5
    assert stability(ramp, 0.4) == round(5 / 9, 4)  # a cut at 0.4 compares 0.6 with 0.2
    assert stability(np.zeros((3, 3), np.float32), 0.5) == 0.0  # nothing at all: not confident


def test_images_reach_the_model_channel_first_in_memory(predictor):
    """An HWC image becomes a CHW tensor laid out so (not a permuted view, which RoIAlign would copy
    whole for every batch of zoom crops), scaled to [0, 1]."""
    image = np.random.default_rng(0).integers(0, 256, (7, 5, 3), dtype=np.uint8)
    t = predictor._to_tensor(image)
    assert t.shape == (3, 7, 5) and t.dtype == torch.float32 and t.is_contiguous()
    assert torch.equal(t, torch.from_numpy(image).permute(2, 0, 1).float() / 255.0)
