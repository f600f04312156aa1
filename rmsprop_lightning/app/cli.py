"""Console entry points: ``rmsprop-train`` (and ``python train.py``) run the template's Hydra app."""

from __future__ import annotations

import sys
from importlib.resources import files
from pathlib import Path

import hydra
from omegaconf import DictConfig

from rmsprop_lightning.app.entry import run_app
from rmsprop_lightning.app.extras import exit_if_plugin_missing
from rmsprop_lightning.app.jobs import run_job
from rmsprop_lightning.errors import reported_errors

CONFIG_DIR = Path(str(files("rmsprop_lightning.conf")))


@hydra.main(config_path=str(CONFIG_DIR), config_name="train", version_base="1.3")
def _hydra_train(cfg: DictConfig) -> float | None:
    with reported_errors():
        return run_job(cfg)


def train_main() -> None:
    """``rmsprop-train [overrides]``: the template's training job."""
    exit_if_plugin_missing(sys.argv[1:])
    run_app(_hydra_train, CONFIG_DIR)
