"""Checks of the composed config alone, before torch or Lightning is imported, so a typo answers at once;
each raises :class:`~rmsprop_lightning.errors.InputError` naming the key as typed and what is allowed."""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from rmsprop_lightning.app.config_shape import check_shape
from rmsprop_lightning.app.override_checks import has_key
from rmsprop_lightning.app.rules import (
    METRICS,
    RULES,
    TARGET_RULES,
    Number,
    OneOf,
    Rule,
    select,
    show,
    unused_split,
)
from rmsprop_lightning.app.scheduler_checks import check_scheduler, check_steps_to_follow
from rmsprop_lightning.errors import InputError
from rmsprop_lightning.optim.validation import checked_lr_multipliers, validate_options

# keys Hydra's instantiate reads itself, never passed to the target
HYDRA_KEYS = frozenset({"_target_", "_partial_", "_convert_", "_recursive_", "_args_"})
# config keys that name an input file
INPUT_FILES = ("data.source.path", "ckpt_path")
# the environment variable conf/paths/default.yaml reads paths.root_dir from
ROOT_ENV = "RMSPROP_LIGHTNING_ROOT"
# what check_writable allows where a run's output folder cannot be written
WRITABLE_RUN_FOLDER = f"a writable folder (set paths.log_dir, or the {ROOT_ENV} environment variable)"
# what the launchers of a run over several nodes set (srun, torchrun or by hand, MPI, LSF)
CLUSTER_ENV_VARS = ("SLURM_NTASKS", "MASTER_ADDR", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "LSB_JOBID")


def validate_config(cfg: DictConfig) -> None:
    """Checks the composed config before anything is built: its shape, keys, values, limits."""
    check_shape(cfg)
    optimizer = select(cfg, "optimizer")
    if isinstance(optimizer, Mapping):
        try:
            validate_options({key: value for key, value in optimizer.items() if key not in HYDRA_KEYS})
        except ValueError as error:
            raise InputError(f"optimizer.{error}") from None
    check_steps_to_follow(cfg)
    rules = dict(RULES)
    for node, by_target in TARGET_RULES.items():  # the options of the target the node builds
        target_rules = by_target.get(select(cfg, f"{node}._target_"), {})
        rules.update({f"{node}.{key}": rule for key, rule in target_rules.items()})
    for key, rule in rules.items():
        value = select(cfg, key)  # a broken interpolation is refused here, before the key counts as absent
        if has_key(cfg, key):
            check_value(key, value, rule)
    check_training_length(cfg)
    if has_key(cfg, "trainer.devices"):  # else Lightning's default
        check_devices(select(cfg, "trainer.devices"))
    check_max_time(select(cfg, "trainer.max_time"))
    try:
        checked_lr_multipliers(select(cfg, "module.lr_multipliers"))
    except ValueError as error:
        raise InputError(f"module.{error}") from None
    check_scheduler(cfg)
    check_task_name(select(cfg, "task_name"))
    check_log_folders(cfg)
    check_input_files(cfg)


def check_value(key: str, value: Any, rule: Rule) -> None:
    """Refuses ``value`` at ``key`` unless ``rule`` accepts it."""
    if not rule.accepts(value):
        raise InputError(f"{key}={show(value)} is invalid; allowed: {rule.describe()}")


def check_launcher_threads(launcher: DictConfig) -> None:
    """A launcher's ``cpus_per_task``, torch's threads per process, is a positive integer or null."""
    key = "hydra.launcher.cpus_per_task"
    check_value(key, launcher.get("cpus_per_task"), RULES[key])


def check_devices(devices: Any) -> None:
    """``trainer.devices`` as Lightning reads it: a count, -1 for all, ``auto``, or ids (a list or a text)."""
    count = OneOf((Number(integer=True, low=1),), choices=(-1, "auto")).accepts(devices)
    ids = (
        isinstance(devices, list | ListConfig)
        and bool(devices)
        and all(Number(integer=True, low=0).accepts(i) for i in devices)
    )
    text = isinstance(devices, str) and re.fullmatch(r"\s*(-1|\d+(\s*,\s*\d+)*\s*,?)\s*", devices)
    if not (count or ids or text):
        raise InputError(
            f"trainer.devices={show(devices)} is invalid; allowed: an integer ≥ 1, -1 (all), auto or ids"
        )


def accelerator_settings(trainer: DictConfig) -> tuple[Any, Any, Any, Any]:
    """The trainer's ``accelerator``, ``precision``, ``devices`` and DDP's ``process_group_backend``, with
    Lightning's defaults for those a trainer config leaves out."""
    backend = OmegaConf.select(trainer, "strategy.process_group_backend", default=None)
    return (
        trainer.get("accelerator", "auto"),
        trainer.get("precision"),
        trainer.get("devices", "auto"),
        backend,
    )


def counts_processes(devices: Any) -> bool:
    """Whether ``trainer.devices`` is a number of processes (or ``auto``), as the CPU takes, not GPU ids."""
    return devices == "auto" or (str(devices).strip().isdigit() and int(devices) > 0)


def check_nodes(num_nodes: Any) -> None:
    """A run over several nodes is started on each by a cluster's launcher (``srun``, ``torchrun``, MPI, LSF)
    or with ``MASTER_ADDR`` set by hand: started otherwise, it would wait for the other nodes for good."""
    if (
        isinstance(num_nodes, int)
        and num_nodes > 1
        and not any(name in os.environ for name in CLUSTER_ENV_VARS)
    ):
        raise InputError(
            f"trainer.num_nodes={num_nodes} needs a process on every node, which srun or torchrun starts; "
            "allowed: trainer.num_nodes=1 here"
        )


def check_max_time(limit: Any) -> None:
    """``trainer.max_time`` in the text form Lightning's ``Timer`` reads from a config, ``DD:HH:MM:SS``."""
    if limit is None or re.fullmatch(r"\d+:\d\d:\d\d:\d\d", str(limit)):
        return
    raise InputError(
        f"trainer.max_time={show(limit)} is invalid; allowed: DD:HH:MM:SS (00:12:00:00 for 12 hours) or null"
    )


def check_training_length(cfg: DictConfig) -> None:
    """Refuses limits that train forever or whose minimum exceeds their maximum."""
    max_steps, max_epochs = select(cfg, "trainer.max_steps"), select(cfg, "trainer.max_epochs")
    if max_steps == -1 and max_epochs == -1 and select(cfg, "trainer.max_time") is None:
        raise InputError(
            "trainer.max_steps=-1 and trainer.max_epochs=-1 would train forever; "
            "set trainer.max_steps or trainer.max_epochs to a positive number (or trainer.max_time)"
        )
    for unit, limit in (("steps", max_steps), ("epochs", max_epochs)):
        minimum = select(cfg, f"trainer.min_{unit}")
        if minimum is not None and limit not in (None, -1) and minimum > limit:
            raise InputError(
                f"trainer.min_{unit}={minimum} exceeds trainer.max_{unit}={limit}; "
                f"allowed: min_{unit} ≤ max_{unit}"
            )


def check_searched_metric(cfg: DictConfig) -> None:
    """A search (any sweeper but the basic one) optimizes ``optimized_metric``: every trial must log it."""
    metric = select(cfg, "optimized_metric")
    if metric is None:
        raise InputError(
            f"optimized_metric=null leaves the search nothing to optimize; allowed: {', '.join(METRICS)}"
        )
    stage = metric.split("/")[0]
    if (setting := unused_split(cfg, stage)) is not None:
        raise InputError(
            f"optimized_metric={metric} needs a {stage} split, but {setting} leaves none; allowed: a metric "
            "the trials log, or that split"
        )


def check_task_name(name: Any) -> None:
    """``task_name`` is one folder's name (a number too): the runs go in ``<paths.log_dir>/<task_name>/``."""
    text = str(name) if isinstance(name, str | int | float) and not isinstance(name, bool) else ""
    if text.strip(" .") == "" or any(sep in text for sep in "/\\"):
        raise InputError(f"task_name={show(name)} is invalid; allowed: a folder name (no /), such as train")


def check_log_folders(cfg: DictConfig) -> None:
    """``paths.root_dir`` and ``paths.log_dir`` name folders: empty, the runs would go to ``/logs``."""
    for key in ("paths.root_dir", "paths.log_dir"):
        value = select(cfg, key)
        text = str(value) if isinstance(value, str | int | float) and not isinstance(value, bool) else ""
        if has_key(cfg, key) and not text.strip():
            empty = key == "paths.root_dir" and os.environ.get(ROOT_ENV) == ""
            hint = f" ({ROOT_ENV} is set and empty: unset it, or name a folder)" if empty else ""
            raise InputError(f"{key}={show(value)} names no folder{hint}; allowed: a folder's path")


def check_input_files(cfg: DictConfig) -> None:
    """Every input file the config names exists; ``train=false`` names a checkpoint to test."""
    if select(cfg, "train") is False and not select(cfg, "ckpt_path"):
        raise InputError("train=false tests a checkpoint; allowed: train=false ckpt_path=<checkpoint>")
    if select(cfg, "ckpt_restore") == "weights" and not select(cfg, "ckpt_path"):
        raise InputError("ckpt_restore=weights needs a checkpoint; allowed: with ckpt_path=<checkpoint>")
    if select(cfg, "train") is False and select(cfg, "test") is False:
        raise InputError("train=false test=false does nothing; allowed: test=true to test the checkpoint")
    for key in INPUT_FILES:
        path = select(cfg, key)
        if path is None or Path(str(path)).expanduser().is_file():
            continue
        if not str(path).strip():
            allowed = "a checkpoint file, or null" if key == "ckpt_path" else "the path of a data file"
            raise InputError(f"{key}='{path}' names no file; allowed: {allowed}")
        if key == "ckpt_path" and Path(str(path)).expanduser().is_dir():
            folder = Path(str(path)).expanduser().resolve()
            run = folder.parent if folder.name == "checkpoints" else folder
            saved = [run / "checkpoints" / "last.ckpt", *sorted(folder.glob("*.ckpt"))]
            example = next((file for file in saved if file.is_file()), saved[0])
            raise InputError(
                f"ckpt_path={path} is a folder; allowed: a checkpoint file such as {example}, or "
                f"resume={run} to continue that run"
            )
        if Path(str(path)).expanduser().is_dir():
            raise InputError(f"{key}={path} is a folder; allowed: a data file")
        raise InputError(f"{key}={path}: no such file")


def check_writable(
    path: str | Path, key: str = "paths.output_dir", allowed: str = WRITABLE_RUN_FOLDER, make: bool = True
) -> None:
    """``path`` is a folder this process can create and write in (for a run, checked before Hydra creates
    it), by writing a file there: permissions alone do not tell (root, read-only mounts, ``/proc``). With
    ``make=False`` nothing is left behind: the file goes in the nearest folder of the path that exists."""
    path = Path(os.path.abspath(path))
    try:
        if make:
            path.mkdir(parents=True, exist_ok=True)
        while not path.exists():
            path = path.parent
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as error:
        raise InputError(
            f"{key}={path} cannot be written: {error.strerror or error}; allowed: {allowed}"
        ) from None
