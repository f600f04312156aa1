"""Plain-data descriptions of objects, so checkpoints stay loadable with ``weights_only=True``.

A module saves its model, optimizer and scheduler as ``{"_target_": ..., **kwargs}`` mappings instead of
pickled objects; :func:`from_spec` rebuilds them with Hydra.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Mapping
from typing import Any

from hydra.utils import get_object, instantiate
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


# the module names of a script: run, or re-run in a spawned process
SCRIPT_MODULES = ("__main__", "__mp_main__")


def importable(obj: Any) -> bool:
    """Whether another process finds ``obj`` by its qualified name: not what a script or a function defines
    (a bound method is found as an equal one)."""
    if getattr(obj, "__module__", "__main__") in SCRIPT_MODULES:
        return False
    try:
        return get_object(qualified_name(obj)) == obj
    except Exception:  # Hydra's locate raises ImportError or ValueError, attribute lookups others
        return False


def takes(cls: type, arguments: Mapping[str, Any]) -> bool:
    """Whether ``cls`` takes ``arguments``: a subclass with a constructor of its own may not take its base's
    ``spec``."""
    try:
        inspect.signature(cls).bind(**arguments)
    except (TypeError, ValueError):
        return False
    return True


def to_spec(obj: Any) -> Any:
    """A ``_target_`` mapping for ``obj`` (a keyword-only ``functools.partial``, an object with a ``spec``
    of its constructor arguments, or plain data), or ``None`` when another process could not rebuild it
    from data."""
    if obj is None or isinstance(obj, PLAIN_TYPES):
        return obj
    if isinstance(obj, functools.partial) and not obj.args:
        if not importable(obj.func):
            return None
        spec = {"_target_": qualified_name(obj.func), "_partial_": True, **plain(obj.keywords)}
    elif isinstance(getattr(obj, "spec", None), Mapping):
        if not (importable(type(obj)) and takes(type(obj), obj.spec)):
            return None
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
