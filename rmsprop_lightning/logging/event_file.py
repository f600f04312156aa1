"""A TensorBoard event file written in the caller's thread, for runs whose events are all known at once.

``SummaryWriter``'s writer thread and queue cost more than the records a population writes in one go.
"""

from __future__ import annotations

import itertools
import os
import socket
import time
from collections.abc import Mapping
from pathlib import Path

from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.summary.writer.record_writer import RecordWriter

_file_numbers = itertools.count()


def scalars_summary(metrics: Mapping[str, float], prefix: str = "") -> Summary:
    """``metrics`` as one summary, each tag after ``prefix``: a step's values in one event."""
    values = [Summary.Value(tag=prefix + tag, simple_value=float(value)) for tag, value in metrics.items()]
    return Summary(value=values)


class EventFile:
    """One ``events.out.tfevents.*`` file in ``log_dir``, named as TensorBoard names its own."""

    def __init__(self, log_dir: str | Path) -> None:
        Path(log_dir).mkdir(parents=True, exist_ok=True)
        name = f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}"
        self.path = Path(log_dir) / f"{name}.{next(_file_numbers)}"
        self._records = RecordWriter(self.path.open("wb"))
        self._write(Event(wall_time=time.time(), file_version="brain.Event:2"))

    def _write(self, event: Event) -> None:
        self._records.write(event.SerializeToString())

    def summary(self, summary: Summary, step: int) -> None:
        """Writes ``summary`` at ``step``."""
        self._write(Event(wall_time=time.time(), step=step, summary=summary))

    def close(self) -> None:
        """Flushes and closes the file."""
        self._records.close()
