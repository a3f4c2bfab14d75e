"""Backbones behind one factory: ResNet-50/101-FPN (torchvision layout) and MobileNetV2-FPN.

Both return torchvision's ``BackboneWithFPN`` so that state-dict keys are ``backbone.body.*`` and
``backbone.fpn.*``: the names torchvision and converted official checkpoints use. Feature maps are
``"0".."3"`` = P2..P5 (strides 4..32) and ``"pool"`` = P6 (max-pool of P5; RPN only).
"""
from __future__ import annotations

from torch import nn
from torchvision.models import mobilenet_v2, resnet50, resnet101
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops import FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

# taps of mobilenet_v2().features at strides 4, 8, 16, 32 and their channels
MOBILENET_TAPS = {"3": "0", "6": "1", "13": "2", "18": "3"}
MOBILENET_CHANNELS = [24, 32, 96, 1280]
# how many leading feature blocks each "trainable layers" value leaves frozen (0..5 trainable stages)
MOBILENET_FROZEN_UPTO = {0: 19, 1: 14, 2: 7, 3: 4, 4: 2, 5: 0}


def _freeze(module: nn.Module) -> None:
    for p in module.parameters():
        p.requires_grad_(False)


def resnet_fpn(depth: int, out_channels: int = 256, trainable_layers: int = 3) -> BackboneWithFPN:
    """ResNet-FPN with FrozenBatchNorm; ``trainable_layers`` of layer4..layer1,conv1 train (0..5)."""
    body = (resnet50 if depth == 50 else resnet101)(weights=None, norm_layer=FrozenBatchNorm2d)
    trainable = ["layer4", "layer3", "layer2", "layer1", "conv1"][:trainable_layers]
    if trainable_layers == 5:
        trainable.append("bn1")
    for name, p in body.named_parameters():
        if not any(name.startswith(t) for t in trainable):
            p.requires_grad_(False)
    return_layers = {"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"}
    return BackboneWithFPN(
        body, return_layers, [256, 512, 1024, 2048], out_channels, extra_blocks=LastLevelMaxPool()
    )


def mobilenet_v2_fpn(out_channels: int = 256, trainable_layers: int = 3) -> BackboneWithFPN:
    """MobileNetV2 features (FrozenBatchNorm) with FPN on its stride-4/8/16/32 taps."""
    features = mobilenet_v2(weights=None, norm_layer=FrozenBatchNorm2d).features
    for block in list(features)[: MOBILENET_FROZEN_UPTO[trainable_layers]]:
        _freeze(block)
    return BackboneWithFPN(
        features, MOBILENET_TAPS, MOBILENET_CHANNELS, out_channels, extra_blocks=LastLevelMaxPool()
    )


def build_backbone(name: str, out_channels: int = 256, trainable_layers: int = 3) -> BackboneWithFPN:
    if not 0 <= trainable_layers <= 5:
        raise ValueError(f"trainable_layers must be in 0..5, got {trainable_layers}")
    if name == "resnet50":
        return resnet_fpn(50, out_channels, trainable_layers)
    if name == "resnet101":
        return resnet_fpn(101, out_channels, trainable_layers)
    if name == "mobilenet_v2":
        return mobilenet_v2_fpn(out_channels, trainable_layers)
    raise ValueError(f"unknown backbone {name!r}")
