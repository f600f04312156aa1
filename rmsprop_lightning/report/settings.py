"""A job's settings, as its command line typed them or its ``.hydra`` folder saved them, compared as Hydra
reads them."""

from __future__ import annotations

import functools
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml


def read_yaml(path: Path) -> dict[str, Any]:
    """A saved config as plain data; empty where the file is missing or unreadable."""
    try:
        loaded = yaml.load(
            path.read_text(encoding="utf-8"), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        )
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return {}
    return loaded if isinstance(loaded, dict) else {}


def saved_setting(saved: tuple[dict[str, Any], dict[str, Any]], key: str) -> str:
    """``key`` in a job's saved ``(choices, config)``: a config group's chosen option, or the value (as an
    override types it, interpolations as written); ``-`` where the config does not hold it."""
    choices, value = saved
    if key in choices:
        return typed(choices[key])
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            return "-"
        value = value[part]
    return "-" if isinstance(value, dict) else typed(value)


def typed(value: Any) -> str:
    """A plain value as the command line types it: ``null``, ``true``, ``0.01``."""
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


@functools.cache
def canonical(text: str) -> str:
    """A typed value as Hydra reads it, for comparing settings: ``1e-8`` and ``1.0e-08``, ``False`` and
    ``false`` alike; ``01`` stays a string and ``1.0`` a float, as for Hydra."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        return repr(OverridesParser.create().parse_override(f"key={text}").value())
    except HydraException:  # text the grammar refuses (a=b) is compared as it is
        return text


def short_number(value: str) -> str:
    """``value`` as is, or to 4 significant digits when it is a number longer than 8 characters."""
    if len(value) <= 8:
        return value
    try:
        return f"{float(value):.4g}"
    except ValueError:
        return value


def parse_overrides(overrides: Iterable[str]) -> dict[str, str]:
    """``["a=1", "+b=x"]`` → ``{"a": "1", "b": "x"}`` (Hydra's ``+``/``~``/``++`` prefixes dropped)."""
    parsed = {}
    for override in overrides:
        key, _, value = override.partition("=")
        parsed[key.lstrip("+~")] = value
    return parsed
