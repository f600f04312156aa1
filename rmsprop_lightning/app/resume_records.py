"""What a resumed run changes in its folder once it starts: the safe keys it changed, written into its saved
config, overrides and summary, the checkpoints it redoes removed, and TensorBoard's purge."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig, OmegaConf

from rmsprop_lightning.app.resume import (
    HYDRA_FOLDER,
    RESUME_KEY,
    SAFE_KEYS,
    continues_itself,
    lenient_select,
    quote,
)
from rmsprop_lightning.app.resume_checks import CHECKPOINT_FOLDER, LAST_CHECKPOINT
from rmsprop_lightning.app.rules import show
from rmsprop_lightning.app.validation import load_checkpoint
from rmsprop_lightning.atomic import replace_atomically
from rmsprop_lightning.errors import is_rank_zero
from rmsprop_lightning.logging.tensorboard import continue_tensorboard
from rmsprop_lightning.summary import write_summary


def record_resume(cfg: DictConfig) -> None:
    """Writes the safe keys a resume changed into the run's saved config, overrides and summary (rank 0)."""
    if not is_rank_zero():
        return
    hydra_dir = Path(cfg[RESUME_KEY]) / HYDRA_FOLDER
    saved = OmegaConf.load(hydra_dir / "config.yaml")
    values = {key: lenient_select(cfg, key) for key in SAFE_KEYS}
    changed = {key: value for key, value in values.items() if lenient_select(saved, key) != value}
    if not changed:
        return
    for key, value in changed.items():
        OmegaConf.update(saved, key, value, force_add=True)
    replace_atomically(hydra_dir / "config.yaml", lambda file: file.write(OmegaConf.to_yaml(saved).encode()))
    overrides_file = hydra_dir / "overrides.yaml"
    # as text: an override's value may hold an interpolation, which the list alone cannot resolve
    previous = OmegaConf.to_container(OmegaConf.load(overrides_file)) if overrides_file.is_file() else []
    kept = [line for line in previous if line.split("=", 1)[0].lstrip("+~") not in changed]
    # as Hydra's override grammar reads them back
    lines = kept + [f"{key}={quote(v) if isinstance(v, str) else show(v)}" for key, v in changed.items()]
    replace_atomically(overrides_file, lambda file: file.write(OmegaConf.to_yaml(lines).encode()))
    write_summary(cfg[RESUME_KEY], overrides=lines)


def discard_redone_checkpoints(cfg: DictConfig) -> None:
    """Removes the checkpoints a resumed run's earlier part wrote after the one it resumes from (all but
    ``last.ckpt`` when it starts again): the run redoes those steps, and Lightning would add a ``-v1``."""
    if not is_rank_zero():
        return
    kept = {LAST_CHECKPOINT}
    if continues_itself(cfg):
        for state in load_checkpoint(cfg.ckpt_path).get("callbacks", {}).values():
            if isinstance(state, dict):
                paths = [
                    *state.get("best_k_models", {}),
                    state.get("best_model_path"),
                    state.get("last_model_path"),
                ]
                kept |= {Path(path).name for path in paths if path}
    for path in (Path(cfg[RESUME_KEY]) / CHECKPOINT_FOLDER).glob("*.ckpt"):
        if path.name not in kept:
            path.unlink()


class ResumeRecords(Callback):
    """Changes a resumed run's folder (its records, redone checkpoints, TensorBoard's purge) once, as its
    trainer sets up: a resume that fails or stops before then leaves the folder as it was."""

    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg
        self._done = False

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._done:
            return
        self._done = True
        record_resume(self.cfg)
        discard_redone_checkpoints(self.cfg)
        resumed_step = (
            load_checkpoint(self.cfg.ckpt_path)["global_step"] if continues_itself(self.cfg) else None
        )
        continue_tensorboard(trainer.loggers, resumed_step)
