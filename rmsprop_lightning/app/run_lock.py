"""One process at a time in a run folder: a job holds a lock on its folder while it runs, which a resume of
it finds taken; the system drops the lock when the process ends, ``kill -9`` included."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rmsprop_lightning.errors import InputError

try:
    import fcntl
except ImportError:  # Windows has no advisory locks: the checks of the folder's records remain
    fcntl = None


@contextmanager
def folder_lock(folder: str | Path, typed: str) -> Iterator[None]:
    """Holds an exclusive lock on ``folder`` (made if missing) for the block; an :class:`InputError` that
    names ``typed`` (the setting that chose the folder) where another process holds it."""
    if fcntl is None:
        yield
        return
    Path(folder).mkdir(parents=True, exist_ok=True)
    handle = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InputError(
                f"{typed}: the run is still running in another process; allowed: once it has ended (stopped "
                "with Ctrl-C or SIGTERM, it saves its step), resume it"
            ) from None
        except OSError:  # a file system without locks (some network ones): the records' checks remain
            pass
        yield
    finally:
        os.close(handle)


def check_free(folder: str | Path, typed: str) -> None:
    """Raises the :class:`InputError` of :func:`folder_lock` where a running process holds ``folder``."""
    with folder_lock(folder, typed):
        pass
