"""Each member's checkpoint files, cut from the population's saves as its solo run would have written them."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig

from rmsprop_lightning.app.checkpoint_io import AtomicCheckpointIO
from rmsprop_lightning.app.fit_length import batches_per_epoch
from rmsprop_lightning.app.run import instantiate_entries
from rmsprop_lightning.callbacks.divergence import DivergenceGuard
from rmsprop_lightning.callbacks.fit_stats import FitStats, best_values
from rmsprop_lightning.callbacks.last_checkpoint import SAVED_IN_VALIDATION, LastCheckpoint, find_callback
from rmsprop_lightning.callbacks.optimizer_state import (
    OptimizerStateMonitor,
    first_due,
    monitor_interval,
    monitor_state,
)
from rmsprop_lightning.callbacks.random_state import RandomState
from rmsprop_lightning.internals import SCHEDULER_LAST_LRS
from rmsprop_lightning.population.members import Member

if TYPE_CHECKING:
    from rmsprop_lightning.population.outputs import PopulationRecord, Scalars


def best_until(record: PopulationRecord, index: int, step: int) -> int:
    """The step of the member's best ``val/loss`` up to ``step`` as ``BestCheckpoint`` keeps it (finite
    values only; ties keep the earlier), or -1."""
    best, kept = math.inf, -1
    for validated, scores in record.validations:
        loss = scores["val/loss"][index]
        if validated <= step and loss < best:  # NaN and inf never are
            best, kept = loss, validated
    return kept


def best_path(best: ModelCheckpoint, step: int) -> Path:
    """The file ``best`` names for a checkpoint of ``step``."""
    return Path(best.format_checkpoint_name({"step": torch.tensor(step)}))


def keep_best(best: ModelCheckpoint, record: PopulationRecord, index: int, step: int) -> None:
    """Sets ``best``'s state to what it held at ``step``: one file, the best ``val/loss`` so far."""
    path = best_path(best, step)
    value = dict(record.validations)[step][best.monitor][index]
    score = torch.tensor(value, dtype=record.result.module.dtype)
    best.best_model_path = best.kth_best_model_path = str(path)
    best.best_model_score = best.kth_value = best.current_score = score
    best.best_k_models = {str(path): score}


def write_best(best: ModelCheckpoint, member: Member, record: PopulationRecord, index: int) -> None:
    """The member's best checkpoint: its weights at its best validation."""
    step, trained = record.best_step[index], record.result.module
    module = member.module.to(trained.dtype)  # the run's precision (float64 with 64-true)
    module.load_state_dict({f"model.{name}": value[index] for name, value in trained.best_params.items()})
    checkpoint = {
        "epoch": trained.validation_epochs[step],
        "global_step": step,
        "pytorch-lightning_version": lightning.__version__,
        "state_dict": module.state_dict(),
        "hparams_name": None,
        "hyper_parameters": dict(module.hparams),
        type(member.datamodule).__qualname__: member.datamodule.state_dict(),
    }
    AtomicCheckpointIO().save_checkpoint(checkpoint, best_path(best, step))


def write_checkpoints(
    cfg: DictConfig, member: Member, record: PopulationRecord, index: int, scalars: Scalars
) -> Path | None:
    """The best checkpoint (weights) and ``last.ckpt`` (continues as a solo run with ``resume=``), cut
    from the population's last save or, for a member that diverged, the save before; its path."""
    callbacks = instantiate_entries(cfg, "callbacks")
    best = find_callback(callbacks, ModelCheckpoint)
    if best is not None and record.best_step and record.best_step[index] >= 0:
        write_best(best, member, record, index)
    diverged = record.frozen_at[index] >= 0
    saved = record.result.before_divergence.get(index) if diverged else record.result.checkpoint
    last = find_callback(callbacks, LastCheckpoint)
    if saved is None or last is None:
        return None
    saved_at = saved["global_step"]
    random_state, guard, stats = RandomState(), DivergenceGuard(cfg.get("on_nonfinite", "stop")), FitStats()
    stats.best, stats.best_step = best_values(scalars, saved_at)
    stats.batches = [batches_per_epoch(cfg.trainer, member.datamodule), 1]  # members accumulate no gradients
    stats.start_step = 0  # members start from step 0: a job from a checkpoint runs alone
    states: dict[str, Any] = {
        random_state.state_key: member.random_state,
        guard.state_key: {"skipped": 0},  # members skip no step: on_nonfinite=skip runs alone
        stats.state_key: stats.state_dict(),
    }
    validated = [step for step, _ in record.validations if step <= saved_at]
    if best is not None:  # its state as it was at the save (empty before the first validation)
        kept = best_until(record, index, saved_at)
        if kept >= 0:
            keep_best(best, record, index, kept)
        states[best.state_key] = best.state_dict()
    trained = record.result.module
    final = {
        tag: torch.tensor(value, dtype=trained.dtype if tag.endswith("loss") else torch.float32)
        for step in sorted(scalars)
        if step <= saved_at
        for tag, value in scalars[step].items()
        if not tag.startswith(("test/", "train/", "optim/")) and tag != "epoch"
    }
    in_validation = saved["callbacks"].get(last.state_key, {}).get(SAVED_IN_VALIDATION)
    if validated and in_validation:  # RegressionModule's logged step, kept until its validation ends
        final["step"] = torch.tensor(float(validated[-1]))
    states[last.state_key] = {"written_by_me": True, "callback_metrics": final}
    states[last.state_key][SAVED_IN_VALIDATION] = in_validation  # as the population's save was
    monitor = find_callback(callbacks, OptimizerStateMonitor)
    if monitor is not None:  # as a solo run's monitor keeps its one optimizer's turn
        interval = monitor_interval(monitor.every_n_steps, cfg.trainer.get("log_every_n_steps"))
        states[monitor.state_key] = monitor_state(interval, [first_due(saved_at, interval)])
    # as they were at the save: the optimizer's state, the scheduler's and its learning rates (a plateau
    # scheduler steps after the save that ends an epoch, a step the resumed solo run takes itself)
    optimizer_state = trained.optimizer.member_state_dict(index, saved["optimizer_states"][0])
    schedulers = [saved["lr_schedulers"][0]["members"][index]] if member.scheduler else []
    for scheduler in schedulers:
        for group, lr in zip(optimizer_state["param_groups"], scheduler[SCHEDULER_LAST_LRS], strict=True):
            group["lr"] = lr
    checkpoint = {
        **{key: saved[key] for key in ("epoch", "global_step", "pytorch-lightning_version", "loops")},
        "state_dict": {  # the member's slice of each stacked parameter, under RegressionModule's names
            f"model.{name}": saved["state_dict"][f"model.{trained.model.attribute(name)}"][index].clone()
            for name in trained.model.names
        },
        "callbacks": states,
        "optimizer_states": [optimizer_state],
        "lr_schedulers": schedulers,
        "hparams_name": None,
        "hyper_parameters": dict(member.module.hparams),
        type(member.datamodule).__qualname__: member.datamodule.state_dict(),
    }
    AtomicCheckpointIO().save_checkpoint(checkpoint, last.path)
    return last.path
