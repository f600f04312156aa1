"""Checks of the learning-rate scheduler's settings in the composed config: settings Lightning would ignore or
count otherwise than they read, and lengths that follow ``trainer.max_steps`` where steps are not counted."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from rmsprop_lightning.app.rules import select, unused_split
from rmsprop_lightning.errors import InputError

PLATEAU = "torch.optim.lr_scheduler.ReduceLROnPlateau"
WARMUP_COSINE = "rmsprop_lightning.optim.schedulers.warmup_cosine"
STEPS_KEY = "trainer.max_steps"


def following_steps(cfg: DictConfig) -> list[str]:
    """The keys of ``scheduler.scheduler`` whose values follow ``trainer.max_steps`` by interpolation."""
    node = OmegaConf.select(cfg, "scheduler.scheduler")
    if not isinstance(node, DictConfig):
        return []
    raw = OmegaConf.to_container(node, resolve=False)
    return [key for key, value in raw.items() if isinstance(value, str) and STEPS_KEY in value]


def check_steps_to_follow(cfg: DictConfig) -> None:
    """A schedule whose length follows ``trainer.max_steps`` needs a number of steps there (not ``-1``)."""
    keys = following_steps(cfg)
    if keys and select(cfg, STEPS_KEY) == -1:
        raise InputError(
            f"scheduler.scheduler.{keys[0]} follows {STEPS_KEY}=-1, which sets no number of steps; "
            f"allowed: {STEPS_KEY}=<steps>, or scheduler.scheduler.{keys[0]}=<steps> of its own"
        )


def check_scheduler(cfg: DictConfig) -> None:
    """Refuses scheduler settings that would not apply as they read (each check says why)."""
    check_scheduler_settings(cfg)
    check_scheduler_validation(cfg)
    check_warmup(cfg)


def check_scheduler_settings(cfg: DictConfig) -> None:
    """Refuses ``monitor`` where no plateau scheduler reads it (or a plateau scheduler without it), a
    ``frequency`` of batches counted from each epoch's start (Lightning's count with ``interval=step``), and a
    schedule stepped every epoch whose length counts steps."""
    if OmegaConf.select(cfg, "scheduler.scheduler") is None:  # Lightning's settings then apply to nothing
        return
    target = select(cfg, "scheduler.scheduler._target_")
    monitor, interval, frequency = (
        select(cfg, f"scheduler.{key}") for key in ("monitor", "interval", "frequency")
    )
    # a scheduler class of one's own (not torch's or warmup_cosine) may be a plateau scheduler by another name
    known = str(target).startswith("torch.optim.lr_scheduler.") or target == WARMUP_COSINE
    if monitor is not None and target != PLATEAU and known:
        raise InputError(
            f"scheduler.monitor={monitor} is read by a plateau scheduler only, not by {target}; "
            "allowed: scheduler.monitor=null, or scheduler=plateau"
        )
    if monitor is None and target == PLATEAU:
        raise InputError(
            "scheduler.monitor=null leaves the plateau scheduler no metric to follow; "
            "allowed: scheduler.monitor=val/loss or val/rmse"
        )
    if interval == "step" and frequency not in (None, 1):
        raise InputError(
            f"scheduler.frequency={frequency} with scheduler.interval=step steps the scheduler where an "
            f"epoch's batches count a multiple of {frequency} (Lightning counts from each epoch's start, "
            "which a branch cannot replay); allowed: scheduler.frequency=1, the schedule's lengths in steps"
        )
    if interval == "epoch" and (keys := following_steps(cfg)):
        raise InputError(
            f"scheduler.interval=epoch steps the scheduler once an epoch, but scheduler.scheduler.{keys[0]} "
            f"follows {STEPS_KEY}, a number of steps; allowed: scheduler.interval=step, or "
            f"scheduler.scheduler.{keys[0]}=<epochs>"
        )


def check_warmup(cfg: DictConfig) -> None:
    """``warmup_cosine`` warms up for fewer steps than it lasts (``total_steps``: ``trainer.max_steps``)."""
    warmup, total = (select(cfg, f"scheduler.scheduler.{key}") for key in ("warmup_steps", "total_steps"))
    ours = select(cfg, "scheduler.scheduler._target_") == WARMUP_COSINE
    if ours and isinstance(warmup, int) and isinstance(total, int) and warmup >= total:
        length = (
            f"{STEPS_KEY}={total}, which scheduler.scheduler.total_steps follows"
            if "total_steps" in following_steps(cfg)
            else f"scheduler.scheduler.total_steps={total}"
        )
        raise InputError(
            f"scheduler.scheduler.warmup_steps={warmup} is not below {length}; "
            "allowed: fewer warm-up steps, or more steps"
        )


def check_scheduler_validation(cfg: DictConfig) -> None:
    """A scheduler that follows a validation metric (``plateau``) steps only after a validation: Lightning
    stops the fit at a step without one, and a step between two would read the earlier one again."""
    monitor = select(cfg, "scheduler.monitor")
    if not str(monitor).startswith("val/"):
        return
    interval, frequency = select(cfg, "scheduler.interval"), select(cfg, "scheduler.frequency") or 1
    if interval == "step":  # Lightning counts its frequency in each epoch's batches: no validation follows
        raise InputError(
            f"scheduler.interval=step steps the scheduler on {monitor} every {frequency} batch(es) of an "
            "epoch, not after each validation; allowed: scheduler.interval=epoch"
        )
    if (setting := unused_split(cfg, "val")) is not None:
        raise InputError(
            f"scheduler.monitor={monitor} needs a validation, but {setting} leaves none; allowed: a "
            "validation, or a scheduler that follows the steps (cosine, step, warmup_cosine)"
        )
    every = select(cfg, "trainer.check_val_every_n_epoch")
    if interval == "epoch" and isinstance(every, int) and frequency % every:
        raise InputError(
            f"scheduler.frequency={frequency} steps the scheduler on {monitor} every {frequency} epoch(s), "
            f"but trainer.check_val_every_n_epoch={every} validates every {every}; "
            f"allowed: scheduler.frequency={every} or a multiple of it"
        )
