"""Optimisation settings and the learning-rate schedule (spec §3.1): SGD with linear warmup and
step decay, gradient clipping at 35. The loop itself is ``engine.run.run_training``.
"""
from __future__ import annotations

from dataclasses import dataclass, field


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
    """The learning rate at iteration ``it``. Warmup takes at most a fifth of the run, so a short
    fine-tune (``--iters 60`` with the default 200 warmup iterations) still reaches its rate."""
    factor = 0.1 ** sum(it >= int(f * s.iters) for f in s.steps)
    warmup = min(s.warmup_iters, s.iters // 5)
    if it < warmup:
        k = s.warmup_ratio + (1 - s.warmup_ratio) * it / max(1, warmup)
        factor *= k
    return s.lr * factor
