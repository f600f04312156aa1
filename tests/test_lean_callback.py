"""Lightning calls a LeanCallback only for the per-batch hooks it implements, and those as usual."""

from __future__ import annotations

from functools import partial

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.profilers import SimpleProfiler

from rmsprop_lightning import FeedForward, RegressionDataModule, RegressionModule
from rmsprop_lightning.callbacks import (
    DivergenceGuard,
    GracefulInterrupt,
    LastCheckpoint,
    OptimizerStateMonitor,
    RandomState,
    UpdateReport,
)
from rmsprop_lightning.callbacks.fit_stats import FitStats
from rmsprop_lightning.data import synthetic
from rmsprop_lightning.lean_callback import PER_BATCH_HOOKS, LeanCallback
from rmsprop_lightning.module import StepLossLogger


def dispatched(callback: Callback) -> list[str]:
    """The per-batch hooks Lightning calls on ``callback``: the callable ones."""
    return [hook for hook in PER_BATCH_HOOKS if callable(getattr(callback, hook))]


class Counting:
    """Counts the training and validation batches it sees."""

    def __init__(self) -> None:
        self.calls = {"on_train_batch_end": 0, "on_validation_batch_end": 0}

    def on_train_batch_end(self, *args) -> None:
        self.calls["on_train_batch_end"] += 1

    def on_validation_batch_end(self, *args) -> None:
        self.calls["on_validation_batch_end"] += 1


class BatchCounter(Counting, LeanCallback):
    """Counting as a LeanCallback: only its two hooks are dispatched."""


class PlainCounter(Counting, Callback):
    """Counting on Lightning's own base class: every per-batch hook is dispatched."""


class BackwardCounter(BatchCounter):
    """Adds a hook its parent leaves out."""

    def __init__(self) -> None:
        super().__init__()
        self.calls["on_before_backward"] = 0

    def on_before_backward(self, *args) -> None:
        self.calls["on_before_backward"] += 1


def fit(callback: Callback, profiler: SimpleProfiler) -> None:
    pl.seed_everything(0, verbose=False)
    module = RegressionModule(FeedForward(), partial(torch.optim.RMSprop, lr=0.01))
    trainer = pl.Trainer(
        max_steps=6,
        val_check_interval=3,
        limit_val_batches=1,
        logger=False,
        callbacks=[callback],
        profiler=profiler,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, datamodule=RegressionDataModule(partial(synthetic, num_samples=256), batch_size=16))


@pytest.mark.parametrize("counter", [BatchCounter, PlainCounter, BackwardCounter])
def test_lightning_calls_only_the_implemented_batch_hooks(counter, tmp_path):
    callback = counter()
    profiler = SimpleProfiler(dirpath=tmp_path, filename="profile")
    fit(callback, profiler)
    # six training batches; a validation batch in the sanity check and after steps 3 and 6
    expected = {"on_train_batch_end": 6, "on_validation_batch_end": 3, "on_before_backward": 6}
    assert callback.calls == {hook: expected[hook] for hook in callback.calls}
    profiled = {
        action.split(".")[-1] for action in profiler.recorded_durations if action.startswith("[Callback]")
    }
    calls_every_hook = counter is PlainCounter
    assert ("on_after_backward" in profiled) is calls_every_hook
    assert ("on_before_zero_grad" in profiled) is calls_every_hook
    assert ("on_before_backward" in profiled) is (counter is not BatchCounter)
    assert {"on_train_batch_end", "on_validation_batch_end"} <= profiled


@pytest.mark.parametrize(
    ("callback", "hooks"),
    [
        (DivergenceGuard(), ["on_before_backward", "on_before_optimizer_step", "on_train_batch_end"]),
        (FitStats(), []),
        (GracefulInterrupt(), ["on_train_batch_start", "on_train_batch_end"]),
        (LastCheckpoint("ckpt"), ["on_train_batch_end"]),
        (OptimizerStateMonitor(), []),
        (RandomState(), []),
        (UpdateReport(), ["on_train_batch_start", "on_train_batch_end"]),
        (StepLossLogger(), ["on_train_batch_end"]),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, Callback) else "",
)
def test_project_callbacks_dispatch_only_their_batch_hooks(callback, hooks):
    assert dispatched(callback) == hooks
