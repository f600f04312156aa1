"""``metrics.json``: the machine-readable summary each job leaves in its folder, and its closing line."""

from __future__ import annotations

import json
import math
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rmsprop_lightning.atomic import replace_atomically

SUMMARY_FILE = "metrics.json"
# a val/ metric's name with this suffix names its best value: the validation whose checkpoint is tested
BEST_SUFFIX = "_best"
STATUSES = ("running", "completed", "failed", "diverged", "interrupted")
# set by what stopped the run (the divergence check, the signal handler); the job wrapper's
# later, generic end status ("completed" or "failed") keeps them
STOP_STATUSES = ("diverged", "interrupted")
END_STATUSES = ("completed", "failed")


def objective(fields: Mapping[str, Any], metric: str | None) -> float | None:
    """The value of ``metric`` a sweeper optimizes, from a job's summary fields: its final value or, with
    :data:`BEST_SUFFIX`, its best validation's; ``None`` where the job has none."""
    if not metric:
        return None
    if metric.endswith(BEST_SUFFIX):
        return (fields.get("best") or {}).get(metric.removesuffix(BEST_SUFFIX))
    return (fields.get("final") or {}).get(metric)


def summary_path(output_dir: str | Path) -> Path:
    """Where the summary of the job writing to ``output_dir`` lives."""
    return Path(output_dir) / SUMMARY_FILE


def read_json(path: Path) -> dict[str, Any]:
    """A JSON record (a job's summary, a sweep's); one that is not JSON, cut short or edited, is named."""
    try:
        record = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not a JSON record ({error})") from None
    if not isinstance(record, dict):
        raise ValueError(f"{path} is not a JSON record (a {type(record).__name__}, not an object)")
    return record


def read_summary(output_dir: str | Path) -> dict[str, Any]:
    """The job's summary, or ``{}`` when it has none yet."""
    path = summary_path(output_dir)
    return read_json(path) if path.is_file() else {}


def write_summary(output_dir: str | Path, **fields: Any) -> dict[str, Any]:
    """Merges ``fields`` into the job's ``metrics.json``, replaced atomically; returns the whole summary.

    Top-level keys replace what was there, except mappings, which are updated key by key (so two writers
    can each add entries to ``final`` or ``best``). An end status does not replace a more telling one in
    :data:`STOP_STATUSES`. Non-finite floats are stored as ``"nan"``/``"inf"``, read back by :func:`as_float`.
    """
    status = fields.get("status")
    if status is not None and status not in STATUSES:
        raise ValueError(f"status={status!r} is unknown; allowed: {', '.join(STATUSES)}")
    directory = Path(output_dir)
    directory.mkdir(parents=True, exist_ok=True)
    summary = read_summary(directory)
    if status in END_STATUSES and summary.get("status") in STOP_STATUSES:
        fields = {**fields, "status": summary["status"]}
    for key, value in fields.items():
        if isinstance(value, Mapping) and isinstance(summary.get(key), dict):
            summary[key] = {**summary[key], **value}
        else:
            summary[key] = value
    write_json(summary_path(directory), summary)
    return summary


def write_json(path: Path, record: Mapping[str, Any]) -> None:
    """Replaces ``path`` atomically with ``record`` as strict JSON, so a killed writer leaves the old one."""
    text = json.dumps(_jsonable(record), indent=2, sort_keys=True) + "\n"
    replace_atomically(path, lambda file: file.write(text.encode()))


def _jsonable(value: Any) -> Any:
    """``value`` with non-finite floats as strings and tuples as lists, for strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, Mapping):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(item) for item in value]
    return value


def as_float(value: Any) -> float:
    """A summary number back as a float (``"nan"``/``"inf"`` strings included; ``None`` is NaN)."""
    return math.nan if value is None else float(value)


def nonfinite(value: Any) -> bool:
    """Whether a recorded value (a number, its text, a 0-dim tensor; ``None``: none) is NaN or inf."""
    return value is not None and not math.isfinite(as_float(value))


def outcome(summary: Mapping[str, Any]) -> str:
    """A job's status as a sweep counts it: one that completed with a non-finite final ``val/loss``
    (``on_nonfinite=skip``, validation rows out of range) diverged; one without a status never finished."""
    status = summary.get("status", "running")
    if status == "completed" and nonfinite((summary.get("final") or {}).get("val/loss")):
        return "diverged"
    return status


def closing_line(output_dir: str, summary: dict[str, Any]) -> str:
    """The run in one line: its end metrics, its folder and, if it has event files, how to look at them."""
    metrics = {f"{tag}_best": value for tag, value in summary.get("best", {}).items() if tag == "val/loss"}
    metrics.update({tag: value for tag, value in summary.get("final", {}).items() if tag.startswith("test/")})
    shown = ", ".join(f"{tag}={value:.4g}" for tag, value in metrics.items())
    population = summary.get("population")
    took = (
        f"in a population of {population['members']}" if population else f"in {summary['wall_seconds']:.1f} s"
    )
    steps, start, skipped = summary.get("steps"), summary.get("start_step"), summary.get("skipped_steps")
    done = f"{steps} steps" if not start else f"{steps - start} steps from step {start}"  # a branch's
    done += f" ({skipped} updates skipped)" if skipped else ""
    line = f"Done: {done} {took}{'; ' + shown if shown else ''}; folder {output_dir}"
    if any(Path(output_dir).rglob("events.out.tfevents.*")):  # TensorBoard shows 1000 points unless told
        line += f"; tensorboard --logdir {shlex.quote(output_dir)} --samples_per_plugin scalars=1000000"
    return line
