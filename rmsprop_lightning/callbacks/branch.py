"""Branching: a new run from another run's checkpoint trains with the new run's optimizer settings."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch.optim.lr_scheduler import ReduceLROnPlateau

from rmsprop_lightning.callbacks.divergence import DivergenceGuard
from rmsprop_lightning.callbacks.fit_stats import FitStats
from rmsprop_lightning.callbacks.last_checkpoint import SAVED_IN_VALIDATION, LastCheckpoint
from rmsprop_lightning.data.loader import InMemoryBatchLoader
from rmsprop_lightning.internals import SCHEDULER_LAST_LRS, count_batches_served, epochs_done
from rmsprop_lightning.optim.functional import OPTIONAL_STATES

log = logging.getLogger(__name__)

# what a plateau scheduler has learnt of the run; the rest of its state is its settings
PLATEAU_PROGRESS = ("best", "num_bad_epochs", "cooldown_counter", "last_epoch", SCHEDULER_LAST_LRS)
# a group's configured lr, which torch's schedulers keep in the group (RegressionModule's plateau one too)
BASE_LR = "initial_lr"


def optimizers_and_schedulers(configured: Any) -> tuple[list[torch.optim.Optimizer], list[dict[str, Any]]]:
    """The optimizers and the schedulers (as Lightning's ``{"scheduler", "interval", "frequency"}``, with its
    defaults) that ``configure_optimizers`` returned: one optimizer, or a dict."""
    if isinstance(configured, torch.optim.Optimizer):
        return [configured], []
    if isinstance(configured, Mapping):
        scheduler = configured.get("lr_scheduler")
        if scheduler is not None and not isinstance(scheduler, Mapping):
            scheduler = {"scheduler": scheduler}
        schedulers = [] if scheduler is None else [{"interval": "epoch", "frequency": 1, **scheduler}]
        return [configured["optimizer"]], schedulers
    raise TypeError(
        f"configure_optimizers returned {type(configured).__name__}; branching needs one optimizer"
    )


def plateau_lr(saved_group: dict[str, Any], lr: float, floor: float, carried: bool) -> dict[str, float]:
    """A saved group's lr and base lr for the configured ``lr`` under a plateau scheduler: no lower than its
    new ``floor``, with the ``carried`` reductions of the parent's plateau scheduler (where the group records
    the base lr they started from)."""
    base = saved_group.get(BASE_LR) if carried else None
    if base is None or base == lr:
        reduced = saved_group["lr"] if base is not None else lr
    else:
        reduced = lr * saved_group["lr"] / base
    return {"lr": max(reduced, floor), BASE_LR: lr}


def apply_group_settings(
    saved: dict[str, Any],
    optimizer: torch.optim.Optimizer,
    plateau_floors: Sequence[float] | None = None,
    carried: bool = False,
) -> list[str]:
    """Puts ``optimizer``'s group settings into a saved optimizer state; returns what changed, in words.

    State tensors the new settings use are kept; those they no longer use are dropped, and
    those they need but the checkpoint lacks start at zero (a momentum buffer, the centered
    gradient average), as they would in a new optimizer. Under a plateau scheduler (the minimum lrs of
    whose groups are ``plateau_floors``) the lr keeps the reductions the parent's made, if ``carried``.
    """
    changes = []
    for index, (group, fresh) in enumerate(zip(saved["param_groups"], optimizer.param_groups, strict=True)):
        settings = {key: value for key, value in fresh.items() if key != "params"}
        if plateau_floors is not None:
            settings.update(plateau_lr(group, fresh["lr"], plateau_floors[index], carried))
        for key, value in settings.items():
            if group.get(key) != value:
                if key != BASE_LR:  # a scheduler's bookkeeping
                    changes.append(f"{key} {group.get(key)!r} → {value!r}")
                group[key] = value
        for param_id in group["params"]:
            state = saved["state"].get(param_id)
            if not state or "square_avg" not in state:
                continue
            for name, setting in OPTIONAL_STATES.items():
                if not group.get(setting) and name in state:
                    del state[name]
                    changes.append(f"dropped {name}")
                elif group.get(setting) and name not in state:
                    state[name] = torch.zeros_like(state["square_avg"])
                    changes.append(f"new {name}")
    return changes


def is_plateau_state(saved: Mapping[str, Any]) -> bool:
    """Whether a saved scheduler state is a plateau scheduler's: its progress, not a schedule's."""
    return "num_bad_epochs" in saved


def apply_scheduler_settings(saved: dict[str, Any], scheduler: Any, steps: int) -> None:
    """Puts the new run's scheduler into a saved scheduler state (empty when the parent had none), as it
    stands after ``steps`` scheduler steps.

    The schedule is replayed with the new settings, so it goes on at the checkpoint's step and sets the
    fresh optimizer's learning rates to its values there. A plateau scheduler takes the new settings and
    keeps the parent's progress, if the parent's was one (best value, counters; the lr's reductions are the
    optimizer's).
    """
    if isinstance(scheduler, ReduceLROnPlateau):
        progress = (
            {key: saved[key] for key in PLATEAU_PROGRESS if key in saved} if is_plateau_state(saved) else {}
        )
        saved.clear()
        saved.update({**scheduler.state_dict(), **progress})
        return
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step\\(\\)` before")  # on purpose
        for _ in range(steps - scheduler.last_epoch):
            scheduler.step()
    saved.clear()
    saved.update(scheduler.state_dict())


class CheckpointBranch(Callback):
    """Applies the module's configured optimizer and scheduler settings to the checkpoint it starts from.

    Weights, state tensors, step counters, random states and the data position come from the
    checkpoint; learning rate, alpha, eps, momentum, centered... and the scheduler's settings
    come from the new run. One log line says what changed. Without it a branch with another ``optimizer.lr``
    would silently train with the parent's: torch's ``load_state_dict``, which Lightning calls on resuming
    from ``ckpt_path``, restores every group's hyper-parameters.
    """

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if trainer.state.fn != TrainerFn.FITTING:
            return
        optimizers, schedulers = optimizers_and_schedulers(pl_module.configure_optimizers())
        saved_optimizers = checkpoint.get("optimizer_states", [])
        saved_schedulers = checkpoint.setdefault("lr_schedulers", [])
        # a scheduler the parent lacked starts empty; schedules go first: they move the fresh optimizer's lr
        saved_schedulers += [{} for _ in range(len(schedulers) - len(saved_schedulers))]
        continued = [is_plateau_state(saved) for saved in saved_schedulers]  # a plateau's reductions go on
        for saved, config in zip(saved_schedulers, schedulers, strict=False):
            by_step = config["interval"] == "step"
            if by_step and config["frequency"] != 1:
                raise MisconfigurationException(
                    f"a branch cannot replay a scheduler stepped with interval='step' and frequency="
                    f"{config['frequency']}: Lightning counts that frequency in each epoch's batches; "
                    "use frequency=1, with the schedule's lengths in steps"
                )
            done = checkpoint.get("global_step", 0) if by_step else epochs_done(checkpoint)
            apply_scheduler_settings(saved, config["scheduler"], done // config["frequency"])
        plateau, carried = next(
            (
                (saved, parent)
                for saved, config, parent in zip(saved_schedulers, schedulers, continued, strict=False)
                if isinstance(config["scheduler"], ReduceLROnPlateau)
            ),
            (None, False),
        )
        floors = None if plateau is None else plateau["min_lrs"]
        groups = saved_optimizers[0]["param_groups"] if saved_optimizers else []
        if carried and any(BASE_LR not in group for group in groups):
            log.warning(
                "The checkpoint's groups do not record the lr its plateau scheduler's reductions started "
                "from (an older checkpoint): the branch starts at the configured lr"
            )
        changes = []
        for saved, optimizer in zip(saved_optimizers, optimizers, strict=False):
            changes += apply_group_settings(saved, optimizer, floors, carried)
        if plateau is not None and saved_optimizers:  # its record of the lrs, as they now start
            plateau[SCHEDULER_LAST_LRS] = [group["lr"] for group in saved_optimizers[0]["param_groups"]]
        callback_states = checkpoint.get("callbacks", {})
        # the new run's best checkpoint, values and skipped updates are its own
        for callback in trainer.callbacks:
            if isinstance(callback, ModelCheckpoint | FitStats | DivergenceGuard):
                callback_states.pop(callback.state_key, None)
            elif isinstance(callback, LastCheckpoint) and callback.state_key in callback_states:
                # the parent's last validation: no checkpoint or plateau step of the new run acts on it;
                # when the checkpoint was written still matters to the step counters it restores
                saved = callback_states[callback.state_key]
                callback_states[callback.state_key] = {SAVED_IN_VALIDATION: saved.get(SAVED_IN_VALIDATION)}
        states = {name for saved in saved_optimizers for state in saved["state"].values() for name in state}
        kept = sorted(states - {"step"} - {change.removeprefix("new ") for change in changes})
        log.info(
            "Branching from a checkpoint at step %s: kept %s; %s",
            checkpoint.get("global_step"),
            ", ".join(kept) or "no optimizer state",
            "; ".join(dict.fromkeys(changes)) or "the optimizer settings are the checkpoint's",
        )

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        loader = trainer.train_dataloader  # restored: with another batch or world size, its own count goes
        if isinstance(loader, InMemoryBatchLoader):
            count_batches_served(trainer, loader.batches_served())
