"""A Hydra callback that refuses an unwritable run or sweep folder before Hydra creates it."""

from __future__ import annotations

from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from rmsprop_lightning.app.validation import check_writable
from rmsprop_lightning.errors import InputError, exit_with


class OutputFolderCheck(Callback):
    """Checks that ``hydra.run.dir`` (or ``hydra.sweep.dir``) can be created: one line, not a traceback."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config.hydra.run.dir, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config.hydra.sweep.dir, "hydra.sweep.dir")

    @staticmethod
    def _check(path: str, key: str) -> None:
        try:
            check_writable(path, key)
        except InputError as error:
            exit_with(error)
