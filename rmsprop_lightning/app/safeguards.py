"""What every training run gets before it starts: the last input checks and the protective callbacks."""

from __future__ import annotations

from typing import Any

from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig

from rmsprop_lightning.app.config_checks import check_writable
from rmsprop_lightning.app.resume import continues_itself
from rmsprop_lightning.app.validation import check_checkpoint
from rmsprop_lightning.callbacks.branch import CheckpointBranch
from rmsprop_lightning.callbacks.divergence import DivergenceGuard
from rmsprop_lightning.callbacks.interrupt import GracefulInterrupt
from rmsprop_lightning.callbacks.random_state import RandomState


def safeguards(cfg: DictConfig, module: Any, optimizer: Any) -> list[Callback]:
    """Checks the checkpoint to start from and the output folder; returns the safety callbacks."""
    output_dir = cfg.paths.output_dir
    callbacks: list[Callback] = []
    if cfg.get("ckpt_path"):
        full = cfg.get("train", True) and not is_weights_branch(cfg)  # else the weights alone are read
        limits = {} if continues_itself(cfg) else cfg.trainer  # a resume's were checked with its record
        check_checkpoint(cfg.ckpt_path, module, optimizer if full else None, limits)
        if full and not continues_itself(cfg):
            callbacks.append(CheckpointBranch())
    check_writable(output_dir)
    return [
        *callbacks,
        RandomState(),
        DivergenceGuard(cfg.get("on_nonfinite", "stop"), summary_dir=output_dir),
        GracefulInterrupt(run_dir=output_dir),
    ]


def is_weights_branch(cfg: DictConfig) -> bool:
    """Whether the run starts from ``ckpt_path``'s weights only (``ckpt_restore=weights``), at step 0."""
    return bool(cfg.get("ckpt_path")) and not continues_itself(cfg) and cfg.get("ckpt_restore") == "weights"
