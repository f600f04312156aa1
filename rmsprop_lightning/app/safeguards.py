"""What every training run gets before it starts: the last input checks and the protective callbacks."""

from __future__ import annotations

from typing import Any

from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig

from rmsprop_lightning.app.resume import RESUME_KEY, record_resume
from rmsprop_lightning.app.validation import check_checkpoint, check_optimizer, check_writable
from rmsprop_lightning.callbacks.divergence import DivergenceGuard
from rmsprop_lightning.callbacks.interrupt import GracefulInterrupt
from rmsprop_lightning.callbacks.random_state import RandomState


def safeguards(cfg: DictConfig, module: Any) -> list[Callback]:
    """Checks the optimizer, the checkpoint to start from and the output folder; returns the safety callbacks.

    The callbacks put the random generators' states into checkpoints, stop (or skip) at
    the first non-finite step, and turn SIGTERM/Ctrl-C into a checkpoint and a clean stop.
    A resume's allowed overrides are written into the run's saved config once all checks pass.
    """
    optimizer = check_optimizer(module)
    output_dir = cfg.paths.output_dir
    if cfg.get("train", True) and cfg.get("ckpt_path"):
        check_checkpoint(cfg.ckpt_path, module, optimizer, cfg.trainer.max_steps)
    check_writable(output_dir)
    if cfg.get(RESUME_KEY):
        record_resume(cfg)
    return [
        RandomState(),
        DivergenceGuard(cfg.get("on_nonfinite", "stop"), summary_dir=output_dir),
        GracefulInterrupt(run_dir=output_dir),
    ]
