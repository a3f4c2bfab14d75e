"""`refinemask train`: config, run folder, exact resume, two-process DDP (gloo, CPU)."""
import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from click.testing import CliRunner

from refinemask_cli.cli import main
from refinemask_cli.engine.config import TrainConfig, load_train_config
from refinemask_cli.engine.run import run_training

from .cocofix import make_dataset

TINY_MODEL = {"backbone": "mobilenet_v2", "fpn_channels": 32, "trainable_backbone_layers": 5,
              "class_agnostic": "all", "coarse_prior": True, "rpn_pre_nms_top_n_train": 200,
              "rpn_post_nms_top_n_train": 100, "box_batch_size_per_image": 64}


def tiny_cfg(root, **kw):
    src = make_dataset(root, n_images=3)
    base = dict(datasets=[{"json": str(src), "images": str(root)}], model=TINY_MODEL, init="none", iters=4,
                batch_size=2, min_sizes=[64, 72], max_size=96, num_workers=0, checkpoint_every=2,
                warmup_iters=2, copy_paste=0.5, seed=3)
    base.update(kw)
    return TrainConfig.from_dict(base)


def state_equal(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("mode", ["full", "mask"])
def test_resume_is_exact(tmp_path, mode):
    cfg = tiny_cfg(tmp_path, mode=mode)
    straight = run_training(cfg, tmp_path / "a", torch.device("cpu"))
    run_training(cfg, tmp_path / "b", torch.device("cpu"), stop_after=2)
    assert json.loads((tmp_path / "b" / "metrics.jsonl").read_text().splitlines()[-1])["iter"] == 2
    resumed = run_training(cfg, tmp_path / "b", torch.device("cpu"), resume=True)
    assert state_equal(straight.state_dict(), resumed.state_dict())
    a = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    b = [json.loads(x) for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in a] == [r["loss"] for r in b]
    assert (tmp_path / "b" / "model_final.pt").exists()


def test_detector_mode_trains_only_rpn_and_box_head(tmp_path):
    from refinemask_cli.engine.config import DETECTOR_MODULES
    from refinemask_cli.weights import read_checkpoint
    from refinemask_cli.weights.checkpoint import detector_trained

    # a mask-mode run: its detector stays untrained, and its checkpoint says so
    (tmp_path / "m").mkdir()
    (tmp_path / "d").mkdir()
    masked = run_training(tiny_cfg(tmp_path / "m", mode="mask"), tmp_path / "m", torch.device("cpu"))
    meta = read_checkpoint(tmp_path / "m" / "model_final.pt")["meta"]
    assert meta["detector"] == "untrained" and detector_trained(meta) is False
    before = {k: v.clone() for k, v in masked.state_dict().items()}
    cfg = tiny_cfg(tmp_path / "d", mode="detector", init=str(tmp_path / "m" / "model_final.pt"))
    trained = run_training(cfg, tmp_path / "d", torch.device("cpu"))
    after = trained.state_dict()
    changed = {k for k in after if not torch.equal(before[k], after[k])}
    assert changed, "the detector learnt nothing"
    assert all(k.startswith(DETECTOR_MODULES) for k in changed), sorted(changed)[:5]
    assert any(k.startswith("rpn.") for k in changed) and any(k.startswith("roi_heads.box_") for k in changed)
    losses = json.loads((tmp_path / "d" / "metrics.jsonl").read_text().splitlines()[-1])
    assert {"loss_objectness", "loss_classifier"} <= set(losses) and "loss_instance" not in losses
    meta = read_checkpoint(tmp_path / "d" / "model_final.pt")["meta"]
    assert meta["detector"] == "trained" and meta["train_mode"] == "detector" and detector_trained(meta)


@pytest.mark.parametrize("meta,expected", [
    ({"detector": "trained", "train_mode": "mask"}, True), ({"heads": "untrained"}, False),
    ({"source": "torchvision"}, True), ({"source": "mmdet"}, True), ({"train_mode": "full"}, True),
    ({"train_mode": "mask"}, False), ({}, None)])
def test_detector_trained_from_metadata(meta, expected):
    from refinemask_cli.weights.checkpoint import detector_trained

    assert detector_trained(meta) is expected


def test_cli_train_writes_run_folder(tmp_path):
    src = make_dataset(tmp_path, n_images=2)
    (tmp_path / "t.toml").write_text(
        "init = 'none'\nmin_sizes = [64]\nmax_size = 96\nnum_workers = 0\nwarmup_iters = 1\n"
        "[model]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in TINY_MODEL.items()))
    out = tmp_path / "run"
    args = ["train", "--train-json", str(src), "--images", str(tmp_path), "--config", str(tmp_path / "t.toml"),
            "--iters", "3", "--batch-size", "1", "--mode", "mask", "--out", str(out), "--device", "cpu",
            "--val-json", str(src), "--val-images", str(tmp_path)]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    for name in ("config.json", "metrics.jsonl", "last.pt", "model_final.pt", "loss.png"):
        assert (out / name).exists(), name
    saved = json.loads((out / "config.json").read_text())
    assert saved["train"]["iters"] == 3 and saved["train"]["mode"] == "mask" and saved["model"]["fpn_channels"] == 32
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 3
    assert "validation from boxes: mIoU" in r.output
    r = CliRunner().invoke(main, args)  # the run folder is taken
    assert r.exit_code == 1 and "--resume" in r.output
    r = CliRunner().invoke(main, args + ["--resume"])  # nothing left to do, but it resumes cleanly
    assert r.exit_code == 0, r.output


def test_config_errors_are_one_line(tmp_path):
    with pytest.raises(ValueError, match="unknown training config keys: itres"):
        load_train_config(None, {"itres": 3})
    with pytest.raises(ValueError, match="at least one training dataset"):
        load_train_config(None, {"iters": 3})
    (tmp_path / "bad.toml").write_text("iters = [")
    r = CliRunner().invoke(main, ["train", "--config", str(tmp_path / "bad.toml")])
    assert r.exit_code == 1 and "not valid TOML" in r.output
    assert TrainConfig.from_dict({"datasets": [{"json": "a", "images": "b"}], "batch_size": 4}).scaled_lr() == 0.005


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world, port, cfg_dict, out_dir, result_dir):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    model = run_training(TrainConfig.from_dict(cfg_dict), out_dir, torch.device("cpu"))
    torch.save(model.state_dict(), os.path.join(result_dir, f"rank{rank}.pt"))
    import torch.distributed as dist

    dist.destroy_process_group()


def test_two_process_gloo_ends_with_identical_weights(tmp_path):
    cfg = tiny_cfg(tmp_path, iters=3, batch_size=1, copy_paste=0.0)
    mp.spawn(_ddp_worker, args=(2, _free_port(), cfg.to_dict(), tmp_path / "ddp", str(tmp_path)), nprocs=2, join=True)
    a = torch.load(tmp_path / "rank0.pt", weights_only=True)
    b = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert state_equal(a, b)
    init = torch.load(tmp_path / "rank0.pt", weights_only=True)
    assert len((tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()) == 3  # rank 0 logs only
    assert init is not None


def test_mask_rois_per_image_caps_the_mask_branch():
    from refinemask_cli.model import build_model

    from .helpers import ellipse_scene, image_tensor, tiny_config, to_target

    torch.manual_seed(0)
    model = build_model(tiny_config(num_classes=1, class_names=("o",), class_agnostic="all")).train()
    seen = []
    original = model.roi_heads.mask_losses

    def spy(features, boxes, labels, inds, masks):
        seen.append([len(b) for b in boxes])
        return original(features, boxes, labels, inds, masks)

    model.roi_heads.mask_losses = spy
    img, mask, box = ellipse_scene()
    batch = ([image_tensor(img)] * 2, [to_target(mask, box)] * 2)
    model(*batch)
    assert max(seen[-1]) > 3  # uncapped: many positive proposals around the one object
    model.roi_heads.mask_rois_per_image = 3
    losses = model(*batch)
    assert seen[-1] == [3, 3] and torch.isfinite(sum(losses.values()))
    with pytest.raises(ValueError, match="mask_rois_per_image"):
        TrainConfig.from_dict({"datasets": [{"json": "a", "images": "b"}], "mask_rois_per_image": -1})


def test_fine_tuning_a_checkpoint_keeps_its_architecture_classes_and_size(tmp_path):
    """`train --init W.pt` on a dataset of other categories: a class-agnostic checkpoint stays
    one-class at its own input size (no [model] table, no sizes given)."""
    from refinemask_cli.weights import read_checkpoint

    from .cocofix import tiny_weights

    src = make_dataset(tmp_path, n_images=2)  # categories 3 and 7
    init = tiny_weights(tmp_path / "init.pt", train_steps=1)
    out = tmp_path / "run"
    r = CliRunner().invoke(main, ["train", "--train-json", str(src), "--images", str(tmp_path), "--init", str(init),
                                  "--iters", "2", "--batch-size", "1", "--out", str(out), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    before, after = read_checkpoint(init)["config"], read_checkpoint(out / "model_final.pt")["config"]
    assert after == before  # one class "object", min_size 64, max_size 96


def test_warmup_takes_at_most_a_fifth_of_a_short_run():
    from refinemask_cli.engine.train import TrainSettings, lr_at

    short = TrainSettings(iters=60, lr=0.002, warmup_iters=200, steps=(0.67, 0.92))
    assert lr_at(12, short) == pytest.approx(0.002) and lr_at(0, short) < 1e-5
    assert lr_at(45, short) == pytest.approx(0.0002)  # after the first step decay
    recipe = TrainSettings(iters=300, lr=0.01, warmup_iters=50, steps=(0.75, 0.92))  # unchanged
    assert lr_at(25, recipe) == pytest.approx(0.01 * (0.001 + 0.999 * 25 / 50)) and lr_at(50, recipe) == 0.01


def test_every_shipped_recipe_loads():
    """The recipes in weights/ (the model cards' "reproduce" lines) parse, and their [model] tables
    are valid architectures."""
    from pathlib import Path

    from refinemask_cli.engine.run import resolve_model_config

    recipes = sorted((Path(__file__).resolve().parents[1] / "weights").glob("*.toml"))
    assert len(recipes) >= 7
    for path in recipes:
        cfg = load_train_config(path, {})
        assert cfg.iters > 0 and cfg.datasets, path.name
        resolve_model_config(cfg)
