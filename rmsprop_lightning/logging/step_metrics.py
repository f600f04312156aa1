"""Per-step scalars kept on the device and handed to the Lightning loggers in batches.

Calling ``self.log`` on every step costs a host synchronisation each time; a flush costs one transfer.
"""

from __future__ import annotations

from collections.abc import Sequence
from time import monotonic
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback


class StepMetricBuffer:
    """Collects each step's named scalars, as one tensor, without touching the host."""

    def __init__(self) -> None:
        # (step, names, values), as recorded
        self._records: list[tuple[int, tuple[str, ...], torch.Tensor]] = []

    def __len__(self) -> int:
        return len(self._records)

    def record_vector(self, step: int, names: Sequence[str], values: torch.Tensor) -> None:
        """Keeps ``values`` (a scalar, or one entry per name) as the metrics ``names`` of ``step``; nothing
        is copied to the host."""
        self._records.append((int(step), tuple(names), values.detach()))

    def drain(self) -> list[tuple[int, dict[str, float]]]:
        """Empties the buffer and returns ``(step, {name: value})`` pairs in recording order, records of one
        step in one pair (several optimizers'), after a single transfer to the host."""
        if not self._records:
            return []
        # as Python floats: the float64 ones (the monitor's norms) keep their range
        flat = iter(
            torch.cat([values.reshape(-1) for _, _, values in self._records])
            .to("cpu", torch.float64)
            .tolist()
        )
        entries: list[tuple[int, dict[str, float]]] = []
        for step, names, _ in self._records:
            values = {name: next(flat) for name in names}
            if entries and entries[-1][0] == step:
                entries[-1][1].update(values)
            else:
                entries.append((step, values))
        self.clear()
        return entries

    def clear(self) -> None:
        """Forgets every recorded value without a transfer."""
        self._records.clear()


class BufferedStepLogger(Callback):
    """Flushes a :class:`StepMetricBuffer`, which subclasses fill, to every logger of the trainer.

    It flushes every ``flush_every`` steps, or at the first step ``flush_secs`` after the last flush, so slow
    steps still reach the loggers soon. Only rank zero writes; the others drop their values (no collective).
    """

    def __init__(self, flush_every: int = 100, flush_secs: float | None = 30.0) -> None:
        if isinstance(flush_every, bool) or not isinstance(flush_every, int) or flush_every < 1:
            raise ValueError(f"flush_every must be a positive integer, got {flush_every!r}")
        if flush_secs is not None and (
            isinstance(flush_secs, bool) or not isinstance(flush_secs, int | float) or not flush_secs > 0
        ):
            raise ValueError(f"flush_secs must be a positive number of seconds or None, got {flush_secs!r}")
        self.flush_every = flush_every
        self.flush_secs = flush_secs
        self.buffer = StepMetricBuffer()
        self._flushed_at = monotonic()

    def flush_due(self, steps: int) -> bool:
        """Whether ``steps`` buffered steps call for a flush: enough of them, or the time since the last."""
        return steps >= self.flush_every or (
            bool(steps) and self.flush_secs is not None and monotonic() - self._flushed_at >= self.flush_secs
        )

    def flush(self, trainer: pl.Trainer) -> None:
        """Writes everything buffered so far, each value at its own step."""
        self._flushed_at = monotonic()
        if not trainer.is_global_zero or not trainer.loggers:
            self.buffer.clear()
            return
        entries = self.buffer.drain()
        for logger in trainer.loggers:
            for step, metrics in entries:
                logger.log_metrics(metrics, step=step)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.flush_due(len(self.buffer)):
            self.flush(trainer)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.flush(trainer)

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        self.flush(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.flush(trainer)

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self.flush(trainer)
