"""``OptimizerStateMonitor``: norms of every optimizer state, the gradient, the update and the step size.

On a logged step, torch's step hooks of each optimizer copy its parameters into a
preallocated buffer just before the step (unless the previous logged step left them as
they are) and, right after it,
:class:`~rmsprop_lightning.callbacks.state_norms.OptimizerProbe` copies what it needs into
a row of its history on the device. At each flush the rows are turned into values with
whole-matrix operations and handed, with the
:class:`~rmsprop_lightning.logging.step_metrics.BufferedStepLogger`'s one transfer, to every
logger at their own steps. Other steps cost a modulo in the pre-step hook and an empty
post-step hook; Lightning calls none of the monitor's hooks at a batch.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch.utils.hooks import RemovableHandle

from rmsprop_lightning.callbacks.row_copy import native_module
from rmsprop_lightning.callbacks.state_norms import BASE_QUANTITIES, OptimizerProbe, ParameterSnapshot
from rmsprop_lightning.logging.step_metrics import BufferedStepLogger

PREFIX = "optim/"


def optimizer_prefixes(optimizers: Sequence[torch.optim.Optimizer]) -> list[str]:
    """``optim/`` for a single optimizer; ``optim/<Class>/``, ``optim/<Class>-1/``, … for several."""
    if len(optimizers) == 1:
        return [PREFIX]
    seen: dict[str, int] = {}
    prefixes = []
    for optimizer in optimizers:
        name = type(optimizer).__name__
        count = seen.get(name, 0)
        seen[name] = count + 1
        prefixes.append(f"{PREFIX}{name}-{count}/" if count else f"{PREFIX}{name}/")
    return prefixes


def global_step_reader(trainer: pl.Trainer) -> Callable[[], int]:
    """A function returning ``trainer.global_step``, read from the counter behind it where it can be.

    ``global_step`` goes through a chain of properties, about 5 µs inside a training step; the
    progress counter it ends at is one attribute read. Where a Lightning version keeps that
    counter elsewhere, or it disagrees with ``global_step``, the function reads the property.
    """
    try:
        loop = trainer.fit_loop.epoch_loop
        if trainer.lightning_module.automatic_optimization:
            total = loop.automatic_optimization.optim_progress.optimizer.step.total
        else:
            total = loop.manual_optimization.optim_step_progress.total
        if total.completed == trainer.global_step:
            return functools.partial(getattr, total, "completed")
    except AttributeError:
        pass
    return lambda: trainer.global_step


def custom_scalars_layout(keys: Iterable[str]) -> dict[str, dict[str, list[Any]]]:
    """A custom-scalars layout: losses together, one chart per optimizer state, one per step quantity.

    Each chart holds every optimizer, group and parameter of its quantity (its regular
    expression skips the scope in ``optim/<scope>/<quantity>``).
    """
    quantities: list[str] = []
    for key in keys:
        leaf = key.rsplit("/", 1)[-1]
        if leaf.endswith("_norm") and leaf[: -len("_norm")] not in quantities:
            quantities.append(leaf[: -len("_norm")])

    def chart(leaf: str) -> list[Any]:
        return ["Multiline", [rf"^optim/(.+/)?{leaf}$"]]

    states = [q for q in quantities if q not in BASE_QUANTITIES]
    step = {f"{q} norm": chart(f"{re.escape(q)}_norm") for q in BASE_QUANTITIES if q in quantities}
    if "update" in quantities:
        step["update / param norm"] = chart("update_to_param_ratio")
    if any(key.rsplit("/", 1)[-1].startswith("effective_lr_") for key in keys):
        step["effective lr: mean, max, min"] = chart("effective_lr_(mean|max|min)")
    return {
        "Loss": {"loss (train every step, val, test)": ["Multiline", [r"^(.+/)?loss$"]]},
        "Optimizer state": {f"{q} norm": chart(f"{re.escape(q)}_norm") for q in states},
        "Optimizer step": step,
    }


@dataclasses.dataclass(slots=True)
class OptimizerWatch:
    """What the monitor keeps of one optimizer from step to step, at hand for its step hooks."""

    optimizer: torch.optim.Optimizer
    prefix: str  # of its keys
    logging: bool = False  # whether the step under way is logged
    snapshot: ParameterSnapshot | None = None  # its parameters before the logged step
    probe: OptimizerProbe | None = None  # its keys and captured steps; rebuilt when stale


class OptimizerStateMonitor(BufferedStepLogger):
    """Logs the norms of every optimizer state, the gradient, the update and RMSprop's step size.

    Keys (``optim/`` becomes ``optim/<Class>/`` with several optimizers; every ``<x>``
    below also comes as ``optim/<group>/<x>`` with several parameter groups and as
    ``optim/param/<name>/<x>`` for parameters selected by ``per_parameter``):

    - ``optim/<state>_norm`` — L2 norm of each tensor state (``square_avg``, ``momentum_buffer``,
      ``grad_avg``, Adam's ``exp_avg``/``exp_avg_sq``, …) over all parameters;
    - ``optim/grad_norm`` (the gradients the optimizer stepped with), ``optim/param_norm``
      (after the step), ``optim/update_norm`` (‖θ_after − θ_before‖) and
      ``optim/update_to_param_ratio`` (update_norm / param_norm);
    - for RMSprop-like groups, ``optim/effective_lr_mean`` (also per group and parameter) and
      ``optim/effective_lr_max``/``_min``: the per-element step size ``lr / (sqrt(v) + eps)``
      (``lr / sqrt(v + eps)`` with ``eps_in_sqrt``), ``v`` being ``square_avg``, or the variance
      ``square_avg − grad_avg²`` when centered, both bias-corrected with ``bias_correction``;
      the step size applied to the gradient, before momentum.

    It measures in torch's step hooks of the trainer's optimizers (registered at the start
    of training, removed at its end), so a step's values are those of the step itself: the
    gradients it used (after clipping and unscaling), the learning rate it used (before a
    scheduler moves it), the parameters just before and after it. Each step is logged at
    Lightning's count of the optimizer steps before it (``global_step`` during the step,
    as the loss of its batch is). When every step is logged,
    the parameters before a step are those the previous step left, unless something changed
    them in place in between (seen from their version counters; a change through ``.data``
    is not seen and counts as part of the next update).

    Only global rank zero measures and writes; no collective is added. Raises
    ``MisconfigurationException`` at the start of training when the trainer has no logger.

    Args:
        every_n_steps: log every this many optimizer steps (steps ``n−1, 2n−1, …`` as
            Lightning counts); ``None`` follows the trainer's ``log_every_n_steps``.
        per_parameter: ``True`` for per-parameter keys of all parameters, or a regular
            expression searched in the parameter names (e.g. ``"weight$"``).
        flush_every: logged steps kept on the device before one transfer to the loggers (the
            history holds at most 64 MiB of them); a flush has a fixed cost, so rarer flushes
            cost less per step.
        flush_secs: flush at the first logged step this many seconds after the last flush
            (``None``: only every ``flush_every`` steps).
        tensorboard_layout: write a custom-scalars layout (one chart per state) to
            TensorBoard loggers.
        native_copy: copy a logged step's small tensors on the CPU, and read the parameters'
            version counters, with a C++ extension built once against the installed torch
            (``False``: with ``torch.cat`` and Python, as without a C++ compiler).
    """

    def __init__(
        self,
        every_n_steps: int | None = 1,
        per_parameter: bool | str = False,
        flush_every: int = 1000,
        flush_secs: float | None = 30.0,
        tensorboard_layout: bool = True,
        native_copy: bool = True,
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
        if not isinstance(native_copy, bool):
            raise ValueError(f"native_copy must be a bool, got {native_copy!r}")
        self.tensorboard_layout = tensorboard_layout
        self.native_copy = native_copy
        self._watches: list[OptimizerWatch] = []  # one per optimizer of the fit
        self._captured = 0  # steps captured (over all optimizers) since the last flush
        self._trainer: pl.Trainer | None = None  # the trainer of the fit
        self._global_step: Callable[[], int] = int  # its step count, which numbers the rows (0 outside a fit)
        self._log_every = 1  # the trainer's log_every_n_steps, for every_n_steps=None
        self._hooks: list[RemovableHandle] = []  # torch's step hooks on the trainer's optimizers
        self._param_names: dict[int, str] = {}
        self._layout: dict[str, Any] = {}

    @property
    def probes(self) -> list[OptimizerProbe]:
        """The probes of the optimizers that have logged a step (since their last change of structure)."""
        return [watch.probe for watch in self._watches if watch.probe is not None]

    @property
    def names(self) -> list[str]:
        """The keys logged so far, over all optimizers."""
        return [name for probe in self.probes for name in probe.names]

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.loggers:
            raise MisconfigurationException(
                "OptimizerStateMonitor needs a logger, but the Trainer has none; pass logger=... "
                "(or drop the callback)"
            )
        self._remove_hooks()
        optimizers = trainer.optimizers
        prefixes = optimizer_prefixes(optimizers)
        self._watches = [OptimizerWatch(o, prefix) for o, prefix in zip(optimizers, prefixes, strict=True)]
        self._param_names = {id(param): name for name, param in pl_module.named_parameters()}
        self._captured = 0
        self._trainer, self._log_every = trainer, max(trainer.log_every_n_steps, 1)
        self._global_step = global_step_reader(trainer)
        if trainer.is_global_zero:  # other ranks neither measure nor write
            if self.native_copy:
                native_module()  # built (once per machine) or loaded now, not inside the first step
            self._add_hooks()

    def _add_hooks(self) -> None:
        """Puts the monitor's step hooks on every watched optimizer, each hook given its watch."""
        for watch in self._watches:
            optimizer = watch.optimizer
            self._hooks.append(optimizer.register_step_pre_hook(functools.partial(self._before_step, watch)))
            self._hooks.append(optimizer.register_step_post_hook(functools.partial(self._after_step, watch)))

    def _remove_hooks(self) -> None:
        """Takes the monitor's step hooks off the optimizers: it measures nothing until the next fit."""
        for handle in self._hooks:
            handle.remove()
        self._hooks.clear()
        self._trainer, self._global_step = None, int

    # it works in torch's step hooks and flushes from there: Lightning need not call it at batch end
    on_train_batch_end = None  # type: ignore[assignment]

    def _before_step(
        self, watch: OptimizerWatch, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any
    ) -> None:
        """Torch's pre-step hook: decides whether the step is logged; then copies what it is about to change.

        The step is Lightning's ``global_step``-th (counting from 0): logged when every step is,
        else when ``global_step + 1`` is a multiple of the interval.
        """
        interval = self.every_n_steps or self._log_every
        watch.logging = interval == 1 or (self._global_step() + 1) % interval == 0
        if not watch.logging:
            return
        snapshot = watch.snapshot
        if snapshot is None or snapshot.groups != len(optimizer.param_groups):
            snapshot = watch.snapshot = ParameterSnapshot(optimizer.param_groups, self.native_copy)
        snapshot.take()

    def _after_step(
        self, watch: OptimizerWatch, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any
    ) -> None:
        """Torch's post-step hook: on a logged step, keeps what the step left, at Lightning's step number.

        Here the gradients are those the optimizer stepped with (clipped, unscaled) and the
        learning rate is the one it used (a scheduler may change it before the batch ends);
        Lightning counts the step once it returns, so ``global_step`` is still its number.
        """
        if not watch.logging:
            return
        probe = watch.probe
        if probe is None or not probe.matches(optimizer) or probe.snapshot is not watch.snapshot:
            probe = self._renew_probe(watch)
        if probe.capture(self._global_step()):  # its history is full
            self._collect(probe)
        self._captured += 1
        if self.flush_due(self._captured):
            self.flush(self._trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        self._remove_hooks()

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        super().on_exception(trainer, pl_module, exception)
        self._remove_hooks()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._remove_hooks()

    def _collect(self, probe: OptimizerProbe) -> None:
        """Computes the probe's captured steps into the buffer (still on the device)."""
        if probe.steps:
            steps, values = probe.compute()
            self.buffer.record_rows(steps, probe.names, values)

    def _renew_probe(self, watch: OptimizerWatch) -> OptimizerProbe:
        """A probe of the watched optimizer as it is now; the stale one's steps are collected first."""
        if watch.probe is not None:
            self._collect(watch.probe)
        watch.probe = OptimizerProbe(
            watch.optimizer,
            watch.snapshot,
            watch.prefix,
            self._param_names,
            self.per_parameter,
            capacity=self.flush_every,
            native_copy=self.native_copy,
        )
        return watch.probe

    def flush(self, trainer: pl.Trainer) -> None:
        """Computes every captured step, then hands all buffered steps to the loggers in one transfer."""
        self._captured = 0
        for watch in self._watches:
            if watch.probe is not None:
                self._collect(watch.probe)
                if not watch.probe.same_structure():
                    watch.probe = None
        if self.tensorboard_layout and trainer.is_global_zero and len(self.buffer):
            layout = custom_scalars_layout(self.names)
            if layout != self._layout:
                self._layout = layout
                for logger in trainer.loggers:
                    if isinstance(logger, TensorBoardLogger):
                        logger.experiment.add_custom_scalars(layout)
        super().flush(trainer)
