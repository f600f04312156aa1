"""Whole runs, as a user times them: ``python train.py`` against the plain Lightning script for its job.

Usage: ``python benchmarks/train_runs.py [--repeats 3] [--threads N] [OVERRIDES ...]``

The reference is ``benchmarks/plain_lightning.py``, the script a user would write for what
``python train.py`` does with its defaults. Each OVERRIDES is one variant of ``train.py``: a
space-separated list of Hydra overrides (default: one variant, ``""``, the defaults). All runs
alternate, repeat after repeat, each in a fresh temporary folder, and each variant takes each
place in the order in turn, so drifts in machine load and the cost of going first hit them alike.
The table gives each variant's median wall time (process start to exit, imports included) and
CPU time (user and system), with their ratios to the plain script's. ``--threads`` sets
``OMP_NUM_THREADS`` for every run (default: torch's own choice): on a machine whose cores other
work shares, torch's thread pool waits on descheduled threads and swamps what is measured.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
PLAIN = "plain Lightning script"


def command(variant: str, folder: str) -> list[str]:
    """The command line of ``variant``, writing below ``folder``."""
    if variant == PLAIN:
        return [sys.executable, str(ROOT / "benchmarks" / "plain_lightning.py")]
    return [sys.executable, str(ROOT / "train.py"), *variant.split(), f"paths.root_dir={folder}"]


def cpu_seconds() -> float:
    """User and system CPU time of the finished child processes so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_once(variant: str, env: dict[str, str]) -> tuple[float, float]:
    """Wall and CPU seconds of one run of ``variant``, from process start to exit, in a temporary folder."""
    with tempfile.TemporaryDirectory() as folder:
        start, cpu = time.perf_counter(), cpu_seconds()
        done = subprocess.run(
            command(variant, folder), cwd=folder, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        seconds = time.perf_counter() - start, cpu_seconds() - cpu
    if done.returncode:
        sys.exit(f"{variant or 'train.py'} exited {done.returncode}: {done.stderr.decode().strip()[-500:]}")
    return seconds


def main() -> None:
    """Parses the command line, runs the variants and prints the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", default=[""], help="the overrides of one train.py variant")
    parser.add_argument("--repeats", type=int, default=3, help="runs per variant")
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS of every run")
    args = parser.parse_args()
    env = dict(os.environ)
    if args.threads is not None:
        env["OMP_NUM_THREADS"] = str(args.threads)
        torch.set_num_threads(args.threads)
    variants = [PLAIN, *args.overrides]
    samples: dict[str, list[tuple[float, float]]] = {variant: [] for variant in variants}
    for repeat in range(args.repeats):
        shift = repeat % len(variants)  # each variant takes each place in the order in turn
        for variant in variants[shift:] + variants[:shift]:
            samples[variant].append(run_once(variant, env))
    wall = {variant: statistics.median(w for w, _ in runs) for variant, runs in samples.items()}
    cpu = {variant: statistics.median(c for _, c in runs) for variant, runs in samples.items()}
    print(f"{args.repeats} runs each, interleaved; torch threads {torch.get_num_threads()}")
    print(f"{'run':<56} {'wall s':>7} {'ratio':>6} {'CPU s':>7} {'ratio':>6}  wall of each run (s)")
    for variant, runs in samples.items():
        name = variant if variant == PLAIN else f"python train.py {variant}".rstrip()
        each = " ".join(f"{w:.1f}" for w, _ in runs)
        print(
            f"{name:<56} {wall[variant]:7.2f} {wall[variant] / wall[PLAIN]:5.2f}×"
            f" {cpu[variant]:7.2f} {cpu[variant] / cpu[PLAIN]:5.2f}×  {each}"
        )


if __name__ == "__main__":
    main()
