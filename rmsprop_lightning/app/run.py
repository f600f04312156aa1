"""``run(cfg)``: seed, build every object from the composed config, fit, test, report."""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, ProgressBar
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig, OmegaConf

from rmsprop_lightning.app.checkpoint_io import AtomicCheckpointIO
from rmsprop_lightning.app.config_checks import accelerator_settings, check_nodes
from rmsprop_lightning.app.config_shape import interpolated_names
from rmsprop_lightning.app.distributed import (
    HydraDDPStrategy,
    check_start_method,
    clean_distributed_state,
    runs_the_job_in_every_rank,
)
from rmsprop_lightning.app.fit_length import check_fit_settings, validation_at_the_end
from rmsprop_lightning.app.job_hparams import job_hparams
from rmsprop_lightning.app.resolvers import on_terminal
from rmsprop_lightning.app.resume import RESUME_KEY, continues_itself
from rmsprop_lightning.app.resume_records import ResumeRecords
from rmsprop_lightning.app.safeguards import is_weights_branch, safeguards
from rmsprop_lightning.app.targets import check_built_nodes
from rmsprop_lightning.app.validation import (
    check_accelerator,
    check_data,
    check_rows_per_process,
    check_same_data,
    check_same_processes,
    input_errors,
    load_checkpoint,
    read_data,
)
from rmsprop_lightning.data import RegressionDataModule
from rmsprop_lightning.errors import DivergedError, InputError, first_line, is_rank_zero
from rmsprop_lightning.logging.tensorboard import finish_tensorboard
from rmsprop_lightning.module import RegressionModule
from rmsprop_lightning.optim.rmsprop import fast_fell_back
from rmsprop_lightning.summary import nonfinite

log = logging.getLogger(__name__)


def instantiate_entries(cfg: DictConfig, group: str) -> list[Any]:
    """Instantiates every entry of the ``name: {_target_: ...}`` group ``cfg[group]`` that has a target, and
    warns of one with settings but none (unless an interpolation reads them); an entry refusing its arguments
    is named in the error (:func:`entry_error`)."""
    built, read = [], interpolated_names(cfg)
    for name, entry in (cfg.get(group) or {}).items():
        if isinstance(entry, DictConfig) and "_target_" in entry:
            try:
                built.append(instantiate(entry))
            except InstantiationException as error:
                raise entry_error(f"{group}.{name}", entry, error.__cause__ or error) from error
        elif entry is not None and name not in read:  # an option's settings for an entry another dropped
            log.warning(
                "%s.%s names no class (_target_): nothing builds it, its settings go unused", group, name
            )
    return built


def entry_error(path: str, entry: DictConfig, error: BaseException) -> InputError:
    """``error`` as one line naming the entry at ``path``, or its key as typed where the message starts with
    one (``every_n_steps must be ...``: ``callbacks.<name>.every_n_steps must be ...``)."""
    message = first_line(error)
    word = re.match(r"\w+", message)
    if word and word.group() in entry:
        return InputError(f"{path}.{message}")
    return InputError(f"{path}: {message}")


def build_model(cfg: DictConfig, datamodule: RegressionDataModule) -> Any:
    """The model, with ``in_features``/``out_features`` taken from the data when left null."""
    sizes = {}
    for key, reported in (("in_features", "num_features"), ("out_features", "num_targets")):
        if cfg.model.get(key) is None:
            read_data(cfg, datamodule)
            sizes[key] = getattr(datamodule, reported)
    return instantiate(cfg.model, **sizes)


def build_module(cfg: DictConfig, model: Any) -> RegressionModule:
    """The LightningModule with the ``optimizer`` and ``scheduler`` groups' factories."""
    scheduler = cfg.scheduler
    return RegressionModule(
        model=model,
        # factories, which the module calls with the parameters and the optimizer
        optimizer=instantiate(cfg.optimizer, _partial_=True),
        scheduler=instantiate(scheduler.scheduler, _partial_=True)
        if scheduler.scheduler is not None
        else None,
        scheduler_interval=scheduler.interval,
        scheduler_frequency=scheduler.frequency,
        scheduler_monitor=scheduler.monitor,
        **OmegaConf.to_container(cfg.module, resolve=True),
    )


def build_objects(cfg: DictConfig) -> tuple[RegressionDataModule, RegressionModule]:
    """Checks the targets and the accelerator, seeds, then builds the data, the model and the module, in
    the order that random sources draw in."""
    check_built_nodes(cfg)
    check_accelerator(*accelerator_settings(cfg.trainer))
    check_start_method(cfg.trainer.get("strategy", "auto"))
    check_nodes(cfg.trainer.get("num_nodes"))
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    with input_errors():
        datamodule = instantiate(cfg.data)
        model = build_model(cfg, datamodule)
        check_data(cfg, datamodule)  # after the model: random sources draw in the usual order
        return datamodule, build_module(cfg, model)


def build_trainer(
    cfg: DictConfig, callbacks: list[Callback], loggers: list[Logger], datamodule: RegressionDataModule
) -> pl.Trainer:
    """The ``trainer`` group's Trainer with these callbacks and loggers, writing checkpoints atomically (in
    the run's folder unless it names another), and Lightning's own progress bar (where no callback is one)
    on a terminal only; where Lightning would pick its own DDP, the same with :class:`HydraDDPStrategy`."""
    settings = dict(callbacks=callbacks, logger=loggers or False, plugins=[AtomicCheckpointIO()])
    if "default_root_dir" not in cfg.trainer:  # Lightning's own checkpoints go in the run's folder
        settings["default_root_dir"] = cfg.paths.output_dir
    settings.update(validation_at_the_end(cfg, datamodule))
    if not any(isinstance(callback, ProgressBar) for callback in callbacks):  # Lightning would add its own
        settings["enable_progress_bar"] = on_terminal(cfg.trainer.get("enable_progress_bar", True), False)
    trainer = instantiate(cfg.trainer, **settings)
    if runs_the_job_in_every_rank(trainer):
        return trainer
    strategy = cfg.trainer.get("strategy", "auto")
    if strategy not in ("auto", "ddp"):  # a variant whose settings HydraDDPStrategy would not carry over
        shown = strategy.get("_target_", "{...}") if isinstance(strategy, DictConfig) else strategy
        raise InputError(
            f"trainer.strategy={shown} starts its extra processes with the whole command line; allowed: "
            "trainer=ddp or trainer=ddp_cpu, whose HydraDDPStrategy takes DDPStrategy's arguments"
        )
    log.info("DDP with HydraDDPStrategy, whose extra processes run this job (Lightning's run the command)")
    return instantiate(cfg.trainer, **settings, strategy=HydraDDPStrategy())


def run(cfg: DictConfig, extra_callbacks: Sequence[Callback] = ()) -> None:
    """Trains (from ``cfg.ckpt_path`` when set) and tests (the best checkpoint, if one was kept) one
    experiment, whose metrics go to its loggers and callbacks.

    Bad input raises ``InputError`` before work.
    """
    trainer, ended = None, False
    try:
        datamodule, module = build_objects(cfg)
        with input_errors():
            check_rows_per_process(cfg, datamodule)
            check_fit_settings(cfg, datamodule)
            if continues_itself(cfg):
                check_same_data(cfg, datamodule)
                check_same_processes(cfg)
            # an optimizer or scheduler refusing its settings does so now
            optimizer = module.configure_optimizers()
            callbacks = [
                *instantiate_entries(cfg, "callbacks"),
                *extra_callbacks,
                *safeguards(cfg, module, optimizer),
                # set up after the job's FitStats: the job counts as started before the folder changes
                *([ResumeRecords(cfg)] if cfg.get(RESUME_KEY) else []),
            ]
            loggers = instantiate_entries(cfg, "logger")
            if is_rank_zero():
                log.info("Run folder: %s", cfg.paths.output_dir)
            trainer = build_trainer(cfg, callbacks, loggers, datamodule)
            # as its precision plugin will: Lightning restores a checkpoint's weights before that, which at
            # 64-true made them float32 first
            trainer.precision_plugin.convert_module(module)
        ckpt_path, trains = cfg.get("ckpt_path"), cfg.get("train", True)
        if ckpt_path and (is_weights_branch(cfg) or not trains):  # train=false tests the checkpoint's weights
            saved = load_checkpoint(ckpt_path)
            module.load_state_dict(saved["state_dict"])
            if type(datamodule).__qualname__ in saved:  # warns of other data, as a fit's restore does
                datamodule.load_state_dict(saved[type(datamodule).__qualname__])
            ckpt_path = None
        if trains:
            try:
                trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
            except DivergedError:  # an HPARAMS row for its settings too, which a sweep's tab compares
                params = job_hparams(cfg, fast_fell_back(trainer.optimizers))
                finish_tensorboard(trainer.loggers, params, status="failed")
                raise
        # a run whose val/loss ends non-finite (on_nonfinite=skip, or rows out of range) diverged, as its
        # sweep counts it (read before a test replaces the trainer's metrics)
        status = "failed" if nonfinite(trainer.callback_metrics.get("val/loss")) else "success"
        if cfg.get("test", True) and datamodule.splits["test"][0].numel():
            checkpoint = trainer.checkpoint_callback
            best = checkpoint.best_model_path if isinstance(checkpoint, ModelCheckpoint) else ""
            trainer.test(
                module, datamodule=datamodule, ckpt_path=best or None, weights_only=True, verbose=False
            )
        finish_tensorboard(trainer.loggers, job_hparams(cfg, fast_fell_back(trainer.optimizers)), status)
        ended = True
    finally:
        clean_distributed_state(trainer, ended)
