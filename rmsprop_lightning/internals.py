"""Every use of another library's private API, in one place, each with the reason and the upstream issue.

The one exception is the DDP launcher fix (``app/distributed.py``): it subclasses the launcher found here,
overriding ``_call_children_scripts`` and calling ``_check_can_spawn_children``, and DDP's strategy,
overriding ``_configure_launcher`` to replace ``_launcher``. ``tests/test_internals.py`` checks the three
methods against the installed versions, so an upgrade that moves one fails there, loudly, not in a run.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import lightning.pytorch as pl


def subprocess_script_launcher() -> type:
    """Lightning's launcher of the extra DDP ranks, which re-runs ``sys.argv`` for each: inside a Hydra
    multirun, the whole sweep (Lightning issues #11300, #18175); the fix overrides how it starts them."""
    from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher

    return _SubprocessScriptLauncher


# where a torch scheduler's state dict keeps the learning rates it set last (not a documented format):
# a branch keeps a plateau scheduler's, a diverged population member's optimizer goes back to them
SCHEDULER_LAST_LRS = "_last_lr"


def hydra_argument_parser() -> argparse.ArgumentParser:
    """Hydra's own command-line parser: Hydra has no public one, and ``resume=`` must read the
    command line exactly as Hydra will before Hydra starts."""
    from hydra._internal.utils import get_args_parser

    return get_args_parser()


def validation_follows(trainer: pl.Trainer) -> bool:
    """Whether the training loop validates right after the batch that just ended: a checkpoint written
    before it makes a resumed run skip it (Lightning issues #19549, #20288), so ``last.ckpt`` waits."""
    loop = trainer.fit_loop
    return loop.epoch_loop._should_check_val_fx(loop._data_fetcher)


def logger_step(trainer: pl.Trainer) -> int:
    """The step Lightning's loggers are at, which ``self.log`` and its ``LearningRateMonitor`` log at: the
    optimizer steps done, or under manual optimization the batches done, where ``global_step`` counts every
    optimizer's steps (Lightning issues #17958, #20240: no public name for it)."""
    return trainer.fit_loop.epoch_loop._batches_that_stepped


def is_last_batch(trainer: pl.Trainer) -> bool:
    """Whether the batch that just ended is the last of its epoch (Lightning's loop progress)."""
    return bool(trainer.fit_loop.epoch_loop.batch_progress.is_last_batch)


def epochs_done(checkpoint: Mapping[str, Any]) -> int:
    """The epochs whose batches a Lightning checkpoint has all run, one written at an epoch's last batch
    included (the loops' state in Lightning's checkpoints is not a documented format)."""
    loop = checkpoint.get("loops", {}).get("fit_loop", {})
    epochs = loop.get("epoch_progress", {}).get("current", {})
    completed = epochs.get("completed", checkpoint.get("epoch", 0))
    at_last_batch = loop.get("epoch_loop.batch_progress", {}).get("is_last_batch", False)
    return completed + bool(epochs.get("started", 0) > completed and at_last_batch)


def saved_loader_states(checkpoint: Mapping[str, Any]) -> list[Any]:
    """The training data loaders' states a Lightning checkpoint holds (the fit loop's ``combined_loader``),
    empty where it holds none."""
    return checkpoint.get("loops", {}).get("fit_loop", {}).get("state_dict", {}).get("combined_loader", [])


def resumed_after_epoch_end(trainer: pl.Trainer) -> bool:
    """Whether the run resumed from a checkpoint of an epoch's last batch (its epoch end counted as done)."""
    epoch_loop = trainer.fit_loop.epoch_loop
    return bool(epoch_loop.restarted_on_train_batch_end and is_last_batch(trainer))


def fit_restarting(trainer: pl.Trainer) -> bool:
    """Whether the fit loop is still in the epoch it resumed in."""
    return bool(trainer.fit_loop.restarting)


def step_epoch_schedulers(trainer: pl.Trainer) -> None:
    """Steps the epoch-interval plateau schedulers, as Lightning does at an epoch's end: a resume skips the
    end-of-epoch steps a checkpoint came before (their metrics are not in Lightning's checkpoint)."""
    trainer.fit_loop.epoch_loop.update_lr_schedulers("epoch", update_plateau_schedulers=True)


def count_the_validated_step(trainer: pl.Trainer) -> None:
    """Counts for the loggers the step a checkpoint written during its validation was restored at.

    Lightning's logger step (``_batches_that_stepped``) counts a step after its validation, so such a
    checkpoint holds it one short; a resumed loop makes up for it only while passing over the validation
    due at that batch again (the restart stages of Lightning PR #20379, issue #14579). A trainer with no
    validation there (a longer run after one that validated at its last step) logged every point a step
    early. Call it once the fit loop is restored and before its first batch (``on_train_start``).
    """
    loop = trainer.fit_loop.epoch_loop
    if loop.restarted_on_last and not loop._should_accumulate() and not validation_follows(trainer):
        loop._batches_that_stepped += 1


def end_the_restored_epoch(trainer: pl.Trainer) -> bool:
    """Ends the epoch whose last batch a checkpoint written in its validation was restored at, where the fit
    validates elsewhere; returns whether it did (then call :func:`restart_done` at that epoch's end).

    A restarted loop stays in the epoch until the validation due at the restored batch has run (the restart
    stages of Lightning PR #20379); with none due there (a branch validating at its own last step), it trained
    one batch of the next epoch in the old one, which put the data's epochs out of step with the run it
    continues. Call it once the fit loop is restored and before its first batch (``on_train_start``).
    """
    loop = trainer.fit_loop.epoch_loop
    if not (loop.restarted_on_last and is_last_batch(trainer) and not validation_follows(trainer)):
        return False
    loop.val_loop._has_run = True  # what a restarted epoch waits for before it ends
    return True


def restart_done(trainer: pl.Trainer) -> None:
    """Ends the restart of an epoch :func:`end_the_restored_epoch` ended: without a batch, the epoch loop
    never finished an iteration, which is where it stops restarting, and would restart every epoch."""
    trainer.fit_loop.epoch_loop.restarting = False


def count_the_restored_step(trainer: pl.Trainer) -> None:
    """Counts for the loggers the step of a checkpoint written during that step (at its batch end or in its
    validation), where the fit has no step left: its loop never restarts to count it, and its test would be
    logged a step early. Call it at the end of such a fit."""
    trainer.fit_loop.epoch_loop._batches_that_stepped += 1


def count_batches_served(trainer: pl.Trainer, served: int) -> None:
    """Sets the restored epoch's batch count to the ``served`` batches its loader's position accounts for.

    Lightning ends an epoch when that count reaches the loader's length, so a branch whose loader has more
    batches left than the parent's count allows (another batch size or world size) lost the rest of its
    epoch. Call it once the fit loop is restored and before its first batch (``on_train_start``).
    """
    current = trainer.fit_loop.epoch_loop.batch_progress.current
    shift = served - current.ready
    current.ready, current.started = current.ready + shift, current.started + shift
    current.processed, current.completed = current.processed + shift, current.completed + shift
