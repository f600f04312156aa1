"""A vectorised masked CRC-32C for TensorBoard event records, and records framed in bulk.

Without TensorFlow, TensorBoard's record writer checksums every event with a pure-Python
CRC-32C loop (about 0.3 µs per byte): an event holding a few dozen scalars costs more
than a training step of a small net. The CRC is linear over GF(2), so the checksum of
``n`` bytes is the XOR of one table lookup per byte (a table per distance from the end)
and a constant for the initial register: one NumPy gather and one XOR reduction.
:func:`install` makes TensorBoard's record writer use it; results are bit-identical.
:func:`frame_records` frames many records at once, for a single write to an event file.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence

import numpy as np

POLYNOMIAL = 0x82F63B78  # CRC-32C (Castagnoli), reflected
MAX_BYTES = 4096  # longer records (rare, e.g. HPARAMS) use TensorBoard's own loop
MIN_BYTES = 32  # shorter ones (record headers) too: the loop is quicker there


def _zero_byte_step(register: np.ndarray, table: np.ndarray) -> np.ndarray:
    """The CRC register after one more zero byte."""
    return table[register & 0xFF] ^ (register >> 8)


def _tables(max_bytes: int) -> tuple[np.ndarray, np.ndarray]:
    """``by_distance[k, b]``: the part of byte ``b`` followed by ``k`` bytes; ``initial[n]``: the start's."""
    table = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        table = np.where(table & 1, (table >> 1) ^ np.uint32(POLYNOMIAL), table >> 1).astype(np.uint32)
    by_distance = np.empty((max_bytes, 256), dtype=np.uint32)
    by_distance[0] = table
    for k in range(1, max_bytes):
        by_distance[k] = _zero_byte_step(by_distance[k - 1], table)
    initial = np.empty(max_bytes + 1, dtype=np.uint32)
    initial[0] = 0xFFFFFFFF
    register = np.array([0xFFFFFFFF], dtype=np.uint32)
    for n in range(1, max_bytes + 1):
        register = _zero_byte_step(register, table)
        initial[n] = register[0]
    return by_distance, initial


class MaskedCRC32C:
    """``masked_crc32c(data)`` as TensorBoard computes it, vectorised for records up to ``max_bytes``."""

    def __init__(self, fallback: Callable[[bytes], int], max_bytes: int = MAX_BYTES) -> None:
        self.fallback = fallback
        self.max_bytes = max_bytes
        self._by_distance: np.ndarray | None = None
        self._initial = np.empty(0, dtype=np.uint32)
        self._distances = np.arange(max_bytes - 1, -1, -1)

    def crc32c(self, data: bytes) -> int:
        """The plain CRC-32C of ``data`` (at most ``max_bytes`` long); tables are built on first use."""
        return int(self._registers(np.frombuffer(data, dtype=np.uint8)[None, :])[0])

    def _registers(self, rows: np.ndarray) -> np.ndarray:
        """The plain CRC-32C of each row of a ``(records, bytes)`` array of ``uint8``, in one gather."""
        if self._by_distance is None:
            self._by_distance, self._initial = _tables(self.max_bytes)
        size = rows.shape[1]
        lookups = self._by_distance[self._distances[self.max_bytes - size :], rows]
        return np.bitwise_xor.reduce(lookups, axis=1) ^ self._initial[size] ^ np.uint32(0xFFFFFFFF)

    def __call__(self, data: bytes) -> int:
        if not MIN_BYTES <= len(data) <= self.max_bytes:
            return self.fallback(data)
        return _mask(self.crc32c(data))

    def many(self, payloads: Sequence[bytes]) -> list[int]:
        """``[self(data) for data in payloads]``, with one gather per distinct length."""
        masked = [0] * len(payloads)
        by_length: dict[int, list[int]] = {}
        for index, data in enumerate(payloads):
            by_length.setdefault(len(data), []).append(index)
        for size, indices in by_length.items():
            if not MIN_BYTES <= size <= self.max_bytes:
                for index in indices:
                    masked[index] = self.fallback(payloads[index])
                continue
            joined = b"".join(payloads[index] for index in indices)
            rows = np.frombuffer(joined, dtype=np.uint8).reshape(len(indices), size)
            for index, crc in zip(indices, self._registers(rows).tolist(), strict=True):
                masked[index] = _mask(crc)
        return masked


def _mask(crc: int) -> int:
    """TensorBoard's masking of a CRC-32C."""
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def frame_records(payloads: Sequence[bytes]) -> bytes:
    """``payloads`` framed as consecutive event-file records, as TensorBoard's record writer frames each.

    A record is its length (uint64), the masked CRC of the length, the data and the masked
    CRC of the data, little-endian; the data CRCs of equal-length records are computed together.
    """
    from tensorboard.summary.writer import record_writer

    install()
    checksum = record_writer.masked_crc32c
    crcs = checksum.many(payloads) if isinstance(checksum, MaskedCRC32C) else map(checksum, payloads)
    headers: dict[int, bytes] = {}
    parts = []
    for data, crc in zip(payloads, crcs, strict=True):
        header = headers.get(len(data))
        if header is None:
            length = struct.pack("<Q", len(data))
            header = headers[len(data)] = length + struct.pack("<I", checksum(length))
        parts += (header, data, struct.pack("<I", crc))
    return b"".join(parts)


def install() -> None:
    """Makes TensorBoard's record writer checksum with :class:`MaskedCRC32C` (once; no-op if absent)."""
    try:
        from tensorboard.summary.writer import record_writer
    except ImportError:
        return
    current = getattr(record_writer, "masked_crc32c", None)
    if current is not None and not isinstance(current, MaskedCRC32C):
        record_writer.masked_crc32c = MaskedCRC32C(current)
