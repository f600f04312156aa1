"""Step time with and without the OptimizerStateMonitor, on the canonical net and on a 1e6-parameter net.

    python benchmarks/monitor_overhead.py [--rounds 10] [--repeats 3] [--threads N] [--canonical-only]

Each fit trains the template's module (``torch.optim.RMSprop``, lr 0.01, biases in their own
no-decay group) on batches of 32 sliced from in-memory tensors, logging ``train/loss`` every
step to the template's TensorBoard logger. Within the fit, the monitor is switched between three
modes every block of steps — removed from the trainer (off), every step, every 50 steps — in
rotating order, so drifts in machine load hit all modes alike (switching it off and on goes
through its ``on_train_end`` and ``on_train_start``, which remove and register its step hooks).
Each block is timed from its 50th step, once the monitor has rebuilt its buffers, and ends
with a flush of the monitor's buffer, so its transfers and writes count where they were made.
The table gives the median µs/step over blocks, the median over rounds of each block's ratio to
the off block of the same round, and the median time per step spent inside the monitor's hooks
(its own work, measured within the block: steadier than the ratio, which also carries
Lightning's dispatch of one more callback and the machine's noise) with its share of the step.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from train_loop import cpu_fit

from rmsprop_lightning import FeedForward, RegressionModule
from rmsprop_lightning.callbacks import OptimizerStateMonitor
from rmsprop_lightning.tensorboard import TensorBoardRunLogger

# name: (hidden widths, steps per block); a canonical block holds the monitor's default flush cadence
NETS = {
    "canonical Linear(10,5)-ReLU-Linear(5,1)": (5, 1050),
    "1e6 parameters: hidden [1000, 1000]": ([1000, 1000], 100),
}
MODES = {"off": None, "every step": 1, "every 50 steps": 50}
WARMUP = 50  # steps at the start of each block left out of its time: one logged step in every mode


def timed(hook: str) -> Callable[..., None]:
    """The monitor's method ``hook``, adding its wall time (two clock reads around it) to ``seconds``."""

    def call(self: TimedMonitor, *args: Any) -> None:
        start = time.perf_counter()
        getattr(super(TimedMonitor, self), hook)(*args)
        self.seconds += time.perf_counter() - start

    return call


class TimedMonitor(OptimizerStateMonitor):
    """The monitor, adding up the wall time spent inside its hooks: its own cost, without Lightning's.

    A flush inside the post-step hook counts as part of that hook; :meth:`timed_flush` is a
    flush from outside the hooks (at the end of a block), timed as they are.
    """

    def __init__(self) -> None:
        super().__init__()
        self.seconds = 0.0

    _before_step = timed("_before_step")
    _after_step = timed("_after_step")
    timed_flush = timed("flush")


class AlternatingModule(RegressionModule):
    """The template's module; every ``block`` steps it switches the monitor's mode and times the block."""

    def __init__(self, hidden: int | list[int], monitor: TimedMonitor, block: int) -> None:
        super().__init__(
            FeedForward(hidden=hidden), partial(torch.optim.RMSprop, lr=0.01), no_weight_decay_on_bias=True
        )
        self.monitor, self.block = monitor, block
        self.blocks: list[tuple[int, str, float, float]] = []  # (round, mode, wall s/step, monitor s/step)
        self._mode: str | None = None
        self._round = 0
        self._start = (0.0, 0.0)

    def on_train_batch_start(self, batch, batch_idx):
        step, trainer, monitor = self.trainer.global_step, self.trainer, self.monitor
        if step % self.block == WARMUP:  # the block's first steps (re)build the monitor's buffers
            self._start = (time.perf_counter(), monitor.seconds)
        if step % self.block:
            return
        if monitor in trainer.callbacks:
            monitor.timed_flush(trainer)
        wall, inside = time.perf_counter(), monitor.seconds
        if self._mode is not None and step > self.block:  # the first block warms up
            timed = self.block - WARMUP
            seconds = ((wall - self._start[0]) / timed, (inside - self._start[1]) / timed)
            self.blocks.append((self._round, self._mode, *seconds))
        self._round, position = divmod(step // self.block, len(MODES))
        self._mode = list(MODES)[(position + self._round) % len(MODES)]
        every = MODES[self._mode]
        if every is None:
            if monitor in trainer.callbacks:
                monitor.on_train_end(trainer, self)  # flushes and removes its step hooks
                trainer.callbacks.remove(monitor)
        else:
            if monitor not in trainer.callbacks:
                trainer.callbacks.append(monitor)
                monitor.on_train_start(trainer, self)  # registers its step hooks
            monitor.every_n_steps = every


def measure(hidden: int | list[int], block: int, rounds: int) -> list[tuple[int, str, float, float]]:
    """One fit of ``rounds`` rounds of the three modes after a warm-up block; the timed blocks."""
    torch.manual_seed(0)
    monitor = TimedMonitor()
    module = AlternatingModule(hidden, monitor, block)
    with tempfile.TemporaryDirectory() as log_dir:
        logger = TensorBoardRunLogger(log_dir, name="", version="")
        cpu_fit(module, block * (1 + rounds * len(MODES)) + 1, logger, [monitor], enable_checkpointing=False)
    return module.blocks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10, help="rounds of the three modes per fit")
    parser.add_argument("--repeats", type=int, default=3, help="fits per net")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--canonical-only", action="store_true", help="leave out the 1e6-parameter net")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    threads = torch.get_num_threads()
    print(f"batch 32, {args.repeats} fits × {args.rounds} rounds of the modes, torch threads {threads}")
    columns = f"{'blocks':>6} {'µs/step':>8} {'ratio':>7} {'in monitor':>10} {'share':>6}"
    print(f"{'net':<40} {'monitor':<15} {columns}")
    nets = list(NETS.items())[:1] if args.canonical_only else NETS.items()
    for net, (hidden, block) in nets:
        blocks = [(fit, *b) for fit in range(args.repeats) for b in measure(hidden, block, args.rounds)]
        rounds: dict[tuple[int, int], dict[str, tuple[float, float]]] = {}
        for fit, round_, mode, wall, inside in blocks:
            rounds.setdefault((fit, round_), {})[mode] = (wall, inside)
        for mode in MODES:
            cells = [r[mode] for r in rounds.values() if mode in r]
            ratios = [r[mode][0] / r["off"][0] for r in rounds.values() if mode in r and "off" in r]
            wall = statistics.median(c[0] for c in cells)
            inside = statistics.median(c[1] for c in cells)
            print(
                f"{net:<40} {mode:<15} {len(cells):>6} {wall * 1e6:8.0f} {statistics.median(ratios):6.3f}×"
                f" {inside * 1e6:10.1f} {100 * inside / wall:5.1f}%"
            )


if __name__ == "__main__":
    main()
