"""A sweep as one population against one job: whole processes, as a user waits for them.

Usage: ``python benchmarks/population_sweep.py [--repeats 3] [--steps 2000]``

Runs, alternating repeat after repeat, each in a fresh temporary folder: one job
(``python train.py`` with its defaults), and sweeps of 64 and 256 jobs of the same net with
``hydra/launcher=population`` (4 presets × 4 learning rates × 4 or 16 seeds). The table
gives each command's median wall time (process start to exit), its ratio to the one job's,
members·steps per second and the peak resident memory of the process. For the sweeps it also
gives two phases, read from the time each line of output arrives: the time until the launcher
starts (Python, Hydra, and Hydra's sweeper composing every job's config to check it, before
any launcher is called) and the population's training (as the launcher reports it).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GRID = "optimizer=rmsprop,rmsprop_centered,rmsprop_momentum,rmsprop_tf optimizer.lr=1e-3,3e-3,1e-2,3e-2"
COMMANDS = {
    "one job": ("", 1),
    "64 jobs, population": (f"-m hydra/launcher=population {GRID} seed=range(0,4)", 64),
    "256 jobs, population": (f"-m hydra/launcher=population {GRID} seed=range(0,16)", 256),
}


LAUNCHED = "Launching"  # the launcher's first line
TRAINED = re.compile(r"Population of \d+: \d+ steps in ([\d.]+) s")


@dataclasses.dataclass
class Run:
    """One process: its wall seconds, peak RSS (MiB), and for a sweep its two phases (seconds)."""

    wall: float
    rss: float
    until_launcher: float | None = None
    training: float | None = None


def run_once(arguments: str, steps: int) -> Run:
    """One ``train.py`` process in a temporary folder, its output timed line by line."""
    with tempfile.TemporaryDirectory() as folder:
        command = [sys.executable, str(ROOT / "train.py"), *arguments.split()]
        command += [f"paths.root_dir={folder}", f"trainer.max_steps={steps}"]
        environment = {**os.environ, "PYTHONUNBUFFERED": "1"}
        start = time.perf_counter()
        process = subprocess.Popen(
            command, cwd=folder, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        until_launcher = training = None
        for line in process.stdout:
            if until_launcher is None and LAUNCHED in line:
                until_launcher = time.perf_counter() - start
            if match := TRAINED.search(line):
                training = (training or 0.0) + float(match[1])
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - start
        if status:
            raise SystemExit(f"{' '.join(command)} failed")
        return Run(wall, usage.ru_maxrss / 1024, until_launcher, training)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=2000)
    args = parser.parse_args()
    runs: dict[str, list[Run]] = {name: [] for name in COMMANDS}
    for repeat in range(args.repeats):
        order = list(COMMANDS)
        order = order[repeat % len(order) :] + order[: repeat % len(order)]
        for name in order:
            runs[name].append(run_once(COMMANDS[name][0], args.steps))

    def median(name: str, field: str) -> str:
        values = [getattr(run, field) for run in runs[name]]
        return "" if None in values else f"{statistics.median(values):.1f}"

    base = statistics.median(run.wall for run in runs["one job"])
    print(f"{args.steps} steps per job, median of {args.repeats}; {os.cpu_count()} cores")
    print("| command | wall s | × one job | members·steps/s | peak RSS MiB | until launcher s | training s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, (_, members) in COMMANDS.items():
        wall = statistics.median(run.wall for run in runs[name])
        rate = members * args.steps / wall
        rss = max(run.rss for run in runs[name])
        phases = f"{median(name, 'until_launcher')} | {median(name, 'training')}"
        print(f"| {name} | {wall:.1f} | {wall / base:.2f} | {rate:,.0f} | {rss:.0f} | {phases} |")


if __name__ == "__main__":
    main()
