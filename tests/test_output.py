"""What a user sees of a run: quiet, truthful output, one step numbering, job folders named by the sweep."""

from __future__ import annotations

import gc
import json
import sys
import types
from pathlib import Path

import pytest

from rmsprop_lightning.app import cli
from rmsprop_lightning.app.cli import leave_out_of_shutdown_collections
from rmsprop_lightning.errors import PROGRAM_ENV, resume_command
from rmsprop_lightning.logging.events import read_scalars
from rmsprop_lightning.report.cli import main as report_main
from rmsprop_lightning.summary import closing_line
from tests.conftest import run_train, train_in_process

SHORT = ("data.source.num_samples=2048", "trainer.max_steps=40")


def test_a_piped_run_without_callbacks_draws_no_progress_bar(tmp_path, capfd):
    # with no progress-bar callback Lightning adds its own, which draws every step: a line each on a pipe
    capfd.readouterr()
    train_in_process(tmp_path, "callbacks=none", "data.source.num_samples=512", "trainer.max_steps=30")
    assert "it/s" not in "".join(capfd.readouterr())


def test_a_piped_run_is_quiet_says_where_it_wrote_and_validates_at_its_end(tmp_path):
    result = run_train(tmp_path, *SHORT)  # 1639 training rows, batch 32: the first epoch ends at step 52
    output = result.stdout + result.stderr
    lines = [line for line in output.splitlines() if line.strip()]
    assert lines[0].startswith("Run folder: ")
    folder = Path(lines[0].removeprefix("Run folder: "))
    assert lines[-1].startswith("Done: 40 steps") and str(folder) in lines[-1]
    assert f"tensorboard --logdir {folder} --samples_per_plugin scalars=1000000" in lines[-1]
    for noise in ("💡", "litlogger", "LeafSpec", "\r", "Traceback", "INFO: "):
        assert noise not in output, noise
    assert len(lines) == len(set(lines)), "a message was printed twice"
    # a fit shorter than an epoch validates at its end
    summary = json.loads((folder / "metrics.json").read_text())
    scalars = read_scalars(folder / "tensorboard")
    assert [step for step, _ in scalars["val/loss"]] == [40]
    assert summary["best_step"]["val/loss"] == 40
    assert sorted(path.name for path in (folder / "checkpoints").iterdir()) == [
        "best-000040.ckpt",
        "last.ckpt",
    ]
    assert {"test/loss", "test/rmse"} <= set(summary["final"])


@pytest.mark.parametrize(
    ("fields", "done"),
    [
        ({"steps": 40, "start_step": 0}, "Done: 40 steps in 1.0 s;"),
        ({"steps": 220, "start_step": 120}, "Done: 100 steps from step 120 in 1.0 s;"),  # a branch
        ({"steps": 50, "skipped_steps": 49}, "Done: 50 steps (49 updates skipped) in 1.0 s;"),
    ],
)
def test_the_closing_line_says_how_many_steps_the_run_took(tmp_path, fields, done):
    assert closing_line(str(tmp_path), {"wall_seconds": 1.0, **fields}).startswith(done)


def test_steps_agree_between_tensorboard_checkpoints_metrics_and_report(tmp_path, capsys):
    train_in_process(
        tmp_path,
        "-m",
        "seed=0,1",
        *SHORT,
        "trainer.val_check_interval=20",
        "trainer.check_val_every_n_epoch=null",
    )
    (sweep,) = (tmp_path / "logs" / "train" / "multiruns").iterdir()
    for job in sorted(path for path in sweep.iterdir() if path.is_dir()):
        scalars = read_scalars(job / "tensorboard")
        assert [step for step, _ in scalars["val/loss"]] == [20, 40]
        best_step = json.loads((job / "metrics.json").read_text())["best_step"]["val/loss"]
        assert (job / "checkpoints" / f"best-{best_step:06d}.ckpt").is_file()
        assert [step for step, _ in scalars["train/loss"]] == list(range(40))
    assert report_main([str(sweep)]) == 0
    table = (sweep / "report.md").read_text()
    assert "nan" not in table.split("\n\n")[0]


def test_multirun_job_folders_name_only_the_keys_that_vary(tmp_path):
    train_in_process(
        tmp_path,
        "-m",
        "optimizer=rmsprop,rmsprop_centered",
        "trainer=debug",
        "seed=3",
        "logger=none",
        "callbacks=none",
    )
    (sweep,) = (tmp_path / "logs" / "train" / "multiruns").iterdir()
    jobs = sorted(path.name for path in sweep.iterdir() if path.is_dir())
    assert jobs == ["0_optimizer=rmsprop", "1_optimizer=rmsprop_centered"]


@pytest.mark.parametrize("triton", [False, True])
def test_the_end_of_a_run_freezes_its_objects_unless_triton_would_report_them_as_leaks(triton, monkeypatch):
    # nanobind, which triton is built with, prints a page of "leaked" objects at exit for frozen ones
    if triton:
        monkeypatch.setitem(sys.modules, "triton", types.ModuleType("triton"))
    else:
        monkeypatch.delitem(sys.modules, "triton", raising=False)
    gc.unfreeze()
    try:
        leave_out_of_shutdown_collections()
        assert (gc.get_freeze_count() > 0) is not triton
    finally:
        gc.freeze()  # as the tests keep their imports' objects (conftest.py)


def test_a_ctrl_c_outside_a_job_is_one_line(monkeypatch, capsys):
    def interrupted(*args) -> None:  # as while Hydra composes the config, before the job handles signals
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "run_app", interrupted)
    monkeypatch.setattr(cli, "leave_out_of_shutdown_collections", lambda: None)  # no freeze in the tests
    monkeypatch.setattr(sys, "argv", ["train.py"])
    monkeypatch.setenv(PROGRAM_ENV, "")
    with pytest.raises(SystemExit) as exit_:
        cli.train_main()
    assert exit_.value.code == 130 and capsys.readouterr().err == "error: stopped by SIGINT\n"


def test_the_commands_a_run_suggests_are_quoted_for_a_shell(tmp_path, monkeypatch):
    monkeypatch.setenv(PROGRAM_ENV, "rmsprop-train")
    run_dir = tmp_path / "1_logger=[tensorboard,csv] b"
    (run_dir / "tensorboard").mkdir(parents=True)
    (run_dir / "tensorboard" / "events.out.tfevents.1").touch()
    assert resume_command(run_dir) == f"rmsprop-train 'resume={run_dir}'"
    line = closing_line(str(run_dir), {"steps": 5, "wall_seconds": 1.0})
    assert line.endswith(f"tensorboard --logdir '{run_dir}' --samples_per_plugin scalars=1000000")
