"""TensorBoard scalar events encoded straight to bytes, for many steps at once.

A scalar event is a tiny protobuf message: the wall time, the step and one
``Summary.Value(tag, simple_value)`` per tag. For a fixed list of tags and one wall
time, the events of many steps have the same bytes but those of the step and of each
float, so they are one template repeated, with the steps and float32 values written into
it by NumPy assignments, a column each. The bytes are exactly those of
``Event(...).SerializeToString()`` (see ``tests/test_tensorboard.py``), at a fraction of
the cost of filling and serializing protobuf objects step by step; knowing which columns
vary also lets their checksums be computed from those columns alone
(:meth:`rmsprop_lightning.event_crc.MaskedCRC32C.rows`).
"""

from __future__ import annotations

import array
import itertools
import struct
import sys
from collections.abc import Iterator, Sequence

import numpy as np

# protobuf keys (field number << 3 | wire type) of the fields written here
_VALUE_TAG = b"\x0a"  # Summary.Value.tag (1, bytes); also Summary.value (1, bytes)
_SIMPLE_VALUE = b"\x15"  # Summary.Value.simple_value (2, 32-bit)
_WALL_TIME = b"\x09"  # Event.wall_time (1, 64-bit)
_STEP = b"\x10"  # Event.step (2, varint)
_SUMMARY = b"\x2a"  # Event.summary (5, bytes)


def varint(value: int) -> bytes:
    """``value`` as a protobuf varint (negative numbers as their 64-bit two's complement)."""
    value &= (1 << 64) - 1
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


# the smallest value of each varint length from 1 to 10 bytes
_VARINT_STARTS = np.array([1 << (7 * group) for group in range(10)], dtype=np.uint64)


def varint_lengths(steps: np.ndarray) -> np.ndarray:
    """The bytes each ``uint64`` step takes as a varint: 0 for a step of 0, which proto3 leaves out."""
    return np.searchsorted(_VARINT_STARTS, steps, side="right")


def varint_columns(steps: np.ndarray, length: int) -> np.ndarray:
    """The varints of ``steps`` that all take ``length`` bytes, a row each."""
    shifts = np.arange(length, dtype=np.uint64) * np.uint64(7)
    groups = ((steps[:, None] >> shifts) & np.uint64(0x7F)).astype(np.uint8)
    groups[:, :-1] |= 0x80
    return groups


def event_start(step: int, wall_time: float) -> bytes:
    """The bytes of an event before its summary: wall time and step (proto3 leaves out +0.0 and 0)."""
    wall = struct.pack("<d", wall_time)
    start = _WALL_TIME + wall if wall != bytes(8) else b""
    return start + _STEP + varint(step) if step else start


class ScalarSummaryTemplate:
    """The summary bytes of one list of tags, with the positions of their float32 values."""

    def __init__(self, tags: Sequence[str]) -> None:
        parts, positions, offset = [], [], 0
        for tag in tags:
            name = tag.encode()  # proto3 leaves out an empty tag; the value, in a oneof, is always there
            value = (_VALUE_TAG + varint(len(name)) + name if name else b"") + _SIMPLE_VALUE + b"\0\0\0\0"
            entry = _VALUE_TAG + varint(len(value)) + value
            parts.append(entry)
            positions.append(offset + len(entry) - 4)
            offset += len(entry)
        template = _SUMMARY + varint(offset) + b"".join(parts)
        head = len(template) - offset
        self.template = np.frombuffer(template, dtype=np.uint8)
        self._float_bytes = (head + np.asarray(positions, dtype=np.int64)[:, None] + np.arange(4)).reshape(-1)
        # the bytes between the floats, for one event at a time
        ends = [head + position for position in positions]
        starts = [0, *(end + 4 for end in ends)]
        self._segments = [template[a:b] for a, b in zip(starts, [*ends, len(template)], strict=True)]

    def payload(self, step: int, values: Sequence[float], wall_time: float) -> bytes:
        """One serialized event: ``values`` (one per tag) at ``step``."""
        floats = array.array("f", values)
        if sys.byteorder == "big":
            floats.byteswap()
        raw = floats.tobytes()
        parts = [event_start(step, wall_time), self._segments[0]]
        for index, segment in enumerate(self._segments[1:]):
            parts += (raw[4 * index : 4 * index + 4], segment)
        return b"".join(parts)

    def payloads(
        self, steps: Sequence[int], values: np.ndarray, wall_time: float
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """The serialized events of ``steps`` (row ``k`` of ``values``, a column per tag, at ``steps[k]``).

        Yields, in step order, a ``(events, bytes)`` ``uint8`` array per run of steps of one
        varint length, with the columns that differ between its rows (step and values).
        """
        start = np.frombuffer(event_start(0, wall_time), dtype=np.uint8)
        numbers = np.asarray(steps, dtype=np.int64).astype(np.uint64)
        lengths = varint_lengths(numbers)
        floats = np.ascontiguousarray(values, dtype="<f4").view(np.uint8).reshape(len(numbers), -1)
        bounds = [0, *(np.flatnonzero(np.diff(lengths)) + 1).tolist(), len(numbers)]
        for first, end in itertools.pairwise(bounds):
            length = int(lengths[first])
            summary = len(start) + (1 + length if length else 0)
            rows = np.empty((end - first, summary + len(self.template)), dtype=np.uint8)
            rows[:, : len(start)] = start
            step_columns = np.arange(len(start) + 1, summary)
            if length:
                rows[:, len(start)] = _STEP[0]
                rows[:, step_columns] = varint_columns(numbers[first:end], length)
            rows[:, summary:] = self.template
            rows[:, summary + self._float_bytes] = floats[first:end]
            yield rows, np.concatenate([step_columns, summary + self._float_bytes])
