"""A Hydra callback that records a multirun's start and end in ``<sweep dir>/sweep.json``, for the report to
set its cost against its jobs' fit times; it also creates the folder of a SQLite Optuna storage."""

from __future__ import annotations

import logging
import os
import shlex
import time
from collections import Counter
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from rmsprop_lightning.summary import SUMMARY_FILE, outcome, read_json, read_summary, write_json

SWEEP_FILE = "sweep.json"
SQLITE_PREFIX = "sqlite:///"

log = logging.getLogger(__name__)


def process_started_at() -> float | None:
    """This process's start as Unix time, from ``/proc`` (Linux); ``None`` where that is unavailable."""
    try:
        after_name = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        start_ticks = int(after_name[19])  # field 22 of stat(5); fields after the name start at 3
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return time.time() - (uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None


def job_folders(sweep_dir: str | Path) -> list[Path]:
    """The folders below ``sweep_dir`` holding a job summary, in job order."""
    folders = [path.parent for path in Path(sweep_dir).glob(f"*/{SUMMARY_FILE}")]
    return sorted(folders, key=lambda folder: (read_summary(folder).get("job_num") or 0, folder.name))


def sweeper_params(config: DictConfig) -> dict[str, Any]:
    """The search space that runs: the sweeper's ``params``, where the command line's overrides win (as in
    Hydra's sweepers), and the sweeps the command line adds."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = config.hydra.sweeper.get("params")
    space = OmegaConf.to_container(params, resolve=True) if params else {}
    for override in OverridesParser.create().parse_overrides(
        OmegaConf.to_container(config.hydra.overrides.task)
    ):
        if override.is_sweep_override() or override.key_or_group in space:
            space[override.key_or_group] = override.input_line.split("=", 1)[1]  # as typed
    return space


class SweepRecord(Callback):
    """Writes ``sweep.json`` at the start and end of every multirun."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        storage = config.hydra.sweeper.get("storage")
        if isinstance(storage, str) and storage.startswith(SQLITE_PREFIX):  # the sweeper opens it next
            Path(storage.removeprefix(SQLITE_PREFIX)).parent.mkdir(parents=True, exist_ok=True)
        record = {
            "process_started_at": process_started_at(),
            "started_at": time.time(),
            "overrides": OmegaConf.to_container(config.hydra.overrides.task),
            "launcher": config.hydra.launcher.get("_target_"),
            "sweeper": config.hydra.sweeper.get("_target_"),
            "sweeper_params": sweeper_params(config),
        }
        write_json(sweep_dir / SWEEP_FILE, record)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        path = sweep_dir / SWEEP_FILE
        record = read_json(path) if path.is_file() else {}
        statuses = Counter(outcome(read_summary(folder)) for folder in job_folders(sweep_dir))
        record.update(finished_at=time.time(), statuses=dict(statuses))
        write_json(path, record)
        tally = ", ".join(f"{count} {status}" for status, count in sorted(statuses.items())) or "no jobs"
        log.info("Multirun finished: %s. Report: rmsprop-report %s", tally, shlex.quote(str(sweep_dir)))
