"""What a process that ran Lightning spends shutting down, with and without freezing its objects first.

Usage: ``python benchmarks/shutdown.py [--repeats 7]``

Each child process imports Lightning and fits the canonical net for a few steps (with a
``TensorBoardLogger``, as a run does), prints the time, and returns; the time from that print to
the process's exit is its shutdown. ``rmsprop-train`` ends with
:func:`~rmsprop_lightning.app.cli.leave_out_of_shutdown_collections` (a ``gc.collect()`` and a
``gc.freeze()``), the other child returns as a plain script does. Children alternate; the table
gives medians.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

CHILD = """
import sys, tempfile, time
import lightning.pytorch as pl, torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.data import DataLoader, TensorDataset
from rmsprop_lightning.app.cli import leave_out_of_shutdown_collections
from rmsprop_lightning.model import FeedForward
from rmsprop_lightning.module import RegressionModule

data = DataLoader(TensorDataset(torch.randn(256, 10), torch.randn(256, 1)), batch_size=32)
module = RegressionModule(FeedForward(), optimizer=torch.optim.RMSprop)
with tempfile.TemporaryDirectory() as folder:
    trainer = pl.Trainer(max_steps=20, logger=TensorBoardLogger(folder), enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, data)
print(time.time(), flush=True)
if sys.argv[1] == "frozen":
    leave_out_of_shutdown_collections()
"""


def run_child(variant: str) -> tuple[float, float]:
    """Whole wall seconds of one child, and the seconds from its print (after the fit) to its exit."""
    start = time.perf_counter()
    output = subprocess.run(
        [sys.executable, "-c", CHILD, variant], capture_output=True, text=True, check=True
    ).stdout
    ended = time.time()
    return time.perf_counter() - start, ended - float(output.split()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    variants = {"plain return": "plain", "collect + freeze": "frozen"}
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
    for repeat in range(args.repeats):
        for name in sorted(variants, reverse=bool(repeat % 2)):
            results[name].append(run_child(variants[name]))
    base = statistics.median(shutdown for _, shutdown in results["plain return"])
    print(f"median of {args.repeats} interleaved processes")
    print("| end of the script | whole process s | shutdown s | shutdown vs plain |")
    print("|---|---:|---:|---:|")
    for name, runs in results.items():
        wall = statistics.median(w for w, _ in runs)
        shutdown = statistics.median(s for _, s in runs)
        print(f"| {name} | {wall:.2f} | {shutdown:.2f} | {shutdown / base:.2f}× |")


if __name__ == "__main__":
    main()
