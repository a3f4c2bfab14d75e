"""The own checkpoint format: round trip, half storage, checksum and clear errors."""
import pytest
import torch

from refinemask_cli.model import build_model
from refinemask_cli.weights import WeightsError, load_model, read_checkpoint, save_checkpoint

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
    with pytest.raises(WeightsError, match="not a readable"):
        read_checkpoint(tmp_path / "trunc.pt")
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
