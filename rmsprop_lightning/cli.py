"""Console entry points: ``rmsprop-train`` runs the same Hydra app as ``train.py``."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from rmsprop_lightning.resolvers import PROJECT_ROOT
from rmsprop_lightning.train import run

CONFIG_DIR = PROJECT_ROOT / "conf"


@hydra.main(config_path=str(CONFIG_DIR), config_name="train", version_base="1.3")
def train_main(cfg: DictConfig) -> float | None:
    """``rmsprop-train [overrides]``: the template's training job."""
    return run(cfg)
