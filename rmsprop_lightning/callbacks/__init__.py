"""Lightning callbacks of the project."""

from rmsprop_lightning.callbacks.update_report import UpdateReport

__all__ = ["UpdateReport"]
