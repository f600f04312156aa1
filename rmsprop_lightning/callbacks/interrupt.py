"""SIGTERM and Ctrl-C: finish the current step, save ``last.ckpt``, stop, and say how to resume."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback

from rmsprop_lightning.callbacks.divergence import any_rank
from rmsprop_lightning.callbacks.last_checkpoint import LastCheckpoint, find_callback
from rmsprop_lightning.errors import InterruptedRun, requested_stop, resume_hint
from rmsprop_lightning.summary import write_summary

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class GracefulInterrupt(Callback):
    """Turns SIGTERM/SIGINT during training into a checkpoint and a clean stop after the current step.

    The ranks agree to stop at the step's end (a signal to one rank is enough), ``LastCheckpoint`` saves
    that step and the next batch raises :class:`~rmsprop_lightning.errors.InterruptedRun` with the resume
    command; nothing unscheduled runs, so the resumed run is the one stopped. A signal at the last step
    stops at the end of the fit, before any test; a second Ctrl-C stops at once, without a checkpoint.

    Args:
        run_dir: a template run's folder (``train.py``'s): the stop goes into its ``metrics.json`` and the
            message ends with its ``resume=`` command; ``None`` elsewhere.
    """

    def __init__(self, run_dir: str | Path | None = None) -> None:
        self.run_dir = None if run_dir is None else Path(run_dir)
        self.received: int | None = None
        self.stopped_at: int | None = None
        self._previous: dict[int, Any] = {}
        self._step: int | None = None  # the trainer's step count at the last batch end
        self._last: LastCheckpoint | None = None  # the trainer's, which saves the step stopped at

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None and signum == signal.SIGINT:
            self._restore()
            if saved := self._saved_at_stop():  # the stop's checkpoint came before this Ctrl-C
                message = f"stopped by SIGINT again after step {self.stopped_at}; {saved}"
            else:
                message = f"stopped by SIGINT again during step {(self._step or 0) + 1}; no checkpoint saved"
            raise InterruptedRun(message + self._resume(), signum)
        self.received = signum
        log.warning(
            "Received %s: stopping after this step%s (Ctrl-C again stops at once)",
            signal.Signals(signum).name,
            "" if self._last is None else " and saving a checkpoint",
        )

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._step = trainer.global_step
        self._last = find_callback(trainer.callbacks, LastCheckpoint)
        if threading.current_thread() is threading.main_thread():
            self._previous = {signum: signal.signal(signum, self._handle) for signum in SIGNALS}
        self.received = self.received or requested_stop()  # one taken while distributed ranks started

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        stop = any_rank(trainer, self.received is not None)
        stepped, self._step = trainer.global_step != self._step, trainer.global_step
        if stop and stepped and self.stopped_at is None:  # never inside an accumulation of gradients
            self.stopped_at = trainer.global_step
            if self._last is not None:
                self._last.request_save()

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self.stopped_at is not None:
            self._stop(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._restore()
        stop = any_rank(trainer, self.received is not None)  # a collective on every rank
        if stop and self.stopped_at is None:  # after the last step's end, whose checkpoint is saved as usual
            self.stopped_at = trainer.global_step

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.stopped_at is not None:  # at the last step or after it: no next batch stopped the fit
            self._stop(trainer)

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._restore()

    def _resume(self) -> str:
        """How to go on with a template run (whose ``run_dir`` is set)."""
        if self.run_dir is None:
            return ""
        return f"; {resume_hint(self.run_dir, self._last is not None and self._last.path.is_file())}"

    def _saved_at_stop(self) -> str:
        """``checkpoint saved to <path>`` once the stopped step's checkpoint is written, else ``""``."""
        last = self._last
        saved = last is not None and self.stopped_at is not None and last.saved_step == self.stopped_at
        return f"checkpoint saved to {last.path}" if saved else ""

    def _stop(self, trainer: pl.Trainer) -> None:
        signum = self.received or signal.SIGTERM
        saved = self._saved_at_stop() or "no checkpoint saved (no last_checkpoint callback)"
        message = (
            f"stopped by {signal.Signals(signum).name} after step {self.stopped_at}; {saved}{self._resume()}"
        )
        if self.run_dir is not None and trainer.is_global_zero:
            write_summary(self.run_dir, status="interrupted", error=message, steps=self.stopped_at)
        raise InterruptedRun(message, signum)
