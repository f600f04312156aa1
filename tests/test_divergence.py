"""A non-finite loss or parameter is caught at its step: the run stops (or skips that update)."""

from __future__ import annotations

import json
import logging
import math
import re
from functools import partial

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import Logger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import api_pb2, metadata

from rmsprop_lightning.callbacks.divergence import DivergenceGuard, likely_cause
from rmsprop_lightning.errors import DivergedError
from rmsprop_lightning.logging.events import read_scalars
from rmsprop_lightning.model import FeedForward
from rmsprop_lightning.module import RegressionModule
from rmsprop_lightning.summary import outcome, read_summary
from tests.conftest import QUICK, run_dirs, session_status, train_in_process


class MemoryLogger(Logger):
    """Keeps every ``log_metrics`` call."""

    def __init__(self) -> None:
        super().__init__()
        self.logged: list[tuple[int, dict[str, float]]] = []

    name = "memory"
    version = 0

    def log_metrics(self, metrics, step=None) -> None:
        self.logged.append((step, dict(metrics)))

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass


class ParameterRecorder(pl.Callback):
    """The flattened parameters after every step."""

    def __init__(self) -> None:
        self.after: list[torch.Tensor] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.after.append(torch.cat([p.detach().reshape(-1) for p in pl_module.parameters()]).clone())


class Batches:
    """A plain iterable of ready batches (Lightning would wrap a list in a DataLoader)."""

    def __init__(self, data: list) -> None:
        self.data = data

    def __iter__(self):
        return iter(self.data)

    def __len__(self) -> int:
        return len(self.data)


def batches(count: int = 6, poisoned: int | None = None, zero_feature: bool = False) -> Batches:
    """``count`` batches of 8 rows; the ``poisoned`` one has an infinite target."""
    generator = torch.Generator().manual_seed(0)
    data = []
    for index in range(count):
        features = torch.randn(8, 4, generator=generator)
        if zero_feature:
            features[:, 0] = 0.0
        targets = torch.randn(8, 1, generator=generator)
        if index == poisoned:
            targets[3, 0] = math.inf
        data.append((features, targets))
    return Batches(data)


class LossRecorder(RegressionModule):
    """The template's module, keeping each batch's loss as its training step returns it."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.losses: list[float] = []

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        self.losses.append(loss.item())
        return loss


def fit(
    guard: DivergenceGuard, data: list, accumulate: int = 1, **optimizer_options
) -> tuple[LossRecorder, ParameterRecorder, MemoryLogger]:
    torch.manual_seed(0)
    options = {"lr": 0.01, **optimizer_options}
    module = LossRecorder(FeedForward(4, 3, 1), partial(torch.optim.RMSprop, **options))
    recorder, logger = ParameterRecorder(), MemoryLogger()
    trainer = pl.Trainer(
        max_epochs=1,
        accumulate_grad_batches=accumulate,
        logger=logger,
        callbacks=[guard, recorder],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(module, train_dataloaders=data)
    return module, recorder, logger


def test_skip_leaves_the_parameters_of_that_step_unchanged_and_counts_it():
    guard = DivergenceGuard("skip")
    module, recorder, logger = fit(guard, batches(poisoned=2))
    assert guard.skipped == 1
    steps = [recorder.after[i] for i in range(6)]
    assert torch.equal(steps[1], steps[2])
    assert all(not torch.equal(steps[i], steps[i + 1]) for i in (0, 2, 3, 4))
    optimizer = module.trainer.optimizers[0]
    assert {int(state["step"]) for state in optimizer.state.values()} == {5}
    assert (2, {"train/skipped_steps": 1.0}) in logger.logged


def test_many_skipped_updates_take_a_few_lines_and_the_summary_counts_them(caplog, tmp_path):
    data = batches(count=12)
    for _, targets in data.data:
        targets[0, 0] = math.inf
    guard = DivergenceGuard("skip", summary_dir=tmp_path)
    with caplog.at_level(logging.WARNING, logger="rmsprop_lightning.callbacks.divergence"):
        fit(guard, data)
    lines = [record.getMessage() for record in caplog.records if "update skipped" in record.getMessage()]
    assert guard.skipped == 12 and len(lines) == 4  # at the 1st, 2nd, 4th and 8th skip
    assert read_summary(tmp_path)["skipped_steps"] == 12
    assert lines[-1].startswith("step 7: ") and lines[-1].endswith("(8 so far; the next line comes at 16)")


class TwoOptimizers(pl.LightningModule):
    """Manual optimization: ``first`` steps on a loss that is NaN at batch ``poisoned``, then ``second`` on
    its own loss (NaN there too if ``both``); records which of them changed their parameters at each batch."""

    def __init__(self, poisoned: int, both: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.first, self.second = torch.nn.Linear(4, 3), torch.nn.Linear(3, 1)
        self.automatic_optimization = False
        self.poisoned, self.both = poisoned, both
        self.updated: list[tuple[bool, bool]] = []

    def training_step(self, batch, batch_idx):
        features, targets = batch
        before = [[p.detach().clone() for p in layer.parameters()] for layer in (self.first, self.second)]
        for optimizer, layer in zip(self.optimizers(), (self.first, self.second), strict=True):
            hidden = self.first(features) if layer is self.first else self.first(features).detach()
            loss = torch.nn.functional.mse_loss(self.second(hidden), targets)
            if (layer is self.first or self.both) and batch_idx == self.poisoned:
                loss = loss * math.nan
            optimizer.zero_grad()
            self.manual_backward(loss)
            optimizer.step()
        self.updated.append(
            tuple(
                not all(map(torch.equal, old, layer.parameters()))
                for old, layer in zip(before, (self.first, self.second), strict=True)
            )
        )

    def configure_optimizers(self):
        return [torch.optim.SGD(layer.parameters(), lr=0.01) for layer in (self.first, self.second)]


def fit_two(guard: DivergenceGuard, module: TwoOptimizers, logger: Logger | bool = False) -> None:
    trainer = pl.Trainer(
        max_epochs=1,
        logger=logger,
        callbacks=[guard],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, train_dataloaders=batches(count=4))


def test_skip_drops_only_the_update_of_the_optimizer_whose_loss_is_not_finite():
    guard, module = DivergenceGuard("skip"), TwoOptimizers(poisoned=2)
    fit_two(guard, module)
    assert module.updated == [(True, True), (True, True), (False, True), (True, True)]
    assert guard.skipped == 1


def test_manual_optimization_counts_the_loggers_steps():
    # global_step counts both optimizers' steps: 4 before the third batch
    guard, module, logger = DivergenceGuard("skip"), TwoOptimizers(poisoned=2, both=True), MemoryLogger()
    fit_two(guard, module, logger)
    assert module.updated == [(True, True), (True, True), (False, False), (True, True)]
    assert guard.skipped == 1
    assert [entry for entry in logger.logged if "train/skipped_steps" in entry[1]] == [
        (2, {"train/skipped_steps": 1.0})
    ]
    with pytest.raises(DivergedError, match="diverged at step 2: non-finite loss"):
        fit_two(DivergenceGuard("stop"), TwoOptimizers(poisoned=2, both=True))


def test_stop_raises_at_the_first_nonfinite_loss(tmp_path):
    guard = DivergenceGuard("stop", summary_dir=tmp_path)
    with pytest.raises(DivergedError, match=r"diverged at step 2: non-finite loss \(loss inf\)"):
        fit(guard, batches(poisoned=2))
    summary = json.loads((tmp_path / "metrics.json").read_text())
    assert summary["status"] == "diverged" and summary["diverged_at_step"] == 2


def test_skipped_updates_that_leave_a_nonfinite_loss_are_a_divergence_and_a_branch_counts_its_own(tmp_path):
    # lr 1e30: the first update blows the weights up, every later loss is inf and its update skipped
    quick = ("data.source.num_samples=512", "on_nonfinite=skip", "callbacks.progress_bar.refresh_rate=0")
    train_in_process(tmp_path, *quick, "optimizer.lr=1e30", "trainer.max_steps=20")
    (parent,) = run_dirs(tmp_path)
    summary = read_summary(parent)
    assert (summary["status"], outcome(summary), summary["skipped_steps"]) == ("completed", "diverged", 19)
    assert summary["best"] == {} and not list((parent / "checkpoints").glob("best-*"))
    assert session_status(parent / "tensorboard") == api_pb2.STATUS_FAILURE
    branch = tmp_path / "branch"
    train_in_process(
        tmp_path,
        *quick,
        f"ckpt_path={parent}/checkpoints/last.ckpt",
        "trainer.max_steps=30",
        f"hydra.run.dir={branch}",
    )
    assert (read_summary(branch)["start_step"], read_summary(branch)["skipped_steps"]) == (20, 10)


def test_a_skipped_accumulated_step_names_its_batches_losses(caplog):
    # Lightning divides the loss by accumulate_grad_batches before its backward
    with caplog.at_level(logging.WARNING, logger="rmsprop_lightning.callbacks.divergence"):
        module, _, _ = fit(DivergenceGuard("skip"), batches(poisoned=3), accumulate=2)
    (line,) = [record.getMessage() for record in caplog.records if "update skipped" in record.getMessage()]
    assert line.startswith(f"step 1: non-finite loss or gradient (loss {module.losses[2]:.6g}, inf)")


def test_stop_catches_nonfinite_parameters_with_a_finite_loss():
    # eps=0 and a feature that is always 0: that weight's update is 0/0
    with pytest.raises(DivergedError, match=r"step 0: non-finite parameters .*eps=0 is tiny"):
        fit(DivergenceGuard("stop"), batches(zero_feature=True), eps=0.0)


def test_skip_still_stops_on_nonfinite_parameters():
    with pytest.raises(DivergedError, match="non-finite parameters"):
        fit(DivergenceGuard("skip"), batches(zero_feature=True), eps=0.0)


@pytest.mark.parametrize(
    ("group", "loss_finite", "words"),
    [
        ({"lr": 0.01, "eps": 1e-8, "alpha": 0.99, "centered": True}, True, "centered=True"),
        ({"lr": 0.01, "eps": 1e-12, "alpha": 0.99}, False, "eps=1e-12 is tiny"),
        ({"lr": 1000.0, "eps": 1e-8, "alpha": 0.99}, False, "lr=1000 is too large"),
        ({"lr": 0.001, "eps": 1e-8, "alpha": 0.99}, False, "trainer.gradient_clip_val"),
        ({"lr": 1.0, "alpha": 0.75}, False, "lr=1 is too large"),  # ASGD: an alpha, no eps
        (
            {"lr": 0.01, "eps": 1e-8, "alpha": 0.99, "dtype": torch.float16},
            False,
            "eps=1e-08 rounds to 0 in torch.float16",
        ),
        ({"lr": 0.01, "eps": 1e-6, "alpha": 0.99, "dtype": torch.float16}, False, "eps=1e-06 is subnormal"),
    ],
)
def test_likely_cause_names_the_hyper_parameter(group, loss_finite, words):
    optimizer_class = torch.optim.RMSprop if "eps" in group else torch.optim.ASGD
    options = {key: value for key, value in group.items() if key != "dtype"}
    parameter = torch.zeros(1, dtype=group.get("dtype", torch.float32), requires_grad=True)
    optimizer = optimizer_class([parameter], **options)
    assert words in likely_cause(optimizer, loss_finite)


def test_forced_divergence_stops_at_the_first_nonfinite_step_keeping_the_last_good_checkpoint(
    tmp_path, capfd
):
    code = train_in_process(
        tmp_path, *QUICK, "optimizer.lr=1e10", "callbacks.last_checkpoint.every_n_train_steps=1", check=False
    )
    out, err = capfd.readouterr()
    assert code == 3, err[-2000:]
    assert "Traceback" not in out + err
    match = re.search(r"error: training diverged at step (\d+): non-finite (loss|parameters)", err)
    assert match, err[-2000:]
    step = int(match.group(1))
    assert "lr=1e+10 is too large" in err
    (run_dir,) = run_dirs(tmp_path)
    summary = json.loads((run_dir / "metrics.json").read_text())
    assert summary["status"] == "diverged" and summary["diverged_at_step"] == step
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    assert f"The last good state is kept in {checkpoint}" in err
    state = torch.load(checkpoint, weights_only=True)
    assert state["global_step"] == step
    assert all(torch.isfinite(tensor).all() for tensor in state["state_dict"].values())
    RegressionModule.load_from_checkpoint(checkpoint, weights_only=True)
    losses = read_scalars(run_dir / "tensorboard")["train/loss"]
    assert [s for s, _ in losses] == list(range(step))
    assert all(math.isfinite(value) for _, value in losses)
    # its settings have their HPARAMS row, with the best val/loss it reached, as a failed run
    accumulator = EventAccumulator(str(run_dir / "tensorboard"))
    accumulator.Reload()
    assert metadata.SESSION_START_INFO_TAG in accumulator.PluginTagToContent(metadata.PLUGIN_NAME)
    assert session_status(run_dir / "tensorboard") == api_pb2.STATUS_FAILURE
