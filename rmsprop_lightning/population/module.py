"""The LightningModule of a population: every member's loss, step, validation and test at once.

Lightning runs one loop for all members, so its loop state (steps, epochs, the loader's
position) is each member's. Per-member values stay on the device until the run ends:
the loss of every step, the optimizer-state norms and learning rates at the monitor's
interval, every validation and the test.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor

from rmsprop_lightning.module import LOSSES, regression_scores
from rmsprop_lightning.population.coefficients import broadcast
from rmsprop_lightning.population.norms import StackedStateNorms
from rmsprop_lightning.population.optim import StackedRMSprop
from rmsprop_lightning.population.stacked import StackedFeedForward

Batch = tuple[Tensor, Tensor]


class MemberSchedulers:
    """Each member's scheduler, stepped together; Lightning times them as it would one member's."""

    def __init__(self, optimizer: StackedRMSprop, schedulers: Sequence[Any]) -> None:
        self.optimizer = optimizer
        self.schedulers = list(schedulers)

    def step(self, metrics: Tensor | None = None) -> None:
        """Steps the scheduler of every member but those frozen before this step, whose learning rate stays
        as their solo run's was when it stopped; a plateau scheduler gets its member's monitored value."""
        values = [None] * len(self.schedulers) if metrics is None else metrics.tolist()
        frozen_at, step = self.optimizer.frozen_at.tolist(), self.optimizer.step_count - 1
        with warnings.catch_warnings():  # the members' own optimizers never step: this one does
            warnings.filterwarnings(
                "ignore", message=re.escape("Detected call of `lr_scheduler.step()` before")
            )
            for scheduler, value, frozen in zip(self.schedulers, values, frozen_at, strict=True):
                if frozen < 0 or frozen >= step:
                    scheduler.step() if value is None else scheduler.step(value)

    def state_dict(self) -> dict[str, Any]:
        return {"members": [scheduler.state_dict() for scheduler in self.schedulers]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for scheduler, member in zip(self.schedulers, state["members"], strict=True):
            scheduler.load_state_dict(member)


class PopulationModule(pl.LightningModule):
    """Trains a :class:`StackedFeedForward` with :class:`StackedRMSprop` built on the members' optimizers.

    ``shadows`` are the members' own optimizers (their settings and, through their
    ``schedulers``, their learning rates); ``param_groups`` the stacked parameters' groups,
    aligned with the shadows'. ``monitor_every`` and ``lr_every`` are the intervals of the
    optimizer-state norms and of the learning rates (``None``: not recorded).
    """

    def __init__(
        self,
        model: StackedFeedForward,
        param_groups: list[dict[str, Any]],
        shadows: Sequence[torch.optim.Optimizer],
        schedulers: Sequence[Any],
        scheduler_settings: dict[str, Any],
        loss: str,
        monitor_every: int | None,
        lr_every: int | None,
    ) -> None:
        super().__init__()
        self.model = model
        self.param_groups = param_groups
        self.shadows = list(shadows)
        self.schedulers = list(schedulers)
        self.scheduler_settings = scheduler_settings
        self.criterion = LOSSES[loss](reduction="none")
        self.monitor_every = monitor_every
        self.lr_every = lr_every
        self.step_losses: list[Tensor] = []  # [P] per step
        self.norm_records: list[tuple[int, Tensor]] = []  # (step, [P, K])
        self.norms: StackedStateNorms | None = None
        self.lr_records: list[tuple[int, list[list[float]]]] = []  # (step, lr per member and group)
        self.validations: list[tuple[int, dict[str, Tensor]]] = []  # (step, {tag: [P]})
        self.validation_epochs: dict[int, int] = {}  # step -> the trainer's epoch at that validation
        self.tests: dict[str, Tensor] = {}
        self.best_loss: Tensor | None = None
        self.best_step: Tensor | None = None
        self.best_params: dict[str, Tensor] = {}

    @property
    def optimizer(self) -> StackedRMSprop:
        return self.optimizers().optimizer

    def member_losses(self, batch: Batch, dtype: torch.dtype | None = None) -> tuple[Tensor, Tensor]:
        """Each member's mean loss on ``batch`` (``[P]``) and its predictions ``[P, B, out]``, both in
        ``dtype`` if given."""
        features, targets = batch
        if features.dim() == 3:  # [B, P, in] training batches: one batch per member
            features, targets = features.transpose(0, 1), targets.transpose(0, 1)
        predictions = self.model(features)
        if dtype is not None:
            predictions, targets = predictions.to(dtype), targets.to(dtype)
        return self.criterion(predictions, targets.expand_as(predictions)).mean(dim=(1, 2)), predictions

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        losses, _ = self.member_losses(batch)
        self.step_losses.append(losses.detach())
        return losses.sum()  # each member's gradient is that of its own loss

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if self.lr_every and (self.trainer.global_step + 1) % self.lr_every == 0:
            lrs = [[group["lr"] for group in shadow.param_groups] for shadow in self.shadows]
            self.lr_records.append((self.trainer.global_step, lrs))

    def optimizer_step(
        self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None
    ) -> None:
        logged = self.monitor_every and (self.trainer.global_step + 1) % self.monitor_every == 0
        params = (param for group in self.param_groups for param in group["params"])
        minus_before = [-param.detach() for param in params] if logged else None
        optimizer.step(closure=optimizer_closure, losses=lambda: self.step_losses[-1])
        if minus_before is not None:
            self.norms = self.norms or StackedStateNorms(self.optimizer)
            self.norm_records.append((self.trainer.global_step, self.norms.values(minus_before)))

    def on_validation_epoch_start(self) -> None:
        self._totals: dict[str, Tensor] = {}

    on_test_epoch_start = on_validation_epoch_start

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        """Adds the batch's per-member loss sum, squared error and target sums to the epoch's totals."""
        losses, predictions = self.member_losses(batch, torch.float64)  # summed in float64, as a solo run's
        targets = batch[1].double()
        count = targets.shape[0]
        errors = (predictions - targets).pow(2).sum(dim=1)  # [P, out]: per member and target column
        columns = {
            "loss": losses * count,
            "sse": errors,
            "count": targets.new_full(losses.shape, count),
            "sum": targets.sum(0).expand_as(errors),
            "sum_sq": targets.pow(2).sum(0).expand_as(errors),
        }
        for name, value in columns.items():
            self._totals[name] = self._totals.get(name, 0) + value

    test_step = validation_step

    def _scores(self, stage: str) -> dict[str, Tensor]:
        """``<stage>/loss``, ``/rmse`` (and ``/r2`` on test) per member from the epoch's totals."""
        t = self._totals
        dtype = torch.promote_types(self.dtype, torch.float32)
        return regression_scores(stage, t["loss"], t["sse"], t["count"], t["sum"], t["sum_sq"], dtype)

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking or not self._totals:
            return
        scores = self._scores("val")
        step = self.trainer.global_step
        self.validations.append((step, scores))
        self.validation_epochs[step] = self.current_epoch
        self._keep_best(scores["val/loss"], step)
        loss = scores["val/loss"][self.optimizer.alive] if self.optimizer.state else scores["val/loss"]
        self.log("val/loss", loss.mean())  # for Lightning: the plateau scheduler's monitor

    def _keep_best(self, loss: Tensor, step: int) -> None:
        """Keeps each live member's parameters at its lowest finite ``val/loss`` (ties keep the earlier), as
        ``BestCheckpoint`` does."""
        if self.best_loss is None:
            self.best_loss = torch.full_like(loss, float("inf"))
            self.best_step = torch.full_like(loss, -1, dtype=torch.long)
        better = self.optimizer.alive & (loss < self.best_loss)  # NaN and inf never are
        self.best_loss = torch.where(better, loss, self.best_loss)
        self.best_step = torch.where(better, step, self.best_step)
        for name in self.model.names:
            param = self.model.stacked(name).detach()
            best = self.best_params.get(name, param)
            self.best_params[name] = torch.where(broadcast(better, param), param, best)

    def on_test_epoch_end(self) -> None:
        self.tests = self._scores("test")

    def use_best_parameters(self) -> None:
        """Puts each member that validated at its best parameters, as testing its best checkpoint does."""
        if self.best_step is None:
            return
        with torch.no_grad():
            for name, best in self.best_params.items():
                param = self.model.stacked(name)
                param.copy_(torch.where(broadcast(self.best_step >= 0, param), best, param))

    def configure_optimizers(self) -> Any:
        optimizer = StackedRMSprop(self.param_groups, self.shadows)
        if not self.schedulers:
            return optimizer
        scheduler = {"scheduler": MemberSchedulers(optimizer, self.schedulers), **self.scheduler_settings}
        return {"optimizer": optimizer, "lr_scheduler": scheduler}

    def lr_scheduler_step(self, scheduler: MemberSchedulers, metric: Any) -> None:
        """Steps the members' schedulers; a plateau scheduler follows each member's own ``val/loss``."""
        monitored = None if metric is None else self.validations[-1][1][self.scheduler_settings["monitor"]]
        scheduler.step(monitored)
