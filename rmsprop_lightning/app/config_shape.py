"""The composed config's shape, checked before its values: the nodes a run builds from, each naming the class
it builds, and no key nothing reads (a misspelt key in a config file would otherwise be ignored)."""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf

from rmsprop_lightning.errors import InputError, close_match

# the nodes that build the run's objects, and those read as they are
BUILT_NODES = ("data", "model", "optimizer", "trainer")
NEEDED_NODES = (*BUILT_NODES, "scheduler", "paths", "module")
# the keys of the scheduler node: the scheduler and when Lightning steps it
SCHEDULER_KEYS = ("scheduler", "interval", "frequency", "monitor")
# the groups of named entries, each building a callback or a logger
ENTRY_GROUPS = ("callbacks", "logger")
# callbacks Lightning refuses to run without a logger
NEEDS_LOGGER = (".LearningRateMonitor", ".OptimizerStateMonitor")
# how alike an entry's name must be to another's to be taken for a misspelling of it (model_checkpont)
TYPO_CUTOFF = 0.85
# the keys of the config's top level that the template reads
TOP_LEVEL_KEYS = frozenset(
    {
        *NEEDED_NODES,
        *ENTRY_GROUPS,
        "task_name",
        "seed",
        "optimized_metric",
        "ckpt_path",
        "ckpt_restore",
        "resume",
        "on_nonfinite",
        "train",
        "test",
        "threads_per_job",
        "hydra",
    }
)
# the names an interpolation may read: ${name}, ${oc.select:name,0}, ${name.key}
NAME = re.compile(r"[A-Za-z_][\w-]*")


def check_shape(cfg: DictConfig) -> None:
    """Refuses a config lacking a node a run builds from, a node without the class it builds, a key of
    ``scheduler`` it lacks, a callback needing a logger without one or an entry whose name is a close match of
    another's, or an option whose keys went under its group's name."""
    choices, added = hydra_choices(), hydra_additions()
    check_nodes_built(cfg, choices)
    check_entries(cfg)
    check_top_level(cfg, {key: option for key, option in choices.items() if key not in added})


def check_nodes_built(cfg: DictConfig, choices: Mapping[str, str]) -> None:
    """Every node a run builds from is there and names its class; a scheduler's class sits where it goes."""
    check_needed(cfg, *NEEDED_NODES, choices=choices)
    for key in BUILT_NODES:
        check_target(cfg[key], key, choices.get(key))
    if "_target_" in cfg.scheduler:
        raise InputError(
            f"scheduler._target_={cfg.scheduler._target_}: a scheduler's class goes in scheduler.scheduler, "
            "with interval and frequency beside it; allowed: a file shaped as conf/scheduler/step.yaml"
        )
    for key in cfg.scheduler:
        if key not in SCHEDULER_KEYS:
            hint = close_match(str(key), SCHEDULER_KEYS, "scheduler.")
            raise InputError(
                f"scheduler.{key} is not a key of scheduler{hint}; allowed: {', '.join(SCHEDULER_KEYS)}"
            )
    if cfg.scheduler.get("scheduler") is not None:
        check_target(cfg.scheduler.scheduler, "scheduler.scheduler", choices.get("scheduler"))


def check_needed(cfg: DictConfig, *keys: str, choices: Mapping[str, str] | None = None) -> None:
    """Refuses a config in which one of the mappings ``keys`` is missing or null."""
    for key in keys:
        node = OmegaConf.select(cfg, key, throw_on_resolution_failure=False)
        if not isinstance(node, DictConfig):
            state = "missing" if key not in cfg else "null" if node is None else f"{node!r}, not a mapping,"
            chosen = hydra_choices() if choices is None else choices
            allowed = f"{key}=<option>" if key in chosen else f"the {key}: mapping of conf/train.yaml"
            raise InputError(
                f"{key} is {state} in the config, and every run builds from it; allowed: {allowed}"
            )


def check_entries(cfg: DictConfig) -> None:
    """An entry without a class is not a misspelt name of one with a class, and a callback that needs a
    logger has one (Lightning would fail at the start)."""
    targets = {
        f"{group}.{name}": str(entry.get("_target_"))
        for group in ENTRY_GROUPS
        for name, entry in (cfg.get(group) or {}).items()
        if isinstance(entry, DictConfig) and "_target_" in entry
    }
    for group in ENTRY_GROUPS:
        built = [key.removeprefix(f"{group}.") for key in targets if key.startswith(f"{group}.")]
        for name, entry in (cfg.get(group) or {}).items():
            typo = difflib.get_close_matches(str(name), built, n=1, cutoff=TYPO_CUTOFF)
            if isinstance(entry, DictConfig) and "_target_" not in entry and typo:
                raise InputError(
                    f"{group}.{name} names no class (_target_), so nothing builds it (did you mean "
                    f"{group}.{typo[0]}?); allowed: the names of {group}: {', '.join(built)}"
                )
    needing = [
        key
        for key, target in targets.items()
        if key.startswith("callbacks.") and target.endswith(NEEDS_LOGGER)
    ]
    if needing and not any(key.startswith("logger.") for key in targets):
        drop = " ".join(f"~{name}" for name in needing)
        raise InputError(
            f"{' and '.join(needing)} need a logger but logger is empty; "
            f"allowed: logger=tensorboard or logger=csv, or callbacks=none or {drop}"
        )


def check_top_level(cfg: DictConfig, choices: Mapping[str, Any]) -> None:
    """Refuses a group's name among the top-level keys that nothing reads: an option whose file lacks its
    package line, so that its keys went under the group's name (an empty one sets nothing)."""
    read = TOP_LEVEL_KEYS | interpolated_names(cfg)
    for key in cfg:
        node = cfg.get(key) if key in choices and key not in read else None
        if isinstance(node, DictConfig) and len(node):
            raise InputError(
                f"{key}={choices[key]} sets {key}.{next(iter(node))}, which nothing reads: its file lacks "
                f"'# @package _global_' as its first line; allowed: that line, or a value reading {key}.*"
            )


def unread_keys(cfg: DictConfig, added: set[str]) -> list[tuple[str, str]]:
    """The top-level keys of a config composed with Hydra's settings that neither the template, an
    interpolation nor a ``+key=`` override reads or added, with a close match (if any): the warnings a run
    starts with (a key an experiment adds for an interpolation is unread once an override replaces it)."""
    read = TOP_LEVEL_KEYS | added | interpolated_names(cfg)
    allowed = sorted(TOP_LEVEL_KEYS - {"hydra"})
    unread = [
        key for key, value in cfg.items_ex(resolve=False) if key not in read and value not in (None, {})
    ]
    return [(str(key), close_match(str(key), allowed)) for key in unread]


def check_missing(cfg: DictConfig, path: str = "") -> None:
    """Refuses a value the config leaves for the command line (``???``), such as a CSV's path."""
    for key, value in cfg.items_ex(resolve=False):
        name = f"{path}{key}"
        if OmegaConf.is_missing(cfg, key):
            raise InputError(f"{name} is missing; allowed: set {name}=... on the command line")
        if isinstance(value, DictConfig) and name != "hydra":
            check_missing(value, f"{name}.")


def check_target(node: Any, path: str, choice: str | None) -> None:
    """Refuses a node that names no class to build (``_target_``)."""
    if not (isinstance(node, DictConfig) and "_target_" in node):
        option = f"{path.split('.')[0]}={choice}" if choice else "the config"
        raise InputError(
            f"{path} has no _target_ in {option}, so nothing builds it; allowed: {path}._target_=<class>, "
            "or an option that names one"
        )


def hydra_choices() -> Mapping[str, str]:
    """The config groups' chosen options, as Hydra records them for this job (none outside Hydra)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return {}
    choices = OmegaConf.to_container(HydraConfig.get().runtime.choices, resolve=False)
    return {str(key): str(value) for key, value in choices.items() if value is not None}


def hydra_additions() -> set[str]:
    """The top-level keys and groups that ``+key=``/``++key=`` overrides added, as Hydra records them for this
    job (none outside Hydra)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return set()
    typed = OmegaConf.to_container(HydraConfig.get().overrides.task, resolve=False)  # text: no interpolation
    return {line.lstrip("+").split("=")[0].split(".")[0] for line in typed if line.startswith("+")}


def interpolated_names(cfg: DictConfig) -> set[str]:
    """Every name inside the interpolations of the config's values, unresolved."""
    names: set[str] = set()

    def walk(value: Any) -> None:
        if isinstance(value, Mapping | list):
            for item in value.values() if isinstance(value, Mapping) else value:
                walk(item)
        elif isinstance(value, str):
            names.update(name for body in interpolations(value) for name in NAME.findall(body))

    walk(OmegaConf.to_container(cfg, resolve=False))
    return names


def interpolations(text: str) -> list[str]:
    """The text inside each outermost ``${...}`` of ``text``."""
    bodies, depth, start = [], 0, 0
    for index, char in enumerate(text):
        if text.startswith("${", index):
            depth, start = depth + 1, index + 2 if depth == 0 else start
        elif char == "}" and depth:
            depth -= 1
            if depth == 0:
                bodies.append(text[start:index])
    return bodies
