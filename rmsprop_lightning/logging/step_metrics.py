"""Per-step scalars kept on the device and handed to the Lightning loggers in batches.

Calling ``self.log`` on every step costs a host synchronisation each time; a flush costs one transfer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from time import monotonic
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback


class StepMetricBuffer:
    """Collects ``{name: scalar tensor}`` per step without touching the host."""

    def __init__(self) -> None:
        self._steps: list[tuple[int, ...]] = []
        self._names: list[tuple[str, ...]] = []
        self._values: list[torch.Tensor] = []
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def record(self, step: int, metrics: Mapping[str, torch.Tensor]) -> None:
        """Keeps the detached scalar ``metrics`` of ``step``; nothing is copied to the host."""
        values = [value.detach() for value in metrics.values()]
        self.record_vector(step, tuple(metrics), values[0] if len(values) == 1 else torch.stack(values))

    def record_vector(self, step: int, names: Sequence[str], values: torch.Tensor) -> None:
        """Keeps ``values`` (a scalar, or one entry per name) as the metrics ``names`` of ``step``."""
        self.record_rows((step,), names, values)

    def record_rows(self, steps: Sequence[int], names: Sequence[str], values: torch.Tensor) -> None:
        """Keeps ``values`` (one row per step, one column per name) as the metrics ``names`` of ``steps``."""
        self._steps.append(tuple(int(step) for step in steps))
        self._names.append(tuple(names))
        self._values.append(values.detach())
        self._count += len(steps)

    def drain(self) -> list[tuple[int, dict[str, float]]]:
        """Empties the buffer and returns ``(step, {name: value})`` pairs in recording order.

        All values reach the host through one concatenation and a single transfer.
        """
        if not self._values:
            return []
        flat = torch.cat([value.reshape(-1) for value in self._values]).float().tolist()
        entries: list[tuple[int, dict[str, float]]] = []
        offset = 0
        for names, steps in zip(self._names, self._steps, strict=True):
            for step in steps:
                entries.append((step, dict(zip(names, flat[offset : offset + len(names)], strict=True))))
                offset += len(names)
        self.clear()
        return entries

    def clear(self) -> None:
        """Forgets every recorded value without a transfer."""
        self._steps.clear()
        self._names.clear()
        self._values.clear()
        self._count = 0


class BufferedStepLogger(Callback):
    """Flushes a :class:`StepMetricBuffer` to every logger of the trainer.

    It flushes once ``flush_every`` steps are buffered, or at the first step ``flush_secs``
    seconds after the last flush (``None``: no time limit), so slow steps still reach the
    loggers soon. Only global rank zero transfers and writes; other ranks drop their
    values, so no collective is ever added. Subclasses record into :attr:`buffer`.
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
        if steps >= self.flush_every:
            return True
        return (
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
