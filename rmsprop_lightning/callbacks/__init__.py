"""Lightning callbacks of the project."""

from rmsprop_lightning.callbacks.best_checkpoint import BestCheckpoint
from rmsprop_lightning.callbacks.branch import CheckpointBranch
from rmsprop_lightning.callbacks.divergence import DivergenceGuard
from rmsprop_lightning.callbacks.interrupt import GracefulInterrupt
from rmsprop_lightning.callbacks.last_checkpoint import LastCheckpoint
from rmsprop_lightning.callbacks.lr_monitor import LearningRateMonitor
from rmsprop_lightning.callbacks.optimizer_state import OptimizerStateMonitor
from rmsprop_lightning.callbacks.random_state import RandomState
from rmsprop_lightning.callbacks.update_report import UpdateReport

__all__ = [
    "BestCheckpoint",
    "CheckpointBranch",
    "DivergenceGuard",
    "GracefulInterrupt",
    "LastCheckpoint",
    "LearningRateMonitor",
    "OptimizerStateMonitor",
    "RandomState",
    "UpdateReport",
]
