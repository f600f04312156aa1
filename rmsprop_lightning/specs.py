"""Plain-data descriptions of objects, so checkpoints stay loadable with ``weights_only=True``.

A module saves its model, optimizer and scheduler as ``{"_target_": ..., **kwargs}`` mappings instead of
pickled objects; :func:`from_spec` rebuilds them with Hydra.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf

PLAIN_TYPES = (str, int, float, bool, type(None))


def qualified_name(obj: Any) -> str:
    """``module.QualName`` of a class or function, as Hydra's ``_target_`` expects."""
    return f"{obj.__module__}.{obj.__qualname__}"


def plain(value: Any) -> Any:
    """``value`` with OmegaConf containers and tuples turned into dicts and lists."""
    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=True)
    if isinstance(value, Mapping):
        return {str(key): plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [plain(item) for item in value]
    return value


def _is_plain(value: Any) -> bool:
    if isinstance(value, Mapping):
        return all(_is_plain(item) for item in value.values())
    if isinstance(value, list):
        return all(_is_plain(item) for item in value)
    return isinstance(value, PLAIN_TYPES)


def to_spec(obj: Any) -> Any:
    """A ``_target_`` mapping for ``obj`` (a keyword-only ``functools.partial``, an object with a ``spec``
    of its constructor arguments, or plain data), or ``None`` when it cannot be described as data."""
    if obj is None or isinstance(obj, PLAIN_TYPES):
        return obj
    if isinstance(obj, functools.partial) and not obj.args:
        spec = {"_target_": qualified_name(obj.func), "_partial_": True, **plain(obj.keywords)}
    elif isinstance(getattr(obj, "spec", None), Mapping):
        spec = {"_target_": qualified_name(type(obj)), **plain(obj.spec)}
    elif isinstance(obj, Mapping | DictConfig):
        spec = plain(obj)
    else:
        return None
    return spec if _is_plain(spec) else None


def from_spec(value: Any) -> Any:
    """Builds the object a ``_target_`` mapping describes; anything else is returned as is."""
    if isinstance(value, Mapping | DictConfig) and "_target_" in value:
        return instantiate(value, _convert_="all")
    return value
