"""Tiny synthetic scenes shared by the tests."""
import numpy as np
import torch

from refinemask_cli.model import ModelConfig


def tiny_config(**kw) -> ModelConfig:
    base = dict(backbone="mobilenet_v2", num_classes=2, class_names=("a", "b"), fpn_channels=32,
                min_size=64, max_size=96, trainable_backbone_layers=5, rpn_pre_nms_top_n_test=50,
                rpn_post_nms_top_n_test=50, detections_per_img=10)
    base.update(kw)
    return ModelConfig(**base)


def ellipse_scene(h=64, w=80, seed=0):
    """An RGB image with a textured ellipse on a textured background, its mask and box."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    cy, cx, ry, rx = h * 0.5, w * 0.45, h * 0.3, w * 0.28
    mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
    img = rng.integers(0, 60, size=(h, w, 3)).astype(np.uint8)
    img[mask] = np.clip(rng.integers(150, 255, size=(int(mask.sum()), 3)), 0, 255).astype(np.uint8)
    ys, xs = np.nonzero(mask)
    box = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float32)
    return img, mask, box


def to_target(mask: np.ndarray, box: np.ndarray, label: int = 0) -> dict:
    return {
        "boxes": torch.from_numpy(box)[None],
        "labels": torch.tensor([label]),
        "masks": torch.from_numpy(mask.astype(np.uint8))[None],
    }


def image_tensor(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(img).permute(2, 0, 1).float() / 255.0


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0
