"""Step time with the template's callbacks, as LeanCallbacks and with every per-batch hook dispatched.

    python benchmarks/callback_dispatch.py [--rounds 8] [--repeats 3]

One fit of the canonical net with the callbacks of ``callbacks/default`` and the run's
safeguards (checkpoints too rare to be written, the progress bar off). Every block of steps
switches the project's callbacks between two modes, in turn within the fit: ``lean`` (the
per-batch hooks they do not implement are ``None``, so Lightning skips them) and ``dispatched``
(those hooks are Lightning's empty ``Callback`` methods again, as for any callback). Prints
the median µs/step over blocks and the median over rounds of lean / dispatched.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
import warnings
from functools import partial

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, LearningRateMonitor
from train_loop import cpu_fit, rotating_mode

from rmsprop_lightning import FeedForward, RegressionModule
from rmsprop_lightning.callbacks import (
    DivergenceGuard,
    GracefulInterrupt,
    LastCheckpoint,
    OptimizerStateMonitor,
)
from rmsprop_lightning.callbacks.fit_stats import FitStats
from rmsprop_lightning.callbacks.random_state import RandomState
from rmsprop_lightning.lean_callback import PER_BATCH_HOOKS, LeanCallback
from rmsprop_lightning.tensorboard import TensorBoardRunLogger

BLOCK, WARMUP = 300, 30  # steps per block; steps at its start left out of its time
MODES = ("lean", "dispatched")


def left_out_hooks() -> list[tuple[type, str]]:
    """(class, hook) of every per-batch hook a LeanCallback class of the project sets to None."""
    classes = [LeanCallback]
    for cls in classes:
        classes += [sub for sub in cls.__subclasses__() if sub.__module__.startswith("rmsprop_lightning")]
    return [(cls, hook) for cls in classes for hook in PER_BATCH_HOOKS if cls.__dict__.get(hook, 0) is None]


class AlternatingModule(RegressionModule):
    """The template's module; every ``BLOCK`` steps it switches the dispatch mode and times the block."""

    def __init__(self, hooks: list[tuple[type, str]]) -> None:
        super().__init__(FeedForward(), partial(torch.optim.RMSprop, lr=0.01), no_weight_decay_on_bias=True)
        self.hooks = hooks
        self.blocks: list[tuple[int, str, float]] = []  # (round, mode, s/step)
        self._mode = MODES[0]
        self._start = 0.0

    def on_train_batch_start(self, batch, batch_idx):
        step = self.trainer.global_step
        if step % BLOCK == WARMUP:
            self._start = time.perf_counter()
        if step % BLOCK:
            return
        block = step // BLOCK  # the block starting; block 0 warms up, then rounds of two blocks
        if block > 1:
            seconds = (time.perf_counter() - self._start) / (BLOCK - WARMUP)
            self.blocks.append(((block - 2) // 2, self._mode, seconds))
        _, self._mode = rotating_mode(max(block - 1, 0), MODES)
        for cls, hook in self.hooks:
            setattr(cls, hook, None if self._mode == "lean" else getattr(Callback, hook))

    def on_train_end(self) -> None:
        for cls, hook in self.hooks:
            setattr(cls, hook, None)


def measure(rounds: int) -> list[tuple[int, str, float]]:
    torch.manual_seed(0)
    module = AlternatingModule(left_out_hooks())
    with tempfile.TemporaryDirectory() as log_dir:
        callbacks = [
            LastCheckpoint(f"{log_dir}/checkpoints", every_n_train_steps=10**9),
            pl.callbacks.ModelCheckpoint(dirpath=f"{log_dir}/checkpoints", save_top_k=0),
            LearningRateMonitor(logging_interval="step"),
            OptimizerStateMonitor(),
            FitStats(),
            RandomState(),
            DivergenceGuard(),
            GracefulInterrupt(),
        ]
        logger = TensorBoardRunLogger(log_dir, name="", version="")
        cpu_fit(module, BLOCK * (1 + 2 * rounds) + 1, logger, callbacks)
    return module.blocks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8, help="rounds of the two modes per fit")
    parser.add_argument("--repeats", type=int, default=3, help="fits")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    hooks = left_out_hooks()
    threads = torch.get_num_threads()
    print(f"{len(hooks)} per-batch hooks left out of Lightning's dispatch, torch threads {threads}")
    rounds: dict[tuple[int, int], dict[str, float]] = {}
    for fit in range(args.repeats):
        for round_, mode, seconds in measure(args.rounds):
            rounds.setdefault((fit, round_), {})[mode] = seconds
    complete = [r for r in rounds.values() if len(r) == 2]
    for mode in reversed(MODES):
        print(f"{mode:<11} {statistics.median(r[mode] for r in complete) * 1e6:8.0f} µs/step")
    ratio = statistics.median(r["lean"] / r["dispatched"] for r in complete)
    print(f"lean / dispatched: {ratio:.3f} (median of {len(complete)} rounds)")


if __name__ == "__main__":
    main()
