"""The sweep report on sweep folders built here: grouping over seeds, statistics, failures, plots, timing."""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from omegaconf import OmegaConf
from torch.utils.tensorboard import SummaryWriter

from rmsprop_lightning.app.sweep_record import SWEEP_FILE, SweepRecord
from rmsprop_lightning.logging.events import read_csv_scalars
from rmsprop_lightning.population.outputs import summary_fields
from rmsprop_lightning.report import cli as report
from rmsprop_lightning.report.results import load_sweep
from rmsprop_lightning.summary import read_json, write_summary
from tests.conftest import ROOT

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def make_job(
    sweep: Path, num: int, overrides: list[str], status: str = "completed", scale: float = 1.0, **fields
):
    """A job folder with a summary and TensorBoard curves whose loss is ``scale / (1 + step)``."""
    folder = sweep / f"{num}_job"
    losses = [scale / (1 + step) for step in range(40)]
    validation = {step: scale / (1 + step) for step in (9, 19, 29, 39)}
    if status != "failed":
        writer = SummaryWriter(str(folder / "tensorboard"))
        for step, loss in enumerate(losses):
            writer.add_scalar("train/loss", loss, step)
            writer.add_scalar("optim/square_avg_norm", scale * 0.1, step)
            writer.add_scalar("optim/grad_norm", scale, step)
        for step, loss in validation.items():
            writer.add_scalar("val/loss", loss, step)
        writer.close()
    summary = {
        "status": status,
        "job_num": num,
        "overrides": overrides,
        "wall_seconds": 2.0,
        "fit_seconds": 1.5,
        "steps": 40,
    }
    if status == "completed":
        summary |= {
            "best": {"val/loss": min(validation.values())},
            "final": {"val/loss": losses[-1], "test/loss": scale},
        }
    write_summary(folder, **(summary | fields))
    return folder


@pytest.fixture
def sweep(tmp_path) -> Path:
    folder = tmp_path / "sweep"
    scales = {
        ("rmsprop", 0): 1.0,
        ("rmsprop", 1): 2.0,
        ("rmsprop", 2): 4.0,
        ("centered", 0): 0.5,
        ("centered", 1): 1.0,
    }
    for num, ((optimizer, seed), scale) in enumerate(scales.items()):
        make_job(folder, num, [f"optimizer={optimizer}", f"seed={seed}", "trainer.max_steps=40"], scale=scale)
    make_job(
        folder,
        5,
        ["optimizer=centered", "seed=2", "trainer.max_steps=40"],
        status="failed",
        error="ValueError: bad",
    )
    record = {"process_started_at": 100.0, "started_at": 104.0, "finished_at": 116.0}
    (folder / "sweep.json").write_text(json.dumps(record))
    return folder


def test_jobs_are_grouped_over_seeds_by_the_keys_that_vary(sweep):
    loaded = load_sweep([sweep])
    assert loaded.varying_keys(["seed"]) == ["optimizer"]
    groups = {c.label: len(c.jobs) for c in loaded.configurations()}
    assert groups == {"optimizer=rmsprop": 3, "optimizer=centered": 3}
    assert {c.label: len(c.jobs) for c in loaded.configurations(over=[])} == {
        f"optimizer={o}, seed={s}": 1
        for o, s in [
            ("rmsprop", 0),
            ("rmsprop", 1),
            ("rmsprop", 2),
            ("centered", 0),
            ("centered", 1),
            ("centered", 2),
        ]
    }


def test_report_table_holds_mean_and_std_over_seeds(sweep, capsys):
    assert report.main([str(sweep), "--threshold", "0.06"]) == 0
    rows = {row["configuration"]: row for row in csv.DictReader((sweep / "report.csv").open())}
    assert list(rows) == ["optimizer=centered", "optimizer=rmsprop"]
    rmsprop, centered = rows["optimizer=rmsprop"], rows["optimizer=centered"]
    assert (rmsprop["n"], rmsprop["completed"], rmsprop["failed"]) == ("3", "3", "0")
    assert (centered["n"], centered["completed"], centered["failed"]) == ("3", "2", "1")
    best = [scale / 40 for scale in (1.0, 2.0, 4.0)]
    assert float(rmsprop["best_val_loss_mean"]) == pytest.approx(statistics.fmean(best), rel=1e-5)
    assert float(rmsprop["best_val_loss_std"]) == pytest.approx(statistics.stdev(best), rel=1e-5)
    assert float(rmsprop["test_loss_mean"]) == pytest.approx(7 / 3, rel=1e-5)
    # val/loss = scale / (1 + step) reaches 0.06 at step 19 for scale 1 and at 39 for scale 2; never for 4
    assert (rmsprop["reached_threshold"], float(rmsprop["steps_to_threshold_mean"])) == ("2", 29.0)
    table = (sweep / "report.md").read_text()
    assert "- `5_job`: **failed** ValueError: bad" in table
    assert "Repeated runs" not in table
    make_job(sweep, 6, ["optimizer=rmsprop", "seed=2", "trainer.max_steps=40"], scale=4.0)
    assert report.main([str(sweep), "--no-plots"]) == 0
    assert "- `2_job`, `6_job`: the same overrides" in (sweep / "report.md").read_text()
    assert "multirun cost / sum of fit times: 1.778×" in table
    assert "sum of fit times: 9.00 s" in table
    assert "| optimizer=centered | 3 |" in capsys.readouterr().out
    for name in ("loss_curves.png", "optimizer_state.png"):
        assert (sweep / name).read_bytes().startswith(PNG_SIGNATURE)
    assert not (sweep / "heatmap.png").exists()


def test_report_without_matplotlib_writes_the_table_and_says_how_to_get_plots(sweep, monkeypatch, capsys):
    monkeypatch.setattr(report, "is_installed", lambda module: module != "matplotlib")
    assert report.main([str(sweep)]) == 0
    assert (sweep / "report.md").is_file() and (sweep / "report.csv").is_file()
    assert not list(sweep.glob("*.png"))
    assert f"pip install -e '{ROOT}[plots]'" in capsys.readouterr().err


def test_a_two_parameter_grid_gets_a_heat_map(tmp_path):
    folder = tmp_path / "grid"
    num = 0
    for optimizer in ("rmsprop", "centered"):
        for lr in ("0.001", "0.01"):
            for alpha in ("0.9", "0.99", "0.999"):
                overrides = [f"optimizer={optimizer}", f"optimizer.lr={lr}", f"optimizer.alpha={alpha}"]
                make_job(folder, num, overrides, scale=float(lr) * float(alpha))
                num += 1
    assert report.main([str(folder)]) == 0
    assert (folder / "heatmap.png").read_bytes().startswith(PNG_SIGNATURE)
    assert "![heatmap](heatmap.png)" in (folder / "report.md").read_text()


def test_report_refuses_a_folder_without_jobs(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    make_job(tmp_path / "logs" / "train" / "runs", 0, ["seed=0"])  # two levels down: a task's folder
    line = rejection(capsys, str(tmp_path / "logs" / "train"))
    assert line.startswith(
        f"error: no metrics.json in {tmp_path / 'logs' / 'train'} or the folders directly in"
    )
    assert line.endswith(
        "allowed: sweep folders (logs/<task>/multiruns/<sweep>) or run folders (logs/<task>/runs/<run>)"
    )


def test_run_folders_are_reported_as_jobs(tmp_path, capsys):
    runs = [make_job(tmp_path, num, [f"optimizer.lr={lr}"], scale=lr) for num, lr in enumerate((1, 2))]
    assert report.main([str(run) for run in runs] + ["--no-plots", "--output", str(tmp_path)]) == 0
    assert "2 jobs in 2 configurations" in (tmp_path / "report.md").read_text()


def test_steps_to_threshold_read_csv_logs_and_ignore_far_off_configurations(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    make_job(sweep, 0, ["optimizer.lr=0.01"])  # best val/loss 1/40 at step 39
    make_job(sweep, 1, ["optimizer.lr=1e6"], scale=1e29)  # finite but far off
    csv_job = make_job(sweep, 2, ["optimizer.lr=0.02"], status="failed")  # no event files
    write_summary(csv_job, status="completed", best={"val/loss": 0.03}, final={"val/loss": 0.03})
    table = csv_job / "csv" / "version_0" / "metrics.csv"
    table.parent.mkdir(parents=True)
    table.write_text("epoch,step,train/loss,val/loss\n0,9,0.5,\n0,9,,0.1\n0,19,,0.03\n")
    make_job(sweep, 3, ["optimizer.lr=0.03"], status="failed")
    write_summary(sweep / "3_job", status="completed", best={"val/loss": 0.5}, final={"val/loss": 0.5})
    assert report.main([str(sweep), "--no-plots"]) == 0
    text = (sweep / "report.md").read_text()
    assert "val/loss ≤ 0.03 " in text  # the lower median: half the configurations reach it
    rows = {line.split(" | ")[0].lstrip("| "): line for line in text.splitlines() if "optimizer.lr=" in line}
    assert "| 39 (1/1) |" in rows["optimizer.lr=0.01"] and "| 19 (1/1) |" in rows["optimizer.lr=0.02"]
    assert "| — (0/1) |" in rows["optimizer.lr=1e6"] and "| n/a |" in rows["optimizer.lr=0.03"]
    table = {row["configuration"]: row for row in csv.DictReader((sweep / "report.csv").open())}
    assert [table[f"optimizer.lr={lr}"]["logged_val_loss"] for lr in ("1e6", "0.03")] == ["1", "0"]


def test_steps_to_threshold_are_not_applicable_without_a_threshold(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    make_job(sweep, 0, ["optimizer.lr=0.01"])
    for num, lr in enumerate(("1e6", "1e7"), start=1):  # fewer than half the configurations have a best
        make_job(sweep, num, [f"optimizer.lr={lr}"], status="diverged")
    assert report.main([str(sweep), "--no-plots"]) == 0
    rows = [line for line in (sweep / "report.md").read_text().splitlines() if "optimizer.lr=" in line]
    assert "| n/a |" in rows[0] and "(0/1)" not in rows[0]


def report_text(*folders: Path) -> str:
    """The report of ``folders`` (no plots), written into the first."""
    assert report.main([*map(str, folders), "--no-plots"]) == 0
    return (folders[0] / "report.md").read_text()


def csv_rows(folder: Path) -> dict[str, dict[str, str]]:
    """``report.csv``'s rows by configuration."""
    return {row["configuration"]: row for row in csv.DictReader((folder / "report.csv").open())}


def test_a_run_on_defaults_joins_the_configuration_that_typed_them(tmp_path):
    sweep = tmp_path / "sweep"
    swept = ["optimizer.centered=False", "optimizer.eps=1e-8"]  # as Hydra's sweep and a user write them
    make_job(sweep, 0, ["optimizer=rmsprop", "optimizer.lr=0.01", *swept, "seed=0"])
    make_job(
        sweep, 1, ["optimizer=rmsprop_centered", "optimizer.lr=0.1", "optimizer.centered=True", "seed=0"]
    )
    run = make_job(tmp_path / "runs", 0, ["seed=1"])  # its saved config holds the defaults
    (run / ".hydra").mkdir()
    (run / ".hydra" / "hydra.yaml").write_text("hydra:\n  runtime:\n    choices:\n      optimizer: rmsprop\n")
    (run / ".hydra" / "config.yaml").write_text("optimizer:\n  lr: 0.01\n  centered: false\n  eps: 1.0e-08\n")
    text = report_text(sweep, run)
    assert (
        "| optimizer=rmsprop, optimizer.lr=0.01, optimizer.centered=False, optimizer.eps=1e-8 | 2 |" in text
    )


def saved_job(folder: Path, num: int, overrides: list[str], choices: dict[str, str], config: str) -> Path:
    """A job as ``make_job`` makes it, with the ``.hydra`` folder a run saves."""
    job = make_job(folder, num, overrides)
    (job / ".hydra").mkdir()
    (job / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"runtime": {"choices": choices}}}))
    (job / ".hydra" / "config.yaml").write_text(f"{config}\npaths:\n  output_dir: {job}\n")
    return job


def test_runs_of_one_preset_whose_file_changed_between_them_are_two_configurations(tmp_path):
    runs = [  # optimizer=mine edited between the runs: lr 0.003, then 0.03
        ("mine", "lr: 0.003\n  centered: false"),
        ("mine", "lr: 0.03\n  centered: false"),
        ("mine", "lr: 0.03\n  centered: false"),
        ("rmsprop_centered", "lr: 0.01\n  centered: true"),
    ]
    for num, (option, optimizer) in enumerate(runs):
        config = f"seed: {num}\ntrainer:\n  max_steps: 40\noptimizer:\n  {optimizer}"
        saved_job(tmp_path, num, [f"optimizer={option}", f"seed={num}"], {"optimizer": option}, config)
    sweep = load_sweep(sorted(path for path in tmp_path.iterdir() if path.is_dir()))
    assert [(c.setting, len(c.jobs)) for c in sweep.configurations()] == [
        ({"optimizer": "mine", "optimizer.lr": "0.003"}, 1),
        ({"optimizer": "mine", "optimizer.lr": "0.03"}, 2),
        ({"optimizer": "rmsprop_centered", "optimizer.lr": "0.01"}, 1),
    ]
    assert [len(c.jobs) for c in sweep.configurations(over=("seed", "optimizer"))] == [4]


def test_the_keys_a_group_of_global_keys_sets_and_jobs_saving_no_config(tmp_path):
    """``debug=fast`` sets trainer keys, which its choice already tells apart (pooled, they split: a saved
    config does not say which keys it set); a job without a saved config (``hydra.output_subdir=null``)
    leaves the saved configs out of the comparison."""
    fast = "seed: 0\ntrainer:\n  max_steps: 20\n  log_every_n_steps: 1"
    saved_job(tmp_path, 0, ["debug=fast", "seed=0"], {"debug": "fast"}, fast)
    saved_job(
        tmp_path,
        1,
        ["seed=1"],
        {"debug": None},
        "seed: 1\ntrainer:\n  max_steps: 20\n  log_every_n_steps: 50",
    )
    assert [c.setting for c in load_sweep(sorted(tmp_path.iterdir())).configurations()] == [
        {"debug": "fast"},
        {"debug": "null"},
    ]
    pooled = load_sweep(sorted(tmp_path.iterdir())).configurations(over=("seed", "debug"))
    assert [len(c.jobs) for c in pooled] == [1, 1]  # which keys debug=fast set, a saved config does not say
    make_job(tmp_path, 2, ["seed=2"])  # no .hydra
    assert [len(c.jobs) for c in load_sweep(sorted(tmp_path.iterdir())[1:]).configurations()] == [2]


def test_settings_compare_as_hydra_reads_them_in_the_table_and_the_heat_map(tmp_path):
    sweep = tmp_path / "sweep"
    grid = [("1e-8", "0.0"), ("1.0e-08", "0.9"), ("0.1", "0.0"), ("0.1", "0.9")]
    for num, (lr, momentum) in enumerate(grid):
        make_job(sweep, num, [f"optimizer.lr={lr}", f"optimizer.momentum={momentum}"], scale=num + 1.0)
    make_job(sweep, 4, ["optimizer.lr=01", "optimizer.momentum=0.0"])  # a string to Hydra, not the number 1
    make_job(sweep, 5, ["optimizer.lr=1", "optimizer.momentum=0.0"])
    from rmsprop_lightning.report import plots

    configurations = load_sweep([sweep]).configurations()
    assert len(configurations) == 6
    figure = plots.heatmap(configurations[:4], ["optimizer.lr", "optimizer.momentum"])
    (axis, _) = figure.axes  # the panel and its colour bar
    plots.plt.close(figure)
    assert [tick.get_text() for tick in axis.get_xticklabels()] == ["1e-8", "0.1"]
    assert "—" not in [text.get_text() for text in axis.texts]  # every cell of the 2 × 2 grid has its value
    assert list(plots._panels(configurations[:4], ["optimizer.lr"])) == [
        "optimizer.lr=1e-8",
        "optimizer.lr=0.1",
    ]


def test_a_missing_fit_time_is_left_out_and_zero_is_a_time(tmp_path):
    sweep = tmp_path / "sweep"
    for seed in (0, 1):  # train=false: no fit
        make_job(sweep, seed, ["train=false", f"seed={seed}"], fit_seconds=None)
    make_job(sweep, 2, ["train=true", "seed=0"], fit_seconds=0.0)
    make_job(sweep, 3, ["train=true", "seed=1"], fit_seconds=1.0)
    report_text(sweep)
    rows = csv_rows(sweep)
    assert (rows["train=false"]["fit_seconds_mean"], rows["train=false"]["wall_seconds_mean"]) == ("nan", "2")
    assert float(rows["train=true"]["fit_seconds_mean"]) == 0.5


def test_a_populations_shared_fit_counts_once(tmp_path):
    sweep = tmp_path / "sweep"
    fit = SimpleNamespace(fit_seconds=6.0)
    population = SimpleNamespace(id="p1", frozen_at=[-1] * 3, global_step=20, result=fit)
    scalars = {9: {"val/loss": 0.5}, 19: {"val/loss": 0.25}}
    for seed in (0, 1, 2):  # each member's metrics.json holds the population's fit time
        fields = summary_fields(population, seed, scalars)
        make_job(sweep, seed, ["optimizer=rmsprop", f"seed={seed}"], wall_seconds=0.5, **fields)
    make_job(sweep, 3, ["optimizer=centered", "seed=0"], fit_seconds=3.0)  # trained alone
    record = {"process_started_at": 100.0, "started_at": 101.0, "finished_at": 118.0}
    (sweep / "sweep.json").write_text(json.dumps(record))
    text = report_text(sweep)
    assert "| 6.50 (shared) |" in text and "| 2.00 |" in text  # the population's fit + the member's writing
    assert "jobs: 4 (3 trained in 1 population(s)" in text
    assert "sum of fit times: 9.00 s; sum of job wall times: 9.50 s" in text
    assert "multirun cost / sum of fit times: 2.000×" in text
    assert csv_rows(sweep)["optimizer=rmsprop"]["in_population"] == "3"


def test_a_wall_time_over_solo_and_population_jobs_says_how_many_shared_a_fit(tmp_path):
    sweep = tmp_path / "sweep"
    population = SimpleNamespace(
        id="p1", frozen_at=[-1] * 2, global_step=20, result=SimpleNamespace(fit_seconds=6.0)
    )
    scalars = {9: {"val/loss": 0.5}, 19: {"val/loss": 0.25}}
    for seed in (0, 1):
        fields = summary_fields(population, seed, scalars)
        make_job(sweep, seed, ["optimizer=rmsprop", f"seed={seed}"], wall_seconds=0.5, **fields)
    make_job(sweep, 2, ["optimizer=rmsprop", "seed=2"], wall_seconds=2.0)  # trained alone, resumed say
    assert "| 5.00 (2 shared) |" in report_text(sweep)  # (6 + 0.5) × 2 and 2, over 3


def test_the_cost_ratio_counts_the_fits_of_the_timed_sweeps_only(sweep, tmp_path):
    run = make_job(tmp_path / "runs", 0, ["optimizer=rmsprop", "seed=9"], fit_seconds=7.0)
    text = report_text(sweep, run)
    assert "sum of fit times: 16.00 s" in text  # all seven jobs
    assert "of the 6 jobs of sweep folders with a finished sweep.json (9.00 s): 1.778×" in text


def test_configurations_without_a_finite_best_never_reach_the_default_threshold(tmp_path):
    sweep = tmp_path / "sweep"
    make_job(sweep, 0, ["optimizer.lr=0.01"])  # best val/loss 1/40
    make_job(sweep, 1, ["optimizer.lr=0.02"], scale=2.0)  # best 2/40
    for num, lr in ((2, "1e6"), (3, "1e7")):
        make_job(sweep, num, [f"optimizer.lr={lr}"], status="diverged")
    assert "val/loss ≤ 0.05 " in report_text(sweep)  # two of the four configurations reach it


def test_no_threshold_says_why_when_runs_logged_val_loss(tmp_path):
    sweep = tmp_path / "sweep"
    for num, lr in ((0, "1e6"), (1, "1e7")):  # both log val/loss, then diverge
        make_job(sweep, num, [f"optimizer.lr={lr}"], status="diverged")
    text = report_text(sweep)
    assert "fewer than half the configurations have a completed run with a finite best val/loss" in text
    assert "No run logged val/loss" not in text


def test_a_panel_without_finite_values_says_so_instead_of_failing(tmp_path):
    sweep = tmp_path / "sweep"
    jobs = [("0.01", "relu", 0), ("0.01", "tanh", 0), ("1e4", "relu", 0), ("1e4", "relu", 1)]
    for num, (lr, activation, seed) in enumerate(jobs):  # lr=1e4 overflows: every norm and loss is inf
        overrides = [f"optimizer.lr={lr}", f"model.activation={activation}", f"seed={seed}"]
        make_job(sweep, num, overrides, scale=math.inf if lr == "1e4" else 1.0)
    assert report.main([str(sweep)]) == 0
    for name in ("loss_curves.png", "optimizer_state.png"):
        assert (sweep / name).read_bytes().startswith(PNG_SIGNATURE)
    assert "![optimizer_state](optimizer_state.png)" in (sweep / "report.md").read_text()
    from rmsprop_lightning.report import plots

    figure = plots.optimizer_state(load_sweep([sweep]).configurations(), ["optimizer.lr"])
    notes = {axis.get_title(): [text.get_text() for text in axis.texts] for axis in figure.axes}
    plots.plt.close(figure)
    assert notes == {
        "optimizer.lr=0.01 square_avg": [],
        "optimizer.lr=1e4 square_avg": ["no finite positive values"],
    }


def test_plots_name_a_state_runs_lack_show_one_point_runs_and_wrap_long_labels(tmp_path):
    sweep = tmp_path / "sweep"
    searched = [
        "optimizer.lr=0.0021177913315908337",
        "optimizer.alpha=0.9156984350117928",
        "optimizer.eps=1.019000001e-06",
    ]
    make_job(sweep, 0, ["optimizer.centered=true", *searched])
    make_job(sweep, 1, ["optimizer.centered=false", *searched])
    diverged = ["optimizer.centered=true", "optimizer.lr=1e37", "optimizer.alpha=0.9", "optimizer.eps=1e-8"]
    make_job(sweep, 2, diverged, status="diverged")
    writer = SummaryWriter(str(sweep / "0_job" / "tensorboard"))  # only the centered run has grad_avg
    writer.add_scalar("optim/grad_avg_norm", 0.5, 39)
    writer.close()
    for run in ("1_job", "2_job"):  # the centered run with a huge lr diverged at its first step
        shutil.rmtree(sweep / run / "tensorboard")
    writer = SummaryWriter(str(sweep / "2_job" / "tensorboard"))
    writer.add_scalar("train/loss", 2.0, 0)
    writer.close()
    writer = SummaryWriter(str(sweep / "1_job" / "tensorboard"))
    writer.add_scalar("optim/square_avg_norm", 0.1, 39)
    writer.close()
    from rmsprop_lightning.report import plots

    configurations = load_sweep([sweep]).configurations()
    figure = plots.optimizer_state(configurations, ["optimizer.centered"])
    notes = {axis.get_title(): [text.get_text() for text in axis.texts] for axis in figure.axes}
    plots.plt.close(figure)
    assert notes["optimizer.centered=false grad_avg"] == ["not logged by these runs"]
    assert notes["optimizer.centered=true grad_avg"] == []
    figure = plots.loss_curves(configurations, ["optimizer.centered"])
    lines = {line.get_label(): line.get_marker() for axis in figure.axes for line in axis.get_lines()}
    plots.plt.close(figure)
    assert lines["optimizer.lr=1e37, optimizer.alpha=0.9,\noptimizer.eps=1e-8 (n=1)"] == "o"
    assert lines["optimizer.lr=0.002118, optimizer.alpha=0.9157,\noptimizer.eps=1.019e-06 (n=1)"] == "None"


def test_a_failing_plot_leaves_the_table_written(sweep, monkeypatch):
    def fail(*args) -> list[str]:
        raise RuntimeError("plot failed")

    monkeypatch.setattr("rmsprop_lightning.report.plots.write_plots", fail)
    with pytest.raises(RuntimeError, match="plot failed"):
        report.main([str(sweep)])
    assert "| optimizer=centered | 3 |" in (sweep / "report.md").read_text()
    assert set(csv_rows(sweep)) == {"optimizer=centered", "optimizer=rmsprop"}


def test_a_reader_that_stops_early_gets_no_traceback_and_the_files_are_written(sweep):
    reader, writer = os.pipe()
    os.close(reader)  # as `rmsprop-report … | head` once head has its lines
    command = [sys.executable, "-m", "rmsprop_lightning.report.cli", str(sweep), "--no-plots"]
    done = subprocess.run(command, stdout=writer, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    os.close(writer)
    assert (done.returncode, done.stderr) == (1, "")
    assert "| optimizer=centered | 3 |" in (sweep / "report.md").read_text()


def rejection(capsys, *arguments: str) -> str:
    """The one line ``rmsprop-report`` answers ``arguments`` with, once it exits with 2."""
    with pytest.raises(SystemExit) as stop:
        report.main(list(arguments))
    output = capsys.readouterr()
    assert stop.value.code == 2 and not output.out, output
    (line,) = output.err.splitlines()
    return line


def test_an_over_key_no_job_has_is_one_line_naming_the_keys(sweep, capsys, monkeypatch):
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    assert rejection(capsys, str(sweep), "--over", "sed") == (
        "error: --over sed is not an override key of any job (did you mean --over seed?); "
        "allowed: optimizer, seed, trainer.max_steps"
    )
    assert not (sweep / "report.md").exists()
    assert report.main([str(sweep), "--over", "seed", "optimizer", "--no-plots"]) == 0
    assert "6 jobs in 1 configurations" in (sweep / "report.md").read_text()


@pytest.mark.parametrize("threshold", ["nan", "inf", "-inf"])
def test_a_threshold_that_is_not_finite_is_one_line_before_any_work(sweep, capsys, monkeypatch, threshold):
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.setattr(report, "load_sweep", lambda folders: pytest.fail("the sweep was read"))
    line = rejection(capsys, str(sweep), f"--threshold={threshold}")
    assert line == f"error: --threshold {float(threshold)} is invalid; allowed: a finite val/loss value"
    assert not (sweep / "report.md").exists()


def test_an_unwritable_output_folder_is_one_line_before_any_work(sweep, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.setattr(report, "load_sweep", lambda folders: pytest.fail("the sweep was read"))
    (tmp_path / "file").write_text("")
    line = rejection(capsys, str(sweep), "--output", str(tmp_path / "file" / "out"))
    assert line.startswith(f"error: --output={tmp_path / 'file' / 'out'} cannot be written: ")
    assert line.endswith("; allowed: a writable folder")


def test_a_multirun_that_did_not_finish_is_named(sweep):
    record = json.loads((sweep / "sweep.json").read_text())
    del record["finished_at"]  # stopped: its later jobs never started
    (sweep / "sweep.json").write_text(json.dumps(record))
    text = report_text(sweep)
    assert f"- multirun `{sweep.name}` did not finish (stopped, or still running)" in text
    assert "multirun wall time" not in text


def test_a_job_given_twice_counts_once(sweep, monkeypatch):
    monkeypatch.chdir(sweep.parent)
    once = load_sweep([sweep])
    twice = load_sweep([sweep, Path("sweep"), sweep / "0_job"])  # by two names, and one of its runs
    assert [job.folder for job in twice.jobs] == [job.folder for job in once.jobs]
    assert len(twice.records) == 1 and [folder.name for folder in twice.folders] == ["sweep", "0_job"]


def test_a_record_that_is_not_json_is_one_line_naming_it(sweep, capsys, monkeypatch):
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    (sweep / "0_job" / "metrics.json").write_text("")  # cut short
    line = rejection(capsys, str(sweep))
    assert line.startswith(f"error: {sweep / '0_job' / 'metrics.json'} is not a JSON record (Expecting value")
    (sweep / "0_job" / "metrics.json").write_text("[]")  # JSON, but no record
    line = rejection(capsys, str(sweep))
    assert line == f"error: {sweep / '0_job' / 'metrics.json'} is not a JSON record (a list, not an object)"


def test_csv_logs_give_one_point_a_step_the_last_written(tmp_path):
    # a run resumed after kill -9 logs again the steps after its checkpoint, in its file or the next version's
    rows = {9: "0,30,0.5\n0,31,0.4\n0,31,0.3\n0,32,0.2\n", 10: "0,32,0.1\n"}
    for version, lines in rows.items():
        table = tmp_path / "csv" / f"version_{version}" / "metrics.csv"
        table.parent.mkdir(parents=True)
        table.write_text("epoch,step,train/loss\n" + lines)
    assert read_csv_scalars(tmp_path)["train/loss"] == [(30, 0.5), (31, 0.3), (32, 0.1)]


def test_losses_by_other_criteria_get_thresholds_of_their_own(tmp_path):
    sweep = tmp_path / "sweep"
    jobs = [("mse", 1, 1.0), ("mse", 2, 2.0), ("l1", 1, 8.0), ("l1", 2, 4.0)]
    for num, (loss, lr, scale) in enumerate(jobs):
        make_job(sweep, num, [f"module.loss={loss}", f"optimizer.lr={lr}"], scale=scale)
    text = report_text(sweep)
    assert "val/loss ≤ 0.025 (module.loss=mse), 0.1 (module.loss=l1)" in text  # each one's lower median
    labels = [line.split(" | ")[0].lstrip("| ") for line in text.splitlines() if "module.loss=" in line[:20]]
    assert [label.split(",")[0] for label in labels] == ["module.loss=l1"] * 2 + ["module.loss=mse"] * 2


def test_losses_on_other_data_files_get_thresholds_of_their_own(tmp_path):
    sweep = tmp_path / "sweep"
    jobs = [("a.csv", 1, 1.0), ("a.csv", 2, 2.0), ("b.csv", 1, 8.0), ("b.csv", 2, 4.0)]
    for num, (path, lr, scale) in enumerate(jobs):
        make_job(sweep, num, ["data=csv", f"data.source.path={path}", f"optimizer.lr={lr}"], scale=scale)
    text = report_text(sweep)
    assert "val/loss ≤ 0.025 (data.source.path=a.csv), 0.1 (data.source.path=b.csv)" in text


def test_a_best_optuna_trial_outside_the_reported_folders_is_said_to_be(sweep):
    def results(params: str) -> str:
        return f"name: optuna\nbest_params:\n{params}best_value: 0.25\n"

    (sweep / "optimization_results.yaml").write_text(results("  optimizer: centered\n  seed: 3\n"))
    assert "its trial is in none of the folders reported" in report_text(sweep)
    # a job of the folder set both (a resume may have changed its value since)
    (sweep / "optimization_results.yaml").write_text(results("  optimizer: centered\n  seed: 1.0\n"))
    text = report_text(sweep)
    assert "- best value: 0.25" in text and "in none of the folders" not in text


def test_jobs_of_several_sweeps_are_named_with_their_sweep(tmp_path):
    for sweep in ("first", "second"):
        make_job(tmp_path / sweep, 0, ["seed=0"], status="failed", error="ValueError: bad")
    text = report_text(tmp_path / "first", tmp_path / "second")
    assert "- `first/0_job`: **failed** ValueError: bad" in text
    assert "- `first/0_job`, `second/0_job`: the same overrides" in text


def test_a_run_completed_with_a_non_finite_loss_is_diverged_and_says_so(tmp_path):
    make_job(tmp_path / "sweep", 0, ["on_nonfinite=skip"], final={"val/loss": "inf"})
    make_job(tmp_path / "sweep", 1, ["on_nonfinite=skip"])
    assert "- `0_job`: **diverged** completed with a final val/loss of inf" in report_text(tmp_path / "sweep")
    SweepRecord().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path / "sweep")}}}))
    assert read_json(tmp_path / "sweep" / SWEEP_FILE)["statuses"] == {"completed": 1, "diverged": 1}


def test_a_file_given_as_a_folder_is_one_line_saying_so(sweep, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    (tmp_path / "table.csv").write_text("a,b\n")
    line = rejection(capsys, str(tmp_path / "table.csv"))
    assert line.startswith(f"error: {tmp_path / 'table.csv'}: a file, not a folder; allowed: sweep folders")


def test_logs_that_cannot_be_read_are_one_line_naming_the_job(sweep, capsys, monkeypatch):
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    (sweep / "0_job" / "tensorboard" / "events.out.tfevents.0.host.0").mkdir()  # a folder, not a file
    line = rejection(capsys, str(sweep))
    assert line.startswith(f"error: {sweep / '0_job'}: its logs cannot be read (")
