"""The task wrapper around :func:`~rmsprop_lightning.app.run.run` that both entry points call: the job's
``metrics.json``, its CPU threads, and a multirun that goes on when one job fails."""

from __future__ import annotations

import logging
import math
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from importlib import import_module
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from rmsprop_lightning.app.config_checks import INPUT_FILES, validate_config
from rmsprop_lightning.app.config_shape import check_needed
from rmsprop_lightning.app.job_signals import signals_stop, stopped_outside_steps
from rmsprop_lightning.app.resume import RESUME_KEY
from rmsprop_lightning.app.run_lock import folder_lock
from rmsprop_lightning.errors import (
    DivergedError,
    InputError,
    InterruptedRun,
    RunError,
    is_rank_zero,
)
from rmsprop_lightning.summary import closing_line, objective, read_summary, write_summary

log = logging.getLogger(__name__)

Training = Callable[[DictConfig, dict[str, Any]], "float | None"]  # (config, summary fields) -> metric

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
    if setting != "auto":  # a positive integer, as the config's checks allow
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
def torch_threads(count: int | None) -> Iterator[int]:
    """Runs the block with ``count`` torch threads (``None``: as they are; also exported to child processes),
    which it yields, then restores them: Lightning's DDP leaves one per process, which a sweep's next job
    would inherit."""
    import torch

    previous_threads = torch.get_num_threads()
    previous_env = {name: os.environ.get(name) for name in THREAD_ENV_VARS}
    if count is not None:
        torch.set_num_threads(count)
        os.environ.update({name: str(count) for name in THREAD_ENV_VARS})
    try:
        yield previous_threads if count is None else count
    finally:
        torch.set_num_threads(previous_threads)
        for name in THREAD_ENV_VARS:
            os.environ.pop(name, None)
        os.environ.update({name: value for name, value in previous_env.items() if value is not None})


def hydra_job_fields() -> tuple[dict[str, Any], DictConfig | None, bool]:
    """The job's Hydra identity for the summary, its launcher config, and whether it runs in a multirun."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return {"overrides": []}, None, False
    hydra_cfg = HydraConfig.get()
    fields = {
        "overrides": OmegaConf.to_container(hydra_cfg.overrides.task),  # as typed, not resolved
        "job_num": hydra_cfg.job.get("num"),
        "job_name": hydra_cfg.job.name,
    }
    return fields, hydra_cfg.get("launcher"), hydra_cfg.mode == RunMode.MULTIRUN


def check_job_config(cfg: DictConfig) -> None:
    """Validates the config, once the relative input files of a job that ``hydra.job.chdir`` moved into its
    run folder are made absolute, from the folder the command ran in (Hydra's ``to_absolute_path``)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import to_absolute_path

    for key in INPUT_FILES if HydraConfig.initialized() and HydraConfig.get().job.get("chdir") else ():
        path = OmegaConf.select(cfg, key, default=None)
        if isinstance(path, str) and not Path(path).expanduser().is_absolute():
            OmegaConf.update(cfg, key, to_absolute_path(path))
    validate_config(cfg)


def train_alone(cfg: DictConfig, fields: dict[str, Any]) -> float | None:
    """Runs ``run(cfg)``, adding what the fit reached to ``fields`` (also when it fails); returns the
    optimized metric."""
    from rmsprop_lightning.app.run import run
    from rmsprop_lightning.callbacks.fit_stats import FitStats

    stats = FitStats()
    try:
        run(cfg, extra_callbacks=[stats])
    finally:
        fields.update(stats.fields())
    return objective(fields, cfg.get("optimized_metric"))


def run_job(cfg: DictConfig, train: Training = train_alone) -> float | None:
    """:func:`recorded_job` holding its run folder (the first rank): a resume of a run still running, in
    another process, would mix their records."""
    check_needed(cfg, "paths")  # where its records go; the rest is checked with the job's config
    if not is_rank_zero():
        return recorded_job(cfg, train)
    typed = f"resume={cfg.paths.output_dir}" if cfg.get(RESUME_KEY) else cfg.paths.output_dir
    with folder_lock(cfg.paths.output_dir, typed):
        return recorded_job(cfg, train)


def recorded_job(cfg: DictConfig, train: Training) -> float | None:
    """Checks the config, trains with ``train`` and records the job; returns the optimized metric, if finite.

    ``train(cfg, fields)`` returns the metric and adds the summary's fields, ``steps`` among them once a
    trainer set up; a resume that ends before that leaves its run's record as it was. torch and Lightning
    are imported only once the config passed its checks, so a typo answers at once. A failed job of a
    multirun is recorded and gives ``None``, which Optuna's sweeper records as a failed trial.
    """
    started = time.time()
    clock = time.perf_counter()
    job_fields, launcher, multirun = hydra_job_fields()
    output_dir = cfg.paths.output_dir
    earlier: dict[str, Any] = {}  # the record of the run a resume continues
    if cfg.get(RESUME_KEY):  # the run keeps its own overrides and job number (a resume updates them)
        job_fields, earlier = {}, read_summary(output_dir)
    if earlier:  # a resume the checks refuse leaves its run's record untouched, its time included
        check_job_config(cfg)
    writes = is_rank_zero()
    fields: dict[str, Any] = {}
    if writes:
        write_summary(
            output_dir,
            status="running",
            error=None,
            started_at=started,
            seed=cfg.get("seed"),
            optimizer=OmegaConf.to_container(cfg.optimizer, resolve=True) if cfg.get("optimizer") else None,
            optimized_metric=cfg.get("optimized_metric"),
            population=None,  # a population's writer sets it; a resumed member then runs alone
            final=None,  # the end values are this job's: an earlier part's came from other checkpoints
            diverged_at_step=None,  # an earlier part's divergence is not this one's
            **job_fields,
        )
    try:
        with signals_stop(output_dir) as signals, ExitStack() as threads_set:
            if not earlier:
                check_job_config(cfg)
            threads = resolve_threads(cfg.get("threads_per_job"), launcher)
            with signals.held():  # torch and Lightning, with the threads (BLAS libraries read them once)
                in_effect = threads_set.enter_context(torch_threads(threads))
                import_module("rmsprop_lightning.app.run")  # the process's one-off cost
            fields["threads"] = in_effect
            clock = time.perf_counter()
            value = train(cfg, fields)
    except Exception as error:
        if writes and earlier and (isinstance(error, InputError) or "steps" not in fields):
            write_summary(output_dir, **earlier)
        elif writes:
            record_end(
                output_dir, "failed", clock, earlier, error=f"{type(error).__name__}: {error}", **fields
            )
        if not multirun:
            raise
        if isinstance(error, RunError):  # bad input or a divergence: one line says it all
            outcome = "diverged" if isinstance(error, DivergedError) else "failed"
            log.error("Job %s %s; the sweep goes on: %s", job_fields.get("job_num"), outcome, error)
        else:
            log.exception("Job %s failed; the sweep goes on", job_fields.get("job_num"))
        return None
    except (InterruptedRun, KeyboardInterrupt, SystemExit) as stop:  # the record keeps what the fit reached
        exceptions = sys.modules.get("lightning.pytorch.utilities.exceptions")
        if exceptions and isinstance(stop, exceptions.SIGTERMException):  # a distributed run's, in its test
            stop = stopped_outside_steps(signal.SIGTERM, output_dir)
        elif isinstance(stop, SystemExit):
            raise
        if writes and earlier and "steps" not in fields:
            write_summary(output_dir, **earlier)
        elif writes:
            record_end(output_dir, "interrupted", clock, earlier, error=str(stop) or None, **fields)
        raise stop from None
    if writes:
        summary = record_end(output_dir, "completed", clock, earlier, value=value, **fields)
        if summary["status"] == "completed":  # not a population member that was interrupted
            log.info(closing_line(output_dir, summary))
    return value if value is not None and math.isfinite(value) else None


def record_end(
    output_dir: str, status: str, clock: float, earlier: dict[str, Any], **fields: Any
) -> dict[str, Any]:
    """Writes the job's end state (a ``diverged`` or ``interrupted`` status set meanwhile is kept).

    A resumed run's wall and fit seconds add up its parts that ended, as ``earlier`` (its summary) has them,
    and a part's fast step that fell back stays recorded; a population member's earlier fit was its
    population's, which the report counts with the population.
    """
    earlier = {} if earlier.get("population") else earlier
    if earlier.get("fast_fell_back"):  # an earlier part's eager steps stay in the record
        fields["fast_fell_back"] = True
    wall = time.perf_counter() - clock + (earlier.get("wall_seconds") or 0.0)
    fits = [
        seconds for seconds in (fields.get("fit_seconds"), earlier.get("fit_seconds")) if seconds is not None
    ]
    fields["fit_seconds"] = sum(fits) if fits else None
    return write_summary(output_dir, status=status, finished_at=time.time(), wall_seconds=wall, **fields)
