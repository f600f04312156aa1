"""Time one RMSprop step: torch's two eager paths against ours, eager and ``fast=True``, side by side.

Usage: ``python benchmarks/optimizer_step.py [--momentum 0.9] [--rounds 21] [--threads N]``

For the canonical 61-parameter net and for 1e4, 1e6 and 1e7 parameters (two weight tensors and
two 16-element biases) it prints the median time per step of each implementation, each on its
own copy of the parameters, in rounds that time a few milliseconds of consecutive steps of every
implementation in a shuffled order, and the ratios to torch's faster path (of the medians and,
less sensitive to other processes on the machine, of the minima). The fast step's first call,
its compilation into a fresh inductor cache in this process (no compile workers left running
beside the timings), is reported separately and excluded from the timings.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import time
from collections.abc import Callable

import torch

from rmsprop_lightning.optim import RMSprop

SIZES = (61, 10**4, 10**6, 10**7)
IMPLEMENTATIONS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "torch loop": lambda params, **options: torch.optim.RMSprop(params, foreach=False, **options),
    "torch foreach": lambda params, **options: torch.optim.RMSprop(params, foreach=True, **options),
    "ours eager": lambda params, **options: RMSprop(params, **options),
    "ours fast": lambda params, **options: RMSprop(params, fast=True, **options),
}


def shapes(numel: int) -> list[tuple[int, ...]]:
    """The tensors of ``numel`` parameters: Linear(10,5)-ReLU-Linear(5,1) for 61, else two layers."""
    if numel == 61:
        return [(5, 10), (5,), (1, 5), (1,)]
    return [(numel // 2 - 16,), (16,), (numel - numel // 2 - 16,), (16,)]


def make_params(numel: int) -> list[torch.nn.Parameter]:
    """Parameters with fixed random gradients, the same values for every implementation."""
    generator = torch.Generator().manual_seed(0)
    params = []
    for shape in shapes(numel):
        param = torch.nn.Parameter(torch.randn(shape, generator=generator))
        param.grad = torch.randn(shape, generator=generator) * 0.1
        params.append(param)
    return params


def timed(optimizer: torch.optim.Optimizer, steps: int) -> float:
    """Seconds per step over ``steps`` consecutive steps."""
    start = time.perf_counter()
    for _ in range(steps):
        optimizer.step()
    return (time.perf_counter() - start) / steps


def measure(numel: int, rounds: int, options: dict) -> tuple[dict[str, list[float]], float]:
    """Seconds per step of each implementation, round by round, and of the fast step's first call."""
    torch.compiler.reset()  # a fresh compilation for each size, as in a new process
    optimizers = {name: make(make_params(numel), **options) for name, make in IMPLEMENTATIONS.items()}
    first_fast = timed(optimizers["ours fast"], 1)
    steps = min(200, max(1, 5 * 10**6 // numel))  # consecutive steps per timing: a few milliseconds
    for optimizer in optimizers.values():
        timed(optimizer, steps)  # warm-up: state allocated, caches filled
    samples: dict[str, list[float]] = {name: [] for name in optimizers}
    order = list(optimizers)
    for _ in range(rounds):
        random.shuffle(order)
        for name in order:
            samples[name].append(timed(optimizers[name], steps))
    return samples, first_fast


def ratios(seconds: dict[str, float]) -> tuple[float, float]:
    """Ours eager over torch's faster path, and torch's faster path over ours fast."""
    best = min(seconds["torch loop"], seconds["torch foreach"])
    return seconds["ours eager"] / best, best / seconds["ours fast"]


def main() -> None:
    """Parses the command line and prints the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--momentum", type=float, default=0.0, help="RMSprop momentum (default 0)")
    parser.add_argument("--rounds", type=int, default=21, help="rounds per size (default 21)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    random.seed(0)
    load = "/".join(f"{value:.1f}" for value in os.getloadavg())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, float32")
    print(f"RMSprop lr 0.01, momentum {args.momentum}; {args.rounds} rounds; load average before: {load}")
    print("ratios: time / time of the faster torch path, of the medians (and of the minima)\n")
    header = (
        f"{'params':>6} | " + " ".join(f"{name:>13}" for name in IMPLEMENTATIONS) + " |  eager/torch"
        " |  torch/fast   | compile"
    )
    print(header)
    print("-" * len(header))
    with tempfile.TemporaryDirectory() as cache:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache  # compile times as in a first run
        os.environ["TORCHINDUCTOR_COMPILE_THREADS"] = "1"  # no compile workers running beside the timings
        for numel in SIZES:
            samples, first_fast = measure(numel, args.rounds, options={"momentum": args.momentum})
            median = {name: statistics.median(values) for name, values in samples.items()}
            low = {name: min(values) for name, values in samples.items()}
            (eager, fast), (eager_low, fast_low) = (ratios(stat) for stat in (median, low))
            print(
                f"{numel if numel < 100 else f'{numel:.0e}'.replace('e+0', 'e'):>6} | "
                + " ".join(f"{median[name] * 1e3:>10.4f} ms" for name in IMPLEMENTATIONS)
                + f" | {eager:>5.2f} ({eager_low:.2f}) | {fast:>5.2f} ({fast_low:>5.2f})"
                + f" | {first_fast:>5.1f} s"
            )
    load = "/".join(f"{value:.1f}" for value in os.getloadavg())
    print(f"\nload average after: {load}")


if __name__ == "__main__":
    main()
