"""A Hydra callback that passes a SIGTERM sent to a joblib multirun's launching process on to its workers,
whose jobs then stop as a run does (after the step, with a checkpoint), and the sweep with them."""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
from types import FrameType
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger(__name__)

# the launcher whose jobs run in worker processes that this process started
JOBLIB_LAUNCHER = "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"


def forward_sigterm(signum: int, frame: FrameType | None) -> None:
    """Sends SIGTERM to this process's worker processes; with none (no job started yet) it stops as usual."""
    workers = multiprocessing.active_children()
    if not workers:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    log.warning("Received SIGTERM: passing it to the %d worker processes, whose jobs stop", len(workers))
    for worker in workers:
        if worker.pid is not None:
            os.kill(worker.pid, signum)


class SigtermToWorkers(Callback):
    """During a multirun with the joblib launcher, SIGTERM to this process stops its workers' jobs too (a
    terminal's Ctrl-C and a SIGTERM to the process group reach them already); others' handlers stay."""

    def __init__(self) -> None:
        self._previous: Any = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        joblib = config.hydra.launcher.get("_target_") == JOBLIB_LAUNCHER
        main = threading.current_thread() is threading.main_thread()
        if joblib and main and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
            self._previous = signal.signal(signal.SIGTERM, forward_sigterm)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None
