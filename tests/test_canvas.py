"""Padding image batches to a fixed canvas or size buckets (the shapes reduced precision compiles
for): one shape for every batch, and the same boxes and masks as unpadded within tolerance."""
import numpy as np
import pytest
import torch

from refinemask_cli.engine.config import TrainConfig
from refinemask_cli.model import build_model
from refinemask_cli.predictor import Predictor, RefineSettings

from .helpers import ellipse_scene, image_tensor


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from refinemask_cli.weights import load_model

    from .cocofix import tiny_weights

    return load_model(tiny_weights(tmp_path_factory.mktemp("w") / "tiny.pt", box_score_thresh=0.0))[0]


def test_canvas_gives_one_batch_shape(model):
    m = build_model(model.cfg)
    m.set_canvas(128)
    shapes = set()
    for h, w in ((40, 90), (64, 80), (96, 50)):
        images, _ = m.transform([torch.rand(3, h, w)])
        shapes.add(tuple(images.tensors.shape[-2:]))
    assert shapes == {(128, 128)}
    m.set_canvas(0)
    images, _ = m.transform([torch.rand(3, 64, 80)])
    assert tuple(images.tensors.shape[-2:]) == (64, 96)  # multiples of 32 again
    with pytest.raises(ValueError, match="multiple of 32"):
        m.set_canvas(100)
    with pytest.raises(ValueError, match="canvas"):
        TrainConfig.from_dict({"datasets": [{"json": "a", "images": "b"}], "canvas": 48})


def _full(det, k, shape):
    return det.masks[k].full(*shape)


def test_padded_predict_and_refine_match_unpadded(model):
    big, _, _ = ellipse_scene(256, 320)
    img, mask, box = ellipse_scene(64, 80)
    plain = Predictor(model, device="cpu")
    padded = Predictor(model, device="cpu", canvas=512)
    assert padded.runtime.endswith("/canvas512") and plain.runtime == "cpu/fp32/batch1"
    # every FPN level over the image's top-left half is the same: padding only reaches in from the
    # right and bottom edges (measured: 1e-7 here, while the edge cells move by up to 0.3)
    for p in (plain, padded):
        p.model.transform.min_size, p.model.transform.max_size = (256,), 512
    with torch.inference_mode():
        fa = plain.model.backbone(plain.model.transform([plain._to_tensor(big)])[0].tensors)
        fb = padded.model.backbone(padded.model.transform([padded._to_tensor(big)])[0].tensors)
    for level in ("0", "1", "2", "3"):
        h, w = fa[level].shape[-2:]
        assert fb[level].shape[-1] > w
        assert torch.allclose(fa[level][..., : h // 2, : w // 2], fb[level][..., : h // 2, : w // 2], atol=1e-5)
    for p in (plain, padded):
        p.model.transform.min_size, p.model.transform.max_size = (model.cfg.min_size,), model.cfg.max_size
    # predict runs on the canvas (this untrained tiny detector's near-tied scores reorder under any
    # perturbation, so only the count is compared; the features above are the real check)
    a, b = plain.predict([img])[0], padded.predict([img])[0]
    assert len(a) and abs(len(a) - len(b)) <= max(1, len(a) // 5)
    whole = RefineSettings(mode="whole", flip=False)
    ra = plain.refine(img, box[None], settings=whole)
    rb = padded.refine(img, box[None], settings=whole)
    ma, mb = _full(ra, 0, img.shape[:2]), _full(rb, 0, img.shape[:2])
    assert ma.sum() > 0.5 * mask.sum()  # a real mask to compare
    assert (ma & mb).sum() / max((ma | mb).sum(), 1) > 0.95
    zoom = RefineSettings(mode="zoom", zoom_size=64, flip=False)
    za, zb = plain.refine(img, box[None], settings=zoom), padded.refine(img, box[None], settings=zoom)
    assert za.masks[0].area > 0
    assert np.array_equal(_full(za, 0, img.shape[:2]), _full(zb, 0, img.shape[:2]))  # crops never padded more


def test_training_with_a_canvas_runs(tmp_path):
    from refinemask_cli.engine.run import run_training

    from .test_train import tiny_cfg

    cfg = tiny_cfg(tmp_path, mode="full", iters=2, canvas=128)
    model = run_training(cfg, tmp_path / "run", torch.device("cpu"))
    assert model.transform.size_divisible == 128
    images, _ = model.transform([image_tensor(ellipse_scene(64, 72)[0])])
    assert tuple(images.tensors.shape[-2:]) == (128, 128)
