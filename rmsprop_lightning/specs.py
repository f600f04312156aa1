"""Plain-data descriptions of objects, so checkpoints stay loadable with ``weights_only=True``.

A module saves its model, optimizer and scheduler as ``{"_target_": ..., **kwargs}`` mappings instead of
pickled objects; :func:`from_spec` rebuilds them with Hydra.
"""

from __future__ import annotations

import functools
import importlib
import inspect
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


# the module names of a script: run, or re-run in a spawned process
SCRIPT_MODULES = ("__main__", "__mp_main__")


def importable(obj: Any) -> bool:
    """Whether another process finds ``obj`` (a class or function) by its qualified name, as Hydra locates a
    ``_target_``: not what a script or a function defines (a bound method is found as an equal one)."""
    module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", "")
    if module is None or module in SCRIPT_MODULES or "<" in qualname:  # <locals>, <lambda>
        return False
    try:
        found = importlib.import_module(module)
        for name in qualname.split("."):
            found = getattr(found, name)
    except (ImportError, AttributeError):
        return False
    return found == obj


def describes(cls: type, arguments: Mapping[str, Any]) -> bool:
    """Whether ``arguments`` name each parameter of ``cls``'s constructor and nothing else: a subclass with
    parameters of its own (or ``**kwargs``) is not described by the ``spec`` its base wrote."""
    try:
        parameters = inspect.signature(cls).parameters.values()
    except (TypeError, ValueError):
        return False
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return all(p.kind in named for p in parameters) and {p.name for p in parameters} == set(arguments)


def to_spec(obj: Any) -> Any:
    """A ``_target_`` mapping for ``obj`` (a class or function, a keyword-only ``functools.partial`` of one,
    an object with a ``spec`` of its constructor arguments, or plain data), or ``None`` when another process
    could not rebuild it from data."""
    if obj is None or isinstance(obj, PLAIN_TYPES):
        return obj
    if isinstance(obj, functools.partial) and not obj.args:
        if not importable(obj.func):
            return None
        spec = {"_target_": qualified_name(obj.func), "_partial_": True, **plain(obj.keywords)}
    elif isinstance(obj, type) or inspect.isroutine(obj):  # a factory called as it is
        return {"_target_": qualified_name(obj), "_partial_": True} if importable(obj) else None
    elif isinstance(getattr(obj, "spec", None), Mapping):
        if not (importable(type(obj)) and describes(type(obj), obj.spec)):
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
