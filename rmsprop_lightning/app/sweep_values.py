"""What a sweep's overrides give: each value of a list or ``range()``, a ``glob()``'s options, an
``interval()`` as draws just inside its ends, a study's search space as overrides; sweeps no sweeper can
expand, and a study's storage Optuna cannot use, are refused."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from rmsprop_lightning.app.resume import lenient_select
from rmsprop_lightning.errors import InputError, first_line

# a study's search space, the config's or typed on the command line: checked as the keys it names
SEARCH_SPACE = "hydra.sweeper.params."


def override_values(override: Any, options: Sequence[str] | None = None) -> list[Any] | None:
    """The values an override gives: each of a sweep's, the group ``options`` a glob matches; ``None`` for a
    sweep only its sweeper expands (an interval)."""
    from hydra.core.override_parser.types import Glob

    value = override.value()
    if isinstance(value, Glob):
        return None if options is None else value.filter(list(options))
    try:
        return list(override.sweep_iterator()) if override.is_sweep_override() else [value]
    except Exception:  # a sweep expanded later
        return None


def searches(cfg: DictConfig) -> bool:
    """Whether the config's sweeper searches (draws values from ranges and intervals) rather than running each
    listed value, as Hydra's basic sweeper does."""
    return cfg.hydra.runtime.choices.get("hydra/sweeper") != "basic"


def decimal_range(value: Any) -> tuple[Decimal, Decimal, Decimal]:
    """A ``range()``'s start, stop and step in decimal, as Optuna computes with them."""
    return Decimal(str(value.start)), Decimal(str(value.stop)), Decimal(str(value.step))


def check_sweep(override: Any, searching: bool) -> None:
    """Refuses a sweep its sweeper cannot expand: a range with no values, a ``glob()`` for a search, an
    ``interval()`` for the basic sweeper."""
    from hydra.core.override_parser.types import Glob, RangeSweep

    value = override.value()
    if isinstance(value, RangeSweep):
        start, stop, step = decimal_range(value)
        if step == 0 or (stop - start) * step <= 0:
            raise InputError(
                f"{override.input_line} has no values; allowed: range(start, stop, step) with a step "
                "other than 0 that goes from start toward stop"
            )
    if searching and isinstance(value, Glob):
        raise InputError(
            f"{override.input_line}: a search chooses among listed options; allowed: "
            f"{override.key_or_group}=choice(...) with the options"
        )
    if not searching and override.is_interval_sweep():  # the basic sweeper runs a list of values
        raise InputError(
            f"{override.input_line}: the basic sweeper cannot draw from an interval; allowed: a list "
            "such as 0.01,0.1 or range(...), or interval() with hparams_search=rmsprop_optuna"
        )


def search_draws(override: Any, searching: bool) -> list[Any] | None:
    """A search's ``range()`` as its sweeper draws from it: its start and Optuna's ``high`` (its last step at
    or before ``stop``, in decimal as Optuna computes it), where the basic sweeper runs each value below
    ``stop`` (and a shuffled range is a choice of them)."""
    from hydra.core.override_parser.types import RangeSweep

    value = override.value()
    if not isinstance(value, RangeSweep) or value.shuffle or not searching:
        return None
    start, stop, step = decimal_range(value)
    high = (stop - start) // step * step + start
    return [
        value.start,
        int(high) if isinstance(value.start, int) and isinstance(value.step, int) else float(high),
    ]


def interval_draws(cfg: DictConfig, override: Any) -> list[Any]:
    """Values just inside an ``interval()``'s ends (its ends for integers), once a search can draw from it:
    its ends as limits, not as values (a momentum drawn from ``interval(0, 0.9)`` is never exactly 0)."""
    interval, key = override.value(), override.key_or_group
    if interval.start > interval.end or ("log" in interval.tags and interval.start <= 0):
        raise InputError(
            f"{override.input_line}: a search cannot draw from it; allowed: start ≤ end, and start > 0 on a "
            "log scale"
        )
    if all(isinstance(end, int) for end in (interval.start, interval.end)):
        return [interval.start, interval.end]
    current = lenient_select(cfg, key)
    if isinstance(current, int) and not isinstance(current, bool):
        raise InputError(
            f"{override.input_line}: interval() draws real numbers, but {key} takes integers; "
            "allowed: int(interval(...))"
        )
    inset = (interval.end - interval.start) * 1e-9
    return [interval.start + inset, interval.end - inset]


def search_space(cfg: DictConfig, overrides: Sequence[Any]) -> list[Any]:
    """The sweeper's ``params`` as overrides: the config's, then those set as ``hydra.sweeper.params…`` on the
    command line; a key the command line sweeps itself is the command line's."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = dict(OmegaConf.select(cfg, SEARCH_SPACE[:-1]) or {})
    for override in overrides:
        key = override.key_or_group.removeprefix(SEARCH_SPACE)
        if override.key_or_group == SEARCH_SPACE[:-1] and isinstance(override.value(), dict):
            params.update(override.value())
        elif not override.key_or_group.startswith(SEARCH_SPACE):
            continue
        elif override.is_delete():
            params.pop(key, None)
        else:  # a sweep as typed; a quoted one as its text
            params[key] = (
                override.input_line.split("=", 1)[1] if override.is_sweep_override() else override.value()
            )
    typed = {override.key_or_group for override in overrides}
    parser, searched = OverridesParser.create(), []
    for key, value in params.items():
        if key not in typed:
            try:
                searched += parser.parse_overrides([f"{key}={value}"])
            except Exception as error:  # Hydra's grammar error says where the value is malformed
                raise InputError(f"{SEARCH_SPACE}{key}={value}: {first_line(error)}") from None
    return searched


def check_hydra_settings(overrides: Sequence[Any]) -> None:
    """Refuses a sweep of one of Hydra's own settings, which Hydra does not take, and a search-space entry of
    a dotted key (``hydra.sweeper.params.optimizer.lr=...``), which Hydra reads as nested keys the space
    lacks: the command line's own sweep of that key replaces the entry."""
    from hydra.core.override_parser.types import OverrideType

    for override in overrides:
        key, (entry, value) = override.key_or_group, search_entry(override)
        if key.startswith("hydra.") and override.is_sweep_override():
            allowed = f"-m {entry}={value}" if key.startswith(SEARCH_SPACE) else "one value"
            raise InputError(
                f"{override.input_line}: Hydra sweeps none of its own settings; allowed: {allowed}"
            )
        if key.startswith(SEARCH_SPACE) and "." in entry and override.type != OverrideType.DEL:
            raise InputError(
                f"{override.input_line}: Hydra reads {entry} as keys nested in the search space; allowed: "
                f"-m {entry}={value}, which replaces that key's search"
            )


def search_entry(override: Any) -> tuple[str, str]:
    """A ``hydra.sweeper.params.<key>=<value>`` override as the key and the sweep the command line would
    type for it (a quoted sweep as its text)."""
    typed = override.value()
    value = typed if isinstance(typed, str) else override.input_line.split("=", 1)[-1]
    return override.key_or_group.removeprefix(SEARCH_SPACE), value


def check_study_storage(cfg: DictConfig) -> None:
    """A search's ``hydra.sweeper.storage`` is ``null`` (in memory) or a database URL, and an SQLite file
    that exists is an SQLite database: Optuna reports either in a traceback, once the sweep's folder is
    made. Nothing is opened for writing here (nor Optuna imported): a refused command leaves no trace."""
    storage = OmegaConf.select(cfg, "hydra.sweeper.storage", default=None)
    if storage is None:
        return
    from sqlalchemy.engine import make_url  # the Optuna sweeper's (extra `sweeps`)
    from sqlalchemy.exc import ArgumentError

    key = f"hydra.sweeper.storage={storage}"
    try:
        url = make_url(str(storage))
    except ArgumentError:
        raise InputError(f"{key} is not a database URL; allowed: null or sqlite:///<file>") from None
    in_file = url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:")
    path = Path(url.database) if in_file else None  # else in memory, or a server's
    if path is None:
        return
    if path.exists() and (path.is_dir() or not is_sqlite(path)):
        raise InputError(f"{key}: {path} is not an SQLite database; allowed: a new file or a study's")
    from rmsprop_lightning.app.config_checks import check_writable

    check_writable(path.parent, "hydra.sweeper.storage", "a writable folder for the study's file", make=False)


def is_sqlite(path: Path) -> bool:
    """Whether the file is empty (SQLite makes it a database) or starts as every SQLite database does."""
    with path.open("rb") as file:
        return file.read(16) in (b"", b"SQLite format 3\x00")
