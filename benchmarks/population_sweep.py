"""A sweep as one population against one job: whole processes, as a user waits for them.

Usage: ``python benchmarks/population_sweep.py [--repeats 3] [--steps 2000]``

Runs, alternating repeat after repeat, each in a fresh temporary folder: one job
(``python train.py`` with its defaults), and sweeps of 64 and 256 jobs of the same net with
``hydra/launcher=population`` (4 presets × 4 learning rates × 4 or 16 seeds). The table
gives each command's median wall time (process start to exit), its ratio to the one job's,
members·steps per second and the peak resident memory of the process.
"""

from __future__ import annotations

import argparse
import os
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


def run_once(arguments: str, steps: int) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one ``train.py`` process in a temporary folder."""
    with tempfile.TemporaryDirectory() as folder:
        command = [sys.executable, str(ROOT / "train.py"), *arguments.split()]
        command += [f"paths.root_dir={folder}", f"trainer.max_steps={steps}"]
        start = time.perf_counter()
        process = subprocess.Popen(command, cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - start
        if status:
            raise SystemExit(f"{' '.join(command)} failed")
        return wall, usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=2000)
    args = parser.parse_args()
    walls: dict[str, list[float]] = {name: [] for name in COMMANDS}
    memory: dict[str, float] = {}
    for repeat in range(args.repeats):
        order = list(COMMANDS)
        order = order[repeat % len(order) :] + order[: repeat % len(order)]
        for name in order:
            wall, rss = run_once(COMMANDS[name][0], args.steps)
            walls[name].append(wall)
            memory[name] = max(memory.get(name, 0.0), rss)
    base = statistics.median(walls["one job"])
    print(f"{args.steps} steps per job, median of {args.repeats}; {os.cpu_count()} cores")
    print("| command | wall s | × one job | members·steps/s | peak RSS MiB |")
    print("|---|---:|---:|---:|---:|")
    for name, (_, members) in COMMANDS.items():
        wall = statistics.median(walls[name])
        rate = members * args.steps / wall
        print(f"| {name} | {wall:.1f} | {wall / base:.2f} | {rate:,.0f} | {memory[name]:.0f} |")


if __name__ == "__main__":
    main()
