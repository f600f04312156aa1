"""What the entry points do before Hydra starts: ``resume=``, and one line for a bad command line where
Hydra would answer with a block of text (what was typed, what is allowed, a close match)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from rmsprop_lightning.app.command_flags import check_config_flags, check_flags_first, check_output_folder
from rmsprop_lightning.app.config_shape import unread_keys
from rmsprop_lightning.app.override_checks import check_keys, check_option, compose_config, hydra_on
from rmsprop_lightning.app.resume import resume_arguments
from rmsprop_lightning.app.search_path import (
    SEARCH_PATH,
    adds_options,
    check_no_glob,
    check_not_hidden,
    group_options,
    search_path_overrides,
)
from rmsprop_lightning.app.sweep_values import check_hydra_settings, override_values, search_space
from rmsprop_lightning.errors import InputError, exit_with, is_rank_zero
from rmsprop_lightning.internals import hydra_argument_parser

# flags that choose another primary config: the command line is then Hydra's to check
OTHER_CONFIG = ("config_path", "config_name", "config_dir")
# Hydra's flags that choose what the command does, of which one at most may be given
MODES = {"--run": "run", "--multirun": "multirun", "--cfg": "cfg", "--info": "info"}
# Hydra's groups that choose the launcher and the sweeper, whose settings a sweep's config holds
HYDRA_GROUPS = ("hydra/launcher", "hydra/sweeper")
# groups that only a multirun uses
SWEEP_GROUPS = ("hparams_search", *HYDRA_GROUPS)
# the groups a run is built from, which an option may replace but nothing may remove
NEEDED_GROUPS = ("data", "model", "optimizer", "scheduler", "trainer", "paths")
# keys other settings read, which a command line may change but neither remove nor set to null
NEEDED_KEYS = ("seed", "module", "paths.root_dir", "paths.log_dir")
# the keys left out of a multirun job's folder name
EXCLUDE_KEYS = "hydra.job.config.override_dirname.exclude_keys"
# the lines of Hydra's grammar errors around the one that says what is wrong
GRAMMAR_NOISE = ("Error parsing override", "See https://hydra.cc")


def run_app(hydra_main: Callable[[], Any], config_dir: str | Path, config_name: str = "train") -> None:
    """Runs a ``@hydra.main`` function on ``sys.argv``: ``resume=<run dir>`` rewritten, overrides checked."""
    arguments = sys.argv[1:]
    try:
        check_flags_first(arguments)
        sys.argv[1:] = resume_arguments(arguments, Path(config_dir))
        if sys.argv[1:] == arguments:
            sys.argv[1:] = checked_command_line(Path(config_dir), config_name, arguments)
    except InputError as error:
        exit_with(error)
    hydra_main()


def checked_command_line(config_dir: Path, config_name: str, arguments: Sequence[str]) -> list[str]:
    """The command line to run, once no override names a config option or a key that does not exist.

    A multirun's job folders (and TensorBoard runs) are named by the keys that vary across the sweep only.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import Glob

    parsed = hydra_argument_parser().parse_args(list(arguments))
    subcommands = [o for o in parsed.overrides if o.partition("=")[0] in ("install", "uninstall", "query")]
    if parsed.shell_completion and len(subcommands) != 1:  # Hydra's answer is a traceback
        raise InputError(
            "--shell-completion needs one subcommand; allowed: install=bash, uninstall=bash, query="
        )
    if parsed.experimental_rerun and not Path(parsed.experimental_rerun).is_file():
        raise InputError(
            f"--experimental-rerun={parsed.experimental_rerun}: no such file; allowed: the config.pickle "
            "that Hydra's PickleJobInfoCallback wrote for a run"
        )
    if parsed.shell_completion or parsed.experimental_rerun:  # its arguments are not overrides
        return list(arguments)
    modes = [flag for flag, given in MODES.items() if getattr(parsed, given)]
    if len(modes) > 1:
        raise InputError(f"{' and '.join(modes)} cannot be combined; allowed: one of {', '.join(MODES)}")
    if parsed.resolve and not (parsed.cfg or parsed.help):
        raise InputError("--resolve shows a resolved config; allowed: with --cfg or --help")
    if parsed.resolve and parsed.cfg == "hydra":  # Hydra resolves its node alone: hydra.run.dir reads paths.*
        raise InputError(
            "--cfg hydra --resolve: Hydra's folders read the run's paths; allowed: --cfg all --resolve"
        )
    parser, overrides = OverridesParser.create(), []
    for argument in parsed.overrides:  # each alone, to name the one Hydra's grammar refuses
        try:
            overrides += parser.parse_overrides([argument])
        except Exception as error:  # Hydra's message says where the override is malformed
            key, _, value = argument.partition("=")
            path = "/" in value or not any(mark in value for mark in "[]{}(),")  # a job folder's: 0_seed=0
            special = "holding '='" if "=" in value else "starting with '~'" if value.startswith("~") else ""
            if special and path and not any(quote in value for quote in "'\""):
                raise InputError(
                    f"{argument}: a value {special} is quoted for Hydra; allowed: \"{key}='{value}'\""
                ) from None
            detail = [line for line in str(error).splitlines() if not line.startswith(GRAMMAR_NOISE)]
            raise InputError(
                f"{argument}: {(detail or ['not an override'])[0].strip()}; allowed: key=value in Hydra's "
                "override grammar (a value with spaces, commas or brackets quoted)"
            ) from None
    check_hydra_settings(overrides)
    multirun = parsed.multirun or any(
        o.key_or_group == "hydra.mode" and str(o.value()).removeprefix("RunMode.") == "MULTIRUN"
        for o in overrides
    )
    for override in overrides:  # a run's folder is Hydra's: set apart, it would split the run in two
        if override.key_or_group == "paths.output_dir":
            raise InputError(
                f"{override.input_line}: paths.output_dir is the folder Hydra makes for each run; allowed: "
                "hydra.run.dir=<folder> (hydra.sweep.dir=<folder> for a sweep)"
            )
    if any(getattr(parsed, option) for option in OTHER_CONFIG):
        searched = any(o.key_or_group == SEARCH_PATH for o in overrides)
        check_config_flags(parsed, config_dir, config_name, searched)
        named = (parsed.config_name or config_name).removesuffix(".yaml")
        own = parsed.config_path or not (config_dir / f"{named}.yaml").is_file()
        if own or not is_rank_zero():  # configs of the user's own, which Hydra checks; a DDP rank's job
            check_output_folder(overrides, multirun, None)
            return list(arguments)
        config_name = named  # one of these configs, checked as the default one
    typed_paths = [o for o in overrides if o.key_or_group == SEARCH_PATH and not o.is_delete()]
    for override in typed_paths:  # the user's own configs too
        if not (isinstance(override.value(), list) and all(isinstance(p, str) for p in override.value())):
            raise InputError(
                f"{override.input_line} is not a list of folders; allowed: {SEARCH_PATH}=[file:///abs/dir]"
            )
    searchpath = search_path_overrides(typed_paths, parsed.config_dir)
    check_hydra_options(config_dir, config_name, overrides, searchpath)
    printing = parsed.cfg or parsed.info  # one job's config, which may show a sweep's groups
    if printing or not (multirun or parsed.help or parsed.hydra_help):  # one job
        for override in overrides:
            if override.is_sweep_override() or (override.key_or_group in SWEEP_GROUPS and not printing):
                edits = [*searchpath, *(o.input_line for o in overrides if not o.is_sweep_override())]
                if not printing and sweeps_itself(compose_config(config_dir, config_name, edits)):
                    multirun = True  # an experiment's hydra.mode: MULTIRUN
                    break
                allowed = "one value, as --cfg and --info show one job" if printing else "the same with -m"
                raise InputError(f"{override.input_line} is for a sweep; allowed: {allowed}")
    groups = group_options(config_dir, config_name, searchpath)
    entries = OmegaConf.load(config_dir / f"{config_name}.yaml").get("defaults", [])
    defaults = {str(key) for entry in entries if isinstance(entry, DictConfig) for key in entry}
    # each group's first option (Hydra's launcher and sweeper as chosen); every other option of a swept group
    selections = [*searchpath, *(o.input_line for o in overrides if o.key_or_group.startswith(HYDRA_GROUPS))]
    others = []
    for override in overrides:
        group = override.key_or_group
        if group in NEEDED_KEYS and (override.is_delete() or override.value() is None):
            raise InputError(
                f"{override.input_line}: other settings read {group}; allowed: a value of {group}"
            )
        if override.is_delete() and group in NEEDED_GROUPS:
            raise InputError(
                f"{override.input_line} removes a group every run needs; "
                f"allowed: {group}=<option> with one of {', '.join(groups[group])}"
            )
        chosen = (
            None if group not in groups or override.is_delete() else override_values(override, groups[group])
        )
        if chosen is None:
            continue
        globbed = typed_paths and isinstance(override.value(), Glob)  # Hydra's glob() reads conf/ alone
        if globbed and adds_options(groups, config_dir, group):
            raise InputError(
                f"{override.input_line}: glob() does not see the options of hydra.searchpath; allowed: "
                f"{group}={','.join(chosen)}"
            )
        if not chosen:
            raise InputError(
                f"{override.input_line} matches no option of {group}; allowed: {', '.join(groups[group])}"
            )
        if override.is_add() and group in defaults:
            raise InputError(
                f"{override.input_line}: the config already chooses an option of {group}, so + cannot add "
                f"one; allowed: {override.input_line.lstrip('+')}"
            )
        for choice in chosen:  # one option, or a list of options merged
            for value in choice if isinstance(choice, list) else [choice]:
                check_option(group, value, groups[group])
        options = [f"[{','.join(map(str, c))}]" if isinstance(c, list) else c for c in chosen]
        selections.append(f"{override.get_key_element()}={options[0]}")
        others += [(len(selections) - 1, f"{override.get_key_element()}={option}") for option in options[1:]]
    jobs = not (parsed.cfg or parsed.info or parsed.help or parsed.hydra_help)  # these leave ??? for later
    cfg = check_keys(config_dir, config_name, selections, overrides, groups, complete=jobs)
    composed = [("", cfg)]  # each option of a swept group: a key or value may hold in one and not another
    for index, other in others:
        swept = [*selections[:index], other, *selections[index + 1 :]]
        checked = check_keys(config_dir, config_name, swept, overrides, groups, context=other, complete=jobs)
        composed.append((other, checked))
    multirun = multirun or sweeps_itself(cfg)
    if jobs:
        warn_unread_keys(
            composed, {o.key_or_group.split(".")[0] for o in overrides if o.input_line[0] == "+"}
        )
    if searchpath and cfg is not None:
        check_not_hidden(cfg.hydra.runtime.choices, config_dir, OmegaConf.select(cfg, SEARCH_PATH))
    typed = next((o.input_line for o in overrides if o.key_or_group == "experiment"), "the config")
    if typed_paths and cfg is not None:  # a sweep the config holds, such as experiment=variants
        check_no_glob(search_space(cfg, overrides), groups, config_dir, typed)
    check_output_folder(overrides, multirun, cfg)
    params = OmegaConf.select(cfg, "hydra.sweeper.params") if cfg is not None else None
    if jobs and not multirun and params:  # an experiment's sweep (hparams_search's is refused above)
        raise InputError(
            f"{typed} sweeps {', '.join(params)} (hydra.sweeper.params); allowed: the same with -m, or "
            "hydra.sweeper.params=null for one run"
        )
    if not multirun or printing or cfg is None or any(o.key_or_group == EXCLUDE_KEYS for o in overrides):
        return list(arguments)
    common = [o.key_or_group for o in overrides if not o.is_sweep_override() and not o.is_hydra_override()]
    excluded = [*OmegaConf.select(cfg, EXCLUDE_KEYS), *common]
    # after the last override: Hydra's parser takes no override after a flag that follows overrides
    after = max((i + 1 for i, argument in enumerate(arguments) if argument in parsed.overrides), default=0)
    exclude = f"{EXCLUDE_KEYS}=[{','.join(dict.fromkeys(excluded))}]"
    return [*arguments[:after], exclude, *arguments[after:]]


def warn_unread_keys(composed: Sequence[tuple[str, DictConfig | None]], added: set[str]) -> None:
    """Prints a warning for each top-level key that the composed configs set and nothing reads (with the
    option of a swept group that sets it, where it is not the first)."""
    said = set()
    for option, cfg in composed:
        for key, hint in unread_keys(cfg, added) if cfg is not None else []:
            if key not in said:
                said.add(key)
                where = f" (with {option})" if option else ""
                print(
                    f"warning: {key} is set, but nothing reads it{hint}{where}", file=sys.stderr, flush=True
                )


def sweeps_itself(cfg: DictConfig | None) -> bool:
    """Whether a composed config asks for a sweep itself (``hydra.mode: MULTIRUN``, an experiment's)."""
    return cfg is not None and "MULTIRUN" in str(OmegaConf.select(cfg, "hydra.mode"))


def check_hydra_options(
    config_dir: Path, config_name: str, overrides: Sequence[Any], searchpath: Sequence[str]
) -> None:
    """Refuses an option of Hydra's launcher or sweeper group that no plugin, ``conf/`` or typed
    ``hydra.searchpath`` provides."""
    from hydra.core.object_type import ObjectType

    chosen = [override for override in overrides if override.key_or_group in HYDRA_GROUPS]
    if not chosen:
        return
    with hydra_on(config_dir) as hydra:
        loader = hydra.config_loader()
        options = {
            group: sorted(loader.get_group_options(group, ObjectType.CONFIG, config_name, list(searchpath)))
            for group in HYDRA_GROUPS
        }
    for override in chosen:
        allowed = options[override.key_or_group]
        for value in [] if override.is_delete() else override_values(override, allowed) or []:
            check_option(override.key_or_group, value, allowed)
