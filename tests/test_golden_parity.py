"""Numerical parity with the official RefineMask head, loss, merge and band (../shared/golden)."""
import pytest
import torch

from refinemask_cli.model import bar
from refinemask_cli.model.refine_head import RefineMaskHead

from .conftest import shared_path

ATOL = 1e-5
WEIGHTS = [0.25, 0.5, 0.75, 1.0]


@pytest.fixture(scope="module")
def golden():
    return torch.load(shared_path("golden", "refinemask_head_golden.pt"), weights_only=True)


def _variant(golden, name):
    return golden if name == "class_specific" else golden["variant_agnostic_last"]


def close(a, b):
    return torch.allclose(a, b, atol=ATOL, rtol=0)


@pytest.mark.parametrize("variant", ["class_specific", "agnostic_last"])
def test_head_forward(golden, variant):
    g = _variant(golden, variant)
    cfg = g["config"]
    head = RefineMaskHead(cfg["conv_out_channels_instance"], cfg["stage_num_classes"], cfg["stage_sup_size"])
    head.load_state_dict(g["state_dict"], strict=True)
    inp = g["inputs"]
    with torch.no_grad():
        logits, sem = head(inp["roi_feats"].float(), inp["p2"].float(), inp["rois"], inp["labels"])
    assert [tuple(x.shape[-2:]) for x in logits] == [(14, 14), (28, 28), (56, 56), (112, 112)]
    for mine, ref in zip(logits, g["outputs"]["stage_logits"]):
        assert close(mine, ref), (mine - ref).abs().max()
    assert close(sem, g["outputs"]["semantic_pred"])


@pytest.mark.parametrize("variant", ["class_specific", "agnostic_last"])
def test_losses(golden, variant):
    g = _variant(golden, variant)
    targets = [t.float() for t in g["targets"]["stage_targets"]]
    logits = [x.clone() for x in g["outputs"]["stage_logits"]]
    loss, terms = bar.refine_mask_loss(logits, targets, WEIGHTS, boundary_width=2, start_stage=1)
    assert close(loss, g["losses"]["loss_instance"])
    assert close(terms, g["losses"]["stage_losses"])
    sem = bar.semantic_loss(g["outputs"]["semantic_pred"], g["targets"]["semantic_target"])
    assert close(sem, g["losses"]["loss_semantic"])


@pytest.mark.parametrize("variant", ["class_specific", "agnostic_last"])
def test_merge(golden, variant):
    g = _variant(golden, variant)
    final, merged = bar.merge_stage_logits([x.clone() for x in g["outputs"]["stage_logits"]], return_all=True)
    assert close(merged[1], g["merged_56"])
    assert close(final, g["merged_112"])


def test_targets_exact(golden):
    t = golden["targets"]
    for size, ref in zip([14, 28, 56, 112], t["stage_targets"]):
        mine = torch.cat(
            [
                bar.stage_targets(masks, boxes, inds, [size])[0]
                for masks, boxes, inds in zip(t["gt_masks"], t["pos_bboxes"], t["pos_assigned_gt_inds"])
            ]
        )
        assert torch.equal(mine, ref.float())
    h, w = golden["config"]["image_size_padded_hw"]
    sem = bar.semantic_target(t["gt_masks"], (h, w), (h // 4, w // 4))
    assert torch.equal(sem, t["semantic_target"])


@pytest.mark.parametrize("width", [1, 2, 3])
def test_band_exact(golden, width):
    b = golden["band"]
    assert torch.equal(bar.boundary_band(b["masks"], width), b[f"w{width}"])
