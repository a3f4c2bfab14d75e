"""The own checkpoint format: round trip, half storage, checksum and clear errors."""
import pytest
import torch

from refinemask_cli.model import build_model
from refinemask_cli.weights import (
    WeightsError,
    average_weights,
    load_model,
    read_checkpoint,
    save_checkpoint,
)

from .helpers import tiny_config


def test_round_trip_and_half(tmp_path):
    model = build_model(tiny_config())
    save_checkpoint(model, tmp_path / "a.pt", {"note": "x"})
    loaded, ckpt = load_model(tmp_path / "a.pt")
    assert loaded.cfg == model.cfg and ckpt["meta"]["note"] == "x"
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)
    save_checkpoint(model, tmp_path / "h.pt", half=True)
    half, _ = load_model(tmp_path / "h.pt")
    w = "roi_heads.mask_head.semantic_logits.weight"
    assert half.state_dict()[w].dtype == torch.float32
    assert torch.allclose(half.state_dict()[w], model.state_dict()[w], atol=1e-2)
    assert (tmp_path / "h.pt").stat().st_size < 0.6 * (tmp_path / "a.pt").stat().st_size


def test_errors_are_one_line(tmp_path):
    with pytest.raises(WeightsError, match="not found"):
        read_checkpoint(tmp_path / "missing.pt")
    model = build_model(tiny_config())
    save_checkpoint(model, tmp_path / "a.pt")
    data = (tmp_path / "a.pt").read_bytes()
    (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="trunc.pt: cannot read it .its zip archive is cut short or damaged"):
        read_checkpoint(tmp_path / "trunc.pt")
    # not what torch.save writes: named as such, not with the unpickler's bare message ("105")
    for name, data, why in (("text.pt", b"hi\n", r"not a PyTorch file \(torch.save writes a zip archive; this starts "
                                                  r"with b'hi\\n'\)"),
                            ("empty.pt", b"", r"file is empty \(an interrupted download or copy\?\)")):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(WeightsError, match=f"{name}: {why}$"):
            read_checkpoint(tmp_path / name)
    import argparse  # an importable class, pickled: weights_only refuses it, and refine never needs it

    torch.save({"format": "x", "args": argparse.Namespace(lr=0.1)}, tmp_path / "objects.pt")
    with pytest.raises(WeightsError, match=r"objects.pt: cannot read it \(it holds Python objects besides tensors "
                                           r"and plain values, not loaded from untrusted files\)$"):
        read_checkpoint(tmp_path / "objects.pt")
    ckpt = torch.load(tmp_path / "a.pt", weights_only=True)
    ckpt["state_dict"]["roi_heads.mask_head.semantic_logits.bias"] += 1
    torch.save(ckpt, tmp_path / "edited.pt")
    with pytest.raises(WeightsError, match="checksum"):
        read_checkpoint(tmp_path / "edited.pt")


def test_other_architecture_names_keys(tmp_path):
    from refinemask_cli.weights.checkpoint import checkpoint_dict, tensors_sha256

    ckpt = checkpoint_dict(build_model(tiny_config()))
    ckpt["config"]["num_classes"] = 3
    ckpt["config"]["class_names"] = ["a", "b", "c"]
    ckpt["sha256"] = tensors_sha256(ckpt["state_dict"])
    torch.save(ckpt, tmp_path / "other.pt")
    with pytest.raises(WeightsError, match="shape mismatches: .*cls_score"):
        load_model(tmp_path / "other.pt")


def test_average_weights_is_the_mean_of_every_tensor(tmp_path):
    torch.manual_seed(0)
    models = [build_model(tiny_config()) for _ in range(3)]
    paths = [tmp_path / f"m{i}.pt" for i in range(3)]
    for m, p in zip(models, paths):
        save_checkpoint(m, p, {"run": p.stem})
    avg, ckpts = average_weights(paths)
    assert [c["meta"] for c in ckpts] == [{"run": "m0"}, {"run": "m1"}, {"run": "m2"}]
    got, states = avg.state_dict(), [m.state_dict() for m in models]
    key = "roi_heads.box_predictor.cls_score.weight"
    assert not torch.equal(states[0][key], states[1][key])
    for k, v in got.items():
        if v.is_floating_point():
            assert torch.allclose(v, sum(s[k] for s in states) / 3, atol=1e-6), k
    # a float16 file averages in float32 with the others; one file is itself
    save_checkpoint(models[1], tmp_path / "half.pt", half=True)
    assert torch.allclose(average_weights([paths[0], tmp_path / "half.pt"])[0].state_dict()[key],
                          (states[0][key] + states[1][key].half().float()) / 2, atol=1e-6)
    assert torch.equal(average_weights(paths[:1])[0].state_dict()[key], states[0][key])


def test_average_weights_refuses_another_architecture(tmp_path):
    save_checkpoint(build_model(tiny_config()), tmp_path / "a.pt")
    save_checkpoint(build_model(tiny_config(fpn_channels=48)), tmp_path / "b.pt")
    with pytest.raises(WeightsError, match=r"b\.pt: does not fit the architecture of .*a\.pt"):
        average_weights([tmp_path / "a.pt", tmp_path / "b.pt"])
    # same tensors, another meaning: anchors of other sides are refused too; the input size is not
    save_checkpoint(build_model(tiny_config(anchor_sizes=(16, 32, 64, 128, 256))), tmp_path / "c.pt")
    with pytest.raises(WeightsError, match=r"c\.pt: trained with another anchor_sizes"):
        average_weights([tmp_path / "a.pt", tmp_path / "c.pt"])
    save_checkpoint(build_model(tiny_config(min_size=80)), tmp_path / "d.pt")
    assert average_weights([tmp_path / "a.pt", tmp_path / "d.pt"])[0].cfg.min_size == 64
    with pytest.raises(WeightsError, match="no checkpoints"):
        average_weights([])


def test_ship_predict_writes_the_average_with_the_bench_rows_settings(tmp_path):
    """tools/ship_predict.py: the average of the runs, float16, with the chosen row's inference settings
    in its config and the row's best-F1 threshold in its meta; a row asking for what weights cannot
    store, or a missing row, is one line and exit 1 with nothing written."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    from .cocofix import tiny_weights

    a = tiny_weights(tmp_path / "a.pt", train_steps=0)
    torch.manual_seed(1)
    other = build_model(load_model(a)[0].cfg)
    save_checkpoint(other.eval(), tmp_path / "b.pt", {})
    row = "min_size=48,max_size=96,mask_threshold=0.4,vote=0.75"
    best = {"threshold": 0.35, "max_detections_in_an_image": 9, "precision": 0.5, "recall": 0.5, "f1": 0.5}
    scores = {"segm_AP": 0.1, "segm_AP50": 0.2, "boundary_AP": 0.05, "bbox_AP50": 0.25, "best": best}
    (tmp_path / "bench.json").write_text(json.dumps({"default": scores, row: scores, "masks=zoom": scores}))
    tool = Path(__file__).resolve().parents[1] / "tools" / "ship_predict.py"

    def ship(variant, out):
        return subprocess.run([sys.executable, str(tool), str(a), str(tmp_path / "b.pt"), "--bench",
                               str(tmp_path / "bench.json"), "--variant", variant, "-o", str(out)],
                              capture_output=True, text=True, timeout=300, check=False)

    r = ship(row, tmp_path / "shipped.pt")
    assert r.returncode == 0, r.stderr
    ckpt = read_checkpoint(tmp_path / "shipped.pt")
    cfg = ckpt["config"]
    assert (cfg["min_size"], cfg["max_size"], cfg["mask_threshold"], cfg["box_vote_iou"], cfg["mask_scoring"]) == (
        48, 96, 0.4, 0.75, True)
    assert ckpt["meta"]["predict_score_threshold"] == 0.35 and ckpt["meta"]["predict_max_detections"] == 20
    mean, _ = average_weights([a, tmp_path / "b.pt"])
    key = "roi_heads.box_predictor.cls_score.weight"
    assert torch.allclose(ckpt["state_dict"][key].float(), mean.state_dict()[key].half().float())
    for variant, says in (("masks=zoom", "cannot be stored"), ("min_size=64", "no row")):
        r = ship(variant, tmp_path / "not.pt")
        lines = [ln for ln in r.stderr.splitlines() if ln.strip() and "Warning" not in ln and "warn" not in ln]
        assert r.returncode == 1 and says in r.stderr and len(lines) == 1, r.stderr
        assert not (tmp_path / "not.pt").exists()


def test_ship_refine_writes_the_average_in_float16_and_refuses_a_trained_detector(tmp_path):
    """tools/ship_refine.py: the mean of mask-branch runs (the first file's architecture), float16, its
    meta naming the averaged files by their tensors and the detector untrained; a file whose detector
    was trained is one line and exit 1, with nothing written."""
    import subprocess
    import sys
    from pathlib import Path

    from .cocofix import tiny_weights

    a = tiny_weights(tmp_path / "a.pt", train_steps=0, meta={"train_mode": "mask", "trained_iters": 5})
    torch.manual_seed(2)
    save_checkpoint(build_model(load_model(a)[0].cfg).eval(), tmp_path / "b.pt", {"train_mode": "mask"})
    save_checkpoint(load_model(a)[0].eval(), tmp_path / "p.pt", {"detector": "trained"})
    tool = Path(__file__).resolve().parents[1] / "tools" / "ship_refine.py"

    def ship(*files, out):
        return subprocess.run([sys.executable, str(tool), *map(str, files), "-o", str(out), "--meta", "recipe=r.toml"],
                              capture_output=True, text=True, timeout=300, check=False)

    r = ship(a, tmp_path / "b.pt", out=tmp_path / "shipped.pt")
    assert r.returncode == 0, r.stderr
    ckpt = read_checkpoint(tmp_path / "shipped.pt")
    meta = ckpt["meta"]
    assert meta["detector"] == "untrained" and meta["recipe"] == "r.toml" and "trained_iters" not in meta
    assert [m.split(" ")[0] for m in meta["averaged_from"]] == ["a.pt", "b.pt"]
    key = "roi_heads.mask_head.semantic_logits.weight"
    assert all(v.dtype == torch.float16 for v in ckpt["state_dict"].values() if v.is_floating_point())
    mean, _ = average_weights([a, tmp_path / "b.pt"])
    assert torch.allclose(ckpt["state_dict"][key].float(), mean.state_dict()[key].half().float())
    assert not torch.allclose(ckpt["state_dict"][key].float(), load_model(a)[0].state_dict()[key].half().float())
    r = ship(a, tmp_path / "p.pt", out=tmp_path / "not.pt")
    lines = [ln for ln in r.stderr.splitlines() if ln.strip() and "Warning" not in ln and "warn" not in ln]
    assert r.returncode == 1 and "p.pt" in r.stderr and "trained" in r.stderr and len(lines) == 1, r.stderr
    assert not (tmp_path / "not.pt").exists()
    # --set: one shipped file again with an inference setting, its tensors and meta unchanged
    r = subprocess.run([sys.executable, str(tool), str(tmp_path / "shipped.pt"), "-o", str(tmp_path / "set.pt"),
                        "--set", "mask_prompt_threshold=0.45"], capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0 and "mask_prompt_threshold = 0.45" in r.stdout, r.stderr
    again = read_checkpoint(tmp_path / "set.pt")
    assert again["sha256"] == ckpt["sha256"] and again["meta"] == ckpt["meta"]
    assert again["config"] == {**ckpt["config"], "mask_prompt_threshold": 0.45}
    r = subprocess.run([sys.executable, str(tool), str(a), "-o", str(tmp_path / "no.pt"), "--set", "colour=1"],
                       capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 1 and "colour" in r.stderr and not (tmp_path / "no.pt").exists()


def _fake_install(monkeypatch, tmp_path, names):
    """The repository's weights/ empty, the shipped ``names`` in an install's data folder."""
    from refinemask_cli.weights import checkpoint

    prefix = tmp_path / "prefix"
    share = prefix / checkpoint.SHARE_WEIGHTS
    share.mkdir(parents=True)
    for name in names:
        (share / name).write_bytes(b"x")
    (tmp_path / "clone").mkdir()
    monkeypatch.delenv("REFINEMASK_WEIGHTS", raising=False)
    monkeypatch.setattr(checkpoint, "repository_weights_folder", lambda: tmp_path / "clone")
    monkeypatch.setattr(checkpoint.sysconfig, "get_path", lambda name, scheme=None: str(prefix))
    return checkpoint, share


def test_defaults_are_found_where_a_non_editable_install_puts_them(monkeypatch, tmp_path):
    # pip install . (a wheel) has no repository beside the package: the weights come as data files
    checkpoint, share = _fake_install(monkeypatch, tmp_path, [checkpoint_names()[0], checkpoint_names()[1]])
    assert checkpoint.resolve_weights(None) == share / "refinemask_mnv2_agnostic.pt"
    assert checkpoint.resolve_weights(None, "predict") == share / "refinemask_mnv2_predict.pt"
    # the repository's folder comes first where it has the file (a clone, an editable install)
    (tmp_path / "clone" / "refinemask_mnv2_agnostic.pt").write_bytes(b"x")
    assert checkpoint.resolve_weights(None) == tmp_path / "clone" / "refinemask_mnv2_agnostic.pt"
    assert checkpoint.resolve_weights(None, "predict") == share / "refinemask_mnv2_predict.pt"
    assert checkpoint.resolve_weights("mine.pt") == checkpoint.Path("mine.pt")


def test_predict_falls_back_to_the_refine_default_and_a_missing_default_names_where_it_looked(monkeypatch, tmp_path):
    checkpoint, share = _fake_install(monkeypatch, tmp_path, ["refinemask_mnv2_agnostic.pt"])
    assert checkpoint.resolve_weights(None, "predict") == share / "refinemask_mnv2_agnostic.pt"
    (share / "refinemask_mnv2_agnostic.pt").unlink()
    with pytest.raises(WeightsError) as e:
        checkpoint.resolve_weights(None)
    msg = str(e.value)
    assert "\n" not in msg and str(tmp_path / "clone") in msg and str(share) in msg and "--weights" in msg
    monkeypatch.setenv("REFINEMASK_WEIGHTS", str(tmp_path / "gone.pt"))
    with pytest.raises(WeightsError, match="REFINEMASK_WEIGHTS names .*gone.pt, which is not a file"):
        checkpoint.resolve_weights(None, "predict")


def checkpoint_names():
    from refinemask_cli.weights.checkpoint import DEFAULT_WEIGHTS_NAME, PREDICT_WEIGHTS_NAME

    return DEFAULT_WEIGHTS_NAME, PREDICT_WEIGHTS_NAME


def test_pyproject_installs_the_shipped_files_where_refinemask_looks():
    from pathlib import Path

    from refinemask_cli.engine.config import tomllib
    from refinemask_cli.weights.checkpoint import SHARE_WEIGHTS

    root = Path(__file__).resolve().parents[1]
    data_files = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["data-files"]
    assert set(data_files) == {SHARE_WEIGHTS.as_posix()}
    assert data_files[SHARE_WEIGHTS.as_posix()] == [f"weights/{n}" for n in checkpoint_names()]
