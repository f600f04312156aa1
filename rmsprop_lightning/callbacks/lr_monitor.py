"""Lightning's ``LearningRateMonitor``, logging each optimizer step once under gradient accumulation."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch import callbacks


class LearningRateMonitor(callbacks.LearningRateMonitor):
    """Lightning's ``LearningRateMonitor`` (same arguments), logging at the first batch of each optimizer step
    only: with ``accumulate_grad_batches=k`` Lightning's logs each value ``k`` times at the same step."""

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if batch_idx % trainer.accumulate_grad_batches == 0:  # an accumulation window starts each epoch anew
            super().on_train_batch_start(trainer, pl_module, batch, batch_idx)
