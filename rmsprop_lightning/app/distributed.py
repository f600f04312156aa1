"""DDP that works inside Hydra runs and multiruns: each extra rank runs exactly the current job."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import lightning.pytorch as pl
import torch.distributed
from lightning.pytorch.strategies import DDPStrategy, StrategyRegistry
from omegaconf import OmegaConf

from rmsprop_lightning.app.resume import quote
from rmsprop_lightning.errors import InputError
from rmsprop_lightning.internals import subprocess_script_launcher

SubprocessScriptLauncher = subprocess_script_launcher()

DISTRIBUTED_ENV_VARS = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")


def hydra_job_command(local_rank: int) -> tuple[list[str], str]:
    """The command and working directory that re-run the current Hydra job as one rank: its own task
    overrides only (never ``-m`` or the sweep's lists), in the job's output folder."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import get_original_cwd

    import __main__

    hydra_cfg = HydraConfig.get()
    if __main__.__spec__ is None:
        command = [sys.executable, os.path.abspath(sys.argv[0])]
    else:
        command = [sys.executable, "-m", __main__.__spec__.name]
    command.append(f"--config-name={hydra_cfg.job.config_name}")
    for source in hydra_cfg.runtime.config_sources:  # the primary folder (--config-path), a --config-dir
        if source.provider in ("main", "command-line") and source.schema == "file":
            flag = "--config-path" if source.provider == "main" else "--config-dir"
            command.append(f"{flag}={source.path}")
    command += OmegaConf.to_container(hydra_cfg.overrides.task)  # as typed
    if hydra_cfg.searchpath:  # where the job's options of its own are
        command.append(f"hydra.searchpath=[{','.join(quote(entry) for entry in hydra_cfg.searchpath)}]")
    command += [
        f"hydra.run.dir={quote(hydra_cfg.runtime.output_dir)}",
        "hydra.output_subdir=null",
        f"hydra.job.name={hydra_cfg.job.name}_rank{local_rank}",
        "hydra/job_logging=disabled",
        "hydra/hydra_logging=disabled",
    ]
    return command, get_original_cwd()


@contextmanager
def stop_signals_ignored() -> Iterator[None]:
    """Processes started in the block ignore SIGINT and SIGTERM until their training steps take them.

    A Ctrl-C reaches every rank: one that stopped while starting would leave the first waiting for it to
    join (in torch's store, for its timeout). This process would not act on them meanwhile either.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, signal.SIG_IGN) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


class _HydraJobLauncher(SubprocessScriptLauncher):
    """Starts ranks 1..N-1 with :func:`hydra_job_command` when Hydra is running."""

    def _call_children_scripts(self) -> None:
        from hydra.core.hydra_config import HydraConfig

        if not HydraConfig.initialized():
            super()._call_children_scripts()
            return
        self._check_can_spawn_children()
        environment = self.cluster_environment
        os.environ["MASTER_ADDR"] = environment.main_address
        os.environ["MASTER_PORT"] = str(environment.main_port)
        os.environ["NODE_RANK"] = str(environment.node_rank())
        os.environ["LOCAL_RANK"] = str(environment.local_rank())
        os.environ["WORLD_SIZE"] = str(self.num_processes * self.num_nodes)
        with stop_signals_ignored():
            for local_rank in range(1, self.num_processes):
                command, cwd = hydra_job_command(local_rank)
                child_env = {**os.environ, "LOCAL_RANK": str(local_rank)}
                self.procs.append(subprocess.Popen(command, env=child_env, cwd=cwd))

    def release_ranks(self, timeout: float = 60.0) -> None:
        """Waits for the job's other ranks to end (kills them after ``timeout`` seconds) and takes them off
        the list Lightning's child-process observer watches.

        The observer kills this process once a rank has ended with an error code; in a multirun that would
        end the whole sweep during a later job (the observer outlives the job it was started for).
        """
        ranks = list(self.procs)
        self.procs.clear()  # the list the observer reads: empty, it stops at its next look
        for rank in ranks:
            try:
                rank.wait(timeout)
            except subprocess.TimeoutExpired:
                rank.kill()
                rank.wait()


class HydraDDPStrategy(DDPStrategy):
    """Lightning's DDP whose child processes run exactly the current Hydra job."""

    def _configure_launcher(self) -> None:
        super()._configure_launcher()
        if isinstance(self._launcher, SubprocessScriptLauncher):
            self._launcher = _HydraJobLauncher(self.cluster_environment, self.num_processes, self.num_nodes)


def check_start_method(strategy: Any) -> None:
    """Refuses a ``trainer.strategy`` (a name, or a config of a DDP strategy) that trains in processes it
    starts itself (``ddp_spawn``, ``ddp_fork``): what they train never reaches the job's callbacks."""
    if isinstance(strategy, str):
        known = strategy in StrategyRegistry
        method = StrategyRegistry[strategy]["init_params"].get("start_method") if known else None
        typed, allowed = f"trainer.strategy={strategy}", "trainer=ddp or trainer=ddp_cpu"
    else:
        method = strategy.get("start_method") if isinstance(strategy, Mapping) else None
        typed, allowed = f"trainer.strategy.start_method={method}", "trainer.strategy.start_method=popen"
    if method in ("spawn", "fork", "forkserver"):
        raise InputError(
            f"{typed} trains in processes it starts itself, whose results never reach this job's records; "
            f"allowed: {allowed}"
        )


def runs_the_job_in_every_rank(trainer: pl.Trainer) -> bool:
    """Whether the trainer's extra ranks, if any, run the current Hydra job: Lightning's own DDP (what
    ``strategy=auto`` picks for several devices, or ``ddp``) re-runs the whole command line, a sweep's too."""
    strategy = trainer.strategy
    return type(strategy) is not DDPStrategy or not isinstance(strategy.launcher, SubprocessScriptLauncher)


def clean_distributed_state(trainer: pl.Trainer | None, ended: bool = True) -> None:
    """Ends the job's other ranks, destroys the process group and forgets the rank variables a launcher set.

    Without this a later job in the same process would take itself for a child rank
    (``LOCAL_RANK`` is set) and reuse a stale port. A job that did not end (``ended=False``: stopped at once
    by a second Ctrl-C, or failed) may leave a rank blocked in a collective: it gets seconds, not a minute.
    """
    launcher = trainer.strategy.launcher if trainer is not None else None
    if isinstance(launcher, _HydraJobLauncher):
        launcher.release_ranks(timeout=60.0 if ended else 5.0)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    for name in DISTRIBUTED_ENV_VARS:
        os.environ.pop(name, None)
