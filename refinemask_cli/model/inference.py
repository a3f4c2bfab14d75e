"""Turning a trained model into a faster inference-only one without changing what it computes.

* Frozen batch norms are folded into the convolution before them (``w' = w·s``, ``b' = (b − μ)·s + β``
  with ``s = γ / √(σ² + ε)``) and replaced by identities: on CPU the separate per-channel affine pass
  costs about a quarter of the MobileNetV2 backbone.
* 4-D weights go channels-last, so oneDNN (CPU) and cuDNN (CUDA) run the convolutions in NHWC
  without reordering activations every layer: the folded MobileNetV2-FPN runs about 2× faster on CPU.

Both change the state dict's layout or keys, so they act on an inference copy (``Predictor`` makes
one); a model being trained or saved is never touched.
"""
from __future__ import annotations

import copy

import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d


def _fold_pair(conv: nn.Conv2d, bn: FrozenBatchNorm2d) -> None:
    scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
    weight = conv.weight.detach() * scale.reshape(-1, 1, 1, 1).to(conv.weight)
    bias = conv.bias.detach() if conv.bias is not None else torch.zeros_like(bn.bias)
    conv.weight = nn.Parameter(weight, requires_grad=False)
    conv.bias = nn.Parameter(((bias - bn.running_mean) * scale + bn.bias).to(weight), requires_grad=False)


def fold_frozen_batchnorm(module: nn.Module) -> int:
    """Fold every ``FrozenBatchNorm2d`` that directly follows a ``Conv2d`` among its siblings (the
    layout of torchvision's ResNet, its downsample branches and MobileNetV2) into that conv, in place.

    Returns how many were folded; ``inference_copy`` refuses a model where any is left over, so a
    backbone with another layout fails loudly instead of silently staying slow.
    """
    folded = 0
    for child in module.children():
        folded += fold_frozen_batchnorm(child)
    names = list(module._modules)
    for prev, name in zip(names, names[1:]):
        conv, bn = module._modules[prev], module._modules[name]
        if (isinstance(conv, nn.Conv2d) and isinstance(bn, FrozenBatchNorm2d)
                and conv.out_channels == bn.weight.numel()):
            _fold_pair(conv, bn)
            module._modules[name] = nn.Identity()
            folded += 1
    return folded


def inference_copy(model: nn.Module, channels_last: bool = True) -> nn.Module:
    """An eval-mode copy with batch norms folded and (by default) channels-last weights."""
    fast = copy.deepcopy(model).eval()
    fold_frozen_batchnorm(fast)
    left = [n for n, m in fast.named_modules() if isinstance(m, FrozenBatchNorm2d)]
    if left:
        raise ValueError(f"cannot fold batch norm {left[0]}: it does not follow a convolution")
    for p in fast.parameters():
        p.requires_grad_(False)
    if channels_last:
        fast = fast.to(memory_format=torch.channels_last)
    return fast
