"""Trains one population: the members' solo fits as one Lightning fit of the stacked model."""

from __future__ import annotations

import copy
import dataclasses
import logging
import signal
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
from hydra.utils import instantiate
from lightning.fabric.plugins import CheckpointIO

from rmsprop_lightning.app.fit_length import validation_at_the_end
from rmsprop_lightning.callbacks import LastCheckpoint
from rmsprop_lightning.callbacks.interrupt import GracefulInterrupt
from rmsprop_lightning.callbacks.optimizer_state import monitor_interval
from rmsprop_lightning.errors import InterruptedRun
from rmsprop_lightning.logging.events import log_level
from rmsprop_lightning.population.data import PopulationDataModule
from rmsprop_lightning.population.forks import deferred_signals
from rmsprop_lightning.population.members import Member, callback_entries, keeps_best_checkpoint
from rmsprop_lightning.population.module import PopulationModule
from rmsprop_lightning.population.stacked import StackedFeedForward

log = logging.getLogger(__name__)


class CapturedCheckpoint(CheckpointIO):
    """Keeps in memory Lightning's last save and, for each member that diverged since, the save before it
    (its solo run's last good ``last.ckpt``): the members' files are cut from them."""

    def __init__(self) -> None:
        self.checkpoint: dict[str, Any] | None = None
        self.before_divergence: dict[int, dict[str, Any] | None] = {}  # member -> None: no save before

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        frozen_at = checkpoint["optimizer_states"][0]["population"]["frozen_at"].tolist()
        for member, step in enumerate(frozen_at):
            if step >= 0 and member not in self.before_divergence:
                self.before_divergence[member] = self.checkpoint
        self.checkpoint = copy.deepcopy(checkpoint)

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> Any:
        raise NotImplementedError("a population starts from scratch")

    def remove_checkpoint(self, path: Any) -> None:
        """Nothing was written."""


@dataclasses.dataclass
class PopulationResult:
    """What the members' outputs are made of."""

    module: PopulationModule
    checkpoint: dict[str, Any] | None  # the population's state when training stopped
    before_divergence: dict[int, dict[str, Any] | None]  # a diverged member's last save before it
    fit_seconds: float
    interrupted: InterruptedRun | None  # the stop a signal asked for, raised once the members are written
    test_epoch: int  # the trainer's epoch when it tests, which the test logs
    deferred_signals: list[int]  # received while testing: the sweep stops once the jobs are written


def build_population(members: Sequence[Member]) -> PopulationModule:
    """The stacked model and the members' optimizers, in one module."""
    first = members[0]
    stacked = StackedFeedForward([member.module.model for member in members])
    names = {param: name for name, param in first.module.model.named_parameters()}
    groups = [
        {"params": [stacked.stacked(names[param]) for param in group["params"]], "name": group.get("name")}
        for group in first.optimizer.param_groups
    ]
    cfg, hparams = first.cfg, first.module.hparams
    schedulers = [member.scheduler for member in members if member.scheduler is not None]
    settings = {"interval": hparams.scheduler_interval, "frequency": hparams.scheduler_frequency}
    if hparams.scheduler_monitor is not None:
        settings.update(monitor=hparams.scheduler_monitor, reduce_on_plateau=True)
    # the solo runs' logging intervals of the optimizer-state monitor and the learning rates
    every = cfg.trainer.get("log_every_n_steps") or 50
    monitor = (cfg.get("callbacks") or {}).get("optimizer_state_monitor")
    lrs = any(str(entry.get("_target_")).endswith("LearningRateMonitor") for entry in callback_entries(cfg))
    return PopulationModule(
        stacked,
        groups,
        [member.optimizer for member in members],
        schedulers,
        settings,
        loss=hparams.loss,
        monitor_every=monitor_interval(monitor.get("every_n_steps"), every) if monitor else None,
        lr_every=every if lrs else None,
    )


def train_population(members: Sequence[Member]) -> PopulationResult:
    """Fits the members together, then tests each at its best validation, as its solo run would."""
    cfg = members[0].cfg
    module = build_population(members)
    datamodule = PopulationDataModule(members[0].datamodule, [m.datamodule.shuffle_seed for m in members])
    captured = CapturedCheckpoint()
    # Lightning's own messages about the population's trainer stay out of the sweep's log (warnings pass)
    with tempfile.TemporaryDirectory() as scratch, log_level("lightning.pytorch", logging.WARNING):
        last = (cfg.get("callbacks") or {}).get("last_checkpoint") or {}  # saved as the members save
        every = last.get("every_n_train_steps", 10**9)
        trainer: pl.Trainer = instantiate(
            cfg.trainer,
            callbacks=[LastCheckpoint(scratch, every_n_train_steps=every), GracefulInterrupt()],
            enable_checkpointing=True,  # in memory: the members' checkpoints follow their own settings
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            plugins=[captured],
            **validation_at_the_end(cfg, members[0].datamodule),
        )
        start = time.perf_counter()
        interrupted = None
        try:
            trainer.fit(module, datamodule=datamodule)
        except InterruptedRun as stop:
            name = signal.Signals(stop.exit_code - 128).name
            interrupted = InterruptedRun(
                f"stopped by {name} after step {trainer.global_step}", stop.exit_code - 128
            )
        fit_seconds = time.perf_counter() - start
        log.info(
            "Population of %d: %d steps in %.1f s (%.0f member steps/s)",
            len(members),
            trainer.global_step,
            fit_seconds,
            len(members) * trainer.global_step / fit_seconds,
        )
        epoch = trainer.current_epoch
        with deferred_signals("testing and writing the jobs first") as received:
            if cfg.get("test", True) and datamodule.splits["test"][0].numel() and interrupted is None:
                if keeps_best_checkpoint(cfg):  # a solo run tests its best checkpoint, else its last weights
                    module.use_best_parameters()
                trainer.test(module, datamodule=datamodule, verbose=False)
    return PopulationResult(
        module, captured.checkpoint, captured.before_divergence, fit_seconds, interrupted, epoch, received
    )
