"""``last.ckpt``, kept current for ``resume=<run dir>``: every N optimizer steps and when training stops."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeVar

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.trainer.states import TrainerFn

from rmsprop_lightning.atomic import remove_stale_temporaries
from rmsprop_lightning.internals import (
    count_the_restored_step,
    count_the_validated_step,
    end_the_restored_epoch,
    fit_restarting,
    is_last_batch,
    restart_done,
    resumed_after_epoch_end,
    step_epoch_schedulers,
    validation_follows,
)

LAST_CHECKPOINT = "last.ckpt"
# in this callback's state in every checkpoint: written during a fit's validation, before the step counted
SAVED_IN_VALIDATION = "saved_in_validation"
C = TypeVar("C")


def training_stops(trainer: pl.Trainer) -> bool:
    """Whether the optimizer step that just finished is the last one of ``fit``."""
    if trainer.should_stop or (trainer.max_steps != -1 and trainer.global_step >= trainer.max_steps):
        return True
    max_epochs = trainer.max_epochs
    return bool(
        is_last_batch(trainer) and max_epochs not in (None, -1) and trainer.current_epoch + 1 >= max_epochs
    )


def find_callback(callbacks: Iterable[Any], kind: type[C]) -> C | None:
    """The first of ``callbacks`` that is a ``kind``, if any."""
    return next((c for c in callbacks if isinstance(c, kind)), None)


class LastCheckpoint(Checkpoint):
    """Saves the full training state to ``dirpath/last.ckpt`` every ``every_n_train_steps`` steps.

    It also saves after the last step, when training is told to stop (at a step's end, or by its validation:
    early stopping) and on :meth:`request_save`; after the step's validation if one follows (Lightning does
    not repeat a validation due at a checkpoint's step).
    As a ``Checkpoint`` it runs after the other callbacks, so a step they reject is never saved; it also
    takes the place of Lightning's default ``ModelCheckpoint``, and a ``ModelCheckpoint`` goes before it in
    the list, as ``trainer.checkpoint_callback`` (what ``ckpt_path="best"`` reads) is the first. A resume
    of a fit that draws random numbers (dropout) is exact with :class:`RandomState` among the callbacks.

    Lightning's resume skips two plateau-scheduler steps that these checkpoints come before: that of the
    epoch whose last batch the checkpoint holds, and the one at the end of the epoch the run resumes in (it
    has no metrics to feed them). The checkpoint keeps the metrics, and this callback makes those steps.
    A checkpoint written during a validation holds Lightning's logger step before that step counted, which
    a resumed run that does not validate there never counts: this callback counts it, as it counts the step
    of any of its checkpoints restored by a fit with no step left (whose test would log it a step early);
    restored at an epoch's last batch, it ends that epoch (Lightning would train a batch of the next in it).
    """

    def __init__(self, dirpath: str | Path, every_n_train_steps: int = 100) -> None:
        whole = isinstance(every_n_train_steps, int) and not isinstance(every_n_train_steps, bool)
        if not whole or every_n_train_steps < 1:
            raise ValueError(f"every_n_train_steps must be a positive integer, got {every_n_train_steps!r}")
        self.dirpath = Path(dirpath)
        self.every_n_train_steps = every_n_train_steps
        self.saved_step: int | None = None
        self._requested = False
        self._after_validation = False
        self._saving_now = False
        self._resumed_from_mine = False
        self._restored_in_validation = False
        self._restored_uncounted = False  # a restored step the loggers' count lacks until training starts
        self._epoch_ended_unrun = False  # the restored epoch ended without a batch: its restart ends with it
        self._restored_metrics: dict[str, Any] = {}
        self._step_seen: int | None = None  # the trainer's step count at the last batch end
        self._stepped = False  # whether that batch ended an optimizer step (not inside an accumulation)

    @property
    def path(self) -> Path:
        """The checkpoint file."""
        return self.dirpath / LAST_CHECKPOINT

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit" and trainer.is_global_zero:  # of any checkpoint here: a ModelCheckpoint's too
            remove_stale_temporaries(self.dirpath / "*.ckpt")

    def _may_save(self, trainer: pl.Trainer) -> bool:
        return (
            not trainer.fast_dev_run
            and trainer.state.fn == TrainerFn.FITTING
            and not trainer.sanity_checking
            and trainer.global_step != self.saved_step
        )

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._stepped, self._step_seen = trainer.global_step != self._step_seen, trainer.global_step
        # at a step's end only: inside an accumulation of gradients the state holds gradients no save keeps
        periodic = trainer.global_step % self.every_n_train_steps == 0
        due = self._requested or (self._stepped and (periodic or training_stops(trainer)))
        self._requested = False
        if not (due and self._may_save(trainer)):
            return
        if validation_follows(trainer):
            self._after_validation = True
        else:
            self.save(trainer)

    def request_save(self) -> None:
        """Saves the state of the batch now ending, even if no save is due (a stop is coming)."""
        self._requested = True

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # told to stop by it (early stopping) at a step's end: never inside an accumulation of gradients
        self._after_validation |= trainer.should_stop and self._stepped
        self.finish(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.finish(trainer)

    def finish(self, trainer: pl.Trainer) -> None:
        """Writes a checkpoint that was waiting for the end of a validation, if any."""
        if self._after_validation and self._may_save(trainer):
            self.save(trainer)
        self._after_validation = False

    def save(self, trainer: pl.Trainer) -> None:
        """Writes the checkpoint now (every rank must call it under DDP; rank zero writes)."""
        self._saving_now = True
        try:
            trainer.save_checkpoint(self.path, weights_only=False)
        finally:
            self._saving_now = False
        self.saved_step = trainer.global_step

    def state_dict(self) -> dict[str, Any]:
        return {"written_by_me": self._saving_now}

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        # Lightning keeps no metrics in checkpoints, but a plateau scheduler or early
        # stopping reads the last validation's metrics long after it ran
        metrics = {name: value.detach().cpu() for name, value in trainer.callback_metrics.items()}
        state = checkpoint["callbacks"][self.state_key]
        state["callback_metrics"] = metrics
        state[SAVED_IN_VALIDATION] = trainer.state.fn == TrainerFn.FITTING and trainer.validating

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._resumed_from_mine = bool(state_dict.get("written_by_me"))
        self._restored_in_validation = bool(state_dict.get(SAVED_IN_VALIDATION))
        # written before Lightning counts its step, which a restarting training loop makes up for
        self._restored_uncounted = self._resumed_from_mine or self._restored_in_validation
        self._restored_metrics = dict(state_dict.get("callback_metrics", {}))

    def _put_back_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """The restored run's last metrics, for what reads them before the next validation."""
        for name, value in self._restored_metrics.items():
            trainer.callback_metrics.setdefault(name, value.to(pl_module.device))
        self._restored_metrics = {}

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._put_back_metrics(trainer, pl_module)  # also for a fit with no step left, which never starts

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._step_seen, self._stepped = trainer.global_step, False
        self._put_back_metrics(trainer, pl_module)  # for strategies that restore after on_fit_start
        self._restored_uncounted = False
        if self._restored_in_validation:  # a run validating at that step counts it when it skips it
            count_the_validated_step(trainer)
            self._epoch_ended_unrun = end_the_restored_epoch(trainer)
            self._restored_in_validation = False
        if self._resumed_from_mine and resumed_after_epoch_end(trainer):
            step_epoch_schedulers(trainer)  # that epoch's end-of-epoch step was skipped

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._restored_uncounted:  # no step was left, so training never started
            count_the_restored_step(trainer)
            self._restored_uncounted = False

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._epoch_ended_unrun:
            restart_done(trainer)
            self._epoch_ended_unrun = False
        if self._resumed_from_mine and fit_restarting(trainer):
            step_epoch_schedulers(trainer)  # the epoch resumed in ends without its step
        self._resumed_from_mine = False
