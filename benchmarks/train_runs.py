"""Whole ``python train.py`` runs, side by side: wall time of each set of overrides, interleaved.

Usage: ``python benchmarks/train_runs.py [--repeats 3] [VARIANT ...]``

Each VARIANT is a space-separated list of Hydra overrides (default: ``optimizer.fast=null``
against ``optimizer.fast=false``, i.e. the automatic fast step against the eager step on
the template's defaults). The runs of all variants alternate, repeat after repeat, each in
a fresh temporary folder and each variant taking each place in the order in turn, so that
drifts in machine load and the cost of going first hit them alike. The table gives
each variant's median wall time (process start to exit, Python and imports included) and
its ratio to the first variant's.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TRAIN = Path(__file__).resolve().parent.parent / "train.py"
DEFAULT_VARIANTS = ["optimizer.fast=null", "optimizer.fast=false"]


def run_once(overrides: list[str]) -> float:
    """Seconds one ``train.py`` run with ``overrides`` takes, in a temporary folder."""
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, str(TRAIN), *overrides, f"paths.root_dir={folder}"],
            cwd=folder,
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        return time.perf_counter() - start


def main() -> None:
    """Parses the command line, runs the variants and prints the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variants", nargs="*", default=DEFAULT_VARIANTS, help="overrides of one variant")
    parser.add_argument("--repeats", type=int, default=3, help="runs per variant")
    args = parser.parse_args()
    samples: dict[str, list[float]] = {variant: [] for variant in args.variants}
    for repeat in range(args.repeats):
        shift = repeat % len(args.variants)  # each variant takes each place in the order in turn
        for variant in args.variants[shift:] + args.variants[:shift]:
            samples[variant].append(run_once(variant.split()))
    reference = statistics.median(samples[args.variants[0]])
    print(f"{'overrides':<40} {'runs':>4} {'median s':>9} {'ratio':>7}  all runs (s)")
    for variant, times in samples.items():
        seconds = statistics.median(times)
        runs = " ".join(f"{t:.1f}" for t in times)
        print(f"{variant:<40} {len(times):>4} {seconds:>9.2f} {seconds / reference:>6.3f}×  {runs}")


if __name__ == "__main__":
    main()
