"""How many batches and steps a fit runs and when it first validates, from the data's batch counts, and the
checks of the trainer's batch settings that Lightning makes only once a loop starts."""

from __future__ import annotations

import logging
from typing import Any

from omegaconf import DictConfig, OmegaConf

from rmsprop_lightning.app.resume import continues_itself
from rmsprop_lightning.app.safeguards import is_weights_branch
from rmsprop_lightning.app.validation import load_checkpoint, processes
from rmsprop_lightning.callbacks.fit_stats import FitStats
from rmsprop_lightning.data import RegressionDataModule
from rmsprop_lightning.data.loader import limited_batches
from rmsprop_lightning.errors import InputError

log = logging.getLogger(__name__)


def batches_per_epoch(trainer: DictConfig, datamodule: RegressionDataModule) -> int:
    """Training batches an epoch takes on each process: the loader's, less what the limits leave out."""
    limit = trainer.get("overfit_batches") or trainer.get("limit_train_batches")
    return limited_batches(datamodule.train_batches(processes(trainer)), 1.0 if limit is None else limit)


def batches_before(step: int, epoch: int, window: int) -> int:
    """Training batches taken by ``step``, with epochs of ``epoch`` batches stepping every ``window``."""
    epochs, steps = divmod(step, -(-epoch // window))  # an epoch's last window steps too, full or not
    return epochs * epoch + steps * window


def run_length(trainer: DictConfig, epoch: int) -> tuple[int, int] | None:
    """``(batches, steps)`` of a fit on each process, where ``max_steps`` or ``max_epochs`` ends it first,
    with epochs of ``epoch`` batches."""
    window = trainer.get("accumulate_grad_batches", 1)
    ends = []
    max_steps, max_epochs = trainer.get("max_steps", -1), trainer.get("max_epochs")
    if max_steps >= 1 and epoch:
        ends.append((batches_before(max_steps, epoch, window), max_steps))
    if max_epochs is not None and max_epochs >= 0:
        ends.append((max_epochs * epoch, max_epochs * -(-epoch // window)))
    return min(ends) if ends else None


def restored_batches(cfg: DictConfig, epoch: int) -> int | None:
    """Training batches before the step the run's first fit started at: a branch's checkpoint's step (a
    resumed run's first part's, as it validates as the run it continues); ``None`` where the checkpoint
    batched otherwise (batch size, accumulation), whose counters Lightning restores its own way."""
    ckpt_path, window = cfg.get("ckpt_path"), cfg.trainer.get("accumulate_grad_batches", 1)
    if not ckpt_path or not cfg.get("train", True) or is_weights_branch(cfg):
        return 0
    checkpoint = load_checkpoint(ckpt_path)
    stats = checkpoint.get("callbacks", {}).get(FitStats.__qualname__) or {}
    if stats.get("batches", [epoch, window]) != [epoch, window]:  # an older run's is taken as the same
        return None
    start = stats.get("start_step", 0) if continues_itself(cfg) else checkpoint["global_step"]
    return batches_before(start, epoch, window)


def next_validation(trainer: DictConfig, epoch: int, done: int, end: int) -> int | None:
    """The batch count, from the fit's first batch, of its first validation after ``done`` batches, if there
    is one by ``end``."""
    interval, every = trainer.get("val_check_interval"), trainer.get("check_val_every_n_epoch")
    fraction = 1.0 if interval is None else interval
    within = interval if isinstance(interval, int) else max(int(epoch * fraction), 1)
    if every is None:  # the interval counts batches across epochs
        position = (done // within + 1) * within
        return position if position <= end else None
    for index in range(done // epoch, -(-end // epoch)):  # the epochs left, validating every `every`
        position = index * epoch + (max(done - index * epoch, 0) // within + 1) * within
        # an interval longer than an epoch (Lightning refuses it) is taken as it counts
        if (index + 1) % every == 0 and (position <= (index + 1) * epoch or within > epoch):
            return position if position <= end else None
    return None


def last_batch_before_validation(cfg: DictConfig, datamodule: RegressionDataModule) -> tuple[int, int] | None:
    """``(batches, steps)`` of a fit that would end before its next validation (a branch's: after its
    checkpoint's); ``None`` for one that validates, has no validation data, or cannot be told."""
    trainer = cfg.trainer
    epoch = batches_per_epoch(trainer, datamodule)
    length = run_length(trainer, epoch)
    if length is None or not length[1] or not len(datamodule.splits["val"][0]):
        return None
    done = restored_batches(cfg, epoch)
    if done is None:  # Lightning's restored counters run their own way: its validations come where they may
        return None
    return length if next_validation(trainer, epoch, done, length[0]) is None else None


def validation_at_the_end(cfg: DictConfig, datamodule: RegressionDataModule) -> dict[str, Any]:
    """Trainer settings that make a fit which would end before its next validation validate at its end:
    without one there would be no ``val/*``, no best checkpoint and nothing to compare."""
    length = last_batch_before_validation(cfg, datamodule)
    if length is None:
        return {}
    log.info("No validation would come before the last step: validating at step %d", length[1])
    return {"val_check_interval": length[0], "check_val_every_n_epoch": None}


def check_val_interval(cfg: DictConfig, datamodule: RegressionDataModule) -> None:
    """Refuses an integer ``trainer.val_check_interval`` longer than an epoch, whose batches it counts (unless
    ``check_val_every_n_epoch`` is null): Lightning refuses it only as the fit starts."""
    trainer = cfg.trainer
    interval, every = trainer.get("val_check_interval"), trainer.get("check_val_every_n_epoch")
    trains = cfg.get("train", True) and not trainer.get("fast_dev_run")  # fast_dev_run validates each batch
    if type(interval) is not int or every is None or not trains:
        return
    epoch, validates = batches_per_epoch(trainer, datamodule), trainer.get("limit_val_batches") != 0
    # as Lightning's rule, which a fit of no batch or no validation skips; one too short validates at its end
    if 0 < epoch < interval and validates and not last_batch_before_validation(cfg, datamodule):
        raise InputError(
            f"trainer.val_check_interval={interval} is more than an epoch's {epoch} training batches; "
            f"allowed: at most {epoch}, or trainer.check_val_every_n_epoch=null to count across epochs"
        )


def check_batch_limits(cfg: DictConfig, datamodule: RegressionDataModule) -> None:
    """A fraction in ``trainer.limit_<split>_batches`` leaves each process a batch of that split: Lightning
    refuses it only once the split's loop starts (the test's after the whole fit)."""
    world, trains = processes(cfg.trainer), cfg.get("train", True)
    # the splits that run under the limits: fast_dev_run replaces them all, overfit_batches the fit's
    replaced = {"train", "val", "test"} if cfg.trainer.get("fast_dev_run") else set()
    replaced |= {"train", "val"} if cfg.trainer.get("overfit_batches") else set()
    runs = {"train": trains, "val": trains, "test": cfg.get("test", True)}
    for split in sorted({split for split, run in runs.items() if run} - replaced):
        key, rows = f"trainer.limit_{split}_batches", len(datamodule.splits[split][0])
        limit = OmegaConf.select(cfg, key)
        if not isinstance(limit, float) or limit <= 0 or not rows:
            continue
        batches = (
            datamodule.train_batches(world)
            if split == "train"
            else -(-max(rows // world, 1) // datamodule.eval_batch_size)  # the smallest shard's
        )
        if int(batches * limit) == 0:
            raise InputError(
                f"{key}={limit} leaves none of the {split} split's {batches} batch(es) per process; "
                f"allowed: a fraction ≥ {1 / batches:.3g}, or a number of batches"
            )


def check_schedule_length(cfg: DictConfig, datamodule: RegressionDataModule) -> None:
    """Refuses a schedule stepped every step that follows ``trainer.max_steps`` in a fit that
    ``trainer.max_epochs`` ends first: it would never reach its end (a cosine's ``T_max``)."""
    scheduler = cfg.scheduler.get("scheduler")
    if not isinstance(scheduler, DictConfig) or cfg.scheduler.get("interval") != "step":
        return
    length = run_length(cfg.trainer, batches_per_epoch(cfg.trainer, datamodule))
    max_steps = cfg.trainer.get("max_steps", -1)
    if length is None or length[1] >= max_steps:
        return
    for key, value in OmegaConf.to_container(scheduler, resolve=False).items():
        if isinstance(value, str) and "trainer.max_steps" in value:
            raise InputError(
                f"trainer.max_epochs={cfg.trainer.max_epochs} ends the run after {length[1]} steps, before "
                f"scheduler.scheduler.{key}, which follows trainer.max_steps={max_steps}, ends the schedule; "
                f"allowed: trainer.max_steps={length[1]}, or a scheduler.scheduler.{key} of its own"
            )


def check_plateau_validations(cfg: DictConfig, datamodule: RegressionDataModule) -> None:
    """Refuses a plateau scheduler, stepped at epoch ends, with validations counted across epochs
    (``check_val_every_n_epoch=null``) further apart than those steps: Lightning would step it on a value
    not yet logged (a traceback after the first epoch) or on one it has read already."""
    trainer, scheduler = cfg.trainer, cfg.scheduler
    monitor, interval = scheduler.get("monitor"), trainer.get("val_check_interval")
    counted_across = trainer.get("check_val_every_n_epoch") is None and type(interval) is int
    if not str(monitor).startswith("val/") or not counted_across or scheduler.get("interval") != "epoch":
        return
    epoch, frequency = batches_per_epoch(trainer, datamodule), scheduler.get("frequency") or 1
    length = run_length(trainer, epoch)
    reached = length is None or length[0] >= epoch * frequency  # else the fit ends before its first step
    if epoch and reached and interval > epoch * frequency:
        raise InputError(
            f"scheduler.monitor={monitor} steps the scheduler at the end of every {frequency} epoch(s) of "
            f"{epoch} batches, but trainer.val_check_interval={interval} with "
            f"trainer.check_val_every_n_epoch=null validates every {interval} batches, so some of those "
            f"steps follow no new validation; allowed: trainer.val_check_interval ≤ {epoch * frequency}, or "
            "trainer.check_val_every_n_epoch=1"
        )


def check_fit_settings(cfg: DictConfig, datamodule: RegressionDataModule) -> None:
    """The checks of the trainer's and the scheduler's settings against the data's batches."""
    check_batch_limits(cfg, datamodule)
    check_val_interval(cfg, datamodule)
    check_schedule_length(cfg, datamodule)
    check_plateau_validations(cfg, datamodule)
