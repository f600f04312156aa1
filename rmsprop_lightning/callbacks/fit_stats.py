"""Collects what a job summary reports about training: fit time, steps, final and best metrics."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback

from rmsprop_lightning.logging.tensorboard import is_better
from rmsprop_lightning.optim.rmsprop import fast_fell_back


def keep_best(
    best: dict[str, float], best_step: dict[str, int], metrics: Mapping[str, float], step: int
) -> None:
    """Takes the ``val/`` values of ``metrics`` that beat ``best`` (lower is better: losses and RMSEs)."""
    for tag, value in metrics.items():
        if tag.startswith("val/") and is_better(value, best.get(tag), "min"):
            best[tag], best_step[tag] = value, step


def best_values(
    history: Mapping[int, Mapping[str, float]], until: float = math.inf
) -> tuple[dict[str, float], dict[str, int]]:
    """The best value of each ``val/`` tag in ``{step: metrics}`` up to step ``until``, and its step."""
    best: dict[str, float] = {}
    best_step: dict[str, int] = {}
    for step in sorted(step for step in history if step <= until):
        keep_best(best, best_step, history[step], step)
    return best, best_step


class FitStats(Callback):
    """Measures ``trainer.fit`` (and its torch threads, which Lightning's DDP on the CPU sets) and keeps the
    best value (and its step) of every ``val/`` metric, also in checkpoints; :meth:`fields` also holds what
    was reached before an exception."""

    def __init__(self) -> None:
        self.started = False  # a trainer set it up: the fit or test began
        self.fit_seconds: float | None = None
        self.threads: int | None = None
        self.steps = 0
        self.final: dict[str, float] = {}
        self.best: dict[str, float] = {}
        self.best_step: dict[str, int] = {}
        self.batches: list[int] | None = None  # the fit's training batches per epoch and per step
        self.start_step: int | None = None  # the step the run's first fit started at (a branch's parent's)
        self.fast_fell_back: bool | None = None  # None: no fast=True RMSprop
        self._fit_start: float | None = None

    def state_dict(self) -> dict[str, Any]:
        return {
            "best": dict(self.best),
            "best_step": dict(self.best_step),
            "batches": self.batches,
            "start_step": self.start_step,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best, self.best_step = dict(state_dict["best"]), dict(state_dict["best_step"])
        self.start_step = state_dict.get("start_step", 0)  # an older run's: from step 0

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.started = True

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._fit_start = time.perf_counter()
        self.threads = torch.get_num_threads()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # what a branch from its checkpoints, or a resume, needs to count the batches behind it as Lightning
        self.batches = [int(trainer.num_training_batches), trainer.accumulate_grad_batches]
        if self.start_step is None:
            self.start_step = trainer.global_step

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            keep_best(self.best, self.best_step, _scalars(trainer), trainer.global_step)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._fit_start is not None:
            self.fit_seconds = time.perf_counter() - self._fit_start
            self._fit_start = None
        self.steps = trainer.global_step
        self.fast_fell_back = fast_fell_back(trainer.optimizers)
        self.final.update(_scalars(trainer))

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.final.update({tag: value for tag, value in _scalars(trainer).items() if tag.startswith("test/")})

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self.on_fit_end(trainer, pl_module)

    def fields(self) -> dict[str, Any]:
        """The summary fields: ``fit_seconds``, ``steps``, ``final``, ``best``, ``best_step`` and, once a fit
        started, ``threads``, ``start_step`` (a branch's parent's step) and, with a ``fast=True`` RMSprop,
        ``fast_fell_back``; none before a trainer set it up."""
        if not self.started:
            return {}
        return {
            **({"threads": self.threads} if self.threads else {}),
            **({"fast_fell_back": self.fast_fell_back} if self.fast_fell_back is not None else {}),
            **({"start_step": self.start_step} if self.start_step is not None else {}),
            "fit_seconds": self.fit_seconds,
            "steps": self.steps,
            "final": dict(self.final),
            "best": dict(self.best),
            "best_step": dict(self.best_step),
        }


def _scalars(trainer: pl.Trainer) -> dict[str, float]:
    """The trainer's current scalar ``callback_metrics`` as floats (the logged step counter aside)."""
    metrics = trainer.callback_metrics.items()
    return {tag: float(value) for tag, value in metrics if value.numel() == 1 and tag != "step"}
