"""The task wrapper around :func:`~rmsprop_lightning.app.run.run` that both entry points call.

It writes each job's ``metrics.json`` (status, error, metrics, steps, times, the
resolved optimizer and the overrides), limits the job's CPU threads, and keeps a
multirun going when one job fails: the failure is recorded and the sweeper gets
``None`` (as for a NaN or infinite metric), which Optuna's sweeper records as a failed
trial before going on. A single run that fails still raises.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from lightning.fabric.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from rmsprop_lightning.app.run import run
from rmsprop_lightning.callbacks.fit_stats import FitStats
from rmsprop_lightning.summary import write_summary

log = logging.getLogger(__name__)

THREAD_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def available_cores() -> int:
    """CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def resolve_threads(setting: Any, launcher: DictConfig | None, cores: int | None = None) -> int | None:
    """Torch threads for one job from ``threads_per_job``: an integer, ``null`` (torch's default) or ``auto``.

    ``auto`` shares the cores among a launcher's parallel workers (joblib's ``n_jobs``;
    negative counts as in joblib, -1 = all cores), uses submitit's ``cpus_per_task``,
    and keeps torch's default under the basic launcher, which runs one job at a time.
    """
    if setting is None:
        return None
    if setting != "auto":
        if isinstance(setting, bool) or not isinstance(setting, int) or setting < 1:
            raise ValueError(
                f"threads_per_job={setting!r} is invalid; allowed: auto, null or a positive integer"
            )
        return setting
    if launcher is None:
        return None
    cores = cores or available_cores()
    n_jobs = launcher.get("n_jobs")
    if n_jobs is not None:
        workers = n_jobs if n_jobs > 0 else max(cores + 1 + n_jobs, 1)
        return max(cores // workers, 1)
    return launcher.get("cpus_per_task")


@contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """Runs the block with ``count`` torch threads (also exported to child processes); restores after."""
    if count is None:
        yield
        return
    previous_threads = torch.get_num_threads()
    previous_env = {name: os.environ.get(name) for name in THREAD_ENV_VARS}
    torch.set_num_threads(count)
    os.environ.update({name: str(count) for name in THREAD_ENV_VARS})
    try:
        yield
    finally:
        torch.set_num_threads(previous_threads)
        for name, value in previous_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def hydra_job_fields() -> tuple[dict[str, Any], DictConfig | None, bool]:
    """The job's Hydra identity for the summary, its launcher config, and whether it runs in a multirun."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return {"overrides": []}, None, False
    hydra_cfg = HydraConfig.get()
    fields = {
        "overrides": list(hydra_cfg.overrides.task),
        "job_num": hydra_cfg.job.get("num"),
        "job_name": hydra_cfg.job.name,
    }
    return fields, hydra_cfg.get("launcher"), hydra_cfg.mode == RunMode.MULTIRUN


def run_job(cfg: DictConfig) -> float | None:
    """Runs ``run(cfg)`` and records the job; returns the optimized metric, ``None`` when it is not finite."""
    started = time.time()
    clock = time.perf_counter()
    job_fields, launcher, multirun = hydra_job_fields()
    output_dir = cfg.paths.output_dir
    writes = rank_zero_only.rank == 0
    stats = FitStats()
    threads = None
    if writes:
        write_summary(
            output_dir,
            status="running",
            error=None,
            started_at=started,
            seed=cfg.get("seed"),
            optimizer=OmegaConf.to_container(cfg.optimizer, resolve=True),
            optimized_metric=cfg.get("optimized_metric"),
            **job_fields,
        )
    try:
        threads = resolve_threads(cfg.get("threads_per_job"), launcher)
        with torch_threads(threads):
            value = run(cfg, extra_callbacks=[stats])
    except Exception as error:
        if writes:
            _finish(output_dir, "failed", clock, stats, threads, error=f"{type(error).__name__}: {error}")
        if not multirun:
            raise
        log.exception("Job %s failed; the sweep goes on", job_fields.get("job_num"))
        return None
    if writes:
        _finish(output_dir, "completed", clock, stats, threads, value=value)
    return value if value is not None and math.isfinite(value) else None


def _finish(
    output_dir: str, status: str, clock: float, stats: FitStats, threads: int | None, **fields: Any
) -> None:
    """Writes the job's end state (a ``diverged`` or ``interrupted`` status set meanwhile is kept)."""
    write_summary(
        output_dir,
        status=status,
        finished_at=time.time(),
        wall_seconds=time.perf_counter() - clock,
        threads=threads or torch.get_num_threads(),
        **stats.fields(),
        **fields,
    )
