"""What each checked config key allows: a table of rules, how a value is read from the composed config, and
how it is shown to the user."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from rmsprop_lightning.errors import InputError
from rmsprop_lightning.summary import BEST_SUFFIX

# Lightning's precision settings
PRECISION_NAMES = ("32-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true", "64-true", "64", "32", "16")
PRECISIONS = (*PRECISION_NAMES, 64, 32, 16)
# float16 mixed precision, which Lightning runs on a GPU only (bfloat16 in its place on the CPU)
FLOAT16_MIXED = ("16-mixed", "16")
# torch.distributed's process-group backends (which of them a build of torch has is checked with torch)
BACKENDS = ("gloo", "nccl", "mpi", "ucc", "xccl")
# RegressionModule's losses (rmsprop_lightning.module.LOSSES)
LOSS_NAMES = ("mse", "l1", "huber")
# what RegressionModule logs at each validation and at its test (train/loss goes to the loggers only)
VAL_METRICS = ("val/loss", "val/rmse")
# what a sweeper may optimize: a metric's last value, or the best val/loss (as TensorBoard's HPARAMS show it)
METRICS = (*VAL_METRICS, f"val/loss{BEST_SUFFIX}", "test/loss", "test/rmse", "test/r2")


@dataclass(frozen=True)
class Number:
    """An allowed number: integer or real, within bounds (:class:`OneOf` adds values such as -1 or null)."""

    low: float = -math.inf
    high: float = math.inf
    integer: bool = False
    low_open: bool = False
    high_open: bool = False

    def accepts(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if self.integer and not isinstance(value, int):
            return False
        above = value >= self.high if self.high_open else value > self.high
        below = value <= self.low if self.low_open else value < self.low
        return math.isfinite(value) and not above and not below

    def describe(self) -> str:
        kind = "an integer" if self.integer else "a number"
        if math.isinf(self.high):
            bound = f" {'>' if self.low_open else '≥'} {show(self.low)}" if math.isfinite(self.low) else ""
        elif math.isinf(self.low):
            bound = f" {'<' if self.high_open else '≤'} {show(self.high)}"
        else:
            left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
            bound = f" in {left}{show(self.low)}, {show(self.high)}{right}"
        return f"{kind}{bound}"


@dataclass(frozen=True)
class OneOf:
    """Values allowed by any of several rules, or one of a fixed set of choices."""

    rules: tuple[Number, ...] = ()
    choices: tuple[Any, ...] = ()

    def accepts(self, value: Any) -> bool:
        return value in self.choices or any(rule.accepts(value) for rule in self.rules)

    def describe(self) -> str:
        choices = (choice if isinstance(choice, str) else show(choice) for choice in self.choices)
        return " or ".join(dict.fromkeys([*(rule.describe() for rule in self.rules), *choices]))


@dataclass(frozen=True)
class Widths:
    """Layer widths: one positive integer, or a list of them."""

    def accepts(self, value: Any) -> bool:
        widths = value if isinstance(value, Sequence) and not isinstance(value, str) else [value]
        return all(Number(integer=True, low=1).accepts(width) for width in widths)

    def describe(self) -> str:
        return "a positive integer or a list of them, such as [64,64]"


Rule = Number | OneOf | Widths

FRACTION_OR_COUNT = OneOf(
    (Number(integer=True, low=1), Number(low=0, high=1, low_open=True)), choices=(None,)
)
FRACTION = Number(low=0, high=1, high_open=True)
FLAG = OneOf(choices=(True, False))
LIMIT_BATCHES = OneOf((Number(integer=True, low=0), Number(low=0, high=1)), choices=(None,))
RULES: dict[str, Rule] = {
    "seed": Number(integer=True, low=0, high=2**32 - 1),
    "train": FLAG,
    "test": FLAG,
    "trainer.enable_progress_bar": FLAG,
    "callbacks.progress_bar.refresh_rate": Number(integer=True, low=0),
    "on_nonfinite": OneOf(choices=("stop", "skip")),
    "ckpt_restore": OneOf(choices=("full", "weights")),
    "module.loss": OneOf(choices=LOSS_NAMES),
    "scheduler.interval": OneOf(choices=("step", "epoch")),
    "scheduler.frequency": Number(integer=True, low=1),
    "module.no_weight_decay_on_bias": FLAG,
    "threads_per_job": OneOf((Number(integer=True, low=1),), choices=("auto", None)),
    "trainer.max_steps": OneOf((Number(integer=True, low=1),), choices=(-1,)),
    "trainer.precision": OneOf(choices=PRECISIONS),
    "trainer.accelerator": OneOf(choices=("auto", "cpu", "gpu", "cuda", "mps", "tpu")),
    "trainer.max_epochs": OneOf((Number(integer=True, low=1),), choices=(-1, None)),
    "trainer.min_steps": OneOf((Number(integer=True, low=0),), choices=(None,)),
    "trainer.min_epochs": OneOf((Number(integer=True, low=0),), choices=(None,)),
    "trainer.val_check_interval": FRACTION_OR_COUNT,
    "trainer.check_val_every_n_epoch": OneOf((Number(integer=True, low=1),), choices=(None,)),
    "trainer.log_every_n_steps": Number(integer=True, low=1),
    "trainer.accumulate_grad_batches": Number(integer=True, low=1),
    "trainer.gradient_clip_val": OneOf((Number(low=0),), choices=(None,)),
    "trainer.limit_train_batches": LIMIT_BATCHES,
    "trainer.limit_val_batches": LIMIT_BATCHES,
    "trainer.limit_test_batches": LIMIT_BATCHES,
    "trainer.num_nodes": Number(integer=True, low=1),
    "module.loss_flush_every": Number(integer=True, low=1),
    # what the data module and the model refuse once built, answered before torch is imported
    "data.batch_size": Number(integer=True, low=1),
    "data.eval_batch_size": OneOf((Number(integer=True, low=1),), choices=(None,)),
    "data.val_fraction": FRACTION,
    "data.test_fraction": FRACTION,
    "data.split_seed": Number(integer=True, low=0, high=2**63 - 1),
    "data.shuffle_seed": Number(integer=True, low=0, high=2**63 - 1),
    "data.standardize_features": FLAG,
    "data.standardize_targets": FLAG,
    "data.drop_last": FLAG,
    "model.dropout": FRACTION,
    "model.hidden": Widths(),
    "optimized_metric": OneOf(choices=(*METRICS, None)),
    "callbacks.model_checkpoint.monitor": OneOf(choices=(*VAL_METRICS, None)),
    "callbacks.model_checkpoint.mode": OneOf(choices=("min", "max")),
    "scheduler.monitor": OneOf(choices=(*VAL_METRICS, None)),
    "trainer.deterministic": OneOf(choices=(True, False, "warn", None)),
    # torch threads per process of the population and Slurm launchers (a sweep's config has it)
    "hydra.launcher.cpus_per_task": OneOf((Number(integer=True, low=1),), choices=(None,)),
    "hydra.launcher.n_jobs": OneOf((Number(integer=True, low=1), Number(integer=True, high=-1))),
    # the Optuna sweeper's (hparams_search=rmsprop_optuna): one objective, trials in batches of n_jobs
    "hydra.sweeper.n_trials": Number(integer=True, low=1),
    "hydra.sweeper.n_jobs": Number(integer=True, low=1),
    "hydra.sweeper.direction": OneOf(choices=("minimize", "maximize")),
    "hydra.sweeper.max_failure_rate": Number(low=0, high=1),
}


SIZE = Number(integer=True, low=1)
# the options of the targets the configs ship, by the node that builds them and its target: another target
# there (a scheduler of a user's own) may read the same names otherwise
TARGET_RULES: dict[str, dict[str, dict[str, Rule]]] = {
    "scheduler.scheduler": {
        "torch.optim.lr_scheduler.CosineAnnealingLR": {"T_max": SIZE, "eta_min": Number(low=0)},
        "torch.optim.lr_scheduler.StepLR": {"step_size": SIZE, "gamma": Number(low=0, low_open=True)},
        "torch.optim.lr_scheduler.ReduceLROnPlateau": {
            "mode": OneOf(choices=("min", "max")),
            "factor": Number(low=0, high=1, high_open=True),
            "patience": Number(integer=True, low=0),
        },
        "rmsprop_lightning.optim.schedulers.warmup_cosine": {
            "warmup_steps": Number(integer=True, low=0),
            "total_steps": SIZE,
            "min_factor": Number(low=0, high=1),
        },
    },
    "data.source": {
        "rmsprop_lightning.data.sources.synthetic": {
            **dict.fromkeys(("num_samples", "num_features", "num_targets", "teacher_hidden"), SIZE),
            "noise_std": Number(low=0),
            "seed": Number(integer=True, low=0, high=2**63 - 1),
        },
        "rmsprop_lightning.data.sources.random_normal": dict.fromkeys(
            ("num_samples", "num_features", "num_targets"), SIZE
        ),
    },
    "callbacks.model_checkpoint": {
        target: {"save_top_k": Number(integer=True, low=-1)}
        for target in (
            "rmsprop_lightning.callbacks.BestCheckpoint",
            "lightning.pytorch.callbacks.ModelCheckpoint",
        )
    },
    "callbacks.last_checkpoint": {
        "rmsprop_lightning.callbacks.LastCheckpoint": {"every_n_train_steps": SIZE}
    },
    "callbacks.optimizer_state_monitor": {
        "rmsprop_lightning.callbacks.OptimizerStateMonitor": {
            "every_n_steps": OneOf((SIZE,), choices=(None,)),
            "flush_every": SIZE,
            "flush_secs": OneOf((Number(low=0, low_open=True),), choices=(None,)),
            "tensorboard_layout": FLAG,
        }
    },
    "logger.tensorboard": {"rmsprop_lightning.logging.tensorboard.TensorBoardRunLogger": {"log_graph": FLAG}},
    "trainer.strategy": {
        "rmsprop_lightning.app.distributed.HydraDDPStrategy": {
            "process_group_backend": OneOf(choices=(*BACKENDS, None)),
            **dict.fromkeys(("find_unused_parameters", "static_graph", "gradient_as_bucket_view"), FLAG),
        }
    },
}


def show(value: Any) -> str:
    """A value as the user would type it on the command line."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return repr(value) if isinstance(value, str) else str(value)


def select(cfg: DictConfig, key: str) -> Any:
    """The resolved value at ``key`` (``None`` when absent); a broken interpolation is an input error."""
    try:
        value = OmegaConf.select(cfg, key, default=None)
        if isinstance(value, DictConfig | ListConfig):
            return OmegaConf.to_container(value, resolve=True)
        return value.name if isinstance(value, Enum) else value  # as typed: a structured config's enums
    except OmegaConfBaseException as error:
        raise InputError(f"{key}: {str(error).splitlines()[0]}") from error


def unused_split(cfg: DictConfig, stage: str) -> str | None:
    """The setting (as typed) that leaves the ``val`` or ``test`` stage no rows or batches, if one does."""
    for key in (f"data.{stage}_fraction", f"trainer.limit_{stage}_batches"):
        if select(cfg, key) == 0:
            return f"{key}=0"
    return "test=false" if stage == "test" and select(cfg, "test") is False else None
