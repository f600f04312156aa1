"""SIGTERM and Ctrl-C outside the training steps: before training, after the last step, during the test,
and a second Ctrl-C during training. Each stops the job at once with one error line, records it as
``interrupted`` and exits with 128 + the signal; in a multirun the sweep stops there."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
from lightning.pytorch.callbacks import Callback

from rmsprop_lightning.app.cli import train_main
from rmsprop_lightning.app.job_signals import stopped_outside_steps
from rmsprop_lightning.callbacks.last_checkpoint import LAST_CHECKPOINT
from rmsprop_lightning.errors import PROGRAM_ENV
from rmsprop_lightning.logging.events import read_scalars
from tests.conftest import ROOT, TRAIN, run_dirs, run_train, train_in_process

RUN = (
    "data.source.num_samples=512",
    "trainer.max_steps=20",
    "trainer.val_check_interval=10",
    "trainer.check_val_every_n_epoch=null",
    "callbacks.progress_bar.refresh_rate=0",
    "+callbacks.signal_at._target_=tests.test_interrupts.SignalAt",
)


class SignalAt(Callback):
    """Sends this process ``SIGNAL_AT=<moment>:<signal>[:<times>]`` once: at ``init`` (while the run builds
    its callbacks, before training), or at the first call of the hook named (``train_batch_end``,
    ``train_batch_start``, ``train_end``, ``test_batch_end``). Several, comma-separated, come in turn."""

    def __init__(self) -> None:
        self.due = []
        for spec in os.environ["SIGNAL_AT"].split(","):
            moment, name, times = (spec + ":1").split(":")[:3]
            self.due.append((moment, signal.Signals[f"SIG{name}"], int(times)))
        self._maybe_signal("init")

    def _maybe_signal(self, moment: str) -> None:
        if self.due and moment == self.due[0][0]:
            _, signum, times = self.due.pop(0)  # once
            for _ in range(times):
                os.kill(os.getpid(), signum)

    def on_train_batch_start(self, *args: Any) -> None:
        self._maybe_signal("train_batch_start")

    def on_train_batch_end(self, *args: Any) -> None:
        self._maybe_signal("train_batch_end")

    def on_train_end(self, *args: Any) -> None:
        self._maybe_signal("train_end")

    def on_test_batch_end(self, *args: Any) -> None:
        self._maybe_signal("test_batch_end")


def stopped(
    tmp_path: Path, at: str, *overrides: str, run: tuple[str, ...] = RUN
) -> tuple[Any, Path, dict[str, Any]]:
    """Runs ``train.py`` with ``overrides`` then ``run`` and ``SIGNAL_AT=at``; returns the process, its only
    job's folder and record."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PYTHONPATH", str(ROOT))
        patch.setenv("SIGNAL_AT", at)
        result = run_train(tmp_path, *overrides, *run, check=False)
    records = sorted((tmp_path / "logs").rglob("metrics.json"))
    assert len(records) == 1, f"{len(records)} jobs ran"
    return result, records[0].parent, json.loads(records[0].read_text())


def error_line(result: Any, run_dir: Path, kept: bool = True) -> str:
    """The one error line, which ends with the resume command: one that goes on from the ``last.ckpt`` kept,
    else one that starts the run again."""
    assert "Traceback" not in result.stderr and "KeyboardInterrupt" not in result.stdout + result.stderr
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    command = f"python {TRAIN} resume={run_dir}"
    hint = f"resume with: {command}" if kept else f"no last.ckpt to go on from: {command} starts it again"
    assert line.endswith(f"; {hint}")
    return line


@pytest.mark.parametrize(("name", "code"), [pytest.param("TERM", 143, marks=pytest.mark.slow), ("INT", 130)])
def test_a_signal_during_the_test_stops_the_job_as_interrupted(name, code, tmp_path):
    # SIGTERM in the test, whose resume a fast test covers, is slow here
    result, run_dir, summary = stopped(tmp_path, f"test_batch_end:{name}")
    assert result.returncode == code, result.stderr[-3000:]
    line = error_line(result, run_dir)
    assert line.startswith(f"error: stopped by SIG{name} outside the training steps;")
    assert summary["status"] == "interrupted" and summary["steps"] == 20
    assert summary["best"]["val/loss"] is not None and summary["error"].startswith(f"stopped by SIG{name}")
    assert (run_dir / "checkpoints" / LAST_CHECKPOINT).is_file()


def test_a_signal_after_the_last_step_stops_before_the_test(tmp_path):
    result, run_dir, summary = stopped(tmp_path, "train_end:TERM")
    assert result.returncode == 143, result.stderr[-3000:]
    line = error_line(result, run_dir)
    assert line.startswith(f"error: stopped by SIGTERM after step 20; checkpoint saved to {run_dir}")
    assert summary["status"] == "interrupted" and summary["steps"] == 20
    assert not [tag for tag in summary["final"] if tag.startswith("test/")]  # no test ran


def test_a_signal_before_training_stops_the_job_as_interrupted(tmp_path):
    result, run_dir, summary = stopped(tmp_path, "init:TERM")
    assert result.returncode == 143, result.stderr[-3000:]
    line = error_line(result, run_dir, kept=False)
    assert line.startswith("error: stopped by SIGTERM outside the training steps;")
    assert summary["status"] == "interrupted" and summary["error"].startswith("stopped by SIGTERM")


def test_a_resume_stopped_before_training_leaves_the_run_as_it_was(tmp_path, monkeypatch):
    monkeypatch.setenv("SIGNAL_AT", "never:TERM")
    train_in_process(tmp_path, *RUN)
    (run_dir,) = run_dirs(tmp_path)
    before = {path: path.read_bytes() for path in run_dir.rglob("*") if path.is_file()}
    env = {"PYTHONPATH": str(ROOT), "SIGNAL_AT": "init:TERM"}
    result = run_train(tmp_path, f"resume={run_dir}", "trainer.max_steps=30", check=False, env=env)
    assert result.returncode == 143, result.stderr[-3000:]
    assert error_line(result, run_dir).startswith("error: stopped by SIGTERM outside the training steps;")
    after = {path: path.read_bytes() for path in run_dir.rglob("*") if path.is_file()}
    assert {p: d for p, d in after.items() if p.name != "train.log"} == {
        p: d for p, d in before.items() if p.name != "train.log"
    }


def test_a_second_ctrl_c_after_the_stops_checkpoint_says_it_was_saved(tmp_path):
    result, run_dir, summary = stopped(tmp_path, "train_batch_end:INT,train_batch_start:INT")
    assert result.returncode == 130, result.stderr[-3000:]
    line = error_line(result, run_dir)
    last = run_dir / "checkpoints" / LAST_CHECKPOINT
    assert line.startswith(f"error: stopped by SIGINT again after step 1; checkpoint saved to {last};")
    assert summary["status"] == "interrupted" and summary["steps"] == 1 and last.is_file()


def test_a_second_ctrl_c_during_training_stops_at_once_as_interrupted(tmp_path):
    result, run_dir, summary = stopped(tmp_path, "train_batch_end:INT:2")
    assert result.returncode == 130, result.stderr[-3000:]
    line = error_line(result, run_dir, kept=False)
    assert line.startswith("error: stopped by SIGINT again during step 1; no checkpoint saved;")
    assert summary["status"] == "interrupted" and summary["steps"] == 1
    assert not (run_dir / "checkpoints" / LAST_CHECKPOINT).exists()


@pytest.mark.slow
def test_a_signal_during_a_multirun_jobs_test_stops_the_sweep(tmp_path):
    result, run_dir, summary = stopped(tmp_path, "test_batch_end:TERM", "--multirun", "seed=1,2")
    assert result.returncode == 143, result.stderr[-3000:]
    assert error_line(result, run_dir).startswith("error: stopped by SIGTERM outside the training steps;")
    assert summary["status"] == "interrupted" and summary["steps"] == 20  # the only job: the second never ran


@pytest.mark.parametrize("steps", [20, 25])  # validated at the last step or not
def test_a_run_stopped_during_its_test_resumes_to_that_test(tmp_path, monkeypatch, steps):
    run = (*RUN, f"trainer.max_steps={steps}")
    result, run_dir, summary = stopped(tmp_path, "test_batch_end:TERM", run=run)
    assert result.returncode == 143, result.stderr[-3000:]
    assert error_line(result, run_dir).startswith("error: stopped by SIGTERM outside the training steps;")
    assert summary["status"] == "interrupted" and summary["steps"] == steps
    monkeypatch.setenv("SIGNAL_AT", "never:TERM")
    train_in_process(tmp_path, f"resume={run_dir}")
    (tmp_path / "uninterrupted").mkdir()
    train_in_process(tmp_path / "uninterrupted", *run)
    (expected,) = (tmp_path / "uninterrupted" / "logs").rglob("metrics.json")
    resumed, expected = json.loads((run_dir / "metrics.json").read_text()), json.loads(expected.read_text())
    assert resumed["status"] == "completed" and resumed["steps"] == steps
    for key in ("final", "best", "best_step", "value"):  # as the run never stopped
        assert resumed[key] == expected[key], key
    logged, uninterrupted = read_scalars(run_dir), read_scalars(tmp_path / "uninterrupted" / "logs")
    for tag in ("test/loss", "val/loss_best"):  # at the last step, not one before
        assert logged[tag] == uninterrupted[tag] == [(steps, uninterrupted[tag][0][1])], tag


@pytest.mark.parametrize(
    ("started", "command"),
    [("/venv/bin/rmsprop-train", "rmsprop-train"), ("../clone/train.py", "python ../clone/train.py")],
)
def test_the_resume_command_a_message_suggests_is_the_one_that_started_the_run(started, command, monkeypatch):
    monkeypatch.delenv(PROGRAM_ENV, raising=False)  # as a process a launcher did not start
    monkeypatch.setattr(sys, "argv", [started, "seed=1"])
    message = stopped_outside_steps(signal.SIGTERM, "/runs/r").args[0]  # a run without a last.ckpt
    assert message.endswith(f"{command} resume=/runs/r starts it again")


def test_a_job_in_a_launchers_worker_suggests_the_command_that_started_the_sweep(monkeypatch, capsys):
    monkeypatch.setenv(PROGRAM_ENV, "")  # restored after the entry point has written it
    monkeypatch.setattr(sys, "argv", ["/venv/bin/rmsprop-train", "--cfg", "job"])
    train_main()
    capsys.readouterr()
    monkeypatch.setattr(sys, "argv", ["-c"])  # as in a joblib worker
    message = stopped_outside_steps(signal.SIGINT, "/runs/r").args[0]
    assert message.endswith("rmsprop-train resume=/runs/r starts it again")


def test_a_stop_without_a_last_checkpoint_callback_says_a_resume_starts_it_again(tmp_path):
    result, run_dir, summary = stopped(tmp_path, "train_batch_end:TERM", "~callbacks.last_checkpoint")
    assert result.returncode == 143 and summary["status"] == "interrupted"
    line = error_line(result, run_dir, kept=False)
    assert "no checkpoint saved (no last_checkpoint callback); no last.ckpt to go on from" in line
    assert "and saving a checkpoint" not in result.stderr
