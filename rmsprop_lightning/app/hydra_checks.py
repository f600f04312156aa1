"""A Hydra callback that refuses an unwritable run or sweep folder before Hydra creates it."""

from __future__ import annotations

from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from rmsprop_lightning.app.config_checks import check_writable
from rmsprop_lightning.errors import InputError, exit_with

# the keys a user sets to move the output folders, most specific first
OUTPUT_KEYS = ("paths.log_dir", "paths.root_dir")


class OutputFolderCheck(Callback):
    """Checks that ``hydra.run.dir`` (or ``hydra.sweep.dir``) can be created: one line, not a traceback,
    naming the key the user set to move it (``paths.log_dir=...``), if any."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config, config.hydra.run.dir, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config, config.hydra.sweep.dir, "hydra.sweep.dir")

    @staticmethod
    def _check(config: DictConfig, path: str, key: str) -> None:
        typed = {
            line.split("=", 1)[0].lstrip("+"): line
            for line in OmegaConf.to_container(config.hydra.overrides.task)
        }
        named = next((typed[name] for name in (key, *OUTPUT_KEYS) if name in typed), None)
        try:
            check_writable(path, key if named is None else f"{named}: {key}")
        except InputError as error:
            exit_with(error)
