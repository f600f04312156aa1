"""The overrides' keys and values checked against the config they compose, before Hydra starts: each swept
value, the launcher's and sweeper's settings (Hydra would answer with a block of text)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict, read_write
from omegaconf.errors import OmegaConfBaseException

from rmsprop_lightning.app.sweep_values import (
    SEARCH_SPACE,
    check_study_storage,
    check_sweep,
    interval_draws,
    override_values,
    search_draws,
    search_entry,
    search_space,
    searches,
)
from rmsprop_lightning.errors import InputError, close_match

# the launcher's and the sweeper's settings, checked with the job's (Hydra would answer with a block of text)
SWEEP_KEYS = ("hydra.launcher.", "hydra.sweeper.")
# launchers that run the jobs on this machine, which must have the devices they ask for
LOCAL_LAUNCHERS = ("basic", "joblib", "joblib_local", "population", "submitit_local")


def check_keys(
    config_dir: Path,
    config_name: str,
    selections: list[str],
    overrides: Sequence[Any],
    groups: Mapping[str, Sequence[str]],
    context: str = "",
    complete: bool = True,
) -> DictConfig | None:
    """Refuses an override of a key the config composed with the group ``selections`` lacks, or a value
    :func:`check_values` refuses (a value left as ``???`` too, if ``complete``); returns that config, with the
    other overrides applied in order as Hydra applies them, up to one it refuses; ``None`` when Hydra cannot
    compose it."""
    from hydra.core.override_parser.types import OverrideType

    # each override that sweeps nothing nor chooses a group, in order (+key, ++key, ~key included)
    edits = [o for o in overrides if not o.is_sweep_override() and o.key_or_group not in groups]
    cfg, applied = compose_edits(config_dir, config_name, selections, edits)
    if cfg is None:  # a config file Hydra cannot read, or one naming what is not there
        refusal = try_compose(config_dir, config_name, selections)
        if isinstance(refusal, str):
            raise InputError(refusal)
        return None  # anything else Hydra finds wrong, it reports itself
    composed = {id(edit) for edit in edits[:applied]}  # their keys exist, their values are in cfg
    searched = search_space(cfg, overrides)
    chosen = {}  # the groups the search space chooses options of, and those options
    for override in searched:
        if override.key_or_group in groups:
            chosen[override.key_or_group] = override_values(override, groups[override.key_or_group]) or []
            for value in chosen[override.key_or_group]:
                check_option(override.key_or_group, value, groups[override.key_or_group])
    values, intervals = [], []
    searching = searches(cfg)
    for override in [*overrides, *searched]:
        key = override.key_or_group
        if override.is_sweep_override():
            check_sweep(override, searching)
        if id(override) in composed or key in groups:
            continue
        if override.type == OverrideType.DEL and "/" not in key:  # a key, not a Hydra group
            check_key(cfg, key, context, removing=True)
            if OmegaConf.select(cfg, key) is None:  # Hydra finds no key to delete where the value is null
                raise InputError(
                    f"{override.input_line}: {key} is null, which Hydra cannot delete; "
                    f"allowed: leaving it null (its default), or {key}=<value>"
                )
        if override.type == OverrideType.ADD and has_key(cfg, key):  # Hydra adds no key that is there
            line = override.input_line.removeprefix("+")
            raise InputError(f"{override.input_line}: {key} is already set; allowed: {line} (or ++{line})")
        adding = override.type in (OverrideType.ADD, OverrideType.FORCE_ADD)  # a swept +key or ++key
        if override.type != OverrideType.CHANGE and not (adding and not override.is_hydra_override()):
            continue
        if key.startswith(SEARCH_SPACE) and OmegaConf.select(cfg, SEARCH_SPACE[:-1]) is None:
            entry, value = search_entry(override)
            raise InputError(
                f"{override.input_line}: this sweeper has no search space to set an entry of; "
                f"allowed: -m {entry}={value}"
            )
        if override.is_hydra_override() and key.startswith(SEARCH_SPACE[:-1]):
            continue  # a search space's keys are checked as the keys they name
        if override.is_hydra_override() and not key.startswith(SWEEP_KEYS):
            check_key(cfg, key, context)
            refusal = try_compose(config_dir, config_name, [*selections, override.input_line])
            if isinstance(refusal, str):  # a value of Hydra's own settings, which Hydra answers with a block
                raise InputError(f"{override.input_line}: {refusal}")
            continue
        try:
            if not adding:
                check_key(cfg, key, context)
        except InputError:  # a key of another option the search space chooses is checked when a job runs
            group = key.split(".")[0]
            options = [f"{group}={option}" for option in chosen.get(group, []) if override in searched]
            if not any(
                has_key(compose_config(config_dir, config_name, [*selections, o]), key) for o in options
            ):
                raise
            continue
        if override.is_interval_sweep():
            intervals.append(override)
            values.append((key, interval_draws(cfg, override)))
        elif drawn := search_draws(override, searching) or override_values(override):
            values.append((key, drawn[:1] if context else drawn))  # with another group option: once
    try:
        check_values(cfg, values, complete)
    except InputError as error:  # an interval's draws are values nobody typed: name the interval
        typed = next((o.input_line for o in intervals if str(error).startswith(o.key_or_group)), None)
        if typed is None:
            raise
        raise InputError(f"{typed} draws values it refuses: {error}") from None
    return cfg


def compose_edits(
    config_dir: Path, config_name: str, selections: Sequence[str], edits: Sequence[Any]
) -> tuple[DictConfig | None, int]:
    """The config composed with the group ``selections`` and the longest run of ``edits`` Hydra applies, and
    how many it applied: an edit it refuses is checked against the config it changes."""
    lines = [edit.input_line for edit in edits]
    cfg = compose_config(config_dir, config_name, [*selections, *lines])
    if cfg is not None:
        return cfg, len(edits)
    cfg, applied, refused = compose_config(config_dir, config_name, selections), 0, len(edits)
    while cfg is not None and refused - applied > 1:  # a longer run of them fails once one fails: bisect
        middle = (applied + refused) // 2
        longer = compose_config(config_dir, config_name, [*selections, *lines[:middle]])
        if longer is None:
            refused = middle
        else:
            cfg, applied = longer, middle
    return cfg, applied


@contextlib.contextmanager
def hydra_on(config_dir: Path) -> Iterator[Any]:
    """Hydra set up on ``config_dir`` for a check before Hydra itself starts, and cleared after it."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(config_dir.absolute()), version_base="1.3"):
            yield GlobalHydra.instance()
    finally:
        GlobalHydra.instance().clear()


def try_compose(config_dir: Path, config_name: str, selections: Sequence[str]) -> DictConfig | str:
    """The config composed with the group ``selections`` and Hydra's own keys, or the first line of the
    reason Hydra gives for not composing it."""
    from hydra import compose

    try:
        with hydra_on(config_dir):
            return compose(config_name, overrides=list(selections), return_hydra_config=True)
    except Exception as error:  # "Error merging override …", caused by what is wrong with it
        return composition_error(error.__cause__ or error)


def composition_error(error: BaseException) -> str:
    """Hydra's reason for not composing a config, in one line: where a file is not YAML, the options of a
    group a defaults list names an option of that is not there."""
    import yaml

    if isinstance(error, yaml.MarkedYAMLError) and error.problem_mark is not None:
        mark = error.problem_mark
        return f"{mark.name}, line {mark.line + 1}: {error.problem}; allowed: YAML (indented with spaces)"
    first, *rest = [line for line in str(error).splitlines() if line.strip()] or [type(error).__name__]
    options = [line.strip() for line in rest if line.startswith("\t") and "=" not in line]
    if "Could not find" in first and options:
        return f"{first}; allowed: {', '.join(options)}"
    return f"{first} {rest[0].strip()}" if first.endswith(":") and rest else first  # the reason follows


def compose_config(config_dir: Path, config_name: str, selections: Sequence[str]) -> DictConfig | None:
    """The config composed with the group ``selections`` and Hydra's own keys, or ``None`` where Hydra
    cannot compose it."""
    composed = try_compose(config_dir, config_name, selections)
    return None if isinstance(composed, str) else composed


def has_key(cfg: DictConfig | None, key: str) -> bool:
    """Whether the composed ``cfg`` has ``key``."""
    return (
        cfg is not None
        and OmegaConf.select(cfg, key, default=KeyError, throw_on_resolution_failure=False) is not KeyError
    )


def check_option(group: str, value: Any, allowed: Sequence[str]) -> None:
    """Refuses ``value`` unless it is one of the group's ``allowed`` options."""
    typed = "null" if value is None else str(value)
    if typed not in allowed:
        raise InputError(
            f"{group}={typed} is not an option of {group}{close_match(typed, allowed)}; "
            f"allowed: {', '.join(allowed)}"
        )


def check_values(cfg: DictConfig, values: Sequence[tuple[str, list[Any]]], complete: bool = True) -> None:
    """Checks the overridden values (:func:`validate_config`) before any job runs: each swept value (or an
    interval's end) among the others' first."""
    from hydra.core.hydra_config import HydraConfig

    from rmsprop_lightning.app.config_checks import (
        accelerator_settings,
        check_nodes,
        check_searched_metric,
        counts_processes,
        validate_config,
    )
    from rmsprop_lightning.app.config_shape import check_missing
    from rmsprop_lightning.app.rules import FLOAT16_MIXED, show

    base = cfg.copy()
    # ${hydra:...} as the first job started here reads it; nothing checked depends on the run's folder
    with open_dict(base):
        base.hydra.runtime.cwd = base.hydra.runtime.output_dir = os.getcwd()
        base.hydra.job.num, base.hydra.job.id = 0, "0"
    HydraConfig.instance().set_config(base)
    searching = searches(base)
    here = base.hydra.runtime.choices.get("hydra/launcher") in LOCAL_LAUNCHERS  # the jobs run on this machine
    firsts = [(key, chosen[0]) for key, chosen in values]
    variants = [firsts] + [
        [*firsts[:index], (key, value), *firsts[index + 1 :]]
        for index, (key, chosen) in enumerate(values)
        for value in chosen[1:]
    ]
    for variant in variants:
        job = base.copy()
        for key, value in variant:
            try:
                with read_write(job.hydra):  # read-only since set_config; a launcher's settings are typed
                    # as Hydra applies an override (a mapping merges); a swept +key adds its key
                    OmegaConf.update(job, key, value, force_add=True)
            except (OmegaConfBaseException, AttributeError) as error:  # AttributeError: into a null mapping
                raise InputError(f"{key}={show(value)}: {str(error).splitlines()[0]}") from None
        validate_config(job)
        if searching:
            check_searched_metric(job)
            check_study_storage(job)
        if complete:  # each swept option, before any job runs
            check_missing(job)
            from rmsprop_lightning.app.targets import check_built_nodes  # imports the targets

            check_built_nodes(job)
            if not here:  # the machine the jobs run on has its own devices
                continue
            check_nodes(OmegaConf.select(job, "trainer.num_nodes"))
            settings = accelerator_settings(job.trainer)
            accelerator, precision, devices, backend = settings
            gpu = str(accelerator) in ("gpu", "cuda", "mps", "tpu") or not counts_processes(devices)
            # float16 mixed precision, or a backend other than the gloo that every build of torch has
            if gpu or str(precision) in FLOAT16_MIXED or backend not in (None, "gloo"):
                from rmsprop_lightning.app.validation import check_accelerator  # torch only then

                check_accelerator(*settings)
            strategy = OmegaConf.select(job, "trainer.strategy")
            if strategy not in (None, "auto", "ddp"):
                from rmsprop_lightning.app.distributed import check_start_method  # Lightning only then

                check_start_method(strategy)


def check_key(cfg: DictConfig, key: str, context: str = "", removing: bool = False) -> None:
    """Refuses ``key`` when ``cfg`` lacks it, naming the keys that exist where it goes (and, unless it is
    being removed, how to add it)."""
    parts = key.split(".")
    for depth in range(1, len(parts) + 1):
        parent_path = ".".join(parts[: depth - 1])
        parent = OmegaConf.select(cfg, parent_path) if parent_path else cfg
        if isinstance(parent, DictConfig):
            names = [str(name) for name in parent]
        else:  # a list's keys are its indices
            names = [str(index) for index in range(len(parent))] if isinstance(parent, ListConfig) else []
        if parts[depth - 1] in names:
            continue
        allowed = sorted(name for name in names if not name.startswith("_"))
        hint = close_match(parts[depth - 1], allowed, f"{parent_path}." if parent_path else "")
        where = (parent_path or "the config's top level") + (f" with {context}" if context else "")
        adds = "" if removing else f" (+{key}=... adds a new key)"
        if f"{parent_path}." in SWEEP_KEYS:  # a launcher takes its own arguments only: another may have it
            group = parent_path.replace(".", "/")  # (a mapping among them, Slurm's, takes new keys)
            adds = f" (another {group.split('/')[1]} may: {group}=<option>)"
        raise InputError(
            f"{'.'.join(parts[:depth])} is not a key of {where}{hint}; "
            f"allowed: {', '.join(allowed) or 'none'}{adds}"
        )
