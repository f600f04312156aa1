"""Hydra's flags and the run's output folder, checked before Hydra starts: one line where Hydra would answer
with its usage, several lines or a traceback, or a run would write into another's folder."""

from __future__ import annotations

import importlib.util
import posixpath
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from rmsprop_lightning.app.resume import HYDRA_FOLDER
from rmsprop_lightning.errors import InputError, close_match, is_rank_zero
from rmsprop_lightning.internals import hydra_argument_parser
from rmsprop_lightning.summary import SUMMARY_FILE

# each job's folder in a sweep's
SWEEP_SUBDIR = "hydra.sweep.subdir"


def check_flags_first(arguments: Sequence[str]) -> None:
    """Refuses a flag Hydra's parser lacks, and overrides after a flag that follows overrides: the parser
    takes one run of them (it answers each with its usage)."""
    parser = hydra_argument_parser()
    parsed, later = parser.parse_known_args(list(arguments))
    if unknown := next((argument for argument in later if argument.startswith("-")), None):
        flags = sorted(set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", parser.format_usage())))
        name = unknown.split("=")[0]
        raise InputError(f"{name} is not a flag{close_match(name, flags)}; allowed: {', '.join(flags)}")
    if later:
        flags = [argument for argument in arguments if argument not in (*parsed.overrides, *later)]
        raise InputError(
            f"{later[0]} comes after a flag that follows overrides; allowed: the flags first, as in "
            f"{' '.join([*flags, *parsed.overrides, *later])}"
        )


def is_run_folder(path: Path) -> bool:
    """Whether ``path`` is a run's folder: Hydra's saved config and the run's summary."""
    return (path / SUMMARY_FILE).is_file() and (path / HYDRA_FOLDER / "config.yaml").is_file()


def check_config_flags(parsed: Any, config_dir: Path, config_name: str, searched: bool = False) -> None:
    """Refuses a ``--config-dir`` or ``--config-path`` that is no folder (a relative ``--config-path``, which
    Hydra reads as a package beside this one, no package), and a config name none of the config folders has
    (Hydra answers each in several lines); a name a typed ``hydra.searchpath`` may provide is Hydra's."""
    folders = [config_dir]
    for flag, typed in (("--config-path", parsed.config_path), ("--config-dir", parsed.config_dir)):
        if typed is None:
            continue
        folder = Path(typed).expanduser()
        if flag == "--config-path" and not folder.is_absolute():  # a package beside @hydra.main's module's
            package = posixpath.normpath(f"{__package__.replace('.', '/')}/{typed}").replace("/", ".")
            try:
                found = not package.startswith(".") and importlib.util.find_spec(package) is not None
            except (ImportError, ValueError):
                found = False
            if not found:
                raise InputError(
                    f"--config-path={typed}: Hydra reads a relative path as a package beside {__package__}, "
                    f"and {package} is none; allowed: an absolute path"
                )
            return  # its configs are Hydra's to check
        if not folder.is_dir():
            raise InputError(f"{flag}={typed} is not a folder; allowed: a folder of config files")
        folders = [folder] if flag == "--config-path" else [*folders, folder]
    name = parsed.config_name or config_name  # Hydra's default name, in a --config-path too
    found = any((folder / f"{name.removesuffix('.yaml')}.yaml").is_file() for folder in folders)
    if not found and not searched:
        flag = f"--config-name={name}" if parsed.config_name else f"--config-path={parsed.config_path}"
        raise InputError(
            f"{flag}: {name.removesuffix('.yaml')}.yaml is in none of {', '.join(map(str, folders))}; "
            "allowed: the name of a config file there (--config-name), without .yaml"
        )


def check_output_folder(overrides: Sequence[Any], multirun: bool, cfg: DictConfig | None) -> None:
    """Refuses a ``hydra.run.dir`` (``hydra.sweep.dir`` with ``-m``) that already holds a run or a sweep, or
    lies in a run's folder, whose records a second run would mix with its own; other DDP ranks, started in
    the first rank's folder, skip this."""
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    typed = [str(o.value()) for o in overrides if o.key_or_group == key and not o.is_sweep_override()]
    if typed and not typed[-1].strip():
        raise InputError(f"{key}='{typed[-1]}' names no folder; allowed: a folder's path")
    subdirs = [str(o.value()) for o in overrides if o.key_or_group == SWEEP_SUBDIR]
    if multirun and subdirs and not re.search(r"job[.:](num|id)\b", subdirs[-1]):
        raise InputError(  # jobs would share a folder: ${hydra.job.override_dirname} leaves out keys too
            f"{SWEEP_SUBDIR}={subdirs[-1]} may name one folder for several jobs; allowed: a name with "
            "${hydra.job.num} in it, such as ${hydra.job.num}_${folder_name:${hydra.job.override_dirname}}"
        )
    if not typed or not is_rank_zero():
        return
    folder = typed[-1]
    if "${" in folder:  # resolved in the composed config
        if cfg is None:
            return
        OmegaConf.update(cfg, key, folder)
        try:
            folder = str(OmegaConf.select(cfg, key))
        except OmegaConfBaseException:  # a resolver only Hydra's run has (${hydra:...})
            return
    below = Path(folder).iterdir() if Path(folder).is_dir() else []
    if is_run_folder(Path(folder)) or any(is_run_folder(path) for path in below):  # a run, runs
        raise InputError(
            f"{key}={typed[-1]} already holds a run; allowed: another folder, or resume=<its run folder> "
            "to continue one"
        )
    if (Path(folder) / "multirun.yaml").is_file():  # a sweep whose jobs wrote nothing yet (a population's)
        raise InputError(f"{key}={typed[-1]} already holds a sweep; allowed: another folder")
    if run := next((path for path in Path(folder).resolve().parents if is_run_folder(path)), None):
        raise InputError(f"{key}={typed[-1]} lies in the run folder {run}; allowed: a folder outside it")
