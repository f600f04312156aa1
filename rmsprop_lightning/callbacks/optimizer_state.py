"""``OptimizerStateMonitor``: norms of every optimizer state, the gradient, the update and the step size."""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Iterable, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import Tensor
from torch.utils.hooks import RemovableHandle

from rmsprop_lightning.callbacks.state_norms import BASE_QUANTITIES, StateNorms
from rmsprop_lightning.internals import logger_step
from rmsprop_lightning.logging.step_metrics import BufferedStepLogger

PREFIX = "optim/"


def optimizer_prefixes(optimizers: Sequence[torch.optim.Optimizer]) -> list[str]:
    """``optim/`` for a single optimizer; ``optim/<Class>/``, ``optim/<Class>-1/``, … for several."""
    if len(optimizers) == 1:
        return [PREFIX]
    names = [type(optimizer).__name__ for optimizer in optimizers]
    prefixes = []
    for k, name in enumerate(names):
        count = names[:k].count(name)  # optimizers of the same class before it
        prefixes.append(f"{PREFIX}{name}-{count}/" if count else f"{PREFIX}{name}/")
    return prefixes


def custom_scalars_layout(keys: Iterable[str]) -> dict[str, dict[str, list[Any]]]:
    """A custom-scalars layout: losses together, one chart per optimizer state, one per step quantity.

    Each chart holds every optimizer, group and parameter of its quantity (its regular
    expression skips the scope in ``optim/<scope>/<quantity>``, and a logger's ``prefix-``).
    """
    leaves = dict.fromkeys(key.rsplit("/", 1)[-1] for key in keys)  # in order of appearance
    quantities = [leaf.removesuffix("_norm") for leaf in leaves if leaf.endswith("_norm")]

    def chart(leaf: str) -> list[Any]:
        return ["Multiline", [rf"^(.+-)?optim/(.+/)?{leaf}$"]]

    states = [q for q in quantities if q not in BASE_QUANTITIES]
    step = {f"{q} norm": chart(f"{q}_norm") for q in BASE_QUANTITIES if q in quantities}
    if "update_to_param_ratio" in leaves:
        step["update / param norm"] = chart("update_to_param_ratio")
    if "effective_lr_max" in leaves:
        step["effective lr: mean, max, min"] = chart("effective_lr_(mean|max|min)")
    return {
        "Loss": {"loss (train every step, val, test)": ["Multiline", [r"^(.+/)?loss$"]]},
        "Optimizer state": {f"{q} norm": chart(f"{re.escape(q)}_norm") for q in states},
        "Optimizer step": step,
    }


def monitor_interval(every_n_steps: int | None, log_every_n_steps: int | None) -> int:
    """The monitor's steps between records: ``every_n_steps``, else the trainer's ``log_every_n_steps``
    (``None``: Lightning's default, 50)."""
    return every_n_steps or max(50 if log_every_n_steps is None else log_every_n_steps, 1)


def first_due(steps_done: int, interval: int) -> int:
    """The first multiple of ``interval`` that the next step count, ``steps_done + 1``, reaches or passes."""
    return -(-(steps_done + 1) // interval) * interval


# what the due steps in the monitor's checkpointed state count (an older one's, without it: global_step)
STEP_AXIS = "loggers"


def monitor_state(interval: int, dues: Sequence[int | None]) -> dict[str, Any]:
    """The monitor's state in a checkpoint: its interval and each optimizer's next due step."""
    return {"interval": interval, "due": list(dues), "axis": STEP_AXIS}


@dataclasses.dataclass(slots=True)
class OptimizerWatch:
    """What the monitor keeps of one optimizer, at hand for its step hooks."""

    optimizer: torch.optim.Optimizer
    prefix: str  # of its keys
    due: int | None = None  # the loggers' step count at or after which it logs next (None: at its first)
    minus_before: Sequence[Tensor] | None = None  # −θ before the step under way, when it is logged
    norms: StateNorms | None = None  # its keys and reductions; rebuilt when stale


class OptimizerStateMonitor(BufferedStepLogger):
    """Logs the norms of every optimizer state, the gradient, the update and RMSprop's step size.

    Keys (``optim/`` becomes ``optim/<Class>/`` with several optimizers; every ``<x>`` also comes
    as ``optim/<group>/<x>`` with several parameter groups and as ``optim/param/<name>/<x>`` for
    the parameters ``per_parameter`` selects):

    - ``optim/<state>_norm``: L2 norm of each tensor state (``square_avg``, ``momentum_buffer``,
      ``grad_avg``, Adam's ``exp_avg``, …); each tensor's norm in its dtype, as ``clip_grad_norm_`` takes
      it (in float32: inf past about 1.8e19, and inexact to 0 for elements below about 1e-19);
    - ``optim/grad_norm`` (``.grad`` as the step read it: clipped, before weight decay),
      ``optim/param_norm`` (after the step), ``optim/update_norm`` (‖θ_after − θ_before‖) and
      ``optim/update_to_param_ratio``;
    - for RMSprop-like groups, ``optim/effective_lr_mean`` and, over the optimizer,
      ``optim/effective_lr_max``/``_min``: the per-element step size ``lr / (sqrt(v) + eps)``
      (``lr / sqrt(v + eps)`` with ``eps_in_sqrt``), ``v`` being ``square_avg`` or, centered,
      ``square_avg − grad_avg²``, both bias-corrected with ``bias_correction``.

    It measures in torch's step hooks of the trainer's optimizers, so a step's values are those
    of the step itself (its gradients after clipping, its learning rate before a scheduler
    moves it), logged at the step of Lightning's loggers, as ``self.log`` logs its batch's loss: the
    optimizer steps done (``trainer.global_step``), or under manual optimization the batches done
    (``global_step`` counts every optimizer's steps there). Only global rank zero measures and writes.
    Raises ``MisconfigurationException`` at the start of training when the trainer has no logger.

    Args:
        every_n_steps: log every this many steps of the loggers (steps ``n−1, 2n−1, …``; each
            optimizer's first step at or past those, once per step); ``None`` follows the trainer's
            ``log_every_n_steps``, as ``self.log`` does (``0``: never).
        per_parameter: ``True`` for per-parameter keys of all parameters, or a regular
            expression searched in the parameter names (e.g. ``"weight$"``).
        flush_every: logged steps kept on the device before one transfer to the loggers.
        flush_secs: flush at the first step this many seconds after the last flush (``None``: no limit).
        tensorboard_layout: write a custom-scalars layout (one chart per state) to TensorBoard loggers.
    """

    def __init__(
        self,
        every_n_steps: int | None = None,
        per_parameter: bool | str = False,
        flush_every: int = 1000,
        flush_secs: float | None = 30.0,
        tensorboard_layout: bool = True,
    ) -> None:
        super().__init__(flush_every=flush_every, flush_secs=flush_secs)
        if every_n_steps is not None and (
            isinstance(every_n_steps, bool) or not isinstance(every_n_steps, int) or every_n_steps < 1
        ):
            raise ValueError(f"every_n_steps must be a positive integer or None, got {every_n_steps!r}")
        if isinstance(per_parameter, str):
            try:
                self.per_parameter: re.Pattern[str] | None = re.compile(per_parameter)
            except re.error as error:
                raise ValueError(
                    f"per_parameter={per_parameter!r} is not a valid regular expression: {error}"
                ) from error
        elif isinstance(per_parameter, bool):
            self.per_parameter = re.compile("") if per_parameter else None
        else:
            raise ValueError(f"per_parameter must be a bool or a regular expression, got {per_parameter!r}")
        self.every_n_steps = every_n_steps
        self.tensorboard_layout = tensorboard_layout
        self._watches: list[OptimizerWatch] = []  # one per optimizer of the fit
        self._trainer: pl.Trainer | None = None  # the trainer of the fit, for its step count
        self._interval = 1  # every_n_steps, or the trainer's log_every_n_steps
        self._hooks: list[RemovableHandle] = []  # torch's step hooks on the trainer's optimizers
        self._param_names: dict[int, str] = {}
        self._layout: dict[str, Any] = {}
        self._restored: dict[str, Any] = {}  # the interval and each optimizer's due step, from a checkpoint

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.loggers:
            raise MisconfigurationException(
                "OptimizerStateMonitor needs a logger, but the Trainer has none; pass logger=... "
                "(or drop the callback)"
            )
        self._remove_hooks()
        optimizers = trainer.optimizers
        if [watch.optimizer for watch in self._watches] != optimizers:  # else a restart keeps the plans
            self._watches = [
                OptimizerWatch(optimizer, prefix)
                for optimizer, prefix in zip(optimizers, optimizer_prefixes(optimizers), strict=True)
            ]
        self._param_names = {id(param): name for name, param in pl_module.named_parameters()}
        self._trainer = trainer
        self._interval = interval = monitor_interval(self.every_n_steps, trainer.log_every_n_steps)
        restored, self._restored = self._restored, {}
        same = restored.get("interval") == interval and len(restored.get("due", [])) == len(self._watches)
        # as the interrupted run had them, each optimizer keeping its turn; else set at the first batch, where
        # a resumed loop has counted its restored step
        dues = restored["due"] if same and restored.get("axis") == STEP_AXIS else [None] * len(self._watches)
        for watch, due in zip(self._watches, dues, strict=True):
            watch.due = due
        # other ranks neither measure nor write; self.log logs nothing with log_every_n_steps=0
        if not trainer.is_global_zero or (self.every_n_steps is None and trainer.log_every_n_steps == 0):
            return
        for watch in self._watches:
            self._hooks.append(
                watch.optimizer.register_step_pre_hook(functools.partial(self._before_step, watch))
            )
            self._hooks.append(
                watch.optimizer.register_step_post_hook(functools.partial(self._after_step, watch))
            )

    @property
    def state_key(self) -> str:
        """The key of its state in checkpoints, one per setting: a trainer may hold several monitors."""
        pattern = None if self.per_parameter is None else self.per_parameter.pattern
        return f"{type(self).__qualname__}[every_n_steps={self.every_n_steps}, per_parameter={pattern!r}]"

    def state_dict(self) -> dict[str, Any]:
        return monitor_state(self._interval, [watch.due for watch in self._watches])

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._restored = dict(state_dict)

    def _remove_hooks(self) -> None:
        """Takes the monitor's step hooks off the optimizers: it measures nothing until the next fit."""
        for handle in self._hooks:
            handle.remove()
        self._hooks.clear()

    def _before_step(
        self, watch: OptimizerWatch, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any
    ) -> None:
        """Torch's pre-step hook: on a logged step, keeps −θ, which the post-step hook turns into the update.

        An optimizer logs its first step that brings the loggers' count (the steps done, this one included)
        to or past a multiple of the interval: with several optimizers, each has its turn.
        """
        done = logger_step(self._trainer)
        if watch.due is None:  # hooked after its fit's first batch started
            watch.due = first_due(done, self._interval)
        counted = done + 1
        if counted < watch.due:
            watch.minus_before = None
            return
        watch.due = first_due(counted, self._interval)
        with torch.no_grad():
            watch.minus_before = torch._foreach_neg([p for g in optimizer.param_groups for p in g["params"]])

    def _after_step(
        self, watch: OptimizerWatch, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any
    ) -> None:
        """Torch's post-step hook: on a logged step, records its values at the loggers' step.

        Here the gradients are those the optimizer stepped with and the learning rate the one
        it used; Lightning counts the step once its batch ends, so the loggers' step is its number.
        """
        if watch.minus_before is None:
            return
        if watch.norms is None or not watch.norms.matches(optimizer):
            watch.norms = StateNorms(optimizer, watch.prefix, self._param_names, self.per_parameter)
        values = watch.norms.values(optimizer, watch.minus_before)
        watch.minus_before = None
        self.buffer.record_vector(logger_step(self._trainer), watch.norms.names, values)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        """At the fit's first batch, an optimizer with no turn restored gets its first: the first multiple of
        the interval past the steps done, logged by its first step at or past it (however late it starts)."""
        for watch in self._watches:
            if watch.due is None:
                watch.due = first_due(logger_step(trainer), self._interval)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        self._remove_hooks()

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        super().on_exception(trainer, pl_module, exception)
        self._remove_hooks()

    def flush(self, trainer: pl.Trainer) -> None:
        """Writes the custom-scalars layout when the keys changed, then hands the buffer to the loggers."""
        if self.tensorboard_layout and trainer.is_global_zero and len(self.buffer):
            layout = custom_scalars_layout(name for w in self._watches if w.norms for name in w.norms.names)
            if layout != self._layout:
                self._layout = layout
                for logger in trainer.loggers:
                    if isinstance(logger, TensorBoardLogger):
                        logger.experiment.add_custom_scalars(layout)
        super().flush(trainer)
