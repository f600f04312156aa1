"""``hydra/launcher=population``: Hydra's view of the population launcher (imports only Hydra)."""

from __future__ import annotations

import signal
from collections.abc import Sequence
from typing import Any

from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

LAUNCHER = "rmsprop_lightning.population.launcher"  # imports torch: while the jobs' configs compose


class PopulationLauncher(Launcher):
    """Trains the jobs of a sweep that differ only in optimizer, scheduler and seed as one stacked model.

    ``cpus_per_task``: torch threads of the process (``threads_per_job=auto`` takes it; ``None``: torch's).
    """

    def __init__(self, cpus_per_task: int | None = None) -> None:
        self.cpus_per_task = cpus_per_task
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.task_function: TaskFunction | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.task_function = task_function

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from rmsprop_lightning.app.config_checks import check_launcher_threads
        from rmsprop_lightning.errors import InterruptedRun, reported_errors
        from rmsprop_lightning.population.forks import compose_jobs, deferred_signals

        with reported_errors():
            check_launcher_threads(self.config.hydra.launcher)
            with deferred_signals("setting up the sweep's jobs first") as received:
                configs = compose_jobs(self, job_overrides, initial_job_idx, meanwhile=LAUNCHER)
                from rmsprop_lightning.population.launcher import group, launch

                populations, alone = group(configs)
            if received:
                name = signal.Signals(received[0]).name
                raise InterruptedRun(
                    f"stopped by {name} while the sweep's jobs were set up; no job ran", received[0]
                )
        return launch(self, populations, alone)


def register() -> Any:
    """Registers the launcher with Hydra where its plugin scan does not reach (editable installs)."""
    from hydra.core.plugins import Plugins

    Plugins.instance().register(PopulationLauncher)
