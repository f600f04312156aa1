"""Per-step cost of logging the loss at every step: the template's way against Lightning's.

    python benchmarks/train_loop.py [--steps 2000] [--repeats 5] [--threads N]

Every variant trains ``Linear(10,5) → ReLU → Linear(5,1)`` with MSE and ``torch.optim.RMSprop``
on batches of 32 sliced from in-memory tensors (the project's ``InMemoryBatchLoader``), so only
the logging differs: none, Lightning's ``self.log`` to its ``TensorBoardLogger`` at every step,
or the template's ``StepLossLogger`` to its ``TensorBoardRunLogger``. Prints the median wall and
CPU µs/step (the clock runs from the first training batch to the end of training) and the ratios
to no logging. ``--threads`` sets torch's thread count (default: torch's own choice).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn

from rmsprop_lightning import FeedForward
from rmsprop_lightning.data import InMemoryBatchLoader, synthetic
from rmsprop_lightning.logging.tensorboard import TensorBoardRunLogger
from rmsprop_lightning.module import StepLossLogger

BATCH_SIZE = 32


class BareModule(pl.LightningModule):
    """The smallest LightningModule for the training: no logging at all."""

    def __init__(self) -> None:
        super().__init__()
        self.model = FeedForward()
        self.criterion = nn.MSELoss()

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        features, targets = batch
        return self.criterion(self.model(features), targets)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.RMSprop(self.parameters(), lr=0.01)


class SelfLogModule(BareModule):
    """Logs the loss with Lightning's ``self.log`` on every step."""

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = super().training_step(batch, batch_idx)
        self.log("train/loss", loss)
        return loss


class StepClock(Callback):
    """Times the training batches only, from the first batch's start to the end of training.

    Wall time and the process's CPU time (all threads, TensorBoard's writer thread included).
    """

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: object) -> None:
        if trainer.global_step == 0:
            self.start = time.perf_counter(), time.process_time()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        wall, cpu = self.start
        steps = trainer.global_step
        self.per_step = (time.perf_counter() - wall) / steps, (time.process_time() - cpu) / steps


def fit(
    steps: int, module: pl.LightningModule, logger: type[TensorBoardLogger] | None, *callbacks: Callback
) -> tuple[float, float]:
    """Fits ``module`` on the CPU for ``steps`` steps without validation; wall and CPU seconds per step."""
    clock = StepClock()
    table = synthetic(num_samples=4096)
    with tempfile.TemporaryDirectory() as log_dir:
        trainer = pl.Trainer(
            max_steps=steps,
            accelerator="cpu",
            logger=logger(log_dir, name="", version="") if logger else False,
            callbacks=[*callbacks, clock],  # the clock last, so it includes the loss logger's last flush
            log_every_n_steps=1,
            limit_val_batches=0,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        trainer.fit(module, InMemoryBatchLoader(table.features, table.targets, BATCH_SIZE, seed=0))
    return clock.per_step


BARE = "Lightning, no logging"
VARIANTS: dict[str, Callable[[int], tuple[float, float]]] = {
    BARE: lambda steps: fit(steps, BareModule(), None),
    "Lightning, self.log + TensorBoardLogger every step": lambda steps: fit(
        steps, SelfLogModule(), TensorBoardLogger
    ),
    "StepLossLogger + TensorBoardRunLogger every step": lambda steps: fit(
        steps, BareModule(), TensorBoardRunLogger, StepLossLogger()
    ),
}


def main() -> None:
    """Warms every variant up, runs them interleaved and prints the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    names = list(VARIANTS)
    for variant in VARIANTS.values():
        variant(50)
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
    for repeat in range(args.repeats):
        shift = repeat % len(names)  # each variant takes each place in the order in turn
        for name in names[shift:] + names[:shift]:
            samples[name].append(VARIANTS[name](args.steps))
    wall = {name: statistics.median(w for w, _ in runs) * 1e6 for name, runs in samples.items()}
    cpu = {name: statistics.median(c for _, c in runs) * 1e6 for name, runs in samples.items()}
    print(
        f"{args.steps} steps, batch {BATCH_SIZE}, median of {args.repeats} interleaved,"
        f" torch threads {torch.get_num_threads()}"
    )
    print(f"{'variant':<52} {'µs/step':>8} {'vs bare':>8} {'CPU µs':>8} {'vs bare':>8}")
    for name in names:
        print(
            f"{name:<52} {wall[name]:8.0f} {wall[name] / wall[BARE]:7.2f}×"
            f" {cpu[name]:8.0f} {cpu[name] / cpu[BARE]:7.2f}×"
        )


if __name__ == "__main__":
    main()
