"""Multiruns end to end: job summaries, failures that do not stop a sweep, launchers, Optuna, the report."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from rmsprop_lightning.app.sweep_record import job_folders
from rmsprop_lightning.report import cli as report
from rmsprop_lightning.summary import read_summary
from tests.conftest import QUICK, run_train, train_in_process

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Optuna trials: few steps, one folder per trial
TRIAL = (*QUICK, "hparams_search=rmsprop_optuna")


def sweep_dirs(root: Path, task: str = "train") -> list[Path]:
    """The multirun folders written below ``root``."""
    return sorted((root / "logs" / task / "multiruns").glob("*"))


def only_sweep(root: Path, task: str = "train") -> Path:
    (sweep,) = sweep_dirs(root, task)
    return sweep


@pytest.mark.slow
def test_multirun_writes_one_summary_per_job_and_a_report(tmp_path):
    # the optimizer-state monitor follows log_every_n_steps: every 10 of the 30 steps
    run_train(
        tmp_path,
        "-m",
        "optimizer=rmsprop,rmsprop_centered",
        "seed=0,1",
        *QUICK,
        "trainer.log_every_n_steps=10",
    )
    sweep = only_sweep(tmp_path)
    jobs = job_folders(sweep)
    assert len(jobs) == 4
    summaries = [read_summary(job) for job in jobs]
    assert [s["status"] for s in summaries] == ["completed"] * 4
    for summary in summaries:
        assert summary["steps"] == 30
        assert 0 < summary["fit_seconds"] < summary["wall_seconds"]
        assert summary["best"]["val/loss"] <= summary["final"]["val/loss"]
        assert summary["best_step"]["val/loss"] in (10, 20, 30)
        assert summary["final"]["test/loss"] > 0
        centered = "optimizer=rmsprop_centered" in summary["overrides"]
        assert summary["optimizer"]["centered"] is centered
    record = json.loads((sweep / "sweep.json").read_text())
    assert record["statuses"] == {"completed": 4}
    assert record["process_started_at"] < record["started_at"] < record["finished_at"]

    report_run = subprocess.run(
        [sys.executable, "-m", "rmsprop_lightning.report.cli", str(sweep)],
        capture_output=True,
        text=True,
        check=True,
    )
    table = (sweep / "report.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| optimizer=")]
    assert len(rows) == 2
    assert all(row.split(" | ")[1] == "2" for row in rows)
    best = {
        variant: sum(s["best"]["val/loss"] for s in summaries if f"optimizer={variant}" in s["overrides"]) / 2
        for variant in ("rmsprop", "rmsprop_centered")
    }
    for row in rows:
        variant = row.split(" | ")[0].removeprefix("| optimizer=")
        assert row.split(" | ")[2].startswith(f"{best[variant]:.4g} ± ")
    assert "multirun cost / sum of fit times" in table
    with (sweep / "report.csv").open() as handle:
        lines = handle.read().splitlines()
    assert len(lines) == 3 and lines[0].startswith("configuration,optimizer,n,")
    for name in ("loss_curves.png", "optimizer_state.png"):
        assert (sweep / name).read_bytes().startswith(PNG_SIGNATURE)
        assert f"![{name[:-4]}]({name})" in table
    assert "| optimizer=rmsprop |" in report_run.stdout


def test_a_failing_job_is_recorded_and_the_others_complete(tmp_path, capfd):
    # an option only the model refuses, once built: the sweep's checks before any job pass it
    train_in_process(tmp_path, "-m", "model.activation=nope,tanh", *QUICK)
    sweep = only_sweep(tmp_path)
    summaries = [read_summary(job) for job in job_folders(sweep)]
    assert [s["status"] for s in summaries] == ["failed", "completed"]
    error = summaries[0]["error"]
    assert "activation" in error and "nope" in error
    assert summaries[1]["steps"] == 30 and summaries[1]["final"]["test/loss"] > 0
    assert "Multirun finished: 1 completed, 1 failed" in "".join(capfd.readouterr())
    assert report.main([str(sweep), "--no-plots"]) == 0
    table = (sweep / "report.md").read_text()
    assert "## Failed, diverged or unfinished runs" in table
    failed_line = next(line for line in table.splitlines() if "**failed**" in line)
    assert "model.activation=nope" in failed_line and failed_line.endswith(error)
    assert "| model.activation=nope | 1 | — |" in capfd.readouterr().out


def test_swept_file_paths_name_one_folder_per_job(tmp_path):
    (tmp_path / "data").mkdir()
    rows = "\n".join(f"{x},{x / 2},{3 * x}" for x in range(64))
    for name in ("a.csv", "b.csv"):
        (tmp_path / "data" / name).write_text(f"x1,x2,target\n{rows}\n")
    paths = f"{tmp_path / 'data' / 'a.csv'},data/b.csv"  # an absolute path and one with a folder
    train_in_process(tmp_path, "-m", "data=csv", f"data.source.path={paths}", *QUICK[1:])
    sweep = only_sweep(tmp_path)
    assert [folder.parent for folder in job_folders(sweep)] == [sweep, sweep]
    assert job_folders(sweep)[1].name == "1_data.source.path=data%2Fb.csv"
    assert json.loads((sweep / "sweep.json").read_text())["statuses"] == {"completed": 2}


def test_the_sweep_record_names_the_search_space_that_ran(tmp_path):
    # the study's config sweeps 2 optimizers, 5 lrs, 3 alphas and 3 seeds; the command line narrows it
    overrides = ("optimizer=rmsprop", "optimizer.lr=0.01", "optimizer.alpha=0.9", "seed=0,1")
    train_in_process(tmp_path, "-m", "experiment=lr_alpha_grid", *overrides, *QUICK)
    sweep = only_sweep(tmp_path, "lr_alpha_grid")
    assert len(job_folders(sweep)) == 2
    params = json.loads((sweep / "sweep.json").read_text())["sweeper_params"]
    assert params == {"optimizer": "rmsprop", "optimizer.lr": "0.01", "optimizer.alpha": "0.9", "seed": "0,1"}


def test_a_failing_single_run_exits_non_zero(tmp_path):
    result = run_train(tmp_path, *QUICK, "optimizer.lr=-1", check=False)
    assert result.returncode != 0
    assert "-1" in result.stderr.splitlines()[-1]


@pytest.mark.slow
def test_joblib_launcher_runs_jobs_in_parallel_with_one_thread_each(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    run_train(tmp_path, "-m", "hydra/launcher=joblib_local", "hydra.launcher.n_jobs=2", "seed=0,1", *QUICK)
    summaries = [read_summary(job) for job in job_folders(only_sweep(tmp_path))]
    assert [s["status"] for s in summaries] == ["completed", "completed"]
    assert [s["threads"] for s in summaries] == [1, 1]
    assert summaries[0]["final"]["val/loss"] != summaries[1]["final"]["val/loss"]


@pytest.mark.slow
def test_submitit_local_launcher_runs_a_sweep(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    run_train(
        tmp_path, "-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5", "seed=0,1", *QUICK
    )
    sweep = only_sweep(tmp_path)
    summaries = [read_summary(job) for job in job_folders(sweep)]
    assert [s["status"] for s in summaries] == ["completed", "completed"]
    assert [s["seed"] for s in summaries] == [0, 1]
    assert list((sweep / ".submitit").glob("*/*_result.pkl"))


def optuna_values(storage: Path, study_name: str = "rmsprop_optuna_train_val/loss_best") -> list:
    optuna = pytest.importorskip("optuna")
    study = optuna.load_study(study_name=study_name, storage=f"sqlite:///{storage}")
    return study.trials


@pytest.mark.slow
def test_optuna_search_records_the_best_parameters_and_survives_failed_trials(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    # an activation only the model refuses, once built: those trials fail, the search goes on
    run_train(tmp_path, "-m", *TRIAL, "hydra.sweeper.n_trials=4", "model.activation=choice(nope,tanh)")
    sweep = only_sweep(tmp_path)
    summaries = [read_summary(job) for job in job_folders(sweep)]
    statuses = [s["status"] for s in summaries]
    assert len(summaries) == 4 and "failed" in statuses and "completed" in statuses
    assert all(("model.activation=nope" in s["overrides"]) == (s["status"] == "failed") for s in summaries)
    results = (sweep / "optimization_results.yaml").read_text()
    best = min((s for s in summaries if s["status"] == "completed"), key=lambda s: s["value"])
    assert f"best_value: {best['value']}" in results
    assert f"optimizer.lr: {best['optimizer']['lr']}" in results
    assert report.main([str(sweep), "--no-plots"]) == 0
    table = (sweep / "report.md").read_text()
    assert "## Best parameters (Optuna)" in table and f"`optimizer.lr={best['optimizer']['lr']}`" in table


@pytest.mark.slow
def test_optuna_study_in_sqlite_continues_when_started_again(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    run_train(tmp_path, "-m", *TRIAL, "hydra.sweeper.n_trials=2")
    storage = tmp_path / "logs" / "train" / "optuna.db"
    first = optuna_values(storage)
    run_train(tmp_path, "-m", *TRIAL, "hydra.sweeper.n_trials=2")
    trials = optuna_values(storage)
    assert [t.number for t in trials] == [0, 1, 2, 3]
    assert [t.params for t in trials[:2]] == [t.params for t in first]
    assert trials[2].params["optimizer.lr"] not in {t.params["optimizer.lr"] for t in first}
    second_sweep = sweep_dirs(tmp_path)[-1]
    results = (second_sweep / "optimization_results.yaml").read_text()
    assert f"best_value: {min(t.value for t in trials)}" in results


RANK_RECORDER = '''
import json
from pathlib import Path

from lightning.pytorch.callbacks import Callback


class RankRecorder(Callback):
    """Writes each rank's optimizer hyper-parameters and parameter sum at the end of training."""

    def on_train_end(self, trainer, pl_module):
        optimizer = trainer.optimizers[0]
        keys = ("lr", "alpha", "eps", "momentum", "centered", "weight_decay")
        record = {
            "groups": [{key: group[key] for key in keys} for group in optimizer.param_groups],
            "param_sum": sum(float(p.detach().double().sum()) for p in pl_module.parameters()),
        }
        path = Path(trainer.default_root_dir) / f"rank{trainer.global_rank}.json"
        path.write_text(json.dumps(record))
'''


@pytest.mark.slow
def test_optuna_trials_under_ddp_run_the_same_trial_on_every_rank(tmp_path, monkeypatch):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    (tmp_path / "rank_recorder.py").write_text(RANK_RECORDER)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    run_train(
        tmp_path,
        "-m",
        *TRIAL,
        "trainer=ddp_cpu",
        "hydra.sweeper.n_trials=2",
        "+callbacks.rank_recorder._target_=rank_recorder.RankRecorder",
        timeout=600,
    )
    jobs = job_folders(only_sweep(tmp_path))
    assert len(jobs) == 2
    lrs = []
    for job in jobs:
        summary = read_summary(job)
        ranks = [json.loads((job / f"rank{rank}.json").read_text()) for rank in (0, 1)]
        assert ranks[0]["groups"] == ranks[1]["groups"]
        assert math.isclose(ranks[0]["param_sum"], ranks[1]["param_sum"], rel_tol=1e-6)
        assert ranks[0]["groups"][0]["lr"] == summary["optimizer"]["lr"]
        lrs.append(summary["optimizer"]["lr"])
    assert lrs[0] != lrs[1]
