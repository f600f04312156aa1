"""Learning-rate schedules that torch does not ship as one class."""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR


def warmup_cosine(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int, min_factor: float = 0.0
) -> LambdaLR:
    """Linear warm-up to the base lr (step ``s < warmup_steps`` takes ``(s + 1) / warmup_steps`` of it), then
    cosine decay to ``min_factor`` of it, reached at step ``total_steps``."""
    if warmup_steps < 0 or total_steps < 1 or warmup_steps >= total_steps:
        raise ValueError(
            f"scheduler needs 0 ≤ warmup_steps < total_steps, got {warmup_steps} and {total_steps}"
        )
    if not 0.0 <= min_factor <= 1.0:
        raise ValueError(f"scheduler.min_factor must lie in [0, 1], got {min_factor}")

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
        return min_factor + (1 - min_factor) * 0.5 * (1 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)
