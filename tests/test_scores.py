"""The epoch scores a RegressionModule logs, against a direct computation on the split."""

from __future__ import annotations

import math
from functools import partial

import lightning.pytorch as pl
import pytest
import torch

from rmsprop_lightning import FeedForward, RegressionDataModule, RegressionModule
from rmsprop_lightning.data import Table
from rmsprop_lightning.module import regression_scores


def test_rmse_is_over_every_target_and_r2_the_mean_over_target_columns():
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(500, 3, generator=generator)
    # two targets far apart in scale and mean: one R² over both would call the gap between means skill
    targets = torch.stack([1000 + 5 * features[:, 0], -7 + features[:, 1]], 1)
    targets += torch.randn(500, 2, generator=generator)
    table = Table(features, targets, ("a", "b", "c"), ("y0", "y1"))
    data = RegressionDataModule(table, batch_size=16, eval_batch_size=30)  # test batches of 30 and 20
    module = RegressionModule(FeedForward(3, 4, 2), partial(torch.optim.RMSprop, lr=0.01))
    trainer = pl.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
    (scores,) = trainer.test(module, datamodule=data, verbose=False)
    test_features, test_targets = data.splits["test"]
    with torch.no_grad():
        errors = (module(test_features) - test_targets).double()
    target = test_targets.double()
    per_column = 1 - errors.pow(2).sum(0) / (target - target.mean(0)).pow(2).sum(0)
    assert scores["test/r2"] == pytest.approx(per_column.mean().item(), rel=1e-5)
    assert scores["test/rmse"] == pytest.approx(errors.pow(2).mean().sqrt().item(), rel=1e-5)


def test_scores_of_large_errors_are_summed_without_overflow():
    # 410 squares near 1e38 sum past float32's 3.4e38; their mean does not
    data = RegressionDataModule(batch_size=16, eval_batch_size=1024)
    module = RegressionModule(FeedForward(), partial(torch.optim.RMSprop, lr=0.01))
    with torch.no_grad():
        module.model[-1].bias.fill_(1e19)
    trainer = pl.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
    (scores,) = trainer.validate(module, datamodule=data, verbose=False)
    assert set(scores) == {"val/loss", "val/rmse"}  # what a fit logs beside them for its loggers aside
    assert scores["val/loss"] == pytest.approx(1e38, rel=1e-3)
    assert scores["val/rmse"] == pytest.approx(1e19, rel=1e-3)


@pytest.mark.parametrize("rows", [1, 5])
def test_r2_is_nan_where_the_test_targets_do_not_vary(rows):
    """R² divides by the targets' spread: none in a test split of one row, or of a constant column."""
    features = torch.randn(50, 3, generator=torch.Generator().manual_seed(0))
    targets = torch.stack([features[:, 0], torch.full((50,), 3.0)], 1)
    table = Table(features, targets, ("a", "b", "c"), ("varies", "constant"))
    data = RegressionDataModule(table, batch_size=16, test_fraction=rows / 50)
    module = RegressionModule(FeedForward(3, 4, 2), partial(torch.optim.RMSprop, lr=0.01))
    trainer = pl.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
    (scores,) = trainer.test(module, datamodule=data, verbose=False)
    assert len(data.splits["test"][0]) == rows
    assert math.isnan(scores["test/r2"]) and math.isfinite(scores["test/rmse"])


@pytest.mark.parametrize("value", [3.4670212268829346, 1.616843342781067])
def test_r2_is_nan_where_constant_targets_leave_a_rounding_spread(value):
    """Seven equal float32 targets whose sum of squares about their mean rounds to 1e-14, not 0."""
    targets = torch.full((7, 1), value, dtype=torch.float32).double()
    sums, squares, rows = targets.sum(0), targets.square().sum(0), torch.tensor(7.0, dtype=torch.float64)
    assert (squares - sums * sums / rows).item() > 0
    sse = torch.tensor([0.5], dtype=torch.float64)
    scores = regression_scores("test", torch.tensor(1.0), sse, rows, sums, squares, torch.float32)
    assert math.isnan(scores["test/r2"])
