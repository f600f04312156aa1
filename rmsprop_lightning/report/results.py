"""A sweep folder as data: its jobs (summary + TensorBoard scalars) grouped into configurations.

A configuration is a set of jobs whose settings agree on every key some job overrode (a job that did not
holds its config's default), except those aggregated over (the seed, by default); only keys that vary
across the sweep name it.
"""

from __future__ import annotations

import functools
import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rmsprop_lightning.app.resume import HYDRA_FOLDER
from rmsprop_lightning.app.sweep_record import SWEEP_FILE, job_folders
from rmsprop_lightning.errors import first_line
from rmsprop_lightning.logging.events import Series, read_csv_scalars, read_scalars
from rmsprop_lightning.report.settings import (
    canonical,
    parse_overrides,
    read_yaml,
    saved_setting,
    short_number,
)
from rmsprop_lightning.summary import as_float, outcome, read_json, read_summary, summary_path

OPTUNA_RESULTS = "optimization_results.yaml"
# what rmsprop-report reads
FOLDERS = "sweep folders (logs/<task>/multiruns/<sweep>) or run folders (logs/<task>/runs/<run>)"


@dataclass
class Job:
    """One job of a sweep: its folder, ``metrics.json`` and scalars (TensorBoard's, else the CSV logs')."""

    folder: Path
    summary: dict[str, Any]
    scalars: dict[str, Series]

    @property
    def overrides(self) -> dict[str, str]:
        """The job's task overrides as ``{key: value}``."""
        return parse_overrides(self.summary.get("overrides", []))

    def setting(self, key: str) -> str:
        """The job's ``key`` as its overrides typed it, else as its saved config holds it (a default: the
        option a config group chose, a key's value), else ``-``."""
        return self.overrides[key] if key in self.overrides else saved_setting(self.saved_config, key)

    @functools.cached_property
    def saved_config(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """The config groups' chosen options and the config, as the job's ``.hydra`` folder saved them."""
        folder = self.folder / HYDRA_FOLDER
        runtime = (read_yaml(folder / "hydra.yaml").get("hydra") or {}).get("runtime") or {}
        return runtime.get("choices") or {}, read_yaml(folder / "config.yaml")

    @functools.cached_property
    def saved_keys(self) -> list[str]:
        """The groups, then the keys, of its saved config, but the run's folders."""
        choices, config = self.saved_config
        keys = [key for key in choices if not key.startswith("hydra")]
        pending = [("", config)]
        while pending:
            prefix, node = pending.pop()
            for key, value in node.items():
                name = f"{prefix}{key}"
                if isinstance(value, dict):
                    pending.append((f"{name}.", value))
                elif not name.startswith("paths."):
                    keys.append(name)
        return keys

    @property
    def status(self) -> str:
        """``completed``, ``failed``, ``diverged``, ``interrupted`` or ``running`` (never finished)."""
        return outcome(self.summary)

    def value(self, read: str, tag: str) -> float:
        """The ``final`` or ``best`` value of ``tag`` in the summary; NaN where none was recorded."""
        return as_float(self.summary.get(read, {}).get(tag))

    def steps_to(self, tag: str, threshold: float) -> int | None:
        """The first logged step at which ``tag`` is at or below ``threshold``."""
        return next((step for step, value in self.scalars.get(tag, []) if value <= threshold), None)

    @property
    def population(self) -> str | None:
        """The id of the population the job trained in; ``None`` for a job that trained alone."""
        return (self.summary.get("population") or {}).get("id")

    @property
    def fit_seconds(self) -> float:
        """The fit's time (a member's: its population's, shared); NaN where none was recorded."""
        return as_float(self.summary.get("fit_seconds"))

    @property
    def wall_seconds(self) -> float:
        """The job's wall time; a member's adds its population's shared fit to writing its own outputs."""
        wall = as_float(self.summary.get("wall_seconds"))
        return wall + self.fit_seconds if self.population else wall


@dataclass
class Configuration:
    """The jobs sharing one setting of the varying keys."""

    setting: dict[str, str]
    jobs: list[Job] = field(default_factory=list)

    @property
    def label(self) -> str:
        """``key=value, ...`` of the setting, long numbers (Optuna's draws) to 4 significant digits."""
        return ", ".join(f"{key}={short_number(value)}" for key, value in self.setting.items()) or "all jobs"

    def with_status(self, status: str) -> list[Job]:
        return [job for job in self.jobs if job.status == status]

    def values(self, read: str, tag: str) -> list[float]:
        """Finite ``best``/``final`` values of ``tag`` over the completed jobs."""
        values = [job.value(read, tag) for job in self.with_status("completed")]
        return [value for value in values if math.isfinite(value)]


@dataclass
class Sweep:
    """The jobs of one or more sweep folders and what Hydra recorded about the sweeps."""

    folders: list[Path]
    jobs: list[Job]
    records: dict[Path, dict[str, Any]]  # sweep folder: its sweep.json
    optuna: dict[str, Any] | None

    def varying_keys(self, over: Sequence[str]) -> list[str]:
        """Keys whose settings tell configurations apart, but ``over`` and its keys: those overrides typed
        that take several values (defaults where a job did not type one), then, where every job saved its
        config, each group and key of the saved configs that splits jobs alike so far (a preset edited
        between runs; a pooled group whose option sets keys elsewhere, as ``debug`` does, splits by them)."""

        def pooled(key: str) -> bool:
            return any(key == name or key.startswith(f"{name}.") for name in over)

        def setting(job: Job, key: str) -> str:
            return canonical(job.setting(key))

        typed = [
            key for key in dict.fromkeys(k for job in self.jobs for k in job.overrides) if not pooled(key)
        ]
        varying = [key for key in typed if len({setting(job, key) for job in self.jobs}) > 1]
        if not all(job.saved_config[1] for job in self.jobs):
            return varying
        saved = dict.fromkeys(key for job in self.jobs for key in job.saved_keys)
        for key in sorted(saved, key=lambda name: "." in name):  # groups and top-level keys first
            if key in typed or pooled(key):
                continue
            alike: dict[tuple[str, ...], set[str]] = {}  # by the keys told apart so far
            for job in self.jobs:
                alike.setdefault(tuple(setting(job, k) for k in varying), set()).add(setting(job, key))
            if any(len(settings) > 1 for settings in alike.values()):
                varying.append(key)
        return varying

    def configurations(self, over: Sequence[str] = ("seed",)) -> list[Configuration]:
        """Jobs grouped by the varying keys (in first-seen order of settings)."""
        keys = self.varying_keys(over)
        groups: dict[tuple[str, ...], Configuration] = {}
        for job in self.jobs:
            setting = {key: job.setting(key) for key in keys}  # as the first job of its configuration says
            same = tuple(canonical(value) for value in setting.values())
            groups.setdefault(same, Configuration(setting)).jobs.append(job)
        return list(groups.values())


def load_sweep(folders: Sequence[str | Path]) -> Sweep:
    """Reads every job below the sweep ``folders``, or the runs they are (``metrics.json`` and scalars)."""
    for folder in folders:
        if not Path(folder).is_dir():
            what = "a file, not a folder" if Path(folder).exists() else "not found"
            raise FileNotFoundError(f"{folder}: {what}; allowed: {FOLDERS}")
    # a folder given twice (by two names, or a sweep and one of its runs) counts once
    paths = list(dict.fromkeys(Path(folder).resolve() for folder in folders))
    found = (
        folder.resolve()
        for path in paths
        for folder in job_folders(path) or ([path] if summary_path(path).is_file() else [])  # a single run
    )
    jobs = []
    for folder in dict.fromkeys(found):
        try:
            jobs.append(Job(folder, read_summary(folder), read_scalars(folder) or read_csv_scalars(folder)))
        except OSError as error:  # a log replaced by a folder, or unreadable
            raise ValueError(f"{folder}: its logs cannot be read ({first_line(error)})") from None
    if not jobs:
        folders = ", ".join(map(str, paths))
        raise ValueError(f"no metrics.json in {folders} or the folders directly in it; allowed: {FOLDERS}")
    records = {path: read_json(path / SWEEP_FILE) for path in paths if (path / SWEEP_FILE).is_file()}
    return Sweep(paths, jobs, records, _optuna_results(paths))


def _optuna_results(paths: Sequence[Path]) -> dict[str, Any] | None:
    """The Optuna sweeper's ``optimization_results.yaml`` of the last folder that has one."""
    from omegaconf import OmegaConf

    found = [path / OPTUNA_RESULTS for path in paths if (path / OPTUNA_RESULTS).is_file()]
    return OmegaConf.to_container(OmegaConf.load(found[-1])) if found else None


def mean_std(values: Iterable[float]) -> tuple[float, float]:
    """Mean and sample standard deviation of the finite ``values`` (std NaN for one value, both for none)."""
    values = [value for value in values if math.isfinite(value)]
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else math.nan


def total_fit_seconds(jobs: Iterable[Job]) -> float:
    """The jobs' fit times added up, a population's shared fit counted once."""
    fits = {job.population or job.folder: job.fit_seconds for job in jobs}
    return math.fsum(value for value in fits.values() if math.isfinite(value))


def sweep_timing(sweep: Sweep) -> dict[str, float]:
    """The multirun's cost against its jobs' fit times: ``multirun_seconds`` from the process start to the
    last job's end (``startup_seconds`` before the first job), set against the fit times of the jobs of
    the sweep folders with a finished record (``timed_jobs``, ``timed_fit_seconds``)."""
    members = [job for job in sweep.jobs if job.population]
    own_walls = (as_float(job.summary.get("wall_seconds")) for job in sweep.jobs)
    timing = {
        "fit_seconds": total_fit_seconds(sweep.jobs),
        "job_wall_seconds": math.fsum(w for w in own_walls if math.isfinite(w)) + total_fit_seconds(members),
        "jobs": float(len(sweep.jobs)),
        "members": float(len(members)),
        "populations": float(len({job.population for job in members})),
    }
    complete = {
        folder: record
        for folder, record in sweep.records.items()
        if record.get("finished_at") and record.get("started_at")
    }
    if complete:
        starts = [record.get("process_started_at") or record["started_at"] for record in complete.values()]
        pairs = list(zip(complete.values(), starts, strict=True))
        timing["multirun_seconds"] = sum(record["finished_at"] - start for record, start in pairs)
        timing["startup_seconds"] = sum(record["started_at"] - start for record, start in pairs)
        timed = [job for job in sweep.jobs if job.folder.parent in complete]
        timing["timed_jobs"] = float(len(timed))
        timing["timed_fit_seconds"] = total_fit_seconds(timed)
        if timing["timed_fit_seconds"] > 0:
            timing["ratio"] = timing["multirun_seconds"] / timing["timed_fit_seconds"]
    return timing
