"""Up-front checks of the composed config, the data and the checkpoint, each failing with one clear line.

Everything here runs before training starts, so a typo or a broken file costs seconds,
not a run. Each check raises :class:`~rmsprop_lightning.errors.InputError` naming the
key, value or file at fault and what is allowed. Objects that validate their own
arguments (the model, the data module, the Trainer) are trusted for those: their
errors are turned into the same one-line form by :func:`input_errors`.
"""

from __future__ import annotations

import difflib
import inspect
import math
import os
import pickle
import zipfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hydra.errors import InstantiationException
from hydra.utils import get_object
from lightning.fabric.utilities.exceptions import MisconfigurationException
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from rmsprop_lightning.errors import InputError
from rmsprop_lightning.optim.validation import validate_options

# keys Hydra's instantiate reads itself, never passed to the target
HYDRA_KEYS = frozenset({"_target_", "_partial_", "_convert_", "_recursive_", "_args_"})
# constructor arguments the project passes at call time rather than from the config
CALL_TIME_ARGUMENTS = {"optimizer": ("params",), "scheduler.scheduler": ("optimizer",)}
# callbacks Lightning refuses to run without a logger
NEEDS_LOGGER = (".LearningRateMonitor", ".OptimizerStateMonitor")
# errors that, raised while objects are built from the config and the data is read, mean bad input
INPUT_ERRORS = (
    ValueError,
    TypeError,
    OSError,
    EOFError,
    ImportError,
    zipfile.BadZipFile,
    MisconfigurationException,
    OmegaConfBaseException,
)


@dataclass(frozen=True)
class Number:
    """An allowed number: integer or real, within bounds, plus extra allowed values (e.g. -1) or null."""

    low: float = -math.inf
    high: float = math.inf
    integer: bool = False
    low_open: bool = False
    high_open: bool = False
    extra: tuple[Any, ...] = ()
    nullable: bool = False

    def accepts(self, value: Any) -> bool:
        if value is None:
            return self.nullable
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if value in self.extra:
            return True
        if self.integer and not isinstance(value, int):
            return False
        above = value >= self.high if self.high_open else value > self.high
        below = value <= self.low if self.low_open else value < self.low
        return math.isfinite(value) and not above and not below

    def describe(self) -> str:
        kind = "an integer" if self.integer else "a number"
        if math.isinf(self.high):
            bound = f" {'>' if self.low_open else '≥'} {show(self.low)}" if math.isfinite(self.low) else ""
        else:
            left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
            bound = f" in {left}{show(self.low)}, {show(self.high)}{right}"
        options = [f"{kind}{bound}", *(show(value) for value in self.extra)]
        if self.nullable:
            options.append("null")
        return " or ".join(options)


@dataclass(frozen=True)
class OneOf:
    """Values allowed by any of several rules, or one of a fixed set of choices."""

    rules: tuple[Number, ...] = ()
    choices: tuple[Any, ...] = ()

    def accepts(self, value: Any) -> bool:
        return value in self.choices or any(rule.accepts(value) for rule in self.rules)

    def describe(self) -> str:
        choices = (choice if isinstance(choice, str) else show(choice) for choice in self.choices)
        return " or ".join([*(rule.describe() for rule in self.rules), *choices])


Rule = Number | OneOf

FRACTION_OR_COUNT = OneOf(
    (Number(integer=True, low=1), Number(low=0, high=1, low_open=True)), choices=(None,)
)
LIMIT_BATCHES = OneOf((Number(integer=True, low=0), Number(low=0, high=1)), choices=(None,))
RULES: dict[str, Rule] = {
    "seed": Number(integer=True, low=0, high=2**32 - 1),
    "on_nonfinite": OneOf(choices=("stop", "skip")),
    "trainer.max_steps": Number(integer=True, low=1, extra=(-1,)),
    "trainer.max_epochs": Number(integer=True, low=1, extra=(-1,), nullable=True),
    "trainer.min_steps": Number(integer=True, low=0, nullable=True),
    "trainer.min_epochs": Number(integer=True, low=0, nullable=True),
    "trainer.val_check_interval": FRACTION_OR_COUNT,
    "trainer.check_val_every_n_epoch": Number(integer=True, low=1, nullable=True),
    "trainer.log_every_n_steps": Number(integer=True, low=1),
    "trainer.accumulate_grad_batches": Number(integer=True, low=1),
    "trainer.gradient_clip_val": Number(low=0, nullable=True),
    "trainer.limit_train_batches": LIMIT_BATCHES,
    "trainer.limit_val_batches": LIMIT_BATCHES,
    "trainer.limit_test_batches": LIMIT_BATCHES,
}


def show(value: Any) -> str:
    """A value as the user would type it on the command line."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value) if isinstance(value, str) else str(value)


def select(cfg: DictConfig, key: str) -> Any:
    """The resolved value at ``key`` (``None`` when absent); a broken interpolation is an input error."""
    try:
        value = OmegaConf.select(cfg, key, default=None)
    except OmegaConfBaseException as error:
        raise InputError(f"{key}: {str(error).splitlines()[0]}") from error
    return (
        OmegaConf.to_container(value, resolve=True) if isinstance(value, DictConfig | ListConfig) else value
    )


def validate_config(cfg: DictConfig) -> None:
    """Checks the composed config before anything is built: keys, value ranges and types, limits."""
    check_targets(cfg)
    optimizer = select(cfg, "optimizer")
    if isinstance(optimizer, Mapping):
        try:
            validate_options({key: value for key, value in optimizer.items() if key not in HYDRA_KEYS})
        except ValueError as error:
            raise InputError(f"optimizer.{error}") from None
    for key, rule in RULES.items():
        absent = OmegaConf.select(cfg, key, default=KeyError, throw_on_resolution_failure=False) is KeyError
        value = select(cfg, key)
        if not absent and not rule.accepts(value):
            raise InputError(f"{key}={show(value)} is invalid; allowed: {rule.describe()}")
    check_training_length(cfg)
    check_loggers(cfg)


def check_loggers(cfg: DictConfig) -> None:
    """Refuses a callback that needs a logger when there is none (Lightning would fail at the start)."""
    loggers = select(cfg, "logger") or {}
    if any(isinstance(entry, Mapping) and "_target_" in entry for entry in loggers.values()):
        return
    for name, entry in (select(cfg, "callbacks") or {}).items():
        if isinstance(entry, Mapping) and str(entry.get("_target_", "")).endswith(NEEDS_LOGGER):
            raise InputError(
                f"callbacks.{name} ({entry['_target_']}) needs a logger but logger is empty; "
                f"allowed: logger=tensorboard or logger=csv, or drop it with ~callbacks.{name}"
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


def check_targets(cfg: DictConfig, path: str = "") -> None:
    """Every config node with a ``_target_`` names an importable callable that takes each of its keys."""
    node = cfg if not path else OmegaConf.select(cfg, path)
    if not isinstance(node, DictConfig):
        return
    if "_target_" in node:
        check_options(node, path)
    for key in node:
        if isinstance(node._get_node(key), DictConfig):
            check_targets(cfg, f"{path}.{key}" if path else str(key))


def check_options(node: DictConfig, path: str) -> None:
    """The keys of one ``_target_`` node are parameters of its target (unless it takes ``**kwargs``)."""
    target_name = node._target_
    try:
        target = get_object(target_name)
        signature = inspect.signature(target)
    except Exception as error:
        raise InputError(
            f"{path}._target_={target_name} cannot be imported ({type(error).__name__}: {error})"
        ) from error
    parameters = signature.parameters
    if any(parameter.kind is inspect.Parameter.VAR_KEYWORD for parameter in parameters.values()):
        return
    allowed = sorted(set(parameters) - set(CALL_TIME_ARGUMENTS.get(path, ())))
    for key in node:
        if key not in HYDRA_KEYS and key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f" (did you mean {path}.{close[0]}?)" if close else ""
            raise InputError(
                f"{path}.{key} is not an option of {target_name}{hint}; allowed: {', '.join(allowed)}"
            )


@contextmanager
def input_errors() -> Iterator[None]:
    """Turns the errors objects raise about their own arguments while being built into :class:`InputError`."""
    try:
        yield
    except InstantiationException as error:
        cause = error.__cause__ if error.__cause__ is not None else error
        raise InputError(first_line(cause)) from error
    except INPUT_ERRORS as error:
        raise InputError(first_line(error)) from error


def first_line(error: BaseException) -> str:
    """The first line of an error's message (library messages often add paragraphs of advice)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def check_data(cfg: DictConfig, datamodule: Any) -> None:
    """Reads and splits the data (if the model did not need it yet); checks explicit model sizes against it.

    Errors name the file (``data.source.path``) when the reader's message does not.
    """
    path = select(cfg, "data.source.path")
    try:
        datamodule.splits  # noqa: B018  (loads, checks and splits the table)
    except INPUT_ERRORS as error:
        message = first_line(error)
        if path is not None and str(path) not in message:
            message = f"data.source.path={path}: {message}"
        raise InputError(message) from error
    for key, size, what in (
        ("in_features", datamodule.num_features, "feature columns"),
        ("out_features", datamodule.num_targets, "target columns"),
    ):
        wanted = select(cfg, f"model.{key}")
        if wanted is not None and wanted != size:
            raise InputError(
                f"model.{key}={wanted} but the data has {size} {what}; "
                f"allowed: {size}, or null to take it from the data"
            )


def check_optimizer(module: Any) -> Any:
    """Builds the optimizer (and scheduler) once, so that their own argument checks run before training."""
    with input_errors():
        return module.configure_optimizers()


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint's contents, loaded weights-only and memory-mapped (tensors are read on demand)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"ckpt_path={path}: no such file")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as error:
        raise InputError(
            f"ckpt_path={path} holds objects a weights-only load refuses ({first_line(error)}); "
            "allowed: checkpoints written by this project"
        ) from error
    except (RuntimeError, EOFError, ValueError, OSError, zipfile.BadZipFile) as error:
        raise InputError(f"ckpt_path={path} is truncated or corrupt ({first_line(error)})") from error
    if not isinstance(checkpoint, Mapping) or "state_dict" not in checkpoint:
        raise InputError(f"ckpt_path={path} is not a Lightning checkpoint (it has no state_dict)")
    return checkpoint


def check_checkpoint(path: str | Path, module: Any, optimizer: Any, max_steps: int) -> None:
    """The checkpoint to resume from fits this model and optimizer and leaves steps to train."""
    checkpoint = load_checkpoint(path)
    saved, current = checkpoint["state_dict"], module.state_dict()
    for name in [*current, *(name for name in saved if name not in current)]:
        if name not in current or name not in saved:
            where = "the checkpoint only" if name in saved else "this model only"
            raise InputError(f"ckpt_path={path} was saved from a different model: {name} is in {where}")
        if saved[name].shape != current[name].shape:
            raise InputError(
                f"ckpt_path={path} was saved from a different model: {name} has shape "
                f"{list(saved[name].shape)} there but {list(current[name].shape)} here "
                "(model.in_features, model.hidden and model.out_features must match)"
            )
    if not checkpoint.get("optimizer_states"):
        raise InputError(
            f"ckpt_path={path} holds weights only (no optimizer state); it cannot resume training"
        )
    saved_sizes = [len(group["params"]) for group in checkpoint["optimizer_states"][0]["param_groups"]]
    optimizer = optimizer["optimizer"] if isinstance(optimizer, Mapping) else optimizer
    sizes = [len(group["params"]) for group in optimizer.param_groups]
    if saved_sizes != sizes:
        raise InputError(
            f"ckpt_path={path} has optimizer parameter groups of sizes {saved_sizes}, this run {sizes}; "
            "module.no_weight_decay_on_bias and module.lr_multipliers must match the checkpoint's run"
        )
    check_steps_left(checkpoint, max_steps, f"ckpt_path={path}")


def check_steps_left(checkpoint: Mapping[str, Any], max_steps: int, what: str) -> None:
    """Refuses to start from a checkpoint that already reached ``trainer.max_steps``."""
    step = checkpoint.get("global_step", 0)
    if max_steps != -1 and step >= max_steps:
        raise InputError(
            f"{what} is at step {step} and trainer.max_steps={max_steps}: nothing left to train; "
            f"allowed: trainer.max_steps > {step}"
        )


def check_writable(path: str | Path, key: str = "paths.output_dir") -> None:
    """``path`` is a writable folder or could be created as one (checked before Hydra creates it)."""
    path = Path(os.path.abspath(path))
    existing = path
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        problem = f"{existing} is a file, not a folder"
    elif not os.access(existing, os.W_OK | os.X_OK):
        problem = f"{existing} is not writable"
    else:
        return
    raise InputError(
        f"{key}={path} cannot be written: {problem}; allowed: a writable folder "
        "(set paths.log_dir, or the RMSPROP_LIGHTNING_ROOT environment variable)"
    )
