"""``rmsprop-report SWEEP_DIR``: one table row per configuration (over seeds), plots, timings.

Writes ``report.md`` and ``report.csv`` (and, with the ``plots`` extra, ``loss_curves.png``,
``optimizer_state.png`` and, for a two-parameter grid, ``heatmap.png``) into the sweep
folder, and prints the table.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from rmsprop_lightning.app.config_checks import check_writable
from rmsprop_lightning.app.extras import install_hint, is_installed
from rmsprop_lightning.errors import InputError, close_match, exit_with
from rmsprop_lightning.report.results import Job, Sweep, load_sweep, sweep_timing
from rmsprop_lightning.report.table import (
    THRESHOLD_TAG,
    Row,
    build_rows,
    markdown_table,
    thresholds,
    write_csv,
)


def timing_lines(timing: dict[str, float]) -> list[str]:
    """The multirun's cost against the sum of its jobs' fit times, as report lines."""
    shared = (
        f" ({int(timing['members'])} trained in {int(timing['populations'])} population(s), "
        "each population's fit counted once)"
        if timing["members"]
        else ""
    )
    lines = [
        f"- jobs: {int(timing['jobs'])}{shared}; sum of fit times: {timing['fit_seconds']:.2f} s; "
        f"sum of job wall times: {timing['job_wall_seconds']:.2f} s"
    ]
    if "multirun_seconds" in timing:
        lines.append(
            f"- multirun wall time from process start: {timing['multirun_seconds']:.2f} s "
            f"(start-up before the first job: {timing['startup_seconds']:.2f} s)"
        )
    if "ratio" in timing and timing["timed_jobs"] < timing["jobs"]:
        lines.append(
            f"- multirun cost / sum of fit times of the {int(timing['timed_jobs'])} jobs of sweep folders "
            f"with a finished sweep.json ({timing['timed_fit_seconds']:.2f} s): {timing['ratio']:.3f}×"
        )
    elif "ratio" in timing:
        lines.append(f"- multirun cost / sum of fit times: {timing['ratio']:.3f}×")
    return lines


def job_name(sweep: Sweep, job: Job) -> str:
    """The job's folder name, with its sweep's where the report's jobs come from several folders."""
    several = len({other.folder.parent for other in sweep.jobs}) > 1
    return f"{job.folder.parent.name}/{job.folder.name}" if several else job.folder.name


def why_not_completed(job: Job) -> str:
    """The error of a job that did not complete; a run that completed with a non-finite ``val/loss``
    (``on_nonfinite=skip``) counts as diverged."""
    if job.status == "running":
        return "never finished"
    if job.summary.get("status") == "completed":
        return f"completed with a final val/loss of {job.value('final', 'val/loss')}"
    return job.summary.get("error") or ""


def failure_lines(sweep: Sweep) -> list[str]:
    """One line per multirun that did not finish (its jobs not started are not in the report), then per
    failed, diverged or unfinished job, with its error."""
    lines = [
        f"- multirun `{folder.name}` did not finish (stopped, or still running): its jobs that never started "
        "are not in this report"
        for folder, record in sweep.records.items()
        if not record.get("finished_at")
    ]
    for job in sweep.jobs:
        if job.status != "completed":
            lines.append(f"- `{job_name(sweep, job)}`: **{job.status}** {why_not_completed(job)}".rstrip())
    return lines


def repeat_lines(sweep: Sweep) -> list[str]:
    """One line per set of jobs with the same overrides, seed included: they count as separate runs."""
    same: dict[tuple[str, ...], list[str]] = {}
    for job in sweep.jobs:
        same.setdefault(tuple(sorted(job.summary.get("overrides", []))), []).append(
            f"`{job_name(sweep, job)}`"
        )
    return [f"- {', '.join(names)}: the same overrides" for names in same.values() if len(names) > 1]


def optuna_lines(sweep: Sweep) -> list[str]:
    """The Optuna sweeper's best parameters and value, and whether its trial is among the report's jobs (a
    study continued from an earlier sweep folder may have found it there)."""
    optuna = sweep.optuna
    if not optuna or "best_params" not in optuna:
        return []
    lines = [f"- best value: {optuna['best_value']:.6g}"]
    lines += [f"- `{name}={value}`" for name, value in optuna["best_params"].items()]
    if not any(has_settings(job, optuna["best_params"]) for job in sweep.jobs):
        lines.append("- its trial is in none of the folders reported: an earlier sweep of the study ran it")
    return lines


def has_settings(job: Job, params: dict[str, Any]) -> bool:
    """Whether the job's overrides set every key of ``params`` to its value (numbers compared as numbers)."""
    for key, value in params.items():
        typed = job.overrides.get(key)
        if typed is None:
            return False
        try:
            same = float(typed) == float(value)
        except (TypeError, ValueError):
            same = str(typed).lower() == str(value).lower()  # a flag: true, True
        if not same:
            return False
    return True


def no_threshold_text(sweep: Sweep) -> str:
    """Why there is no default threshold: no run logged ``val/loss``, or too few reached a finite best."""
    if not any(THRESHOLD_TAG in job.scalars for job in sweep.jobs):
        return f"No run logged {THRESHOLD_TAG}, so there is no threshold to reach."
    return (
        f"Runs logged {THRESHOLD_TAG}, but fewer than half the configurations have a completed run with a "
        f"finite best {THRESHOLD_TAG}, so there is no threshold that half of them reach."
    )


def build_report(
    sweep: Sweep, over: Sequence[str], threshold: float | None
) -> tuple[str, list[Row], list[str]]:
    """The Markdown report (its plots section aside, which comes last), its rows and the varying keys."""
    configurations = sweep.configurations(over)
    limits = thresholds(configurations, threshold)
    rows = build_rows(configurations, limits)
    keys = sweep.varying_keys(over)
    folders = ", ".join(f"`{folder.name}`" for folder in sweep.folders)
    limit_text = ", ".join(
        f"{limit:.4g}" + (f" ({scale})" if scale else "")
        for scale, limit in limits.items()
        if math.isfinite(limit)
    )
    threshold_text = (
        f"Steps to threshold: the optimizer steps done at the first validation with {THRESHOLD_TAG} ≤ "
        f"{limit_text} (runs that reached it / completed runs that logged {THRESHOLD_TAG})."
        if limit_text
        else no_threshold_text(sweep)
    )
    if any(row.cells["in_population"] for row in rows):
        threshold_text += (
            " A wall time marked shared (k shared: k of its runs) is of jobs trained together as a "
            "population: the population's fit, which its members share, plus the job's own outputs."
        )
    sections = [
        f"# Sweep report: {folders}",
        "",
        f"{len(sweep.jobs)} jobs in {len(configurations)} configurations, aggregated over "
        f"{', '.join(over) or 'nothing'}; mean ± std over completed runs. {threshold_text}",
        "",
        markdown_table(rows),
    ]
    for title, lines in (
        ("Best parameters (Optuna)", optuna_lines(sweep)),
        ("Failed, diverged or unfinished runs", failure_lines(sweep)),
        ("Repeated runs, each counted in n", repeat_lines(sweep)),
        ("Timing", timing_lines(sweep_timing(sweep))),
    ):
        if lines:
            sections += ["", f"## {title}", "", *lines]
    return "\n".join(sections) + "\n", rows, keys


def plots_section(plots: Sequence[str]) -> str:
    """The report's last section: the written figures, or nothing."""
    images = "".join(f"![{Path(name).stem}]({name})\n" for name in plots)
    return f"\n## Plots\n\n{images}" if plots else ""


def check_over(sweep: Sweep, over: Sequence[str]) -> None:
    """Every ``--over`` key is an override key of some job: a misspelt one would aggregate over nothing."""
    keys = sorted({key for job in sweep.jobs for key in job.overrides})
    for key in over:
        if key not in keys:
            raise InputError(
                f"--over {key} is not an override key of any job{close_match(key, keys, '--over ')}; "
                f"allowed: {', '.join(keys) or 'no key (the jobs have no overrides)'}"
            )


def checked_sweep(args: argparse.Namespace) -> Sweep:
    """The sweep to report on, once the threshold, the output folder, the sweep folders and ``--over``
    are good."""
    if args.threshold is not None and not math.isfinite(args.threshold):
        raise InputError(f"--threshold {args.threshold} is invalid; allowed: a finite {THRESHOLD_TAG} value")
    if args.output is not None:
        check_writable(args.output, "--output", "a writable folder")
    try:
        sweep = load_sweep(args.sweep_dirs)
    except (FileNotFoundError, ValueError) as error:
        raise InputError(str(error)) from None
    if args.over is not None:
        check_over(sweep, args.over)
    return sweep


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser whose error is one line, as the training command's are."""

    def error(self, message: str) -> NoReturn:
        exit_with(InputError(f"{message}; allowed: see {self.prog} --help"))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``rmsprop-report`` and ``python -m rmsprop_lightning.report.cli``."""
    parser = ArgumentParser(prog="rmsprop-report", description=__doc__)
    parser.add_argument(
        "sweep_dirs", nargs="+", type=Path, help="multirun folders (logs/train/multiruns/…) or run folders"
    )
    parser.add_argument("--over", nargs="*", help="override keys aggregated over (default: seed)")
    parser.add_argument(
        "--threshold", type=float, default=None, help=f"{THRESHOLD_TAG} threshold for steps-to-threshold"
    )
    parser.add_argument(
        "--output", type=Path, default=None, help="output folder (default: the first sweep folder)"
    )
    parser.add_argument("--no-plots", action="store_true", help="write the table only")
    args = parser.parse_args(argv)
    try:
        sweep = checked_sweep(args)
    except InputError as error:
        exit_with(error)
    over = ["seed"] if args.over is None else args.over  # the default, unchecked: a sweep may have no seed
    output = args.output or args.sweep_dirs[0]
    # the table first, so that a failing plot cannot take it with it
    text, rows, keys = build_report(sweep, over, args.threshold)
    (output / "report.md").write_text(text)
    write_csv(rows, keys, output / "report.csv")
    plots: list[str] = []
    if not args.no_plots and is_installed("matplotlib"):
        from rmsprop_lightning.report.plots import write_plots

        plots = write_plots(sweep, over, output)
        text += plots_section(plots)
        (output / "report.md").write_text(text)
    elif not args.no_plots:
        print(f"Plots skipped: they need matplotlib: {install_hint('plots')}", file=sys.stderr)
    try:
        print(text)
        print(
            f"Written: {output / 'report.md'}, {output / 'report.csv'}"
            + "".join(f", {output / p}" for p in plots)
        )
        sys.stdout.flush()
    except BrokenPipeError:  # the reader (`| head`) stopped reading; the files are written
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the exit's flush goes nowhere
        return 1  # as Python's documentation does on a broken pipe
    return 0


if __name__ == "__main__":
    sys.exit(main())
