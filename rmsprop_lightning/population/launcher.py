"""The sweep as populations: compose every job, group those that can train together, train, write each job.

Jobs whose configs differ only in the optimizer's settings, the scheduler's and the seed (and
whose data come out the same) form one population. The others, and any job that cannot join
one (the launcher says why in one line), run one by one as the basic launcher runs them. Every
job gets its own folder, written through Hydra's ``run_job``, so the sweep looks the same.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable, Sequence
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, configure_log, run_job
from omegaconf import DictConfig

from rmsprop_lightning.app.jobs import resolve_threads, torch_threads
from rmsprop_lightning.app.jobs import run_job as run_recorded_job
from rmsprop_lightning.errors import InterruptedRun, exit_with, program, reported_errors
from rmsprop_lightning.population.forks import deferred_signals, fork_map, shared
from rmsprop_lightning.population.members import Member, build_member, solo_reason
from rmsprop_lightning.population.outputs import PopulationRecord, write_member
from rmsprop_lightning.population.train import train_population

log = logging.getLogger(__name__)

SWEEP_KEYS = {"job_dir_key": "hydra.sweep.dir", "job_subdir_key": "hydra.sweep.subdir"}


def group(configs: Sequence[DictConfig]) -> tuple[list[list[Member]], list[DictConfig]]:
    """The populations (members in job order) and the jobs that run alone."""
    populations: dict[str, list[Member]] = {}
    alone: list[DictConfig] = []
    for config in configs:
        reason = solo_reason(config)
        if reason is None:
            HydraConfig.instance().set_config(config)  # the checks resolve its output folder
            try:
                member = build_member(config.hydra.job.num, config)
                populations.setdefault(member.key, []).append(member)
                continue
            except Exception as error:  # its own run reports the error in its folder
                reason = f"{type(error).__name__}: {error}".splitlines()[0]
        log.info("Job #%d runs alone: %s", config.hydra.job.num, reason)
        alone.append(config)
    for (member,) in [m for m in populations.values() if len(m) == 1]:
        log.info(
            "Job #%d runs alone: no other job trains with its settings on the same data splits", member.job
        )
        alone.append(member.cfg)
    return [m for m in populations.values() if len(m) > 1], alone


def sweep_job(launcher: Any, config: DictConfig, task: Callable[[DictConfig], Any]) -> JobReturn:
    """Hydra's ``run_job`` of one job into its sweep folder; the sweep's logging is set back after it."""
    job_return = run_job(
        hydra_context=launcher.hydra_context, task_function=task, config=config, **SWEEP_KEYS
    )
    configure_log(launcher.config.hydra.hydra_logging, launcher.config.hydra.verbose)
    return job_return


def writer_process() -> None:
    """A forked writer runs torch on one thread (the parent's OpenMP pool does not survive a fork)."""
    torch.set_num_threads(1)


def write_job(index: int) -> JobReturn:
    """Member ``index``'s job: its folder, record and outputs."""
    member = shared["members"][index]

    def write(cfg: DictConfig, fields: dict[str, Any]) -> float | None:
        fields["threads"] = shared["threads"]
        return write_member(cfg, member, shared["record"], index, fields)

    def task(cfg: DictConfig) -> float | None:
        with reported_errors():
            return run_recorded_job(cfg, train=write)

    return sweep_job(shared["launcher"], member.cfg, task)


def launch(launcher: Any, populations: list[list[Member]], alone: list[DictConfig]) -> list[JobReturn]:
    """``Launcher.launch`` of the grouped jobs: the populations one after another, then the jobs that
    run alone."""
    returns: dict[int, JobReturn] = {}
    for members in populations:
        log.info("Population of %d: jobs %s", len(members), ", ".join(f"#{m.job}" for m in members))
        threads = resolve_threads(members[0].cfg.get("threads_per_job"), launcher.config.hydra.launcher)
        try:
            with torch_threads(threads):
                result = train_population(members)
                threads = torch.get_num_threads()
        except Exception as error:  # each job then runs alone and records its own outcome
            jobs, why = [m.job for m in members], f"{type(error).__name__}: {error}"
            full = os.environ.get("HYDRA_FULL_ERROR") == "1"  # the traceback, as for the jobs' errors
            log.error("The population of jobs %s failed (%s); they run one by one", jobs, why, exc_info=full)
            alone.extend(member.cfg for member in members)
            continue
        shared.update(launcher=launcher, members=members, record=PopulationRecord(result), threads=threads)
        # forked workers must not touch a device or a thread pool the parent used (torch at one thread)
        on_cpu = result.module.device.type == "cpu"
        with deferred_signals(f"writing the {len(members)} job folders first") as received:
            written = fork_map(write_job, range(len(members)), initializer=writer_process, fork=on_cpu)
        returns.update(zip([member.job for member in members], written, strict=True))
        stop, received = result.interrupted, result.deferred_signals + received
        if stop is None and received:
            name = signal.Signals(received[0]).name
            stop = InterruptedRun(f"stopped by {name} once the jobs were written", received[0])
        if stop is not None:  # every member is written: the sweep stops here
            resume = f"each job's last.ckpt is saved: resume one with {program()} resume=<job>"
            exit_with(InterruptedRun(f"{stop}; {resume}", stop.exit_code - 128))
    for job in alone:
        returns[job.hydra.job.num] = sweep_job(launcher, job, launcher.task_function)
    return [returns[number] for number in sorted(returns)]
