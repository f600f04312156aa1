"""Wall time of commands that need no training, against ``python -c "import lightning.pytorch"``.

Each command runs as a new process, as a user types it, and must exit with its code (0 for an
answer, 2 for a refusal); the commands are interleaved in rounds, each round starting one command
later, so the machine's drift meets them alike, and the table shows the median over rounds and its
ratio to the median of the Lightning import in the same rounds.

    python benchmarks/answer_time.py [--rounds 7]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TRAIN = str(Path(__file__).resolve().parent.parent / "train.py")
ANCHOR = "import lightning.pytorch"
# name: (arguments after the interpreter, the exit code it must give)
COMMANDS = {
    "python -c 'import lightning.pytorch'": (["-c", ANCHOR], 0),
    "train.py --help": ([TRAIN, "--help"], 0),
    "train.py --cfg job": ([TRAIN, "--cfg", "job"], 0),
    "train.py --info defaults": ([TRAIN, "--info", "defaults"], 0),
    "train.py -m --cfg job seed=0,1 (refused)": ([TRAIN, "-m", "--cfg", "job", "seed=0,1"], 2),
    "train.py optimizer=rmsprp (unknown option)": ([TRAIN, "optimizer=rmsprp"], 2),
    "train.py optimizer.lrr=0.1 (unknown key)": ([TRAIN, "optimizer.lrr=0.1"], 2),
    "train.py optimizer.alpha=1.5 (out of range)": ([TRAIN, "optimizer.alpha=1.5"], 2),
    "train.py data=csv data.source.path=missing.csv": (
        [TRAIN, "data=csv", "data.source.path=missing.csv"],
        2,
    ),
}


def wall_seconds(name: str, cwd: str) -> float:
    """Seconds from start to exit of the command ``name``, which must exit with its code."""
    arguments, expected = COMMANDS[name]
    start = time.perf_counter()
    done = subprocess.run([sys.executable, *arguments], cwd=cwd, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if done.returncode != expected:
        sys.exit(f"{name} exited {done.returncode}, not {expected}: {done.stderr.strip()[-500:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    rounds = parser.parse_args().rounds
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    names = list(COMMANDS)
    with tempfile.TemporaryDirectory() as folder:
        for name in names:  # warm the file cache once
            wall_seconds(name, folder)
        for round_ in range(rounds):
            shift = round_ % len(names)  # each command takes each place in the order in turn
            for name in names[shift:] + names[:shift]:
                times[name].append(wall_seconds(name, folder))
    anchor = statistics.median(times[next(iter(COMMANDS))])
    print(f"{rounds} rounds, medians; ratio to `{ANCHOR}` ({anchor:.2f} s)\n")
    print("| command | seconds | ratio |\n| --- | ---: | ---: |")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"| `{name}` | {median:.2f} | {median / anchor:.2f} |")


if __name__ == "__main__":
    main()
