"""``BestCheckpoint``: Lightning's ``ModelCheckpoint`` that never keeps a NaN or infinite score."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import Tensor


class BestCheckpoint(ModelCheckpoint):
    """Lightning's ``ModelCheckpoint``, but a validation whose monitored value is not finite is never saved.

    Lightning saves any score while it holds fewer than ``save_top_k`` checkpoints (NaN as the worst), so the
    first validation after an update that blew the weights up kept them as the run's best.
    """

    @property
    def state_key(self) -> str:
        """``ModelCheckpoint``'s key for the same settings: either one restores the other's checkpoints."""
        return super().state_key.replace(type(self).__qualname__, ModelCheckpoint.__qualname__, 1)

    def check_monitor_top_k(self, trainer: pl.Trainer, current: Tensor | None = None) -> bool:
        if current is not None and not bool(torch.isfinite(current).all()):
            return False
        return super().check_monitor_top_k(trainer, current)
