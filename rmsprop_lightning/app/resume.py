"""``resume=<run dir>``: continue a run in its own folder, from its last checkpoint, with its own config;
only the overrides in :data:`SAFE_KEYS` are allowed (:mod:`resume_records` writes them into that config)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, OverrideType
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from rmsprop_lightning.app.resume_checks import (
    CHECKPOINT_FOLDER,
    LAST_CHECKPOINT,
    check_best_kept,
    check_not_moved,
    check_nothing_trained,
    check_test_kept,
    last_checkpoint,
)
from rmsprop_lightning.app.run_lock import check_free
from rmsprop_lightning.errors import InputError, first_line
from rmsprop_lightning.internals import hydra_argument_parser
from rmsprop_lightning.summary import read_summary

RESUME_KEY = "resume"
HYDRA_FOLDER = ".hydra"
DATA_PATH = "data.source.path"
# overrides that leave the experiment as it is: when to stop, how often to save, what to show
SAFE_KEYS = (
    "trainer.max_steps",
    "trainer.max_epochs",
    "trainer.max_time",
    "trainer.log_every_n_steps",
    "trainer.enable_progress_bar",
    "callbacks.progress_bar.refresh_rate",
    "callbacks.last_checkpoint.every_n_train_steps",
    "on_nonfinite",
    "test",
    "hydra.verbose",
)
# the safe keys of the run's own config, which record_resume writes back (Hydra's are not in it)
RECORDED_KEYS = tuple(key for key in SAFE_KEYS if not key.startswith("hydra."))
# command-line options that pick another config, which a resume replaces with the run's own
CONFIG_OPTIONS = ("config_path", "config_name", "config_dir", "multirun")


def lenient_select(cfg: DictConfig, key: str) -> Any:
    """The value at ``key``, or ``None`` where it is absent or does not resolve."""
    return OmegaConf.select(cfg, key, default=None, throw_on_resolution_failure=False)


def continues_itself(cfg: DictConfig) -> bool:
    """Whether the run takes up its own last checkpoint: a resume that found one.

    A resume that found none starts again as the run first started, from its ``ckpt_path`` (a branch's
    parent) if it has one.
    """
    run_dir, ckpt_path = cfg.get(RESUME_KEY), cfg.get("ckpt_path")
    return bool(run_dir and ckpt_path) and Path(ckpt_path) == last_checkpoint(run_dir)


def unquoted(text: str) -> str:
    """A typed value as Hydra's grammar reads a quoted string; other text (a path with ``=``) as it is."""
    try:
        value = OverridesParser.create().parse_override(f"value={text}").value()
    except Exception:  # not Hydra's grammar: a folder name with '=', ',' or brackets, as typed
        return text
    return value if isinstance(value, str) else text


def quote(value: str) -> str:
    """Quotes a value for Hydra's override parser (paths may hold '=' or ',')."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def resume_arguments(arguments: Sequence[str], config_dir: Path) -> list[str]:
    """The command line with ``resume=<run dir>`` turned into the run's own config, folder, logging (from
    the app's ``config_dir``) and checkpoint; ``InputError`` for a folder that is not a run or an override
    that would change the experiment."""
    parsed = hydra_argument_parser().parse_args(list(arguments))
    # a user's resume=, +resume= or ++resume=; not the ++resume= written here beside the run's own config,
    # as DDP ranks re-run the command line
    forms = tuple(f"{plus}{RESUME_KEY}=" for plus in ("", "+", "" if parsed.config_dir else "++"))
    position = next((i for i, argument in enumerate(parsed.overrides) if argument.startswith(forms)), None)
    if position is None:
        return list(arguments)
    typed_dir = parsed.overrides[position].split("=", 1)[1]
    if typed_dir == "null":  # the default: no run to continue
        return list(arguments)
    run_dir = Path(unquoted(typed_dir)).expanduser().absolute()
    saved_config = run_dir / HYDRA_FOLDER / "config.yaml"
    if not saved_config.is_file():
        why = f"it has no {HYDRA_FOLDER}/config.yaml" if run_dir.is_dir() else "no such folder"
        raise InputError(
            f"resume={typed_dir} is not a run folder ({why}); "
            "allowed: a folder under logs/<task>/runs/ or a multirun job folder"
        )
    for option in CONFIG_OPTIONS:
        if getattr(parsed, option):
            flag = "--" + option.replace("_", "-")
            raise InputError(
                f"resume= continues one run with its own config; it cannot be combined with {flag}"
            )
    from rmsprop_lightning.app.config_checks import check_writable  # whose checks import this module

    # before Hydra's job logging opens its train.log
    check_writable(run_dir, RESUME_KEY, "a run folder this process can write in", make=False)
    check_free(run_dir, f"resume={typed_dir}")
    try:
        saved = OmegaConf.load(saved_config)
        summary = read_summary(run_dir)  # a record edited or cut short is named here
    except (ValueError, yaml.YAMLError) as error:
        raise InputError(
            f"resume={typed_dir}: its records cannot be read ({first_line(error)}); allowed: a run folder "
            "whose .hydra/config.yaml and metrics.json are as the run wrote them"
        ) from None
    overrides = [argument for index, argument in enumerate(parsed.overrides) if index != position]
    typed = OverridesParser.create().parse_overrides(overrides)
    for override in typed:
        check_override(override, saved)
    check_followers(saved, typed, run_dir)
    flags = [argument for argument in arguments if argument not in parsed.overrides]
    rewritten = [
        f"--config-dir={run_dir / HYDRA_FOLDER}",
        "--config-name=config",
        *flags,
        # with ++, a key of the run's config is set whether it has it or not (an older run's may not)
        *(
            f"++{o.input_line.lstrip('+')}" if o.key_or_group in RECORDED_KEYS else o.input_line
            for o in typed
        ),
        f"++{RESUME_KEY}={quote(str(run_dir))}",
        f"hydra.run.dir={quote(str(run_dir))}",
        "hydra.output_subdir=null",  # the run's .hydra records stay as they are
    ]
    rewritten += recorded_logging(saved, run_dir, config_dir)
    rewritten += started_where_it_was(saved, run_dir)
    checkpoint = last_checkpoint(run_dir)
    if checkpoint.is_file():
        changed = {o.key_or_group: o.value() for o in typed}
        limits = {
            key: changed.get(f"trainer.{key}", OmegaConf.select(saved, f"trainer.{key}", default=None))
            for key in ("max_steps", "max_epochs")
        }
        from rmsprop_lightning.app.validation import check_steps_left, load_checkpoint

        state = load_checkpoint(checkpoint)
        new_limits = any(f"trainer.{key}" in changed for key in limits)
        if new_limits or summary.get("status") == "completed":
            check_steps_left(state, limits, f"resume={run_dir}: its {checkpoint.name}")
        check_test_kept(changed.get("test"), summary, run_dir)
        # else a run that stopped after its training, before its test ended, has its test run
        check_not_moved(state, run_dir)
        test = changed.get("test", OmegaConf.select(saved, "test", default=True))
        check_best_kept(state, saved.trainer, limits["max_steps"], test, checkpoint)
        rewritten.append(f"++ckpt_path={quote(str(checkpoint))}")
    else:
        check_nothing_trained(summary, run_dir)
        print(
            f"resume={run_dir}: no {checkpoint.name} yet, so the run starts again from step 0 in its folder"
        )
    return rewritten


def recorded_logging(saved: DictConfig, run_dir: Path, config_dir: Path) -> list[str]:
    """The run's log file name and logging configs as Hydra recorded them (the saved config has no ``hydra``
    part, and Hydra's defaults would log into ``<script>.log`` in another format)."""
    hydra_file = run_dir / HYDRA_FOLDER / "hydra.yaml"
    if not hydra_file.is_file():
        return []
    recorded = OmegaConf.load(hydra_file).hydra
    raw_name = OmegaConf.to_container(recorded.job)["name"]  # as written, e.g. ${task_name}
    name = OmegaConf.select(
        OmegaConf.merge(saved, {"_job_name": raw_name}), "_job_name", throw_on_resolution_failure=False
    )
    settings = [f"hydra.searchpath=[{quote(f'file://{config_dir}')}]"]
    settings += [f"hydra.job.name={quote(str(name))}"] if name else []
    for group in ("hydra/job_logging", "hydra/hydra_logging"):  # the app's own, where the run chose them
        choice = recorded.runtime.choices.get(group)
        if choice and (config_dir / group / f"{choice}.yaml").is_file():
            settings.append(f"{group}={choice}")
    return settings


def started_where_it_was(saved: DictConfig, run_dir: Path) -> list[str]:
    """An override that reads a relative ``data.source.path`` from the folder the run was started in, as
    Hydra recorded it, where that file still is; none for an absolute path (the data check compares)."""
    path = lenient_select(saved, DATA_PATH)
    hydra_file = run_dir / HYDRA_FOLDER / "hydra.yaml"
    if not isinstance(path, str) or Path(path).expanduser().is_absolute() or not hydra_file.is_file():
        return []
    started_in = OmegaConf.select(OmegaConf.load(hydra_file), "hydra.runtime.cwd", default=None)
    if started_in is None or not (Path(started_in) / path).is_file():
        return []
    return [f"++{DATA_PATH}={quote(str(Path(started_in) / path))}"]


def check_override(override: Override, saved: DictConfig) -> None:
    """Refuses an override that would make the resumed run a different experiment."""
    key = override.key_or_group
    if key in SAFE_KEYS and override.type in (OverrideType.CHANGE, OverrideType.ADD, OverrideType.FORCE_ADD):
        if override.is_sweep_override():
            raise InputError(
                f"resume: {override.input_line} is a sweep; allowed: one value (a resume is one run)"
            )
        parent = key.rpartition(".")[0]
        if key in RECORDED_KEYS and parent and not isinstance(lenient_select(saved, parent), DictConfig):
            raise InputError(
                f"resume: {override.input_line}: the run has no {parent}; allowed: settings of what it has "
                f"(its {HYDRA_FOLDER}/config.yaml)"
            )
        return
    if override.type == OverrideType.CHANGE and not override.is_sweep_override():
        current = lenient_select(saved, key)
        if not isinstance(current, DictConfig | ListConfig | None) and current == override.value():
            return
    raise InputError(
        f"resume: {override.input_line} would change the experiment; allowed when resuming: "
        f"{', '.join(SAFE_KEYS)} (to branch off, start a new run with ckpt_path=<run>/{CHECKPOINT_FOLDER}/"
        f"{LAST_CHECKPOINT})"
    )


def leaf_keys(node: Any, prefix: str = "") -> list[str]:
    """The dotted keys of every value in a container read without resolving it (``{"a": {"b": 1}}`` → a.b)."""
    if isinstance(node, dict):
        return [key for name, value in node.items() for key in leaf_keys(value, f"{prefix}{name}.")]
    return [prefix.removesuffix(".")]


def resolved(value: Any) -> Any:
    """A selected value, its lists and mappings as plain containers with their interpolations resolved."""
    if not isinstance(value, DictConfig | ListConfig):
        return value
    try:
        return OmegaConf.to_container(value, resolve=True)
    except OmegaConfBaseException:  # a resolver only Hydra's run has (${hydra:...})
        return OmegaConf.to_container(value)


def check_followers(saved: DictConfig, overrides: Sequence[Override], run_dir: Path) -> None:
    """Refuses a safe override that another setting follows by interpolation (a cosine's ``T_max`` follows
    ``trainer.max_steps``): the checkpoint restores what that setting built, so the config would be wrong."""
    changed = saved.copy()
    for override in overrides:
        OmegaConf.update(changed, override.key_or_group, override.value(), force_add=True)
    for key in leaf_keys(OmegaConf.to_container(saved, resolve=False)):
        before, after = (resolved(lenient_select(config, key)) for config in (saved, changed))
        if key not in SAFE_KEYS and before != after:
            typed = " ".join(override.input_line for override in overrides)
            raise InputError(
                f"resume: {typed} would change {key} ({before} → {after}), which the checkpoint restores as "
                f"it was; allowed: resume={run_dir} alone, or a new run from it with its settings and "
                f"{typed} ckpt_path={last_checkpoint(run_dir)}"
            )
