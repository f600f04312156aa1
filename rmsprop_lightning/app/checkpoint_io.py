"""Checkpoint files written atomically, so a kill during a save never leaves a truncated checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from rmsprop_lightning.atomic import replace_atomically
from rmsprop_lightning.errors import InterruptedRun


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint I/O, with local files written beside the target, synced, then renamed.

    Lightning's own writer stages the file in the system temporary folder and moves it,
    which copies (and can be cut short) when that folder is on another file system.
    Remote paths (``s3://`` ...) keep Lightning's writer.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if "://" in str(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        if storage_options is not None:
            raise TypeError(
                f"Trainer.save_checkpoint(..., storage_options=...) is not supported by {type(self).__name__}"
            )
        try:
            replace_atomically(Path(path), lambda file: torch.save(checkpoint, file))
        except RuntimeError as error:
            # a stop (a second Ctrl-C) raised while torch's zip writer ran comes out as the writer's error
            if isinstance(error.__context__, InterruptedRun | KeyboardInterrupt):
                raise error.__context__ from None
            raise
