"""Reading scalars back from the loggers' files: TensorBoard event files (with TensorBoard's own
reader), or Lightning's CSV logs."""

from __future__ import annotations

import contextlib
import csv
import logging
import re
from collections.abc import Iterator
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

Series = list[tuple[int, float]]


@contextlib.contextmanager
def log_level(name: str, level: int) -> Iterator[None]:
    """Holds the Python logger ``name`` at ``level`` for the block, to silence a library's messages."""
    logger = logging.getLogger(name)
    previous = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(previous)


def read_scalars(log_dir: str | Path) -> dict[str, Series]:
    """``{tag: [(step, value), ...]}`` over every event file below ``log_dir``, steps ascending.

    Each folder is one TensorBoard run, read with its purges and one point a step (the last written: a
    resumed run logs its checkpoint's step again); a tag's points in several runs are merged.
    """
    scalars: dict[str, Series] = {}
    with log_level("tensorboard", logging.ERROR):  # whose warnings call a resume's purge a crash
        for folder in sorted({path.parent for path in Path(log_dir).rglob("events.out.tfevents.*")}):
            accumulator = EventAccumulator(str(folder), size_guidance={"scalars": 0})
            accumulator.Reload()
            for tag in accumulator.Tags()["scalars"]:
                last = {event.step: event.value for event in accumulator.Scalars(tag)}
                if last:  # else all purged
                    scalars.setdefault(tag, []).extend(last.items())
    return sort_points(scalars)


def read_csv_scalars(log_dir: str | Path) -> dict[str, Series]:
    """The same from every ``metrics.csv`` of Lightning's ``CSVLogger`` below ``log_dir``, one point a step
    (the last written: a run resumed after ``kill -9`` logs again the steps after its checkpoint)."""
    last: dict[str, dict[int, float]] = {}
    for path in sorted(Path(log_dir).rglob("metrics.csv"), key=written_order):
        with path.open(newline="") as file:
            for row in csv.DictReader(file):
                step = int(row.pop("step"))
                for tag, value in row.items():
                    if value:
                        last.setdefault(tag, {})[step] = float(value)
    return sort_points({tag: list(points.items()) for tag, points in last.items()})


def written_order(path: Path) -> list[str | int]:
    """A sort key that puts ``version_9`` before ``version_10``, as a CSV logger numbers them."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(path))]


def sort_points(scalars: dict[str, Series]) -> dict[str, Series]:
    """``scalars`` with each tag's points in ascending steps (in place)."""
    for points in scalars.values():
        points.sort(key=lambda point: point[0])
    return scalars
