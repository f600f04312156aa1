"""Time one RMSprop step: torch's loop and foreach paths against ours, eager and fast.

Usage: ``python benchmarks/optimizer_step.py [--quick]``

For 1e5, 1e6 and 1e7 parameters, laid out as four large tensors ("few") or as
tensors of 10 000 elements ("many"), and for the plain, momentum, centered and
centered+momentum variants, it prints the median milliseconds per step of each
implementation (warm-up excluded, implementations interleaved round by round), ours
relative to torch's faster eager path, and the effective bandwidth: the bytes each
variant must move per parameter (5, 7, 7 or 9 tensors of 4 bytes read or written)
over the step time, against the in-place streaming bandwidth ``x.mul_(s)`` on 256 MiB
measured in the same run (before and after the table). The fast step's first call is
reported separately: it builds the C kernel (a fresh cache directory is used, so the
first call per variant pays the full build) or loads it. A last table times whole
training loops of the canonical 61-parameter net with torch's RMSprop and ours in
automatic mode.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable

import torch

from rmsprop_lightning.optim import RMSprop

VARIANTS = {
    "plain": ({}, 5),
    "momentum": ({"momentum": 0.9}, 7),
    "centered": ({"centered": True}, 7),
    "centered+momentum": ({"centered": True, "momentum": 0.9}, 9),
}
IMPLEMENTATIONS = ("torch loop", "torch foreach", "ours eager", "ours fast")
SMALL_TENSOR = 10_000


def timed(function: Callable[[], object]) -> float:
    """Seconds one call of ``function`` takes."""
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def streaming_bandwidth(repeats: int) -> float:
    """In-place streaming bandwidth in GB/s: ``x.mul_(s)`` reads and writes 256 MiB."""
    x = torch.rand(64 << 20)
    x.mul_(1.0)
    seconds = statistics.median(timed(lambda: x.mul_(1.0000001)) for _ in range(repeats))
    return 2 * x.numel() * x.element_size() / seconds / 1e9


def make_params(numel: int, layout: str) -> list[torch.nn.Parameter]:
    """``numel`` parameters with gradients, as four large tensors or many small ones."""
    sizes = [numel // 4] * 4 if layout == "few" else [SMALL_TENSOR] * (numel // SMALL_TENSOR)
    params = [torch.nn.Parameter(torch.randn(size)) for size in sizes]
    for param in params:
        param.grad = torch.randn(size=param.shape) * 0.1
    return params


def optimizers(params: list[torch.nn.Parameter], options: dict) -> dict[str, torch.optim.Optimizer]:
    """The four implementations under test, on the same parameters."""
    return {
        "torch loop": torch.optim.RMSprop(params, foreach=False, **options),
        "torch foreach": torch.optim.RMSprop(params, foreach=True, **options),
        "ours eager": RMSprop(params, fast=False, **options),
        "ours fast": RMSprop(params, fast=True, **options),
    }


def measure(optims: dict[str, torch.optim.Optimizer], rounds: int) -> tuple[dict[str, float], float]:
    """Median seconds per step of each optimizer (interleaved rounds) and the fast step's first call."""
    first_fast = timed(optims["ours fast"].step)
    for optimizer in optims.values():
        optimizer.step()
    samples: dict[str, list[float]] = {name: [] for name in optims}
    for _ in range(rounds):
        for name, optimizer in optims.items():
            samples[name].append(timed(optimizer.step))
    return {name: statistics.median(values) for name, values in samples.items()}, first_fast


def rounds_for(numel: int, quick: bool) -> int:
    """Repeats per implementation: more for cheap steps."""
    rounds = 7 if numel >= 10**7 else 15 if numel >= 10**6 else 41
    return max(5, rounds // 3) if quick else rounds


def step_table(sizes: list[int], quick: bool, bandwidth: float) -> None:
    """Prints the per-step table for every size, layout and variant."""
    header = (
        f"{'params':>8} {'layout':>6} {'variant':>18} | "
        + " ".join(f"{name:>13}" for name in IMPLEMENTATIONS)
        + " | eager/torch  fast/torch | GB/s: torch  eager   fast  (% stream) | first fast call"
    )
    print(header)
    print("-" * len(header))
    for numel in sizes:
        for layout in ("few", "many"):
            params = make_params(numel, layout)
            for variant, (options, tensors) in VARIANTS.items():
                medians, first_fast = measure(optimizers(params, options), rounds_for(numel, quick))
                best_torch = min(medians["torch loop"], medians["torch foreach"])
                eager, fast = medians["ours eager"], medians["ours fast"]
                moved = tensors * 4 * numel / 1e9
                print(
                    f"{numel:>8.0e} {layout:>6} {variant:>18} | "
                    + " ".join(f"{medians[name] * 1e3:>10.3f} ms" for name in IMPLEMENTATIONS)
                    + f" | {eager / best_torch:>11.2f}  {fast / best_torch:>10.2f}"
                    + f" | {moved / best_torch:>11.1f} {moved / eager:>6.1f} {moved / fast:>6.1f}"
                    + f"  ({100 * moved / fast / bandwidth:>4.0f}%) | {first_fast * 1e3:>8.1f} ms"
                )
            del params


def canonical_runs(steps: int, repeats: int) -> None:
    """Times whole training loops of Linear(10,5)-ReLU-Linear(5,1) with torch's and our RMSprop."""
    torch.manual_seed(0)
    inputs, targets = torch.randn(64, 10), torch.randn(64, 1)

    def run(factory: Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer]) -> float:
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Linear(10, 5), torch.nn.ReLU(), torch.nn.Linear(5, 1))
        optimizer = factory(list(net.parameters()))
        start = time.perf_counter()
        for _ in range(steps):
            optimizer.zero_grad()
            torch.nn.functional.mse_loss(net(inputs), targets).backward()
            optimizer.step()
        return time.perf_counter() - start

    factories = {
        "torch.optim.RMSprop": lambda params: torch.optim.RMSprop(params, momentum=0.9),
        "ours, fast=None": lambda params: RMSprop(params, momentum=0.9),
        "ours, fast=False": lambda params: RMSprop(params, momentum=0.9, fast=False),
    }
    samples: dict[str, list[float]] = {name: [] for name in factories}
    for _ in range(repeats):
        for name, factory in factories.items():
            samples[name].append(run(factory))
    print(f"\ncanonical net (61 parameters, momentum 0.9), {steps} training steps, median of {repeats}:")
    reference = statistics.median(samples["torch.optim.RMSprop"])
    for name, values in samples.items():
        seconds = statistics.median(values)
        print(f"  {name:>20}: {seconds:.3f} s  ({seconds / reference:.2f}x torch)")


def main() -> None:
    """Parses the command line and prints the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="sizes 1e5 and 1e6 only, fewer repeats")
    args = parser.parse_args()
    torch.manual_seed(0)
    repeats = 5 if args.quick else 11
    bandwidth = streaming_bandwidth(repeats)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32")
    print(f"in-place streaming bandwidth (x.mul_(s), 256 MiB): {bandwidth:.1f} GB/s\n")
    sizes = [10**5, 10**6] if args.quick else [10**5, 10**6, 10**7]
    with tempfile.TemporaryDirectory() as cache:
        os.environ["RMSPROP_LIGHTNING_CACHE"] = cache
        step_table(sizes, args.quick, bandwidth)
    print(f"\nin-place streaming bandwidth after the table: {streaming_bandwidth(repeats):.1f} GB/s")
    canonical_runs(500 if args.quick else 2000, 3 if args.quick else 5)


if __name__ == "__main__":
    main()
