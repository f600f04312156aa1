"""Training-step time with the OptimizerStateMonitor off, at its default interval and at every step.

    python benchmarks/monitor_overhead.py [--rounds 30] [--threads N] [--canonical-only]

Per net, one fit of the template's ``RegressionModule`` (``torch.optim.RMSprop``, lr 0.01,
biases in their own no-decay group) on ``RegressionDataModule``'s synthetic data, batch 32,
logging ``train/loss`` to the template's TensorBoard logger, runs in blocks of steps. Each
round runs the modes once each, starting one mode later than the round before, so drifts of a
shared machine's speed meet them alike: no monitor; an empty ``Callback`` (what Lightning's hook
calls cost any callback); a monitor whose interval is never reached (its per-step hooks alone); a
monitor at the trainer's ``log_every_n_steps`` (50, the default); a
monitor at every step; and one at every step whose values are dropped instead of written (the
cost of measuring alone). A callback takes part in its own blocks only: a monitor's
``on_train_start`` puts its step hooks on and its ``on_train_end`` flushes what it buffered and
takes them off, inside the block's time; every block then waits for TensorBoard's writer thread to
write what it was handed, so that no block pays for the one before. The table gives, per mode and
clock, the median µs/step over its blocks and the median over rounds of its ratio to the same
round's block without a monitor, with the quartiles of those ratios. Wall time is what the user
waits; the process's CPU time (all its threads) is less disturbed by other work on a shared
machine. The first round is a warm-up.
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

from rmsprop_lightning import FeedForward, RegressionDataModule, RegressionModule
from rmsprop_lightning.callbacks import OptimizerStateMonitor
from rmsprop_lightning.data import synthetic
from rmsprop_lightning.logging.tensorboard import TensorBoardRunLogger

# name: (hidden widths, steps per block: a multiple of the default interval, 50)
NETS = {
    "canonical 10-5-1": (5, 100),
    "1e6 params, hidden [1000, 1000]": ([1000, 1000], 50),
}
MODES = (
    "off",
    "empty Callback",
    "never due",
    "default interval (50)",
    "every step",
    "every step, unwritten",
)


class UnwrittenMonitor(OptimizerStateMonitor):
    """Measures as the monitor does but drops the values at its flushes: its cost without the loggers'."""

    def flush(self, trainer: pl.Trainer) -> None:
        self.buffer.clear()


class RotatingModule(RegressionModule):
    """The template's module; at each block's first step it times the block that ended and starts the next."""

    def __init__(self, hidden: int | list[int], block: int, callbacks: dict[str, pl.Callback]) -> None:
        super().__init__(
            FeedForward(hidden=hidden), partial(torch.optim.RMSprop, lr=0.01), no_weight_decay_on_bias=True
        )
        self.block, self.callbacks = block, callbacks
        self.seconds: list[tuple[int, str, float, float]] = []  # (round, mode, wall and CPU s/step)
        self._round, self._mode, self._start = 0, "", (0.0, 0.0)

    def on_train_batch_start(self, batch: object, batch_idx: int) -> None:
        trainer, step = self.trainer, self.trainer.global_step
        if step % self.block:
            return
        callback = self.callbacks.get(self._mode)
        if callback is not None:  # a monitor's flush counts in its block
            callback.on_train_end(trainer, self)
            trainer.callbacks.remove(callback)
        self.logger.experiment.flush()  # returns once the writer thread has written what it holds
        if self._mode and self._round:  # round 0 warms up
            wall, cpu = (now - start for now, start in zip(clocks(), self._start, strict=True))
            self.seconds.append((self._round, self._mode, wall / self.block, cpu / self.block))
        self._round, position = divmod(step // self.block, len(MODES))
        self._mode = MODES[(position + self._round) % len(MODES)]
        callback = self.callbacks.get(self._mode)
        if callback is not None:
            trainer.callbacks.append(callback)
            callback.on_train_start(trainer, self)
        self._start = clocks()


def clocks() -> tuple[float, float]:
    """Wall time, and the CPU time of this process (all its threads)."""
    return time.perf_counter(), time.process_time()


def measure(hidden: int | list[int], block: int, rounds: int) -> list[tuple[int, str, float, float]]:
    """One fit of a warm-up round and ``rounds`` rounds; ``(round, mode, wall, CPU s/step)`` per block."""
    torch.manual_seed(0)
    callbacks = {
        MODES[1]: pl.Callback(),
        MODES[2]: OptimizerStateMonitor(every_n_steps=10**9),
        MODES[3]: OptimizerStateMonitor(),
        MODES[4]: OptimizerStateMonitor(every_n_steps=1),
        MODES[5]: UnwrittenMonitor(every_n_steps=1),
    }
    module = RotatingModule(hidden, block, callbacks)
    data = RegressionDataModule(partial(synthetic, num_samples=40_000), batch_size=32)
    with tempfile.TemporaryDirectory() as log_dir:
        pl.Trainer(
            max_steps=block * len(MODES) * (rounds + 1) + 1,
            accelerator="cpu",
            logger=TensorBoardRunLogger(log_dir, name="", version=""),
            limit_val_batches=0,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        ).fit(module, datamodule=data)
    return module.seconds


def summary(pairs: list[tuple[float, float]]) -> str:
    """Median µs/step of a mode's blocks, then the median and quartiles of their ratios to the same
    round's block without a monitor, from ``(seconds per step, seconds per step off)`` pairs."""
    ratios = [seconds / off for seconds, off in pairs]
    low, _, high = statistics.quantiles(ratios, n=4)
    median = statistics.median(seconds for seconds, _ in pairs)
    return f"{median * 1e6:8.0f} {statistics.median(ratios):6.3f}× {low:5.3f}–{high:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30, help="rounds of the modes per net (at least 2)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--canonical-only", action="store_true", help="leave out the 1e6-parameter net")
    args = parser.parse_args()
    if args.rounds < 2:
        parser.error("--rounds must be at least 2: the quartiles of the ratios need two")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch 32, {args.rounds} rounds")
    clock = f"{'µs/step':>8} {'ratio':>7} {'quartiles':>11}"
    print(f"{'net':<32} {'monitor':<21} {'block':>5}  wall: {clock}  CPU: {clock}")
    nets = list(NETS.items())[:1] if args.canonical_only else NETS.items()
    for net, (hidden, block) in nets:
        seconds = measure(hidden, block, args.rounds)
        off = {round_: clocks for round_, mode, *clocks in seconds if mode == "off"}
        for mode in MODES:
            wall, cpu = [
                summary([(clocks[k], off[r][k]) for r, m, *clocks in seconds if m == mode]) for k in (0, 1)
            ]
            print(f"{net:<32} {mode:<21} {block:>5}  wall: {wall}  CPU: {cpu}")


if __name__ == "__main__":
    main()
