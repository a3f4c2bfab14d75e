"""The training loop: SGD with linear warmup and step decay, gradient clipping at 35 (spec §3.1).

``train_loop`` is plain: it takes a model, a data loader and settings, and reports through an
``on_step`` callback, so the CLI (or a test) decides how to show progress.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import torch

from ..model import RefineMaskRCNN


@dataclass(frozen=True)
class TrainSettings:
    iters: int = 1000
    lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_iters: int = 500
    warmup_ratio: float = 0.001
    steps: tuple[float, ...] = (0.67, 0.92)  # fractions of iters at which lr drops x0.1
    grad_clip: float = 35.0
    mode: str = "full"  # "full": detector + masks; "mask": mask branch from given boxes
    log_every: int = 10
    extra: dict = field(default_factory=dict)


def lr_at(it: int, s: TrainSettings) -> float:
    factor = 0.1 ** sum(it >= int(f * s.iters) for f in s.steps)
    if it < s.warmup_iters:
        k = s.warmup_ratio + (1 - s.warmup_ratio) * it / max(1, s.warmup_iters)
        factor *= k
    return s.lr * factor


def build_optimizer(model: torch.nn.Module, s: TrainSettings) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.SGD(params, lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay)


def cycle(loader: Iterable) -> Iterator:
    while True:
        yield from loader


def train_loop(
    model: RefineMaskRCNN,
    loader: Iterable,
    settings: TrainSettings,
    device: torch.device,
    optimizer: torch.optim.Optimizer | None = None,
    start_iter: int = 0,
    on_step: Callable[[dict], None] | None = None,
) -> torch.optim.Optimizer:
    model.to(device).train()
    opt = optimizer or build_optimizer(model, settings)
    batches = cycle(loader)
    t0 = time.perf_counter()
    for it in range(start_iter, settings.iters):
        images, targets = next(batches)
        images = [im.to(device) for im in images]
        targets = [{k: (v.to(device) if torch.is_tensor(v) else v) for k, v in t.items()} for t in targets]
        lr = lr_at(it, settings)
        for g in opt.param_groups:
            g["lr"] = lr
        losses = model.mask_losses(images, targets) if settings.mode == "mask" else model(images, targets)
        total = sum(losses.values())
        if not torch.isfinite(total):
            raise FloatingPointError(f"loss became {total.item()} at iteration {it}; lower --lr")
        opt.zero_grad(set_to_none=True)
        total.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]],
                                                   settings.grad_clip)
        opt.step()
        if on_step is not None:
            record = {"iter": it + 1, "lr": lr, "loss": total.item(), "grad_norm": float(grad_norm),
                      "time": time.perf_counter() - t0}
            record.update({k: v.item() for k, v in losses.items()})
            on_step(record)
    return opt


class JsonlLog:
    """Append one JSON object per line; a callable usable as ``on_step``."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def __call__(self, record: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps({k: (round(v, 6) if isinstance(v, float) and math.isfinite(v) else v)
                                for k, v in record.items()}) + "\n")
