"""Every step's loss reaches the loggers exactly once, at its own step, whatever the flush cadence."""

from __future__ import annotations

from functools import partial
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import Logger

from rmsprop_lightning import FeedForward, RegressionDataModule, RegressionModule
from rmsprop_lightning.callbacks import LearningRateMonitor
from rmsprop_lightning.data import synthetic
from rmsprop_lightning.logging import step_metrics
from rmsprop_lightning.logging.step_metrics import StepMetricBuffer
from rmsprop_lightning.module import StepLossLogger


class RecordingLogger(Logger):
    """Keeps every ``log_metrics`` call."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[int, dict[str, float]]] = []

    @property
    def name(self) -> str:
        return "recording"

    @property
    def version(self) -> str:
        return "0"

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.calls.append((step, dict(metrics)))

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass


class LossRecordingModule(RegressionModule):
    """Remembers the loss of each step as computed, to compare with what was logged."""

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        self.seen.append((self.global_step, loss.item()))
        return loss


@pytest.mark.parametrize(("max_steps", "flush_every"), [(23, 5), (20, 5), (7, 100), (31, 1)])
def test_each_step_logged_once_at_its_step(max_steps, flush_every):
    pl.seed_everything(0, verbose=False)
    module = LossRecordingModule(
        FeedForward(), partial(torch.optim.RMSprop, lr=0.01), loss_flush_every=flush_every
    )
    module.seen = []
    logger = RecordingLogger()
    trainer = pl.Trainer(
        max_steps=max_steps,
        logger=logger,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    trainer.fit(module, datamodule=RegressionDataModule(partial(synthetic, num_samples=256), batch_size=16))
    logged = [(step, metrics["train/loss"]) for step, metrics in logger.calls if "train/loss" in metrics]
    assert [step for step, _ in logged] == list(range(max_steps))
    assert [step for step, _ in module.seen] == list(range(max_steps))
    assert [value for _, value in logged] == pytest.approx([value for _, value in module.seen], rel=1e-6)


@pytest.mark.parametrize("accumulate", [3, 4])
def test_an_accumulated_step_logs_the_mean_of_its_batches_once(accumulate):
    pl.seed_everything(0, verbose=False)
    module = LossRecordingModule(FeedForward(), partial(torch.optim.RMSprop, lr=0.01))
    module.seen = []
    trainer = pl.Trainer(
        max_steps=6,
        accumulate_grad_batches=accumulate,
        logger=RecordingLogger(),
        callbacks=[LearningRateMonitor(logging_interval="step")],
        log_every_n_steps=1,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    # 10 batches an epoch: with 4, every epoch ends with a step of 2 batches
    trainer.fit(module, datamodule=RegressionDataModule(partial(synthetic, num_samples=200), batch_size=16))
    logged = [
        (step, metrics["train/loss"]) for step, metrics in trainer.logger.calls if "train/loss" in metrics
    ]
    batches: dict[int, list[float]] = {}
    for step, loss in module.seen:
        batches.setdefault(step, []).append(loss)
    assert [step for step, _ in logged] == list(range(6))
    assert [value for _, value in logged] == pytest.approx([sum(v) / len(v) for v in batches.values()])
    # so is the learning rate (Lightning's monitor logs it at each batch of a step)
    assert [step for step, metrics in trainer.logger.calls if "lr-RMSprop/decay" in metrics] == list(range(6))
    assert {len(v) for v in batches.values()} == ({3, 1} if accumulate == 3 else {4, 2})


class SkipsOddBatches(LossRecordingModule):
    """Returns ``None`` for odd batches, Lightning's way to skip a batch without a step."""

    def training_step(self, batch, batch_idx):
        return super().training_step(batch, batch_idx) if batch_idx % 2 == 0 else None


class TwoOptimizers(pl.LightningModule):
    """Manual optimization: two optimizers step at every batch, so global_step counts two a batch."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.first, self.second = torch.nn.Linear(10, 5), torch.nn.Linear(5, 1)

    def training_step(self, batch, batch_idx):
        features, targets = batch
        loss = torch.nn.functional.mse_loss(self.second(torch.relu(self.first(features))), targets)
        self.manual_backward(loss)
        for optimizer in self.optimizers():
            optimizer.step()
            optimizer.zero_grad()
        self.log("mine", loss)
        return loss

    def configure_optimizers(self):
        return [torch.optim.SGD(layer.parameters(), 0.01) for layer in (self.first, self.second)]


def test_under_manual_optimization_the_loss_is_logged_at_the_step_self_log_uses():
    logger = RecordingLogger()
    trainer = pl.Trainer(
        max_steps=8,  # 4 batches of two optimizer steps
        logger=logger,
        log_every_n_steps=1,
        callbacks=[StepLossLogger(flush_every=1)],
        limit_val_batches=0,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(TwoOptimizers(), datamodule=RegressionDataModule(partial(synthetic, num_samples=256)))
    steps = {key: [step for step, values in logger.calls if key in values] for key in ("mine", "train/loss")}
    assert steps["mine"] == steps["train/loss"] == [0, 1, 2, 3]


def test_a_skipped_batch_logs_no_loss_and_the_others_theirs():
    pl.seed_everything(0, verbose=False)
    module = SkipsOddBatches(FeedForward(), partial(torch.optim.RMSprop, lr=0.01))
    module.seen = []
    logger = RecordingLogger()
    trainer = pl.Trainer(max_steps=5, logger=logger, enable_checkpointing=False, limit_val_batches=0)
    trainer.fit(module, datamodule=RegressionDataModule(partial(synthetic, num_samples=256), batch_size=16))
    logged = [(step, metrics["train/loss"]) for step, metrics in logger.calls if "train/loss" in metrics]
    assert [step for step, _ in logged] == [0, 2, 4]  # Lightning counts a skipped batch's step too
    assert [step for step, _ in module.seen] == [0, 2, 4]
    assert [value for _, value in logged] == pytest.approx([value for _, value in module.seen])


class FlushSizes(StepLossLogger):
    """Remembers how many steps each flush wrote."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.sizes: list[int] = []

    def flush(self, trainer):
        if len(self.buffer):
            self.sizes.append(len(self.buffer))
        super().flush(trainer)


class Clock(pl.Callback):
    """A clock that moves 0.4 s at every batch."""

    def __init__(self) -> None:
        self.now = 0.0

    def on_train_batch_start(self, *args: Any) -> None:
        self.now += 0.4


def test_a_flush_comes_flush_secs_after_the_last_one(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(step_metrics, "monotonic", lambda: clock.now)
    loss_logger = FlushSizes(flush_every=100, flush_secs=1.0)
    trainer = pl.Trainer(
        max_steps=10,
        logger=RecordingLogger(),
        callbacks=[clock, loss_logger],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    module = RegressionModule(FeedForward(), partial(torch.optim.RMSprop, lr=0.01))
    trainer.fit(module, datamodule=RegressionDataModule(partial(synthetic, num_samples=256), batch_size=16))
    # 1.2 s after the last flush at every third step; the last step at the end of fit
    assert loss_logger.sizes == [3, 3, 3, 1]
    steps = [step for step, metrics in trainer.logger.calls if "train/loss" in metrics]
    assert steps == list(range(10))


HOST_COPIES = ("tolist", "item", "numpy", "__float__")


def count_transfers(
    monkeypatch: pytest.MonkeyPatch, methods: tuple[str, ...] = (*HOST_COPIES, "cpu")
) -> list[str]:
    """Every call of a tensor method among ``methods`` that copies values to the host, from now on."""
    transfers: list[str] = []
    for method in methods:
        original = getattr(torch.Tensor, method)

        def counted(self, *args, _original=original, _method=method, **kwargs):
            transfers.append(_method)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, method, counted)
    return transfers


def test_buffer_drains_in_order_with_one_transfer(monkeypatch):
    buffer = StepMetricBuffer()
    buffer.record_vector(3, ["a", "b"], torch.tensor([1.5, 2.0]))
    buffer.record_vector(4, ["a", "b"], torch.tensor([3.0, 4.0]))
    buffer.record_vector(5, ["c"], torch.tensor(-1.0))
    buffer.record_vector(6, ["a"], torch.tensor([0.5], dtype=torch.float64))
    buffer.record_vector(7, ["a"], torch.tensor(0.25, dtype=torch.float64))
    buffer.record_vector(8, ["a", "b"], torch.tensor([1e45, 1e-50], dtype=torch.float64))  # beyond float32
    assert len(buffer) == 6
    transfers = count_transfers(monkeypatch)
    assert buffer.drain() == [
        (3, {"a": 1.5, "b": 2.0}),
        (4, {"a": 3.0, "b": 4.0}),
        (5, {"c": -1.0}),
        (6, {"a": 0.5}),
        (7, {"a": 0.25}),
        (8, {"a": 1e45, "b": 1e-50}),
    ]
    assert transfers == ["tolist"]
    assert len(buffer) == 0 and buffer.drain() == []


def test_training_copies_the_loss_to_the_host_once_per_flush(monkeypatch):
    flushes = FlushSizes(flush_every=5, flush_secs=None)
    trainer = pl.Trainer(
        max_steps=20,
        logger=RecordingLogger(),
        callbacks=[flushes],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    module = RegressionModule(FeedForward(), partial(torch.optim.RMSprop, lr=0.01))
    data = RegressionDataModule(partial(synthetic, num_samples=256), batch_size=16)
    data.splits  # noqa: B018  (reads the data, once, before training)
    transfers = count_transfers(monkeypatch, HOST_COPIES)  # not cpu(): Lightning's teardown moves the module
    trainer.fit(module, datamodule=data)
    assert flushes.sizes == [5, 5, 5, 5]
    assert transfers == ["tolist"] * 4
