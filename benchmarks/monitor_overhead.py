"""Step time with and without the OptimizerStateMonitor, on the canonical net and on a 1e6-parameter net.

    python benchmarks/monitor_overhead.py [--rounds 200] [--repeats 3] [--threads N] [--canonical-only]

Each fit trains the template's module (``torch.optim.RMSprop``, lr 0.01, biases in their own
no-decay group) on batches of 32 sliced from in-memory tensors, logging ``train/loss`` every
step to the template's TensorBoard logger. Three monitors, one logging every step, one logging
every step with ``torch.cat`` copies instead of its C++ copy (``native_copy=False``, as without a
C++ compiler), and one every 50 steps, take turns with no monitor at all in blocks of 50 steps, in
rotating order. A shared VM's speed drifts at every time scale, so the four modes meet it alike,
and short blocks give many rounds to take medians over. Outside its blocks a monitor has its
step hooks off and is out of the trainer's callbacks; it keeps its history, so it flushes at its
own cadence (every 1000 logged steps, or 30 s). Each block is timed from its second step: the
first logged step after a pause copies the parameters, which steady logging does not.

Hooks that reduced or flushed (one logged step in 1000 at every step) are taken out of their
block's time and spread over all steps of their mode, so the medians see the steady steps and
the flushes still count in full. Per mode the table gives µs/step (median over blocks, plus the
flush time per step), the ratio to the off block of the same round (median over rounds, plus
the flush time per step over the median off step) with the quartiles of the per-round ratios,
and the time spent inside the monitor's hooks per step (its own work, flushes included).
The first round, which builds the monitors' buffers, is left out.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
import warnings
from functools import partial
from typing import Any, NamedTuple

import lightning.pytorch as pl
import torch
from train_loop import cpu_fit, rotating_mode

from rmsprop_lightning import FeedForward, RegressionModule
from rmsprop_lightning.callbacks import OptimizerStateMonitor
from rmsprop_lightning.logging.tensorboard import TensorBoardRunLogger

# name: (hidden widths, share of --rounds)
NETS = {
    "canonical Linear(10,5)-ReLU-Linear(5,1)": (5, 1.0),
    "1e6 parameters: hidden [1000, 1000]": ([1000, 1000], 0.1),
}
# name: (every_n_steps, native_copy) of its monitor
MODES = {
    "off": None,
    "every step": (1, True),
    "every step, torch.cat": (1, False),
    "every 50 steps": (50, True),
}
BLOCK = 50  # steps per block, a multiple of every logging interval, so each block logs alike


class Block(NamedTuple):
    """One timed block: seconds per step of wall time, inside the monitor, and in its reducing hooks."""

    round: int
    mode: str
    wall: float
    inside: float
    heavy: float


class TimedMonitor(OptimizerStateMonitor):
    """The monitor, adding up the wall time inside its hooks, and apart that of hooks that reduced or flushed.

    :meth:`pause` and :meth:`resume` take its step hooks off the optimizers and put them back,
    out of and into the trainer's callbacks, keeping its history.
    """

    def __init__(self, every_n_steps: int, native_copy: bool) -> None:
        super().__init__(every_n_steps=every_n_steps, native_copy=native_copy)
        self.seconds = self.heavy_seconds = 0.0
        self._reductions = 0  # reductions and flushes so far

    def _before_step(self, *args: Any) -> None:
        start = time.perf_counter()
        super()._before_step(*args)
        self.seconds += time.perf_counter() - start

    def _after_step(self, *args: Any) -> None:
        start, reductions = time.perf_counter(), self._reductions
        super()._after_step(*args)
        seconds = time.perf_counter() - start
        self.seconds += seconds
        if self._reductions != reductions:
            self.heavy_seconds += seconds

    def _collect(self, probe: Any) -> None:
        self._reductions += 1
        super()._collect(probe)

    def flush(self, trainer: pl.Trainer) -> None:
        self._reductions += 1
        super().flush(trainer)

    def timed_flush(self, trainer: pl.Trainer) -> None:
        """A flush from outside the hooks, counted as a reducing hook."""
        start = time.perf_counter()
        self.flush(trainer)
        seconds = time.perf_counter() - start
        self.seconds += seconds
        self.heavy_seconds += seconds

    def pause(self, trainer: pl.Trainer) -> None:
        """Off for the next blocks: no step hooks, not a callback; the history stays."""
        for handle in self._hooks:
            handle.remove()
        self._hooks.clear()
        trainer.callbacks.remove(self)

    def resume(self, trainer: pl.Trainer) -> None:
        """On again, with the history it had."""
        trainer.callbacks.append(self)
        self._add_hooks()


class AlternatingModule(RegressionModule):
    """The template's module; every ``BLOCK`` steps it hands the step to the next mode and times the block."""

    def __init__(self, hidden: int | list[int], monitors: dict[str, TimedMonitor]) -> None:
        super().__init__(
            FeedForward(hidden=hidden), partial(torch.optim.RMSprop, lr=0.01), no_weight_decay_on_bias=True
        )
        self.monitors = monitors
        self.blocks: list[Block] = []
        self._mode: str | None = None
        self._round = 0
        self._start = (0.0, 0.0, 0.0)

    def _clock(self) -> tuple[float, float, float]:
        """Wall time, and the seconds spent inside the monitors and in their reducing hooks."""
        monitors = self.monitors.values()
        return (
            time.perf_counter(),
            sum(m.seconds for m in monitors),
            sum(m.heavy_seconds for m in monitors),
        )

    def on_train_batch_start(self, batch, batch_idx):
        step, trainer = self.trainer.global_step, self.trainer
        if step % BLOCK == 1:
            self._start = self._clock()
        if step % BLOCK:
            return
        if self._mode is not None and self._round > 0:  # the first round builds the monitors' buffers
            timed = BLOCK - 1
            now = self._clock()
            wall, inside, heavy = ((b - a) / timed for a, b in zip(self._start, now, strict=True))
            self.blocks.append(Block(self._round, self._mode, wall, inside, heavy))
        if self._mode is None:  # every monitor started with the fit: pause them all
            for monitor in self.monitors.values():
                monitor.pause(trainer)
        elif self._mode in self.monitors:
            self.monitors[self._mode].pause(trainer)
        if step == trainer.max_steps - 1:  # the last step: what is still buffered counts for its mode
            for monitor in self.monitors.values():
                monitor.timed_flush(trainer)
            self._mode = "off"
            return
        self._round, self._mode = rotating_mode(step // BLOCK, list(MODES))
        if self._mode in self.monitors:
            self.monitors[self._mode].resume(trainer)


class ModeResult(NamedTuple):
    """A mode's line of the table: seconds per step, the ratio to off with its quartiles, seconds inside."""

    wall: float
    ratio: float
    quartiles: tuple[float, float]
    inside: float
    blocks: int


def measure(hidden: int | list[int], rounds: int) -> tuple[list[Block], dict[str, float]]:
    """One fit of ``rounds`` rounds of the three modes after a warm-up round.

    Returns the timed blocks and, per monitored mode, the reducing hooks' seconds outside them
    (the flush at the end of the fit).
    """
    torch.manual_seed(0)
    monitors = {mode: TimedMonitor(*options) for mode, options in MODES.items() if options is not None}
    module = AlternatingModule(hidden, monitors)
    with tempfile.TemporaryDirectory() as log_dir:
        logger = TensorBoardRunLogger(log_dir, name="", version="")
        steps = BLOCK * len(MODES) * (1 + rounds) + 1
        cpu_fit(module, steps, logger, list(monitors.values()), enable_checkpointing=False)
    in_blocks = {
        mode: sum(b.heavy for b in module.blocks if b.mode == mode) * (BLOCK - 1) for mode in monitors
    }
    outside = {mode: monitor.heavy_seconds - in_blocks[mode] for mode, monitor in monitors.items()}
    return module.blocks, outside


def summarise(blocks: list[tuple[int, Block]], outside: dict[str, float]) -> dict[str, ModeResult]:
    """Per mode: steady medians plus the reducing hooks' time spread over the mode's steps."""
    rounds: dict[tuple[int, int], dict[str, Block]] = {}
    for fit, block in blocks:
        rounds.setdefault((fit, block.round), {})[block.mode] = block
    paired = [r for r in rounds.values() if len(r) == len(MODES)]
    off = statistics.median(r["off"].wall for r in paired)
    results = {}
    for mode in MODES:
        mine = [b for _, b in blocks if b.mode == mode]
        steps = len(mine) * (BLOCK - 1)
        heavy = (sum(b.heavy for b in mine) * (BLOCK - 1) + outside.get(mode, 0.0)) / steps
        ratios = [(r[mode].wall - r[mode].heavy) / r["off"].wall for r in paired]
        low, _, high = statistics.quantiles(ratios, n=4)
        results[mode] = ModeResult(
            wall=statistics.median(b.wall - b.heavy for b in mine) + heavy,
            ratio=statistics.median(ratios) + heavy / off,
            quartiles=(low + heavy / off, high + heavy / off),
            inside=sum(b.inside for b in mine) * (BLOCK - 1) / steps + outside.get(mode, 0.0) / steps,
            blocks=len(mine),
        )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200, help="rounds of the three modes per fit")
    parser.add_argument("--repeats", type=int, default=3, help="fits per net")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--canonical-only", action="store_true", help="leave out the 1e6-parameter net")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    threads = torch.get_num_threads()
    print(f"batch 32, blocks of {BLOCK} steps, {args.repeats} fits per net, torch threads {threads}")
    columns = f"{'blocks':>6} {'µs/step':>8} {'ratio':>7} {'quartiles':>13} {'in monitor':>10} {'share':>6}"
    print(f"{'net':<40} {'monitor':<22} {columns}")
    nets = list(NETS.items())[:1] if args.canonical_only else NETS.items()
    for net, (hidden, share) in nets:
        blocks: list[tuple[int, Block]] = []
        outside: dict[str, float] = {}
        for fit in range(args.repeats):
            fit_blocks, fit_outside = measure(hidden, max(2, round(args.rounds * share)))
            blocks += [(fit, block) for block in fit_blocks]
            for mode, seconds in fit_outside.items():
                outside[mode] = outside.get(mode, 0.0) + seconds
        for mode, result in summarise(blocks, outside).items():
            (low, high), share = result.quartiles, 100 * result.inside / result.wall
            print(
                f"{net:<40} {mode:<22} {result.blocks:>6} {result.wall * 1e6:8.0f} {result.ratio:6.3f}×"
                f" {low:6.3f}–{high:.3f} {result.inside * 1e6:10.1f} {share:5.1f}%"
            )


if __name__ == "__main__":
    main()
