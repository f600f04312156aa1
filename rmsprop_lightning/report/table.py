"""The report's table: one row per configuration (over seeds), as Markdown and as CSV."""

from __future__ import annotations

import csv
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rmsprop_lightning.report.results import Configuration, mean_std

THRESHOLD_TAG = "val/loss"
# losses on other data (another data option, or another file, target or generator of one: data.source.*),
# by another criterion or of other target units are on other scales: each gets its own threshold, and its
# rows come together
SCALE_KEYS = ("data", "module.loss", "data.standardize_targets")
SCALE_PREFIX = "data.source."


@dataclass
class Row:
    """The aggregated results of one configuration."""

    configuration: Configuration
    cells: dict[str, Any]


def default_threshold(configurations: Sequence[Configuration]) -> float:
    """The lower median over configurations of their mean best ``val/loss``, which at least half of them
    reach (NaN when fewer than half have a finite best)."""
    means = [mean_std(c.values("best", THRESHOLD_TAG))[0] for c in configurations]
    median = statistics.median_low([mean if math.isfinite(mean) else math.inf for mean in means])
    return median if math.isfinite(median) else math.nan


def scale_of(configuration: Configuration) -> str:
    """The scale of a configuration's losses, as the settings the sweep varies of :data:`SCALE_KEYS` and
    under :data:`SCALE_PREFIX` give it (``""`` where it varies none)."""
    setting = configuration.setting
    keys = [key for key in SCALE_KEYS if key in setting]
    keys += sorted(key for key in setting if key.startswith(SCALE_PREFIX))
    return ", ".join(f"{key}={setting[key]}" for key in keys)


def thresholds(configurations: Sequence[Configuration], fixed: float | None) -> dict[str, float]:
    """``{scale: threshold}``: ``fixed`` for all, or each loss scale's :func:`default_threshold`."""
    groups: dict[str, list[Configuration]] = {}
    for configuration in configurations:
        groups.setdefault(scale_of(configuration), []).append(configuration)
    return {
        scale: default_threshold(members) if fixed is None else fixed for scale, members in groups.items()
    }


def build_rows(configurations: Sequence[Configuration], limits: dict[str, float]) -> list[Row]:
    """One row per configuration, by loss scale, then by mean best ``val/loss`` (missing ones last)."""
    rows = []
    for configuration in configurations:
        completed = configuration.with_status("completed")
        limit = limits[scale_of(configuration)]
        curves = [job for job in completed if THRESHOLD_TAG in job.scalars]  # others cannot tell
        reached = [steps for job in curves if (steps := job.steps_to(THRESHOLD_TAG, limit)) is not None]
        cells: dict[str, Any] = {
            "n": len(configuration.jobs),
            "completed": len(completed),
            "failed": len(configuration.with_status("failed")),
            "diverged": len(configuration.with_status("diverged")),
            "best_val_loss": mean_std(configuration.values("best", "val/loss")),
            "final_val_loss": mean_std(configuration.values("final", "val/loss")),
            "test_loss": mean_std(configuration.values("final", "test/loss")),
            "steps_to_threshold": mean_std(reached),
            "reached": len(reached),
            "curves": len(curves),
            "threshold": limit,
            "wall_seconds": mean_std(job.wall_seconds for job in completed),
            "fit_seconds": mean_std(job.fit_seconds for job in completed),
            "in_population": sum(job.population is not None for job in completed),
        }
        rows.append(Row(configuration, cells))
    return sorted(
        rows, key=lambda row: (scale_of(row.configuration), _sort_key(row.cells["best_val_loss"][0]))
    )


def _sort_key(value: float) -> tuple[bool, float]:
    return (not math.isfinite(value), value if math.isfinite(value) else 0.0)


def _pm(pair: tuple[float, float], spec: str = ".4g", std_spec: str = ".2g") -> str:
    """``mean ± std`` (just the mean for a single run; ``—`` for none)."""
    mean, std = pair
    if not math.isfinite(mean):
        return "—"
    return f"{mean:{spec}}" if math.isnan(std) else f"{mean:{spec}} ± {std:{std_spec}}"


MARKDOWN_COLUMNS = (
    "configuration",
    "n",
    "best val/loss",
    "final val/loss",
    "test/loss",
    "steps to threshold",
    "wall s",
    "failed",
    "diverged",
)


def has_threshold(cells: dict[str, Any]) -> bool:
    """Whether a row's steps to threshold say something: a threshold to reach, and curves to reach it."""
    return bool(cells["curves"]) and math.isfinite(cells["threshold"])


def markdown_table(rows: Sequence[Row]) -> str:
    """The rows as a GitHub Markdown table."""
    lines = ["| " + " | ".join(MARKDOWN_COLUMNS) + " |", "|" + "---|" * len(MARKDOWN_COLUMNS)]
    for row in rows:
        cells = row.cells
        steps = _pm(cells["steps_to_threshold"], ".0f", ".0f")
        wall_mean, shared = cells["wall_seconds"][0], cells["in_population"]
        # a mean over solo and population jobs alike says how many of them share a population's fit
        marker = "" if not shared else " (shared)" if shared == cells["completed"] else f" ({shared} shared)"
        values = [
            row.configuration.label,
            str(cells["n"]),
            _pm(cells["best_val_loss"]),
            _pm(cells["final_val_loss"]),
            _pm(cells["test_loss"]),
            f"{steps} ({cells['reached']}/{cells['curves']})" if has_threshold(cells) else "n/a",
            f"{wall_mean:.2f}{marker}" if math.isfinite(wall_mean) else "—",
            str(cells["failed"]),
            str(cells["diverged"]),
        ]
        lines.append("| " + " | ".join(value.replace("|", "\\|") for value in values) + " |")
    return "\n".join(lines)


def write_csv(rows: Sequence[Row], keys: Sequence[str], path: Path) -> None:
    """One line per configuration: the varying keys, counts, then mean and std of each measure."""
    measures = (
        "best_val_loss",
        "final_val_loss",
        "test_loss",
        "steps_to_threshold",
        "wall_seconds",
        "fit_seconds",
    )
    counts = {  # CSV column: the row's cell
        "n": "n",
        "completed": "completed",
        "failed": "failed",
        "diverged": "diverged",
        "logged_val_loss": "curves",
        "reached_threshold": "reached",
        "in_population": "in_population",
    }
    header = ["configuration", *keys, *counts]
    header += [f"{measure}_{stat}" for measure in measures for stat in ("mean", "std")]
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for row in rows:
            cells = row.cells
            line = [row.configuration.label, *(row.configuration.setting.get(key, "") for key in keys)]
            line += [cells[key] for key in counts.values()]
            line += [f"{value:.6g}" for measure in measures for value in cells[measure]]
            writer.writerow(line)
