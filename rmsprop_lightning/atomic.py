"""Replacing a file atomically: readers and a crash mid-write only ever see the old or the new version."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

TEMPORARY_SUFFIX = ".tmp"


def temporary_prefix(path: Path) -> str:
    """The name prefix of the temporary files that :func:`replace_atomically` writes next to ``path``."""
    return f".{path.name}."


def replace_atomically(path: str | Path, write: Callable[[BinaryIO], None]) -> None:
    """Calls ``write`` on a temporary file beside ``path``, syncs it and renames it over ``path`` (atomic
    on POSIX); the folder is synced too, so the new name survives a power cut. The file gets the mode
    ``open()`` gives a new one (0666 less the umask)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.parent / f"{temporary_prefix(path)}{secrets.token_hex(4)}{TEMPORARY_SUFFIX}"
    handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(handle, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def remove_stale_temporaries(path: str | Path) -> list[Path]:
    """Deletes temporary files a killed :func:`replace_atomically` left beside ``path`` (whose name may be a
    glob: ``*.ckpt``); returns them."""
    path = Path(path)
    stale = sorted(path.parent.glob(f"{temporary_prefix(path)}*{TEMPORARY_SUFFIX}"))
    for leftover in stale:
        leftover.unlink(missing_ok=True)
    return stale
