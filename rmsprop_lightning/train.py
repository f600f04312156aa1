"""``run(cfg)``: seed, build every object from the composed config, fit, test, report."""

from __future__ import annotations

import logging
from typing import Any

import lightning.pytorch as pl
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig, OmegaConf

from rmsprop_lightning.data import RegressionDataModule
from rmsprop_lightning.distributed import clean_distributed_state
from rmsprop_lightning.module import RegressionModule

log = logging.getLogger(__name__)


def instantiate_entries(group: DictConfig | None) -> list[Any]:
    """Instantiates every entry of a ``name: {_target_: ...}`` group; entries without a target are skipped."""
    if not group:
        return []
    return [
        instantiate(entry)
        for entry in group.values()
        if isinstance(entry, DictConfig) and "_target_" in entry
    ]


def build_model(cfg: DictConfig, datamodule: RegressionDataModule) -> Any:
    """The model, with ``in_features``/``out_features`` taken from the data when left null."""
    sizes = {}
    for key, reported in (("in_features", "num_features"), ("out_features", "num_targets")):
        if cfg.model.get(key) is None:
            sizes[key] = getattr(datamodule, reported)
    return instantiate(cfg.model, **sizes)


def build_module(cfg: DictConfig, model: Any) -> RegressionModule:
    """The LightningModule with the ``optimizer`` and ``scheduler`` groups' factories."""
    scheduler = cfg.scheduler
    return RegressionModule(
        model=model,
        optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(scheduler.scheduler) if scheduler.scheduler is not None else None,
        scheduler_interval=scheduler.interval,
        scheduler_frequency=scheduler.frequency,
        scheduler_monitor=scheduler.monitor,
        **OmegaConf.to_container(cfg.module, resolve=True),
    )


def build_trainer(cfg: DictConfig, callbacks: list[Callback], loggers: list[Logger]) -> pl.Trainer:
    """The Trainer from the ``trainer`` group, with the instantiated callbacks and loggers."""
    return instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)


def run(cfg: DictConfig) -> float | None:
    """Trains and tests one experiment; returns ``cfg.optimized_metric`` for sweepers.

    Resumes from ``cfg.ckpt_path`` when set and tests the best checkpoint when a
    checkpoint callback kept one.
    """
    try:
        pl.seed_everything(cfg.seed, workers=True, verbose=False)
        datamodule = instantiate(cfg.data)
        module = build_module(cfg, build_model(cfg, datamodule))
        callbacks = instantiate_entries(cfg.get("callbacks"))
        loggers = instantiate_entries(cfg.get("logger"))
        trainer = build_trainer(cfg, callbacks, loggers)
        if cfg.get("train", True):
            trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"), weights_only=True)
        metrics = {name: float(value) for name, value in trainer.callback_metrics.items()}
        if cfg.get("test", True) and datamodule.splits["test"][0].numel():
            checkpoint = trainer.checkpoint_callback
            best = checkpoint.best_model_path if isinstance(checkpoint, ModelCheckpoint) else ""
            trainer.test(
                module, datamodule=datamodule, ckpt_path=best or None, weights_only=True, verbose=False
            )
            metrics.update({name: float(value) for name, value in trainer.callback_metrics.items()})
        if trainer.is_global_zero:
            log.info("Final metrics: %s", ", ".join(f"{k}={v:.6g}" for k, v in sorted(metrics.items())))
        return metrics.get(cfg.get("optimized_metric") or "")
    finally:
        clean_distributed_state()
