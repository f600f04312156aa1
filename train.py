"""Train the RMSprop regressor: ``python train.py [optimizer=rmsprop_centered] [key=value ...]``."""

import hydra
from omegaconf import DictConfig

import rmsprop_lightning.resolvers  # noqa: F401  (registers ${run_id:})
from rmsprop_lightning.train import run


@hydra.main(config_path="conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    return run(cfg)


if __name__ == "__main__":
    main()
