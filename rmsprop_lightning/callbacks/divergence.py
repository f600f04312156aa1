"""Catches a non-finite loss or parameter at the step it happens: stop there, or skip that update."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback

from rmsprop_lightning.callbacks.last_checkpoint import LastCheckpoint, find_callback
from rmsprop_lightning.errors import DivergedError
from rmsprop_lightning.internals import logger_step
from rmsprop_lightning.summary import write_summary

log = logging.getLogger(__name__)

MODES = ("stop", "skip")
SKIPPED_TAG = "train/skipped_steps"


def any_rank(trainer: pl.Trainer, flag: bool) -> bool:
    """Whether ``flag`` holds on any rank (a collective only where there are other ranks)."""
    return trainer.strategy.reduce_boolean_decision(flag, all=False) if trainer.world_size > 1 else flag


def all_finite(tensors: Iterable[torch.Tensor]) -> torch.Tensor:
    """A 0-d bool tensor: whether every element of every tensor is finite (no host sync).

    Each tensor is summed in float64, where no sum of finite float32 (or lower) values
    can overflow, so the total is finite exactly when every element is; a sum is the
    cheapest full reduction on CPU (cheaper than ``isfinite().all()`` on large tensors).
    """
    sums = [tensor.detach().sum(dtype=torch.float64) for tensor in tensors if tensor is not None]
    return torch.stack(sums).sum().isfinite() if sums else torch.tensor(True)


def likely_cause(
    optimizer: torch.optim.Optimizer, loss_finite: bool, dtype: torch.dtype | None = None
) -> str:
    """A guess at why RMSprop diverged, from its hyper-parameters and the parameters' ``dtype`` (its
    parameters' by default), with what to change."""
    group = optimizer.param_groups[0]
    lr, eps, alpha = group.get("lr"), group.get("eps"), group.get("alpha")
    if loss_finite and group.get("centered"):
        return (
            "centered=True: torch's centered RMSprop takes sqrt(v - m²) without a clamp and it turns NaN "
            "when the gradient is nearly constant; use a larger optimizer.eps or optimizer.centered=false"
        )
    dtype = dtype or group["params"][0].dtype
    if eps is not None and 0 < eps < torch.finfo(dtype).tiny:  # half precision: eps rounds to 0 or loses bits
        held = "rounds to 0" if torch.tensor(eps, dtype=dtype).item() == 0 else "is subnormal"
        return (
            f"eps={eps:g} {held} in {dtype} (smallest normal number {torch.finfo(dtype).tiny:.2g}): the step "
            "divides by ≈0 where a gradient is small; raise optimizer.eps or use trainer.precision=bf16-mixed"
        )
    if eps is not None and eps < 1e-10:
        return (
            f"eps={eps:g} is tiny: a weight whose gradient stays near zero is divided by ≈0; "
            "raise optimizer.eps (e.g. 1e-8)"
        )
    if lr is not None and alpha is not None and alpha < 1:
        first_step = lr / math.sqrt(1 - alpha)
        if first_step >= 1:
            return (
                f"lr={lr:g} is too large: RMSprop's first updates move each weight by "
                f"about lr/sqrt(1-alpha) = {first_step:.3g}; lower optimizer.lr"
            )
    return "lower optimizer.lr, raise optimizer.eps, or clip gradients with trainer.gradient_clip_val"


def loss_text(losses: Iterable[torch.Tensor], scale: float = 1.0) -> str:
    """The losses' values times ``scale`` as text, for a log line or an error."""
    values = [value * scale for loss in losses for value in loss.double().reshape(-1).tolist()]
    return ", ".join(f"{value:.6g}" for value in values) or "unknown"


def diverged_message(
    step: int,
    loss: str,
    finite: bool,
    optimizer: torch.optim.Optimizer,
    last: Path | None,
    dtype: torch.dtype | None = None,
) -> str:
    """The error of a run that diverged at ``step`` with ``loss`` (text); ``last``: the checkpoint kept;
    ``dtype``: the parameters' (as :func:`likely_cause` takes it)."""
    what = "parameters" if finite else "loss"
    kept = f"The last good state is kept in {last}." if last else "No checkpoint was written before it."
    return (
        f"training diverged at step {step}: non-finite {what} (loss {loss}); "
        f"likely cause: {likely_cause(optimizer, finite, dtype)}. {kept}"
    )


class DivergenceGuard(Callback):
    """Checks the loss, the gradients and the parameters for NaN/inf at every step.

    ``on_nonfinite="stop"`` raises :class:`~rmsprop_lightning.errors.DivergedError` at the end of the first
    step whose loss or updated parameters are not finite, before that step's checkpoint is written, so the
    last checkpoint on disk is the last good state. ``"skip"`` drops the update of a step whose loss or
    gradients are not finite, counts it and logs the count as ``train/skipped_steps``; non-finite parameters
    still stop the run. With ``summary_dir`` the run's ``metrics.json`` is marked ``diverged``, or holds the
    ``skipped_steps`` once training ends. Steps are the loggers' (under manual optimization the batches,
    however many optimizers each steps).
    """

    def __init__(self, on_nonfinite: str = "stop", summary_dir: str | Path | None = None) -> None:
        if on_nonfinite not in MODES:
            raise ValueError(f"on_nonfinite={on_nonfinite!r} is unknown; allowed: {', '.join(MODES)}")
        self.on_nonfinite = on_nonfinite
        self.summary_dir = summary_dir
        self.skipped = 0
        self._losses: list[torch.Tensor] = []  # of the step under way
        self._stepped = 0  # how many of them an earlier optimizer's step checked (manual optimization)
        self._parameters: list[torch.Tensor] = []
        self._checked_step: int | None = None
        self._skipped_at: int | None = None  # the loggers' step of the last skip, counted once
        self._loss_scale = 1.0  # what Lightning divided the loss by before its backward

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._checked_step = trainer.global_step
        self._losses, self._stepped, self._skipped_at = [], 0, None
        self._loss_scale = trainer.accumulate_grad_batches if pl_module.automatic_optimization else 1.0
        self._parameters = list(pl_module.parameters())

    def on_before_backward(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor
    ) -> None:
        self._losses.append(loss.detach())

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        if self.on_nonfinite != "skip":
            return
        parameters = [p for group in optimizer.param_groups for p in group["params"]]
        losses, self._stepped = self._losses[self._stepped :], len(self._losses)  # this optimizer's
        if not any_rank(trainer, not all_finite([*losses, *(p.grad for p in parameters)])):
            return
        for parameter in parameters:
            parameter.grad = None
        step = logger_step(trainer)
        if step == self._skipped_at:  # another optimizer of the same step
            return
        self._skipped_at = step
        self.skipped += 1
        if self.skipped & (self.skipped - 1) == 0:  # the 1st, 2nd, 4th, 8th, …: a few lines for many skips
            log.warning(
                "step %d: non-finite loss or gradient (loss %s); update skipped (%d so far; the next line "
                "comes at %d)",
                step,
                loss_text(losses, self._loss_scale),
                self.skipped,
                2 * self.skipped,
            )
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics({SKIPPED_TAG: float(self.skipped)}, step=step)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_step == self._checked_step:
            return  # accumulating gradients: no update yet
        self._checked_step = trainer.global_step
        checked = self._parameters + self._losses if self.on_nonfinite == "stop" else self._parameters
        if not any_rank(trainer, not all_finite(checked)):
            self._losses, self._stepped = [], 0
            return
        step = logger_step(trainer)  # the updates done before this batch's
        last = find_callback(trainer.callbacks, LastCheckpoint)
        kept = last.path if last is not None and last.path.is_file() else None
        loss_finite = bool(all_finite(self._losses))
        losses = loss_text(self._losses, self._loss_scale)
        message = diverged_message(step, losses, loss_finite, trainer.optimizers[0], kept)
        if self.summary_dir is not None and trainer.is_global_zero:
            write_summary(self.summary_dir, status="diverged", error=message, diverged_at_step=step)
        raise DivergedError(message)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._record_skipped(trainer)

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._record_skipped(trainer)

    def _record_skipped(self, trainer: pl.Trainer) -> None:
        """The count of skipped updates in ``metrics.json``, which the last of the lines above may not say."""
        if self.skipped and self.summary_dir is not None and trainer.is_global_zero:
            write_summary(self.summary_dir, skipped_steps=self.skipped)

    def state_dict(self) -> dict[str, Any]:
        return {"skipped": self.skipped}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped = int(state_dict["skipped"])
