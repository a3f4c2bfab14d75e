"""GPU checks: run only where CUDA is present (skipped on CPU-only machines and in CI)."""
import numpy as np
import pytest
import torch

from refinemask_cli.model import build_model
from refinemask_cli.predictor import Predictor

from .helpers import ellipse_scene, tiny_config

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_predictor_cuda_matches_cpu_fp32():
    torch.manual_seed(0)
    model = build_model(tiny_config())
    img, mask, box = ellipse_scene()
    cpu = Predictor(model, device="cpu").refine(img, box[None], np.array([0]))
    gpu = Predictor(model, device="cuda", precision="fp32").refine(img, box[None], np.array([0]))
    a, b = cpu.masks[0].full(*img.shape[:2]), gpu.masks[0].full(*img.shape[:2])
    assert (a != b).mean() < 0.01
    half = Predictor(model, device="cuda", precision="fp16").predict([img])
    assert half[0].image_size == img.shape[:2]


def test_cuda_defaults_and_batched_refine_match_cpu():
    torch.manual_seed(0)
    model = build_model(tiny_config(num_classes=1, class_names=("obj",), class_agnostic="all"))
    img, mask, box = ellipse_scene()
    gpu = Predictor(model, device="cuda")
    assert gpu.precision == "fp32" and gpu.batch_size == 4 and gpu.runtime == "cuda/fp32/batch4"
    items = [(img, box[None], None, None), (img[:, ::-1].copy(), box[None], None, [mask[:, ::-1]])]
    cpu_out = Predictor(model, device="cpu").refine_many(items)
    for precision in ("fp32", "fp16", "bf16", "bf16-masks"):
        out = Predictor(model, device="cuda", precision=precision).refine_many(items)
        for a, b in zip(cpu_out, out):
            fa, fb = a.masks[0].full(*img.shape[:2]), b.masks[0].full(*img.shape[:2])
            # an untrained model's probabilities sit near 0.5, so reduced precision flips more pixels
            assert (fa != fb).mean() < (0.01 if precision == "fp32" else 0.1), precision
