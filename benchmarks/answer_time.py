"""Wall time of commands that need no training, against ``python -c "import lightning.pytorch"``.

Each command runs as a new process, as a user types it; the commands are interleaved in
rounds, so the machine's drift meets them alike, and the table shows the median over rounds
and its ratio to the median of the Lightning import in the same rounds.

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
COMMANDS = {
    "python -c 'import lightning.pytorch'": [sys.executable, "-c", ANCHOR],
    "train.py --help": [sys.executable, TRAIN, "--help"],
    "train.py --cfg job": [sys.executable, TRAIN, "--cfg", "job"],
    "train.py --info defaults": [sys.executable, TRAIN, "--info", "defaults"],
    "train.py -m --cfg job seed=0,1 (refused)": [sys.executable, TRAIN, "-m", "--cfg", "job", "seed=0,1"],
    "train.py optimizer=rmsprp (unknown option)": [sys.executable, TRAIN, "optimizer=rmsprp"],
    "train.py optimizer.lrr=0.1 (unknown key)": [sys.executable, TRAIN, "optimizer.lrr=0.1"],
    "train.py optimizer.alpha=1.5 (out of range)": [sys.executable, TRAIN, "optimizer.alpha=1.5"],
    "train.py data=csv data.source.path=missing.csv": [
        sys.executable,
        TRAIN,
        "data=csv",
        "data.source.path=missing.csv",
    ],
}


def wall_seconds(command: list[str], cwd: str) -> float:
    """Seconds from start to exit of ``command``."""
    start = time.perf_counter()
    subprocess.run(command, cwd=cwd, capture_output=True, check=False)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    rounds = parser.parse_args().rounds
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    with tempfile.TemporaryDirectory() as folder:
        for command in COMMANDS.values():  # warm the file cache once
            wall_seconds(command, folder)
        for _ in range(rounds):
            for name, command in COMMANDS.items():
                times[name].append(wall_seconds(command, folder))
    anchor = statistics.median(times[next(iter(COMMANDS))])
    print(f"{rounds} rounds, medians; ratio to `{ANCHOR}` ({anchor:.2f} s)\n")
    print("| command | seconds | ratio |\n| --- | ---: | ---: |")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"| `{name}` | {median:.2f} | {median / anchor:.2f} |")


if __name__ == "__main__":
    main()
