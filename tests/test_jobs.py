"""The job wrapper's pieces: summaries, thread limits, extras messages job isolation."""

from __future__ import annotations

import json
import math
import os
import re
import signal
from pathlib import Path

import pytest
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import OmegaConf, open_dict

from rmsprop_lightning import errors
from rmsprop_lightning.app import extras
from rmsprop_lightning.app.job_signals import signals_stop
from rmsprop_lightning.app.jobs import record_end, resolve_threads, run_job, torch_threads
from rmsprop_lightning.data import RegressionDataModule
from rmsprop_lightning.errors import InterruptedRun
from rmsprop_lightning.summary import read_summary, write_summary
from tests.conftest import QUICK, ROOT


def test_write_summary_merges_fields_and_leaves_no_temporary_file(tmp_path):
    write_summary(tmp_path, status="running", final={"val/loss": 0.5}, overrides=["seed=1"])
    summary = write_summary(tmp_path, status="completed", final={"test/loss": 0.25}, steps=7)
    assert summary == read_summary(tmp_path)
    assert summary["final"] == {"val/loss": 0.5, "test/loss": 0.25}
    assert (summary["status"], summary["steps"], summary["overrides"]) == ("completed", 7, ["seed=1"])
    assert [path.name for path in tmp_path.iterdir()] == ["metrics.json"]


def test_write_summary_keeps_strict_json_and_rejects_unknown_status(tmp_path):
    write_summary(tmp_path, final={"val/loss": math.nan, "test/loss": math.inf})
    stored = json.loads((tmp_path / "metrics.json").read_text())
    assert stored["final"] == {"val/loss": "nan", "test/loss": "inf"}
    with pytest.raises(
        ValueError, match="status='done' is unknown; allowed: running, completed, failed, diverged"
    ):
        write_summary(tmp_path, status="done")


@pytest.mark.parametrize(
    ("setting", "launcher", "expected"),
    [
        (None, {"n_jobs": 2}, None),
        (3, None, 3),
        ("auto", None, None),
        ("auto", {"n_jobs": 2}, 4),
        ("auto", {"n_jobs": 3}, 2),
        ("auto", {"n_jobs": -1}, 1),
        ("auto", {"n_jobs": -2}, 1),
        ("auto", {"n_jobs": 16}, 1),
        ("auto", {"cpus_per_task": 6}, 6),
    ],
)
def test_threads_per_job(setting, launcher, expected):
    config = OmegaConf.create(launcher) if launcher is not None else None
    assert resolve_threads(setting, config, cores=8) == expected


def test_torch_threads_are_restored_after_the_job(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1 and os.environ["OMP_NUM_THREADS"] == "1"
    assert torch.get_num_threads() == before and "OMP_NUM_THREADS" not in os.environ
    with torch_threads(None):  # as Lightning's DDP leaves a job
        torch.set_num_threads(1)
        os.environ["OMP_NUM_THREADS"] = "1"
    assert torch.get_num_threads() == before and "OMP_NUM_THREADS" not in os.environ


def test_a_slurm_sweep_from_a_machine_without_slurm_is_one_line(monkeypatch, capsys):
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.setattr(extras.shutil, "which", lambda program: None)
    with pytest.raises(SystemExit) as exited:
        extras.exit_if_plugin_missing(["-m", "hydra/launcher=slurm", "seed=0,1"])
    assert exited.value.code == 2
    assert "this machine has no sbatch" in capsys.readouterr().err
    extras.exit_if_plugin_missing(["hydra/launcher=slurm", "--cfg", "job"])  # printing its config is fine


def test_missing_plugin_names_the_extra(monkeypatch, capsys):
    monkeypatch.setattr(extras, "is_installed", lambda module: False)
    with pytest.raises(extras.MissingExtraError, match=re.escape(f"pip install -e '{ROOT}[sweeps]'")):
        extras.check_plugin_overrides(["seed=1", "hparams_search=rmsprop_optuna"])
    with pytest.raises(extras.MissingExtraError, match=r"hydra/launcher=slurm needs .*\[slurm\]"):
        extras.check_plugin_overrides(["hydra/launcher=slurm"])
    with pytest.raises(SystemExit) as exited:
        extras.exit_if_plugin_missing(["hydra/launcher=joblib_local"])
    assert exited.value.code == 2  # bad input
    assert re.fullmatch(r"error: hydra/launcher=joblib_local needs .*\[sweeps\]'\n", capsys.readouterr().err)
    with pytest.raises(extras.MissingExtraError, match=r"data=diabetes needs .*\[datasets\]"):
        extras.require("sklearn.datasets", "datasets", "data=diabetes")
    extras.check_plugin_overrides(["optimizer=rmsprop", "seed=0,1"])


def data_module(source, **options) -> RegressionDataModule:
    return RegressionDataModule(source=source, **options)


def test_diabetes_data_is_read_from_scikit_learn(compose_cfg):
    pytest.importorskip("sklearn")
    from hydra.utils import instantiate

    datamodule = instantiate(compose_cfg("data=diabetes").data)
    sizes = {split: len(features) for split, (features, _) in datamodule.splits.items()}
    assert sizes == {"train": 310, "val": 66, "test": 66}
    assert (datamodule.num_features, datamodule.num_targets) == (10, 1)
    train_targets = datamodule.splits["train"][1]
    assert (
        abs(float(train_targets.mean())) < 1e-5 and abs(float(train_targets.std(unbiased=False)) - 1) < 1e-4
    )


def quick_job(compose_cfg, folder: Path, seed: int):
    cfg = compose_cfg(*QUICK, f"seed={seed}")
    with open_dict(cfg):
        cfg.paths.output_dir = str(folder)
    run_job(cfg)
    return read_summary(folder)


def open_files() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc")
def test_jobs_in_one_process_do_not_leak_seeds_threads_or_files(compose_cfg, tmp_path):
    threads = torch.get_num_threads()
    first = quick_job(compose_cfg, tmp_path / "a", seed=0)
    files = open_files()
    other = quick_job(compose_cfg, tmp_path / "b", seed=1)
    again = quick_job(compose_cfg, tmp_path / "c", seed=0)
    assert open_files() == files
    assert torch.get_num_threads() == threads
    assert [s["status"] for s in (first, other, again)] == ["completed"] * 3
    assert again["final"] == first["final"] != other["final"]
    assert again["best"] == first["best"]


def test_a_job_records_only_its_own_end_values(compose_cfg, tmp_path):
    # e.g. a resume with test=false: the earlier part's test/loss came from a checkpoint since replaced
    write_summary(tmp_path, status="completed", final={"val/loss": 0.5, "test/loss": 0.25})
    cfg = compose_cfg(*QUICK)
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path)

    def train(cfg, fields):
        fields["final"] = {"val/loss": 0.4}
        return 0.4

    run_job(cfg, train)
    assert read_summary(tmp_path)["final"] == {"val/loss": 0.4}


@pytest.mark.parametrize(
    ("launcher", "module", "target", "expected"),
    [
        (
            "joblib_local",
            "hydra_plugins.hydra_joblib_launcher",
            "JoblibLauncher",
            {"n_jobs": 2, "backend": "loky"},
        ),
        ("slurm", "hydra_plugins.hydra_submitit_launcher", "SlurmLauncher", {"array_parallelism": 64}),
    ],
)
def test_launcher_configs_extend_the_plugins(launcher, module, target, expected):
    pytest.importorskip(module)
    from hydra import compose, initialize_config_dir

    from tests.conftest import CONF

    overrides = [f"hydra/launcher={launcher}", "hydra.launcher.timeout_min=5"] if launcher == "slurm" else []
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(
            "train", overrides=[f"hydra/launcher={launcher}", *overrides[1:]], return_hydra_config=True
        )
    settings = cfg.hydra.launcher
    assert settings._target_.endswith(target)
    assert {key: settings[key] for key in expected} == expected
    if launcher == "slurm":
        assert settings.timeout_min == 5 and settings.partition is None and settings.gpus_per_task is None


@pytest.mark.parametrize(
    ("earlier", "fit", "expected"),
    [
        ({"fit_seconds": 2.0}, 3.0, 5.0),  # a resumed run: its parts add up
        ({"fit_seconds": 2.0}, None, 2.0),  # a part that never fitted keeps the earlier parts' time
        ({"fit_seconds": 2.0, "population": {"id": "a1"}}, 3.0, 3.0),  # a member's fit was its population's
        ({}, None, None),
    ],
)
def test_a_resumed_runs_fit_seconds_add_up_its_own_parts(tmp_path, earlier, fit, expected):
    summary = record_end(str(tmp_path), "completed", 0.0, earlier, fit_seconds=fit)
    assert summary["fit_seconds"] == expected


@pytest.mark.parametrize(("earlier", "now"), [(True, False), (False, True), (None, False)])
def test_a_fast_step_that_fell_back_in_any_part_of_a_run_stays_recorded(tmp_path, earlier, now):
    summary = record_end(str(tmp_path), "completed", 0.0, {"fast_fell_back": earlier}, fast_fell_back=now)
    assert summary["fast_fell_back"] is bool(earlier or now)


def test_a_ctrl_c_before_the_fit_is_recorded_as_interrupted(compose_cfg):
    cfg = compose_cfg(*QUICK)

    def stopped_in_set_up(cfg, fields):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_job(cfg, train=stopped_in_set_up)
    assert read_summary(cfg.paths.output_dir)["status"] == "interrupted"


@pytest.mark.parametrize("ranks", ["one", "several", "several starting"])
def test_a_signal_outside_the_training_steps_stops_the_job_unless_other_ranks_would_hang(ranks, monkeypatch):
    # starting: a launcher started the ranks (or is starting them), which wait for each other to join
    monkeypatch.setattr(errors, "_stop_requested", [])  # what the next fit's GracefulInterrupt takes up
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: ranks == "several")
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 1 if ranks == "one" else 2)
    monkeypatch.setenv("WORLD_SIZE", "2" if ranks == "several starting" else "1")
    if signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        pytest.skip("SIGTERM has a handler in this test process")
    with signals_stop("run") as signals:
        handler = signal.getsignal(signal.SIGTERM)
        if ranks != "one":  # every rank stops after its first training step; Ctrl-C again stops at once
            with signals.held():
                handler(signal.SIGTERM, None)
            assert errors.requested_stop() == signal.SIGTERM
            with pytest.raises(InterruptedRun, match="stopped by SIGINT outside the training steps"):
                handler(signal.SIGINT, None)
        else:
            with pytest.raises(InterruptedRun, match="stopped by SIGTERM outside the training steps") as stop:
                handler(signal.SIGTERM, None)
            assert stop.value.exit_code == 143
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_a_signal_during_the_imports_stops_the_job_once_they_are_done():
    if signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        pytest.skip("SIGTERM has a handler in this test process")
    imported = False
    with signals_stop("run") as signals:
        handler = signal.getsignal(signal.SIGTERM)
        stopped = pytest.raises(InterruptedRun, match="stopped by SIGTERM outside the training steps")
        with stopped as stop, signals.held():  # an import cut short could leave its module broken
            handler(signal.SIGTERM, None)
            imported = True
        assert imported and stop.value.exit_code == 143
        with pytest.raises(InterruptedRun):  # after the imports, a signal stops at once again
            handler(signal.SIGTERM, None)


def test_lightnings_own_stop_on_sigterm_is_recorded_as_interrupted(compose_cfg, tmp_path):
    cfg = compose_cfg(*QUICK)
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path)

    def train(cfg, fields):
        fields["steps"] = 20
        raise SIGTERMException  # a SystemExit without a code: the process would exit 0

    with pytest.raises(InterruptedRun, match="stopped by SIGTERM outside the training steps") as stop:
        run_job(cfg, train)
    assert stop.value.exit_code == 143
    summary = read_summary(tmp_path)
    assert summary["status"] == "interrupted" and summary["steps"] == 20


@pytest.mark.parametrize(("metric", "field"), [("val/loss_best", "best"), ("val/loss", "final")])
def test_a_sweeper_gets_the_best_or_the_last_validation(compose_cfg, tmp_path, metric, field):
    cfg = compose_cfg(*QUICK, "optimizer.lr=0.03", "optimizer.momentum=0.9", f"optimized_metric={metric}")
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path)
    value = run_job(cfg)
    summary = read_summary(tmp_path)
    assert summary["best"]["val/loss"] < summary["final"]["val/loss"]  # validations that got worse
    assert value == summary["value"] == summary[field]["val/loss"]
