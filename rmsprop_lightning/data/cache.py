"""Data kept for the life of the process, so the jobs of a multirun do not rebuild the same splits.

Only sources marked :func:`reproducible` are cached (the same arguments give the same
table, and files are keyed by their size and modification time); a source that draws
from the job's seed, such as ``random_normal``, is rebuilt for every job. Cached
tensors are shared between jobs and must be treated as read-only.
"""

from __future__ import annotations

import functools
import os
from collections import OrderedDict
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

MAX_ENTRIES = 4
_entries: OrderedDict[Hashable, Any] = OrderedDict()


def reproducible(function: F) -> F:
    """Marks a data source whose result depends only on its arguments (and the files they name)."""
    function.reproducible = True  # type: ignore[attr-defined]
    return function


def source_key(source: Any) -> Hashable | None:
    """A key for what ``source()`` returns, or ``None`` when it may differ between calls.

    ``source`` must be a :func:`functools.partial` (what Hydra's ``_partial_`` builds) of a
    :func:`reproducible` function with hashable arguments.
    """
    if not isinstance(source, functools.partial) or not getattr(source.func, "reproducible", False):
        return None
    arguments = (*source.args, *source.keywords.values())
    files = tuple(_file_stamp(value) for value in arguments if isinstance(value, str | Path))
    key = (
        source.func.__module__,
        source.func.__qualname__,
        source.args,
        tuple(sorted(source.keywords.items())),
        files,
    )
    try:
        hash(key)
    except TypeError:
        return None
    return key


def _file_stamp(value: str | Path) -> tuple[str, int, int] | None:
    """``(path, size, mtime)`` of an existing file, so an edited file is read again."""
    try:
        stat = os.stat(value)
    except (OSError, ValueError):
        return None
    return (str(value), stat.st_size, stat.st_mtime_ns)


def cached(key: Hashable | None, build: Callable[[], T]) -> T:
    """``build()``'s result, kept under ``key`` among the last :data:`MAX_ENTRIES`; ``None`` skips caching."""
    if key is None:
        return build()
    if key in _entries:
        _entries.move_to_end(key)
        return _entries[key]
    value = build()
    _entries[key] = value
    while len(_entries) > MAX_ENTRIES:
        _entries.popitem(last=False)
    return value


def clear() -> None:
    """Forgets every cached entry."""
    _entries.clear()
