"""Zoom-in refinement: crop geometry exact on hand-made cases, the zoom path against the whole-image
path where both see the same pixels, flip averaging, feedback passes, zoom training, clean-up."""
import numpy as np
import pytest
import torch

from refinemask_cli.geometry import remove_small_regions
from refinemask_cli.model import build_model
from refinemask_cli.model.zoom import (
    ZoomSpec,
    crop_masks,
    crop_regions,
    from_crop,
    to_crop,
    zoom_regions,
)
from refinemask_cli.predictor import Predictor, RefineSettings

from .helpers import ellipse_scene, image_tensor, tiny_config, to_target


def test_regions_square_centred_with_margin():
    spec = ZoomSpec(size=64, margin=0.25, max_zoom=8)
    r = zoom_regions(torch.tensor([[10.0, 20.0, 50.0, 30.0]]), spec)
    # long side 40, plus 25 % of it on each side: 60, centred on (30, 25)
    assert torch.allclose(r, torch.tensor([[0.0, -5.0, 60.0, 55.0]]))
    inside = to_crop(torch.tensor([[10.0, 20.0, 50.0, 30.0]]), r, 64)
    assert torch.allclose(inside, torch.tensor([[10.0, 25.0, 50.0, 35.0]]) * 64 / 60)
    assert torch.allclose(from_crop(inside, r, 64), torch.tensor([[10.0, 20.0, 50.0, 30.0]]))


def test_region_of_a_box_smaller_than_a_pixel():
    spec = ZoomSpec(size=64, margin=0.3, max_zoom=8)
    r = zoom_regions(torch.tensor([[5.0, 5.0, 5.2, 5.1], [7.0, 7.0, 7.0, 7.0]]), spec)
    side = r[:, 2] - r[:, 0]
    assert torch.allclose(side, torch.full((2,), 8.0)) and torch.allclose(r[:, 3] - r[:, 1], side)
    assert torch.allclose((r[:, 0] + r[:, 2]) / 2, torch.tensor([5.1, 7.0]))
    img = torch.rand(3, 20, 20)
    crops = crop_regions(img, r, 64)
    assert crops.shape == (2, 3, 64, 64) and torch.isfinite(crops).all()


def test_crop_at_scale_one_is_the_pixels_and_fill_outside():
    img = torch.arange(3 * 10 * 12, dtype=torch.float32).reshape(3, 10, 12)
    fill = torch.tensor([-1.0, -2.0, -3.0])
    # integer-aligned region of the crop's own size: the pixels themselves
    crop = crop_regions(img, torch.tensor([[2.0, 3.0, 8.0, 9.0]]), 6, fill)[0]
    assert torch.equal(crop, img[:, 3:9, 2:8])
    # a box at the top-left border: the region reaches outside, which is fill (beyond the one-pixel
    # band that RoIAlign clamps to the border)
    crop = crop_regions(img, torch.tensor([[-4.0, -4.0, 4.0, 4.0]]), 8, fill)[0]
    assert torch.equal(crop[:, 4:, 4:], img[:, :4, :4])
    assert torch.equal(crop[:, :3, :], fill.reshape(3, 1, 1).expand(3, 3, 8))
    assert torch.equal(crop[:, :, :3], fill.reshape(3, 1, 1).expand(3, 8, 3))


def test_crop_enlarges_bilinearly_and_shrinks_by_averaging():
    img = torch.zeros(1, 4, 4)
    img[0, :, 2:] = 1.0  # left half 0, right half 1
    up = crop_regions(img, torch.tensor([[0.0, 0.0, 4.0, 4.0]]), 8)[0, 0]
    # output pixel centres at 0.25, 0.75, ... input pixels: the edge at x = 2 blends the two
    # neighbouring pixel centres (1.5 and 2.5) linearly
    assert torch.allclose(up[0], torch.tensor([0, 0, 0, 0.25, 0.75, 1, 1, 1.0]))
    img = torch.zeros(1, 8, 8)
    img[0, :, ::2] = 1.0  # stripes one pixel wide
    down = crop_regions(img, torch.tensor([[0.0, 0.0, 8.0, 8.0]]), 2)[0, 0]
    assert torch.allclose(down, torch.full((2, 2), 0.5))  # averaged, not aliased to 0 or 1


def test_large_regions_are_cropped_in_bands_to_the_same_pixels(monkeypatch):
    """A region shrunk many times over is cropped a band of output rows at a time on the CPU (RoIAlign
    precomputes every sample of a call: 2 GB for an 8,000-px object); the bands give the same crop."""
    from refinemask_cli.model import zoom

    torch.manual_seed(0)
    img = torch.rand(3, 300, 360)
    regions = torch.tensor([[-20.0, -15.0, 310.0, 315.0], [40.3, 12.7, 250.9, 223.3], [5.0, 5.0, 25.0, 25.0]])
    fill = torch.tensor([0.2, 0.4, 0.6])
    whole = crop_regions(img, regions, 24, fill)
    assert zoom.band_rows(regions, 24) == 24  # within the budget: one call, as before
    monkeypatch.setattr(zoom, "CPU_SAMPLE_BUDGET", 25_000)  # 14² samples a bin: bands of 5 rows
    assert zoom.band_rows(regions, 24) == 5
    banded = crop_regions(img, regions, 24, fill)
    assert banded.shape == whole.shape == (3, 3, 24, 24)
    assert torch.allclose(banded, whole, atol=1e-5)
    monkeypatch.setattr(zoom, "CPU_SAMPLE_BUDGET", 1)  # one row a call
    assert zoom.band_rows(regions, 24) == 1
    assert torch.allclose(crop_regions(img, regions, 24, fill), whole, atol=1e-5)


def test_crop_masks_follow_their_regions():
    masks = torch.zeros(2, 16, 16, dtype=torch.uint8)
    masks[0, 2:6, 2:6] = 1
    masks[1, 8:16, 8:16] = 1
    regions = torch.tensor([[2.0, 2.0, 6.0, 6.0], [8.0, 8.0, 16.0, 16.0]])
    out = crop_masks(masks, torch.tensor([0, 1]), regions, 4)
    assert out.dtype == torch.uint8 and out.shape == (2, 4, 4) and out.all()
    out = crop_masks(masks, torch.tensor([1, 0]), regions, 4)
    assert not out.any()


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(tiny_config(class_agnostic="all", num_classes=1, class_names=("o",), coarse_prior=True)).eval()


def test_zoom_equals_whole_image_when_the_crop_is_the_image(model):
    # a 64×64 image, box centred with margin 0.5: the region is exactly the image, at size 64, which
    # is also the whole-image transform's size: both paths see the same pixels
    img, _, _ = ellipse_scene(64, 64, seed=3)
    box = torch.tensor([[16.0, 16.0, 48.0, 48.0]])
    x = image_tensor(img)
    with torch.no_grad():
        whole = model.refine([x], [box], [torch.zeros(1)])[0]
        zoom = model.refine([x], [box], [torch.zeros(1)], zoom=ZoomSpec(64, 0.5))[0]
    assert torch.allclose(zoom["boxes"], box)
    assert torch.allclose(zoom["mask_logits"], whole["mask_logits"], atol=1e-5)


def test_zoom_boxes_at_the_border_and_batched_crops(model):
    img, _, _ = ellipse_scene(60, 90, seed=4)
    boxes = [torch.tensor([[0.0, 0.0, 20.0, 15.0], [70.0, 40.0, 90.0, 60.0], [30.0, 30.0, 30.4, 30.3]]),
             torch.tensor([[5.0, 5.0, 50.0, 55.0]])]
    x = image_tensor(img)
    with torch.no_grad():
        one = model.refine([x, x], boxes, [torch.zeros(3), torch.zeros(1)], zoom=ZoomSpec(64), crop_batch=2)
        each = [model.refine([x], [b[k : k + 1]], [torch.zeros(1)], zoom=ZoomSpec(64))[0]
                for b in boxes for k in range(len(b))]
    got = torch.cat([o["mask_logits"] for o in one])
    assert got.shape == (4, 1, 112, 112) and torch.isfinite(got).all()
    assert torch.allclose(got, torch.cat([e["mask_logits"] for e in each]), atol=1e-5)  # crops are independent
    assert torch.allclose(torch.cat([o["boxes"] for o in one]), torch.cat(boxes))


def test_flip_average_is_mirror_symmetric(model):
    img, _, _ = ellipse_scene(64, 80, seed=5)
    x = image_tensor(img)
    box = torch.tensor([[10.0, 8.0, 50.0, 60.0]])
    mirrored = torch.tensor([[80 - 50.0, 8.0, 80 - 10.0, 60.0]])
    for zoom in (None, ZoomSpec(64)):
        with torch.no_grad():
            a = model.refine([x], [box], [torch.zeros(1)], zoom=zoom, flip=True)[0]["mask_logits"]
            b = model.refine([x.flip(-1)], [mirrored], [torch.zeros(1)], zoom=zoom, flip=True)[0]["mask_logits"]
            plain = model.refine([x], [box], [torch.zeros(1)], zoom=zoom)[0]["mask_logits"]
        assert torch.allclose(a, b.flip(-1), atol=1e-4)
        assert not torch.allclose(a, plain, atol=1e-4)


def test_second_zoom_size_averages_two_crop_geometries(model):
    img, _, _ = ellipse_scene(64, 80, seed=7)
    x = image_tensor(img)
    box = torch.tensor([[10.0, 8.0, 50.0, 60.0]])
    with torch.no_grad():
        a = model.refine([x], [box], [torch.zeros(1)], zoom=ZoomSpec(64))[0]["mask_logits"]
        b = model.refine([x], [box], [torch.zeros(1)], zoom=ZoomSpec(96))[0]["mask_logits"]
        both = model.refine([x], [box], [torch.zeros(1)], zoom=ZoomSpec(64), second_zoom=ZoomSpec(96))[0]
        same = model.refine([x], [box], [torch.zeros(1)], zoom=ZoomSpec(64), second_zoom=ZoomSpec(64))[0]
    assert not torch.allclose(a, b, atol=1e-4)  # the two crops differ...
    assert torch.allclose(both["mask_logits"], (a + b) / 2, atol=1e-5)  # ...and are averaged per box
    assert torch.allclose(same["mask_logits"], a, atol=1e-5) and torch.allclose(both["boxes"], box, atol=1e-4)
    for kwargs in ({"zoom": None}, {"zoom": ZoomSpec(64), "regress_boxes": True}):
        with pytest.raises(ValueError, match="second zoom"):
            model.refine([x], [box], [torch.zeros(1)], second_zoom=ZoomSpec(96), **kwargs)

def test_predictor_passes_the_second_zoom_size_to_the_model(model, monkeypatch):
    img, _, _ = ellipse_scene(64, 80, seed=7)
    box = np.array([[10.0, 8.0, 50.0, 60.0]], np.float32)
    seen = []
    real = model.refine

    def spy(*args, **kwargs):
        seen.append((kwargs["zoom"], kwargs["second_zoom"]))
        return real(*args, **kwargs)

    monkeypatch.setattr(model, "refine", spy)
    predictor = Predictor(model, device="cpu")
    out = predictor.refine_many([(img, box, None, None)], settings=RefineSettings(
        mode="zoom", zoom_size=64, second_zoom_size=96, zoom_max_size=128, flip=False))
    predictor.refine_many([(img, box, None, None)], settings=RefineSettings(mode="zoom", zoom_size=64))
    margin = model.cfg.zoom_margin
    assert seen == [(ZoomSpec(64, margin, max_size=128), ZoomSpec(96, margin, max_size=128)),
                    (ZoomSpec(64, margin), None)]
    assert len(out[0]) == 1
    with pytest.raises(ValueError, match="second zoom size"):
        RefineSettings(second_zoom_size=16)
    for key in ("zoom_size", "zoom_max_size", "second_zoom_size"):
        with pytest.raises(ValueError, match=f"--{key.replace('_', '-')} is for zoom mode, not --mode whole"):
            RefineSettings(mode="whole", **{key: 96})


def test_second_pass_feeds_the_first_mask_back(model):
    img, _, _ = ellipse_scene(64, 80, seed=6)
    x = image_tensor(img)
    box = torch.tensor([[10.0, 8.0, 50.0, 60.0]])
    with torch.no_grad():
        first = model.refine([x], [box], [torch.zeros(1)])[0]["mask_logits"]
        two = model.refine([x], [box], [torch.zeros(1)], passes=2)[0]["mask_logits"]
        fed = (first[:, 0].sigmoid() >= 0.5).float()
        by_hand = model.refine([x], [box], [torch.zeros(1)], priors=[fed])[0]["mask_logits"]
    assert torch.allclose(two, by_hand, atol=1e-5)
    with pytest.raises(ValueError, match="passes"):
        model.refine([x], [box], [torch.zeros(1)], passes=0)


def test_zoom_training_losses_and_crop_targets(model):
    img, mask, box = ellipse_scene(64, 80, seed=7)
    model.train()
    try:
        torch.manual_seed(0)
        losses = model([image_tensor(img)], [to_target(mask, box)], mask_only=True, zoom=ZoomSpec(64), zoom_crops=2)
        assert set(losses) == {"loss_instance", "loss_semantic"}
        assert all(torch.isfinite(v) and v > 0 for v in losses.values())
        sum(losses.values()).backward()
        images_t, targets = model._zoom_training_batch([image_tensor(img)], [to_target(mask, box)], ZoomSpec(64), 2, 0.0)
        t = targets[0]
        ys, xs = np.nonzero(t["masks"][0].numpy())
        # the object's tight box in the crop is the crop box (up to the resampling's half pixel)
        assert np.allclose([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], t["boxes"][0].numpy(), atol=1.0)
        assert images_t.tensors.shape[-2:] == (64, 64)
        empty = {"boxes": torch.zeros((0, 4)), "labels": torch.zeros(0, dtype=torch.long),
                 "masks": torch.zeros((0, 64, 80), dtype=torch.uint8)}
        losses = model([image_tensor(img)], [empty], mask_only=True, zoom=ZoomSpec(64))
        assert all(float(v.detach()) == 0.0 for v in losses.values())
    finally:
        model.eval()


def test_predictor_settings_pick_the_mode():
    base = tiny_config(class_agnostic="all", num_classes=1, class_names=("o",), coarse_prior=True)
    plain = Predictor(build_model(base), device="cpu")
    assert plain.zoom_spec(RefineSettings()) is None
    assert plain.zoom_spec(RefineSettings(mode="zoom")).size == base.min_size
    zoomed = Predictor(build_model(base.replace(zoom_size=96, zoom_margin=0.2)), device="cpu")
    assert zoomed.zoom_spec(RefineSettings()) == ZoomSpec(96, 0.2)
    assert zoomed.zoom_spec(RefineSettings(mode="zoom", zoom_size=128)) == ZoomSpec(128, 0.2)
    assert zoomed.zoom_spec(RefineSettings(mode="whole")) is None
    img, _, box = ellipse_scene(64, 80, seed=8)
    det = zoomed.refine(img, box[None], settings=RefineSettings(flip=True, passes=2))
    assert np.allclose(det.boxes, box[None]) and len(det.masks) == 1
    for bad in (dict(mode="tiles"), dict(passes=0), dict(zoom_size=8)):
        with pytest.raises(ValueError):
            RefineSettings(**bad)


def test_zoom_only_settings_refused_where_auto_refines_whole_images(monkeypatch):
    """Weights not trained for zoom refine whole images under --mode auto: a zoom size asked for
    there would be silently ignored, so it is refused before the network runs; --mode zoom takes it."""
    plain = Predictor(build_model(tiny_config(class_agnostic="all", num_classes=1, class_names=("o",))), device="cpu")
    img, _, box = ellipse_scene(64, 80, seed=8)
    calls = []
    monkeypatch.setattr(plain.model, "refine", lambda *a, **k: calls.append(k))
    for key in ("zoom_size", "zoom_max_size", "second_zoom_size"):
        settings = RefineSettings(**{key: 96})
        with pytest.raises(ValueError, match=f"--{key.replace('_', '-')} is for zoom mode.*add --mode zoom"):
            plain.check_settings(settings)
        with pytest.raises(ValueError, match="not trained for zoom"):
            plain.refine(img, box[None], settings=settings)
    both = RefineSettings(zoom_size=64, second_zoom_size=96)
    with pytest.raises(ValueError, match="--zoom-size, --second-zoom-size are for zoom mode.*leave them out"):
        plain.check_settings(both)
    assert calls == []  # refused before the model ran
    plain.check_settings(RefineSettings())  # nothing zoom-only asked: whole images, as before
    plain.check_settings(RefineSettings(mode="zoom", zoom_size=64, second_zoom_size=96))
    zoomed = Predictor(build_model(tiny_config(class_agnostic="all", num_classes=1, class_names=("o",),
                                               zoom_size=64)), device="cpu")
    zoomed.check_settings(RefineSettings(second_zoom_size=96))  # auto is zoom for these weights


def test_remove_small_regions_islands_and_holes():
    m = np.zeros((20, 20), bool)
    m[2:15, 2:15] = True
    m[5, 5] = False  # a one-pixel hole
    m[7:10, 7:10] = False  # a 9-pixel hole
    m[18, 18] = True  # one-pixel islands
    m[17, 0] = True
    c = remove_small_regions(m, 5)
    assert (c.islands_removed, c.holes_filled) == (2, 1)
    assert c.mask[5, 5] and not c.mask[8, 8] and not c.mask[18, 18] and not c.mask[17, 0]
    c = remove_small_regions(m, 10)
    assert (c.islands_removed, c.holes_filled) == (2, 2) and c.mask[2:15, 2:15].all()
    # background touching the crop's border is outside, never a hole; the largest part always stays
    ring = np.ones((6, 6), bool)
    ring[0, 2:4] = False
    c = remove_small_regions(ring, 100)
    assert c.holes_filled == 0 and not c.mask[0, 2]
    tiny = np.zeros((5, 5), bool)
    tiny[1, 1] = True
    assert remove_small_regions(tiny, 100).mask[1, 1]
    assert remove_small_regions(m, 0).mask is not None and np.array_equal(remove_small_regions(m, 0).mask, m)


def test_working_size_grows_with_large_objects(model):
    spec = ZoomSpec(size=64, margin=0.0, max_size=128)
    regions = zoom_regions(torch.tensor([[0.0, 0.0, 30.0, 20.0], [0.0, 0.0, 70.0, 10.0], [0.0, 0.0, 200.0, 9.0]]), spec)
    assert spec.crop_sizes(regions) == [64, 96, 128]
    assert ZoomSpec(64).crop_sizes(regions) == [64, 64, 64]
    with pytest.raises(ValueError):
        ZoomSpec(64, max_size=32)
    img, _, _ = ellipse_scene(100, 140, seed=9)
    x = image_tensor(img)
    boxes = torch.tensor([[2.0, 3.0, 120.0, 95.0], [10.0, 10.0, 30.0, 25.0], [40.0, 5.0, 130.0, 60.0]])
    with torch.no_grad():
        mixed = model.refine([x], [boxes], [torch.zeros(3)], zoom=spec)[0]
        each = [model.refine([x], [boxes[k : k + 1]], [torch.zeros(1)], zoom=spec)[0]["mask_logits"] for k in range(3)]
    assert torch.allclose(mixed["boxes"], boxes)
    assert torch.allclose(mixed["mask_logits"], torch.cat(each), atol=1e-5)  # back in input order
