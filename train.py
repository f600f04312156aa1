"""Train the RMSprop regressor: ``python train.py [optimizer=rmsprop_centered] [key=value ...]``."""

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

import rmsprop_lightning.resolvers  # noqa: F401  (registers ${run_id:})
from rmsprop_lightning.entry import run_app
from rmsprop_lightning.errors import reported_errors
from rmsprop_lightning.extras import exit_if_plugin_missing
from rmsprop_lightning.jobs import run_job


@hydra.main(config_path="conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    with reported_errors():
        return run_job(cfg)


if __name__ == "__main__":
    exit_if_plugin_missing(sys.argv[1:])
    run_app(main, Path(__file__).parent / "conf")
