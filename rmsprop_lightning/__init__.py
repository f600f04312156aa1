"""rmsprop-lightning: RMSprop for PyTorch Lightning, with a Hydra experiment template."""

from rmsprop_lightning.data import RegressionDataModule
from rmsprop_lightning.model import FeedForward
from rmsprop_lightning.module import RegressionModule

__all__ = ["FeedForward", "RegressionDataModule", "RegressionModule"]
__version__ = "0.1.0"
