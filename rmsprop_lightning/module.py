"""The LightningModule: a regressor, its loss, per-step loss logging and optimizer set-up."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor, nn

from rmsprop_lightning.internals import logger_step
from rmsprop_lightning.logging.step_metrics import BufferedStepLogger
from rmsprop_lightning.optim.param_groups import apply_lr_multipliers, build_param_groups, lr_ratios_kept
from rmsprop_lightning.specs import from_spec, to_spec

OptimizerFactory = Callable[[Iterable[Any]], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], Any]

LOSSES: dict[str, Callable[[], nn.Module]] = {"mse": nn.MSELoss, "l1": nn.L1Loss, "huber": nn.HuberLoss}
LOSS_KEY = ("train/loss",)
UNDESCRIBED = "not plain data"  # saved for a model, optimizer or scheduler that to_spec cannot describe


def regression_scores(
    stage: str, loss_sum: Tensor, sse: Tensor, rows: Tensor, sums: Tensor, squares: Tensor, dtype: torch.dtype
) -> dict[str, Tensor]:
    """``<stage>/loss`` (in ``dtype``), ``/rmse`` and on test ``/r2`` (float32) from sums over rows, leading
    dimensions (members) kept; ``sse`` and the targets' ``sums`` and ``squares`` per target column."""
    scores = {
        f"{stage}/loss": (loss_sum / rows).to(dtype),
        f"{stage}/rmse": (sse.sum(-1) / (rows * sse.shape[-1])).sqrt().float(),
    }
    if stage == "test":  # R²: the mean over target columns; undefined (NaN) where a column does not vary
        spread = squares - sums * sums / rows[..., None]
        varies = spread > squares * rows[..., None] * torch.finfo(spread.dtype).eps  # beyond its rounding
        scores["test/r2"] = torch.where(varies, 1 - sse / spread, torch.nan).mean(-1).float()
    return scores


class StepLossLogger(BufferedStepLogger):
    """Logs ``train/loss`` at every optimizer step without a host synchronisation per step (with gradient
    accumulation, the mean over the step's batches)."""

    def __init__(self, flush_every: int = 100, flush_secs: float | None = 30.0) -> None:
        super().__init__(flush_every=flush_every, flush_secs=flush_secs)
        self._losses: list[torch.Tensor] = []  # of the batches since the last optimizer step
        self._step: int | None = None  # the trainer's step count at the last batch end

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._losses, self._step = [], trainer.global_step

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs  # None: a skipped batch
        if loss is not None:
            self._losses.append(loss.detach())
        if trainer.global_step != self._step:  # this batch ended an optimizer step
            self._step = trainer.global_step
            if self._losses:
                loss = self._losses[0] if len(self._losses) == 1 else torch.stack(self._losses).sum()
                # Lightning divides each batch's loss by accumulate_grad_batches, also in a shorter last step
                scale = trainer.accumulate_grad_batches / len(self._losses)
                # at the loggers' step, as self.log logs this batch (under manual optimization global_step
                # counts every optimizer's steps)
                loss = loss if scale == 1 else loss * scale
                self.buffer.record_vector(logger_step(trainer), LOSS_KEY, loss)
            self._losses = []
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)


class RegressionModule(pl.LightningModule):
    """Trains ``model`` on a regression loss with an optimizer built from a factory.

    ``optimizer`` is called with the parameter groups (a Hydra ``_partial_`` config or
    any ``params -> Optimizer`` callable); ``scheduler``, if given, with the optimizer.
    ``scheduler_interval``/``scheduler_frequency``/``scheduler_monitor`` go into Lightning's scheduler dict.
    ``train/loss`` is logged at every step through :class:`StepLossLogger`, flushed
    every ``loss_flush_every`` steps.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None = None,
        scheduler_interval: str = "epoch",
        scheduler_frequency: int = 1,
        scheduler_monitor: str | None = None,
        loss: str = "mse",
        no_weight_decay_on_bias: bool = False,
        lr_multipliers: Mapping[str, float] | None = None,
        loss_flush_every: int = 100,
    ) -> None:
        super().__init__()
        parts = {"model": model, "optimizer": optimizer, "scheduler": scheduler}
        # a checkpoint keeps only what plain data describes (rmsprop_lightning.specs)
        missing = [
            name
            for name, value in parts.items()
            if (value is None and name != "scheduler") or (isinstance(value, str) and value == UNDESCRIBED)
        ]
        if missing:
            passed = ", ".join(f"{name}=..." for name in missing)
            raise ValueError(
                f"not described in the checkpoint (not plain data): {', '.join(missing)}; "
                f"pass {passed} to load_from_checkpoint"
            )
        if loss not in LOSSES:
            raise ValueError(f"loss={loss!r} is unknown; allowed: {', '.join(LOSSES)}")
        if scheduler_interval not in ("step", "epoch"):
            raise ValueError(f"scheduler interval={scheduler_interval!r} is unknown; allowed: step, epoch")
        self.save_hyperparameters(ignore=["model", "optimizer", "scheduler"])
        specs = {name: to_spec(value) for name, value in parts.items()}
        for name, value in parts.items():
            if value is not None and specs[name] is None:
                specs[name] = UNDESCRIBED
        self.save_hyperparameters(specs)
        self.model: nn.Module = from_spec(model)
        self.optimizer_factory: OptimizerFactory = from_spec(optimizer)
        self.scheduler_factory: SchedulerFactory | None = from_spec(scheduler)
        self.criterion = LOSSES[loss]()
        self.loss_flush_every = loss_flush_every

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.model(features)

    def configure_callbacks(self) -> list[Callback]:
        if any(isinstance(callback, StepLossLogger) for callback in self.trainer.callbacks):
            return []
        return [StepLossLogger(flush_every=self.loss_flush_every)]

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        features, targets = batch
        return self.criterion(self(features), targets)

    def _evaluate(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> None:
        """Adds the batch's loss, error and target sums to the epoch totals (for loss, RMSE and R²)."""
        features, targets = batch
        # summed in float64: in float32 the squares of large errors overflow long before their mean does
        predictions, targets = self(features).double(), targets.double()
        loss_sum = self.criterion(predictions, targets) * len(targets)
        sse = (predictions - targets).pow(2).sum(0)  # per target column
        count = torch.full_like(sse, len(targets))
        sums = torch.stack([loss_sum.expand_as(sse), sse, count, targets.sum(0), targets.pow(2).sum(0)])
        self._totals[stage] = self._totals.get(stage, 0) + sums

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def predict_step(self, batch: torch.Tensor | Sequence[torch.Tensor], batch_idx: int) -> torch.Tensor:
        """The model's outputs for a batch of features, or of ``(features, ...)`` (targets are ignored)."""
        return self(batch if isinstance(batch, torch.Tensor) else batch[0])

    def on_validation_epoch_start(self) -> None:
        self._totals = {}

    on_test_epoch_start = on_validation_epoch_start

    def _log_epoch_scores(self, stage: str) -> None:
        """Logs the stage's loss, RMSE (and R² on test) from totals summed over all ranks, so that every
        row weighs the same however the rows are shared out."""
        totals = self._totals[stage]
        loss_sum, sse, count, total, total_sq = self.all_gather(totals).reshape(-1, *totals.shape).sum(0)
        dtype = torch.promote_types(self.dtype, torch.float32)
        scores = regression_scores(stage, loss_sum[0], sse, count[0], total, total_sq, dtype)
        for tag, value in scores.items():
            self.log(tag, value, sync_dist=True, prog_bar=tag == "val/loss")

    def on_validation_epoch_end(self) -> None:
        if "val" in self._totals:
            self._log_epoch_scores("val")
        # a logged ``step`` is the loggers' step: the optimizer steps done (Lightning's default is one less);
        # a fit's only, as trainer.validate would return it among the scores
        if self.trainer.state.fn == TrainerFn.FITTING:
            self.log("step", float(self.trainer.global_step), sync_dist=True)

    def on_validation_end(self) -> None:
        # once the loggers and the checkpoints of this validation have it: kept among the callback metrics,
        # it would name the files a ModelCheckpoint saves until the next validation
        self.trainer.callback_metrics.pop("step", None)

    def on_test_epoch_end(self) -> None:
        if "test" in self._totals:
            self._log_epoch_scores("test")

    def build_optimizer(self) -> torch.optim.Optimizer:
        """The configured optimizer over the model's parameter groups (biases, lr multipliers)."""
        groups = build_param_groups(
            self.model,
            no_weight_decay_on_bias=self.hparams.no_weight_decay_on_bias,
            lr_multipliers=self.hparams.lr_multipliers,
        )
        optimizer = self.optimizer_factory(groups)
        apply_lr_multipliers(optimizer)
        return optimizer

    def build_scheduler(self, optimizer: torch.optim.Optimizer) -> Any:
        """The configured scheduler of ``optimizer``. Under a plateau scheduler each group keeps its
        configured lr as ``initial_lr``, as under torch's other ones, for a branch to carry its reductions."""
        multiplied = [group["lr"] for group in optimizer.param_groups]
        built = self.scheduler_factory(optimizer)
        if isinstance(built, torch.optim.lr_scheduler.ReduceLROnPlateau):
            for group, lr in zip(optimizer.param_groups, multiplied, strict=True):
                group.setdefault("initial_lr", lr)
        if not lr_ratios_kept(multiplied, [group["lr"] for group in optimizer.param_groups]):
            raise ValueError(
                f"{type(built).__name__} sets every parameter group's lr itself, so module.lr_multipliers "
                "would not apply; allowed: no lr_multipliers, or a scheduler that scales each group's lr"
            )
        return built

    def configure_optimizers(self) -> Any:
        optimizer = self.build_optimizer()
        if self.scheduler_factory is None:
            return optimizer
        scheduler: dict[str, Any] = {
            "scheduler": self.build_scheduler(optimizer),
            "interval": self.hparams.scheduler_interval,
            "frequency": self.hparams.scheduler_frequency,
        }
        if self.hparams.scheduler_monitor is not None:
            scheduler["monitor"] = self.hparams.scheduler_monitor
        return {"optimizer": optimizer, "lr_scheduler": scheduler}
