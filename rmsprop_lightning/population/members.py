"""Which jobs of a sweep can train together, and each member's objects built as its solo run builds them."""

from __future__ import annotations

import dataclasses
import json
import string
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from rmsprop_lightning.app.config_checks import validate_config
from rmsprop_lightning.app.fit_length import check_fit_settings
from rmsprop_lightning.app.run import build_objects
from rmsprop_lightning.app.validation import input_errors
from rmsprop_lightning.callbacks.random_state import RandomState
from rmsprop_lightning.data import RegressionDataModule
from rmsprop_lightning.data.datamodule import rows_digest
from rmsprop_lightning.module import RegressionModule

OPTIMIZERS = ("rmsprop_lightning.optim.RMSprop", "torch.optim.RMSprop")
MODELS = ("rmsprop_lightning.model.FeedForward",)
DATA = ("rmsprop_lightning.data.RegressionDataModule",)
# the callbacks a population reproduces for its members (others need a run of their own)
MODEL_CHECKPOINT = "rmsprop_lightning.callbacks.BestCheckpoint"
LIGHTNING_CHECKPOINT = "lightning.pytorch.callbacks.ModelCheckpoint"  # keeps a NaN or inf val/loss
CHECKPOINT_TIMERS = ("every_n_train_steps", "every_n_epochs", "train_time_interval")
LR_MONITORS = (
    "rmsprop_lightning.callbacks.LearningRateMonitor",
    "lightning.pytorch.callbacks.LearningRateMonitor",
)
CALLBACKS = (
    MODEL_CHECKPOINT,
    "rmsprop_lightning.callbacks.LastCheckpoint",
    *LR_MONITORS,
    "rmsprop_lightning.callbacks.OptimizerStateMonitor",
    "lightning.pytorch.callbacks.TQDMProgressBar",
)
LR_MONITOR_OPTIONS = {"logging_interval": "step", "log_momentum": False, "log_weight_decay": False}
# callback options whose other values a population does not reproduce: {target: {option: its value}}
UNSUPPORTED_OPTIONS = {
    **{monitor: dict(LR_MONITOR_OPTIONS) for monitor in LR_MONITORS},
    "rmsprop_lightning.callbacks.OptimizerStateMonitor": {"per_parameter": False},
    MODEL_CHECKPOINT: {"save_on_train_epoch_end": False},  # the shipped value: the best of each validation
}
# what members may differ in (where they write, too): the rest of their configs must be equal
MEMBER_KEYS = ("optimizer", "seed", "hydra", "paths")


@dataclasses.dataclass
class Member:
    """One job of the sweep, built as its solo run would build it."""

    job: int  # its index among the launched jobs
    cfg: DictConfig
    datamodule: RegressionDataModule
    module: RegressionModule
    optimizer: torch.optim.Optimizer  # its own optimizer: settings, and learning rates its scheduler sets
    scheduler: Any | None
    key: str  # members with equal keys form one population
    random_state: dict[str, Any]  # the generators after its build, as its solo run keeps them


def solo_reason(cfg: DictConfig) -> str | None:
    """Why the job needs a run of its own, or ``None`` when it can join a population."""
    trainer, monitor = cfg.trainer, cfg.scheduler.get("monitor")
    optimizer, model, data = (cfg[group].get("_target_") for group in ("optimizer", "model", "data"))
    checks = {
        f"optimizer {optimizer} is not RMSprop": optimizer in OPTIMIZERS,
        f"model {model} is not FeedForward": model in MODELS,
        "model.dropout > 0": not cfg.model.get("dropout"),
        f"data {data} is not RegressionDataModule": data in DATA,
        "it uses several devices": trainer.get("devices", 1) in (1, "1", "auto", None)
        and trainer.get("num_nodes", 1) == 1
        and trainer.get("strategy", "auto") in ("auto", None),
        "trainer.gradient_clip_val is set": not trainer.get("gradient_clip_val"),
        "trainer.accumulate_grad_batches > 1": trainer.get("accumulate_grad_batches", 1) == 1,
        "trainer.fast_dev_run is set": not trainer.get("fast_dev_run"),
        "trainer.overfit_batches is set": not trainer.get("overfit_batches"),
        f"scheduler.monitor={monitor}": monitor in (None, "val/loss"),
        "trainer.max_time is set (a population would share it)": trainer.get("max_time") is None,
        "Lightning's own checkpointing is on without a ModelCheckpoint": keeps_best_checkpoint(cfg)
        or trainer.get("enable_checkpointing") is False,
        "it starts from a checkpoint": not cfg.get("ckpt_path") and not cfg.get("resume"),
        "optimizer.fast=true (a population's step is not compiled)": not cfg.optimizer.get("fast"),
        "train=false": cfg.get("train", True),
        "on_nonfinite=skip": cfg.get("on_nonfinite", "stop") == "stop",
    }
    for name, entry in (cfg.get("callbacks") or {}).items():
        if not isinstance(entry, DictConfig) or entry.get("_target_") is None:
            continue
        reason = f"callbacks.{name} ({entry._target_})"
        if entry._target_ == LIGHTNING_CHECKPOINT:
            reason += f": a population keeps only finite val/loss values, as {MODEL_CHECKPOINT}"
        checks[reason] = entry._target_ in CALLBACKS
        if entry._target_ == MODEL_CHECKPOINT:
            checks.update(best_checkpoint_checks(f"callbacks.{name}", entry))
        for option, default in UNSUPPORTED_OPTIONS.get(entry._target_, {}).items():
            checks[f"callbacks.{name}.{option}={entry.get(option)}"] = entry.get(option, default) == default
    return next((reason for reason, fine in checks.items() if not fine), None)


def callback_entries(cfg: DictConfig) -> list[DictConfig]:
    """The entries of the job's ``callbacks`` group."""
    return [entry for entry in (cfg.get("callbacks") or {}).values() if isinstance(entry, DictConfig)]


def keeps_best_checkpoint(cfg: DictConfig) -> bool:
    """Whether the job's callbacks keep a best checkpoint (its test then uses the best weights)."""
    kinds = (MODEL_CHECKPOINT, LIGHTNING_CHECKPOINT)
    return any(entry.get("_target_") in kinds for entry in callback_entries(cfg))


def best_checkpoint_checks(key: str, checkpoint: DictConfig) -> dict[str, bool]:
    """Whether a ``ModelCheckpoint`` at ``key`` keeps exactly what a population keeps (the lowest
    ``val/loss``, once, in a file named by the step), by setting: ``{"<key>.<option>=<value>": kept}``."""
    filename = checkpoint.get("filename") or ""
    fields = {field for _, field, _, _ in string.Formatter().parse(filename) if field}
    checks = {
        f"{key}.monitor={checkpoint.get('monitor')}": checkpoint.get("monitor") == "val/loss",
        f"{key}.mode={checkpoint.get('mode')}": checkpoint.get("mode", "min") == "min",
        f"{key}.save_top_k={checkpoint.get('save_top_k')}": checkpoint.get("save_top_k", 1) == 1,
        f"{key}.save_last={checkpoint.get('save_last')}": not checkpoint.get("save_last"),
        f"{key}.filename={filename}": fields <= {"step"},
    }
    checks.update(
        {f"{key}.{timer}={checkpoint.get(timer)}": not checkpoint.get(timer) for timer in CHECKPOINT_TIMERS}
    )
    return checks


def population_key(cfg: DictConfig, datamodule: RegressionDataModule) -> str:
    """The config but what members may differ in, and a digest of the data's splits (their seed may follow
    a member's ``seed``)."""
    config = OmegaConf.to_container(cfg, resolve=False)
    for key in MEMBER_KEYS:
        config.pop(key, None)
    scheduler = config.get("scheduler", {}).pop("scheduler", None)
    config["scheduler_class"] = scheduler.get("_target_") if isinstance(scheduler, dict) else scheduler
    splits = [tensor for split in datamodule.splits.values() for tensor in split]
    return json.dumps(config, sort_keys=True, default=str) + rows_digest(*splits)


def build_member(job: int, cfg: DictConfig) -> Member:
    """Seeds, then builds data, model, module, optimizer and scheduler in the order ``run`` does."""
    validate_config(cfg)
    datamodule, module = build_objects(cfg)
    with input_errors():
        check_fit_settings(cfg, datamodule)
        optimizer = module.build_optimizer()
        scheduler = module.build_scheduler(optimizer) if module.scheduler_factory else None
    key = population_key(cfg, datamodule)
    return Member(job, cfg, datamodule, module, optimizer, scheduler, key, RandomState().state_dict())
