"""Prints the loss on a batch before and after the update it drives (the seed example's output)."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback


class UpdateReport(Callback):
    """For the first ``num_steps`` steps, prints the loss on the batch that completes the step (the last one
    it accumulates) before and after the optimizer step.

    The module computes it with its ``criterion`` (as :class:`~rmsprop_lightning.RegressionModule` has), in
    eval mode: a dropout layer draws no random numbers the training would otherwise have drawn.
    """

    def __init__(self, num_steps: int = 1) -> None:
        if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
            raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}")
        self.num_steps = num_steps
        self._before: tuple[int, torch.Tensor] | None = None  # the steps done at the batch's start, its loss

    @torch.no_grad()
    def _batch_loss(self, pl_module: pl.LightningModule, batch: Any) -> torch.Tensor:
        features, targets = batch
        modes = {module: module.training for module in pl_module.modules()}  # each as the fit left it
        pl_module.eval()
        try:
            return pl_module.criterion(pl_module(features), targets)
        finally:
            for module, training in modes.items():
                module.training = training

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_step < self.num_steps:
            self._before = trainer.global_step, self._batch_loss(pl_module, batch)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        before, self._before = self._before, None
        # a batch that only accumulates gradients has no update to report
        if before is None or trainer.global_step == before[0] or not trainer.is_global_zero:
            return
        after = self._batch_loss(pl_module, batch)
        print(f"Loss before the update: {before[1].item():.4f}")
        label = "one update" if trainer.global_step == 1 else f"{trainer.global_step} updates"
        print(f"Loss after {label}: {after.item():.4f}", flush=True)
