"""Every step's loss reaches the loggers exactly once, at its own step, whatever the flush cadence."""

from __future__ import annotations

from functools import partial
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import Logger

from rmsprop_lightning import FeedForward, RegressionDataModule, RegressionModule
from rmsprop_lightning.data import synthetic
from rmsprop_lightning.step_metrics import StepMetricBuffer


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


def test_buffer_drains_in_order_with_one_transfer(monkeypatch):
    buffer = StepMetricBuffer()
    buffer.record(3, {"a": torch.tensor(1.5), "b": torch.tensor(2.0)})
    buffer.record_vector(4, ["a", "b"], torch.tensor([3.0, 4.0]))
    buffer.record(5, {"c": torch.tensor(-1.0)})
    transfers = []
    for method in ("tolist", "item", "cpu", "numpy"):
        original = getattr(torch.Tensor, method)

        def counted(self, *args, _original=original, _method=method, **kwargs):
            transfers.append(_method)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, method, counted)
    assert buffer.drain() == [(3, {"a": 1.5, "b": 2.0}), (4, {"a": 3.0, "b": 4.0}), (5, {"c": -1.0})]
    assert transfers == ["numpy"]
    assert len(buffer) == 0 and buffer.drain() == []
