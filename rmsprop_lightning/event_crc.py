"""A vectorised masked CRC-32C for TensorBoard event records, and records framed in bulk.

Without TensorFlow, TensorBoard's record writer checksums every event with a pure-Python
CRC-32C loop (about 0.3 µs per byte): an event holding a few dozen scalars costs more
than a training step of a small net. The CRC is linear over GF(2), so the checksum of
``n`` bytes is the XOR of one table lookup per byte (a table per distance from the end)
and a constant for the initial register: one NumPy gather and one XOR reduction.
:func:`install` makes TensorBoard's record writer use it; results are bit-identical.
:func:`frame_rows` frames many records at once, for a single write to an event file.
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Callable, Sequence
from typing import Any

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

    def rows(self, rows: np.ndarray, variable: np.ndarray | None = None) -> np.ndarray:
        """The masked CRC of each row of a ``(records, bytes)`` array of ``uint8``, as ``uint32``.

        ``variable`` lists the only columns in which the rows differ. The CRC is linear, so
        the rest is checksummed once, from the first row, and each row costs one lookup
        per variable byte.
        """
        size = rows.shape[1]
        if size > self.max_bytes:
            return np.array([self.fallback(row.tobytes()) for row in rows], dtype=np.uint32)
        if variable is None or len(rows) < 2:
            return _mask(self._registers(rows))
        base = rows[:1].copy()
        base[:, variable] = 0  # a zero byte adds nothing to the CRC register
        constant = self._registers(base)[0]
        assert self._by_distance is not None  # built by _registers
        distances = self._distances[self.max_bytes - size :][variable]
        lookups = self._by_distance[distances, rows[:, variable]]
        return _mask(np.bitwise_xor.reduce(lookups, axis=1) ^ constant)


def _mask(crc: Any) -> Any:
    """TensorBoard's masking of a CRC-32C (an ``int``, or a ``uint32`` array element-wise)."""
    if isinstance(crc, np.ndarray):
        return ((crc >> np.uint32(15)) | (crc << np.uint32(17))) + np.uint32(0xA282EAD8)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _checksum() -> Callable[[bytes], int]:
    """TensorBoard's record checksum, after :func:`install` made it a :class:`MaskedCRC32C`."""
    from tensorboard.summary.writer import record_writer

    install()
    return record_writer.masked_crc32c


def frame_payloads(payloads: Sequence[bytes]) -> bytes:
    """``payloads`` framed in order (see :func:`frame_rows`); each run of equal lengths is framed at once."""
    runs = itertools.groupby(payloads, key=len)
    return b"".join(
        frame_rows(np.frombuffer(b"".join(run), dtype=np.uint8).reshape(-1, size)) for size, run in runs
    )


def frame_rows(payloads: np.ndarray, variable: np.ndarray | None = None) -> bytes:
    """Each row of ``payloads`` (``uint8``) framed as an event-file record, as TensorBoard's writer frames it.

    A record is its length (uint64), the masked CRC of the length, the data and the masked
    CRC of the data, little-endian; ``variable`` is passed to :meth:`MaskedCRC32C.rows`.
    """
    checksum = _checksum()
    count, size = payloads.shape
    length = struct.pack("<Q", size)
    framed = np.empty((count, size + 16), dtype=np.uint8)
    framed[:, :8] = np.frombuffer(length, dtype=np.uint8)
    framed[:, 8:12] = np.frombuffer(struct.pack("<I", checksum(length)), dtype=np.uint8)
    framed[:, 12:-4] = payloads
    if isinstance(checksum, MaskedCRC32C):
        crcs = checksum.rows(payloads, variable)
    else:  # TensorBoard's own loop, where it could not be replaced
        crcs = np.array([checksum(row.tobytes()) for row in payloads], dtype=np.uint32)
    framed[:, -4:] = crcs.astype("<u4").view(np.uint8).reshape(count, 4)
    return framed.tobytes()


def install() -> None:
    """Makes TensorBoard's record writer checksum with :class:`MaskedCRC32C` (once; no-op if absent)."""
    try:
        from tensorboard.summary.writer import record_writer
    except ImportError:
        return
    current = getattr(record_writer, "masked_crc32c", None)
    if current is not None and not isinstance(current, MaskedCRC32C):
        record_writer.masked_crc32c = MaskedCRC32C(current)
