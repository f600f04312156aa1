"""The classes the config builds, checked against their signatures before anything is built: each node's
``_target_`` imports and takes the node's keys (a misspelt key in a config file would reach the class)."""

from __future__ import annotations

import functools
import inspect

from hydra.utils import get_object
from omegaconf import DictConfig, OmegaConf

from rmsprop_lightning.app.config_checks import HYDRA_KEYS
from rmsprop_lightning.errors import InputError, close_match, first_line

# constructor arguments the project passes at call time rather than from the config
CALL_TIME_ARGUMENTS = {"optimizer": ("params",), "scheduler.scheduler": ("optimizer",)}
# the LightningModule the run builds, and the arguments it gets from other groups than module
MODULE = "rmsprop_lightning.module.RegressionModule"
RUN_ARGUMENTS = (
    "model",
    "optimizer",
    "scheduler",
    "scheduler_interval",
    "scheduler_frequency",
    "scheduler_monitor",
)


def check_built_nodes(cfg: DictConfig) -> None:
    """The targets of every node but Hydra's take the node's keys (:func:`check_targets`), and the module
    takes the keys of ``module``."""
    for key in cfg:
        node = cfg.get(key) if key != "hydra" else None
        if isinstance(node, DictConfig):
            check_targets(node, str(key))
    names, _ = target_parameters(MODULE)
    allowed = sorted(set(names) - set(RUN_ARGUMENTS))
    for key in cfg.module:
        if key not in allowed:
            hint = close_match(str(key), allowed, "module.")
            raise InputError(
                f"module.{key} is not an option of {MODULE}{hint}; allowed: {', '.join(allowed)}"
            )


def check_targets(node: DictConfig, path: str = "") -> None:
    """Every config node with a ``_target_`` names an importable callable that takes each of its keys."""
    if "_target_" in node:
        check_options(node, path)
    for key, value in node.items_ex(resolve=False):
        child = node.get(key) if isinstance(value, DictConfig) else None  # resolved; None for a null node
        if isinstance(child, DictConfig):
            check_targets(child, f"{path}.{key}" if path else str(key))


@functools.cache
def target_parameters(target_name: str) -> tuple[tuple[str, ...], frozenset[str]] | None:
    """The names ``target_name``'s callable takes, in order, and those it requires, or ``None`` when it takes
    ``**kwargs``; a sweep's jobs share their targets, so each is imported and inspected once."""
    parameters = inspect.signature(get_object(target_name)).parameters.values()
    if any(parameter.kind is inspect.Parameter.VAR_KEYWORD for parameter in parameters):
        return None
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    required = {p.name for p in parameters if p.kind in kinds and p.default is inspect.Parameter.empty}
    return tuple(p.name for p in parameters), frozenset(required)


def check_options(node: DictConfig, path: str) -> None:
    """The keys of one ``_target_`` node are parameters of its target (unless it takes ``**kwargs``), and
    it sets every parameter the target requires."""
    target_name = node._target_
    try:
        parameters = target_parameters(target_name)
    except Exception as error:  # Hydra's ImportError holds the import's error, and paragraphs of advice
        cause = error.__cause__ or error
        raise InputError(
            f"{path}._target_={target_name} cannot be imported ({type(cause).__name__}: {first_line(cause)});"
            " allowed: a callable importable here (its module's folder on PYTHONPATH)"
        ) from error
    if parameters is None:
        return
    names, required = parameters
    allowed = sorted(set(names) - set(CALL_TIME_ARGUMENTS.get(path, ())))
    given = names[: len(node.get("_args_") or ())]  # positionally, by _args_
    for key in node:
        if key not in HYDRA_KEYS and key not in allowed:
            hint = close_match(str(key), allowed, f"{path}.")
            raise InputError(
                f"{path}.{key} is not an option of {target_name}{hint}; allowed: {', '.join(allowed)}"
            )
    for name in sorted(required.intersection(allowed).difference(given)):
        if name not in node or OmegaConf.is_missing(node, name):
            raise InputError(f"{path}.{name} is missing; {target_name} needs it: set {path}.{name}=...")
