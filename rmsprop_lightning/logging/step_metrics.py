"""Per-step scalars kept on the device and handed to the Lightning loggers in batches.

Calling ``self.log`` on every step costs a host synchronisation and Lightning's result
bookkeeping each time. :class:`StepMetricBuffer` instead keeps each step's values as
device tensors and, on :meth:`flush`, moves all of them to the host in one transfer
and writes every value at its own step number, so TensorBoard still shows every step.
:class:`BufferedStepLogger` is the Lightning callback that flushes such a buffer at
the right moments: every ``flush_every`` steps or ``flush_secs`` seconds, before a
checkpoint, at the end of fit and when training stops on an exception.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from time import monotonic
from typing import Any, NamedTuple

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import Logger


class StepRows(NamedTuple):
    """Values of several steps under the same names: row ``k`` of ``values`` holds step ``steps[k]``'s."""

    names: tuple[str, ...]
    steps: tuple[int, ...]
    values: np.ndarray  # float32, one row per step and one column per name

    def entries(self) -> list[tuple[int, dict[str, float]]]:
        """``(step, {name: value})`` per step."""
        pairs = zip(self.steps, self.values.tolist(), strict=True)
        return [(step, dict(zip(self.names, row, strict=True))) for step, row in pairs]


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

    def drain_rows(self) -> list[StepRows]:
        """Empties the buffer and returns what was recorded, in order, as float32 host arrays.

        All values reach the host through a single concatenation and transfer; runs of
        scalars (one per step, as the loss is kept) are stacked in one operation, and
        consecutive records under the same names come back as one group.
        """
        if not self._steps:
            return []
        parts: list[torch.Tensor] = []
        scalars: list[torch.Tensor] = []
        for value in self._values:
            if value.dim() == 0:
                scalars.append(value)
                continue
            if scalars:
                parts.append(torch.stack(scalars))
                scalars = []
            parts.append(value.reshape(-1))
        if scalars:
            parts.append(torch.stack(scalars))
        flat = (parts[0] if len(parts) == 1 else torch.cat(parts)).float().numpy(force=True)
        groups: list[StepRows] = []
        offset = 0
        for names, runs in itertools.groupby(zip(self._names, self._steps, strict=True), key=lambda r: r[0]):
            steps = tuple(step for _, run_steps in runs for step in run_steps)
            size = len(names) * len(steps)
            groups.append(
                StepRows(names, steps, flat[offset : offset + size].reshape(len(steps), len(names)))
            )
            offset += size
        self.clear()
        return groups

    def drain(self) -> list[tuple[int, dict[str, float]]]:
        """Empties the buffer and returns ``(step, {name: value})`` pairs in recording order."""
        return [entry for group in self.drain_rows() for entry in group.entries()]

    def clear(self) -> None:
        """Forgets every recorded value without a transfer."""
        self._steps.clear()
        self._names.clear()
        self._values.clear()
        self._count = 0


def log_steps(logger: Logger, groups: Sequence[StepRows]) -> None:
    """Hands drained steps to ``logger``: in one call where it has ``log_metrics_rows``, else step by step."""
    log_metrics_rows = getattr(logger, "log_metrics_rows", None)
    if log_metrics_rows is not None:
        log_metrics_rows(groups)
        return
    for group in groups:
        for step, metrics in group.entries():
            logger.log_metrics(metrics, step=step)


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
        groups = self.buffer.drain_rows()
        for logger in trainer.loggers:
            log_steps(logger, groups)

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
