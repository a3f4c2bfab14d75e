"""The inference copy (folded batch norms, channels-last) computes what the trained model computes."""
import numpy as np
import pytest
import torch
from torchvision.ops import FrozenBatchNorm2d

from refinemask_cli.model import build_model
from refinemask_cli.model.inference import fold_frozen_batchnorm, inference_copy
from refinemask_cli.predictor import Predictor

from .helpers import ellipse_scene, image_tensor, tiny_config


def randomize_frozen_bn(model, seed=0):
    """Give every frozen batch norm non-trivial statistics (fresh ones are the identity)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, FrozenBatchNorm2d):
            n = m.weight.numel()
            m.weight.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)


@pytest.mark.parametrize("backbone", ["mobilenet_v2", "resnet50"])
def test_inference_copy_matches_the_model(backbone):
    torch.manual_seed(0)
    cfg = tiny_config(backbone=backbone, num_classes=1, class_names=("obj",), class_agnostic="all")
    model = build_model(cfg).eval()
    randomize_frozen_bn(model)
    keys_before = list(model.state_dict())
    fast = inference_copy(model)
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in fast.modules())
    assert list(model.state_dict()) == keys_before, "the original model must not change"
    assert any(isinstance(m, FrozenBatchNorm2d) for m in model.modules())
    x = torch.rand(1, 3, 64, 96)
    with torch.inference_mode():
        ref, got = model.backbone(x), fast.backbone(x)
    assert ref.keys() == got.keys()
    for k in ref:  # float rounding only: folding reorders the multiply-adds
        assert (ref[k] - got[k]).abs().max() <= 1e-5 * ref[k].abs().max(), k
    img, _, box = ellipse_scene()
    with torch.inference_mode():
        a = model.refine([image_tensor(img)], [torch.from_numpy(box)[None]], [torch.zeros(1, dtype=torch.long)])
        b = fast.refine([image_tensor(img)], [torch.from_numpy(box)[None]], [torch.zeros(1, dtype=torch.long)])
    la, lb = a[0]["mask_logits"], b[0]["mask_logits"]
    assert (la - lb).abs().max() <= 1e-4 * max(la.abs().max(), 1.0)


def test_fold_counts_every_batch_norm_of_mobilenet():
    model = build_model(tiny_config())
    n_bn = sum(isinstance(m, FrozenBatchNorm2d) for m in model.modules())
    assert n_bn == 52  # MobileNetV2 features: 17 blocks + stem + last conv
    assert fold_frozen_batchnorm(model) == n_bn


def test_predictor_leaves_a_trainable_model_alone():
    model = build_model(tiny_config(num_classes=1, class_names=("obj",), class_agnostic="all")).train()
    predictor = Predictor(model, device="cpu")
    assert model.training and predictor.model is not model
    assert any(p.requires_grad for p in model.parameters())
    img, _, box = ellipse_scene()
    det = predictor.refine(img, box[None])
    assert len(det.masks) == 1 and det.masks[0].mask.dtype == np.bool_


def test_bf16_on_cpu_agrees_with_fp32():
    torch.manual_seed(0)
    model = build_model(tiny_config(num_classes=1, class_names=("obj",), class_agnostic="all"))
    img, _, box = ellipse_scene()
    a = Predictor(model, device="cpu").refine(img, box[None]).masks[0].full(*img.shape[:2])
    fast = Predictor(model, device="cpu", precision="bf16")
    assert fast.precision == "bf16" and fast.runtime == "cpu/bf16/batch1"
    b = fast.refine(img, box[None]).masks[0].full(*img.shape[:2])
    assert (a != b).mean() < 0.02


def test_bf16_masks_runs_only_the_mask_branch_in_bf16():
    """bf16-masks: boxes, scores and everything before the mask branch exactly as in fp32; the mask
    logits computed in bfloat16 (close to fp32's, not equal) and handed on in float32."""
    torch.manual_seed(0)
    model = build_model(tiny_config(num_classes=1, class_names=("obj",), class_agnostic="all"))
    img, _, box = ellipse_scene()
    fp32 = Predictor(model, device="cpu", precision="fp32")
    mixed = Predictor(model, device="cpu", precision="bf16-masks")
    assert mixed.runtime == "cpu/bf16-masks/batch1" and mixed.model.roi_heads.mask_dtype == torch.bfloat16
    assert fp32.model.roi_heads.mask_dtype is None
    with torch.inference_mode():
        feats = fp32.model.backbone(fp32._to_tensor(img)[None])
        boxes, labels = [torch.tensor(box[None], dtype=torch.float32)], [torch.zeros(1, dtype=torch.long)]
        a = fp32.model.roi_heads.predict_masks(feats, boxes, labels)[0]
        b = mixed.model.roi_heads.predict_masks(feats, boxes, labels)[0]
    assert b.dtype == torch.float32 and not torch.equal(a, b)
    assert (a - b).abs().max() < 0.02  # logits of an untrained head: bfloat16 keeps ~3 digits
    pa, pb = fp32.predict([img])[0], mixed.predict([img])[0]
    assert not model.roi_heads.mask_scoring  # so the ranking does not read the masks: boxes and scores exact
    np.testing.assert_array_equal(pa.boxes, pb.boxes)
    np.testing.assert_array_equal(pa.scores, pb.scores)
    ra, rb = fp32.refine(img, box[None]), mixed.refine(img, box[None])
    np.testing.assert_array_equal(ra.boxes, rb.boxes)
    fa, fb = ra.masks[0].full(*img.shape[:2]), rb.masks[0].full(*img.shape[:2])
    assert (fa != fb).mean() < 0.02


def test_precision_is_checked():
    model = build_model(tiny_config())
    assert Predictor(model, device="cpu").precision == "fp32"
    with pytest.raises(ValueError, match="fp16 needs CUDA"):
        Predictor(model, device="cpu", precision="fp16")
    with pytest.raises(ValueError, match="precision must be one of"):
        Predictor(model, device="cpu", precision="int8")


@pytest.mark.parametrize("boxes", [
    [[4.0, 6.0, 30.0, 40.0]],                          # top-left corner: the window touches two map edges
    [[70.0, 50.0, 120.0, 90.0], [90.0, 60.0, 100.0, 70.0]],  # middle: the window has four inner edges
    [[100.0, 80.0, 128.0, 96.0]],                      # bottom-right edge of the image
])
def test_semantic_window_gives_the_full_map_values(boxes):
    """Running the semantic head only over the window the RoIs read changes nothing."""
    torch.manual_seed(0)
    cfg = tiny_config(num_classes=1, class_names=("obj",), class_agnostic="all", min_size=96, max_size=128)
    model = build_model(cfg).eval()
    for m in model.roi_heads.mask_head.modules():  # non-zero biases, so zero padding would show
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.normal_(m.bias, std=0.5)
    images = [torch.rand(3, 96, 128), torch.rand(3, 80, 128)]
    b = torch.tensor(boxes)
    args = ([img for img in images], [b, b * 0.8], [torch.zeros(len(b), dtype=torch.long)] * 2)
    with torch.inference_mode():
        model.roi_heads.semantic_window = False
        full = model.refine(*args)
        model.roi_heads.semantic_window = True
        windowed = model.refine(*args)
    for f, w in zip(full, windowed):
        assert torch.allclose(f["mask_logits"], w["mask_logits"], atol=1e-5, rtol=1e-5)


def test_semantic_window_bounds():
    from refinemask_cli.model.detector import semantic_window

    rois = torch.tensor([[0, 40.0, 40.0, 60.0, 60.0]])
    x0, y0, x1, y1 = semantic_window(rois, (100, 100), reach=4)
    # box reads cells floor(40/4 - .5) = 9 .. floor(60/4 - .5) + 1 = 15, plus 5 cells of margin
    assert (x0, y0, x1, y1) == (4, 4, 21, 21)
    assert semantic_window(torch.tensor([[0, 0.0, 0.0, 390.0, 390.0]]), (100, 100), reach=4) is None
