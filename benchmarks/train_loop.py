"""Per-step cost of training the canonical net: hand-written loop vs Lightning vs this template.

    python benchmarks/train_loop.py [--steps 2000] [--repeats 5]

Every variant trains ``Linear(10,5) → ReLU → Linear(5,1)`` with MSE and ``torch.optim.RMSprop``
on batches of 32 sliced from in-memory tensors (the project's ``InMemoryBatchLoader``), so only
the training machinery differs; TensorBoard is Lightning's logger for ``self.log`` and the
template's (``TensorBoardRunLogger``) for its module. Prints the median µs/step over repeats
(set-up excluded: the clock runs from the first to the last training batch) and ratios, side
by side from one run.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from functools import partial

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import Logger, TensorBoardLogger
from torch import nn

from rmsprop_lightning import FeedForward, RegressionModule
from rmsprop_lightning.data import InMemoryBatchLoader, synthetic
from rmsprop_lightning.logging.tensorboard import TensorBoardRunLogger

BATCH_SIZE = 32


def make_loader() -> InMemoryBatchLoader:
    table = synthetic(num_samples=4096)
    return InMemoryBatchLoader(table.features, table.targets, BATCH_SIZE, seed=0)


def hand_written(steps: int) -> float:
    """A plain PyTorch loop over the same batches; returns seconds per step."""
    model = FeedForward()
    optimizer = torch.optim.RMSprop(model.parameters(), lr=0.01)
    criterion = nn.MSELoss()
    loader = make_loader()
    done = 0
    start = time.perf_counter()
    while done < steps:
        for features, targets in loader:
            optimizer.zero_grad()
            loss = criterion(model(features), targets)
            loss.backward()
            optimizer.step()
            done += 1
            if done == steps:
                break
    return (time.perf_counter() - start) / steps


class BareModule(pl.LightningModule):
    """The smallest LightningModule for the same training: no logging at all."""

    def __init__(self) -> None:
        super().__init__()
        self.model = FeedForward()
        self.criterion = nn.MSELoss()

    def training_step(self, batch, batch_idx):
        features, targets = batch
        return self.criterion(self.model(features), targets)

    def configure_optimizers(self):
        return torch.optim.RMSprop(self.parameters(), lr=0.01)


class SelfLogModule(BareModule):
    """Logs the loss with Lightning's ``self.log`` on every step."""

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        self.log("train/loss", loss)
        return loss


class StepClock(pl.Callback):
    """Times the training batches only: from the first batch's start to the last batch's end."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == 0 and batch_idx == 0:
            self.start = time.perf_counter()

    def on_train_end(self, trainer, pl_module):
        self.seconds_per_step = (time.perf_counter() - self.start) / trainer.global_step


def cpu_fit(
    module: pl.LightningModule, steps: int, logger: Logger | bool, callbacks: list[Callback], **options
) -> None:
    """Fits ``module`` for ``steps`` steps on the CPU, on the in-memory batches, without validation."""
    trainer = pl.Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=logger,
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        **options,
    )
    trainer.fit(module, train_dataloaders=make_loader())


def rotating_mode(block: int, modes: Sequence[str]) -> tuple[int, str]:
    """The round of the ``block``-th block of a rotation and its mode.

    Each round runs every mode once, starting one mode later than the round before, so a
    drift of the machine's speed within a round hits no mode more than the others.
    """
    round_, position = divmod(block, len(modes))
    return round_, modes[(position + round_) % len(modes)]


def lightning_fit(
    module: pl.LightningModule, steps: int, tensorboard: type[TensorBoardLogger] | None
) -> float:
    """Fits ``module`` for ``steps`` steps, logging to a ``tensorboard`` logger if given; seconds per step."""
    clock = StepClock()
    with tempfile.TemporaryDirectory() as log_dir:
        logger = tensorboard(log_dir, name="", version="") if tensorboard else False
        cpu_fit(module, steps, logger, [clock], log_every_n_steps=1, enable_checkpointing=False)
    return clock.seconds_per_step


def ours() -> RegressionModule:
    return RegressionModule(FeedForward(), partial(torch.optim.RMSprop, lr=0.01))


VARIANTS: dict[str, Callable[[int], float]] = {
    "hand-written loop": hand_written,
    "Lightning, no logging": lambda steps: lightning_fit(BareModule(), steps, tensorboard=None),
    "Lightning, self.log every step": lambda steps: lightning_fit(SelfLogModule(), steps, tensorboard=None),
    "Lightning, self.log + TensorBoard every step": lambda steps: lightning_fit(
        SelfLogModule(), steps, tensorboard=TensorBoardLogger
    ),
    "rmsprop-lightning module + TensorBoard, every step": lambda steps: lightning_fit(
        ours(), steps, tensorboard=TensorBoardRunLogger
    ),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    samples: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for _ in range(args.repeats):  # interleaved, so drifts in machine load hit every variant alike
        for name, variant in VARIANTS.items():
            samples[name].append(variant(args.steps) * 1e6)
    medians = {name: statistics.median(values) for name, values in samples.items()}
    loop, bare = medians["hand-written loop"], medians["Lightning, no logging"]
    print(
        f"{args.steps} steps, batch {BATCH_SIZE}, median of {args.repeats},"
        f" torch threads {torch.get_num_threads()}"
    )
    print(f"{'variant':<52} {'µs/step':>9} {'vs bare':>8} {'loop speed':>11}")
    for name, median in medians.items():
        print(f"{name:<52} {median:9.0f} {median / bare:7.2f}× {loop / median:10.0%}")


if __name__ == "__main__":
    main()
