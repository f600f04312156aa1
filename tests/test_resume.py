"""Resume in place after SIGKILL, SIGTERM and Ctrl-C ends bit-identical to the run never stopped.

A run is killed (``tests/self_kill.py`` sends the signal from inside the process at an
exact hook and step), ``python train.py resume=<run dir>`` finishes it in its own
folder, and its final ``last.ckpt`` is compared tensor by tensor with that of the same
run done in one go: parameters, optimizer state, scheduler, random generator states,
the data loader's position and Lightning's step counters.
"""

from __future__ import annotations

import csv
import errno
import json
import os
import random
import signal
import tempfile
from functools import partial
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from rmsprop_lightning import FeedForward, RegressionDataModule, RegressionModule
from rmsprop_lightning.app import resume_records
from rmsprop_lightning.app.resume import (
    check_followers,
    check_override,
    resume_arguments,
    started_where_it_was,
)
from rmsprop_lightning.app.run_lock import folder_lock
from rmsprop_lightning.app.validation import check_same_processes
from rmsprop_lightning.callbacks import GracefulInterrupt, LastCheckpoint
from rmsprop_lightning.data import synthetic
from rmsprop_lightning.errors import InputError, InterruptedRun
from rmsprop_lightning.logging.events import read_scalars
from rmsprop_lightning.optim import RMSprop
from tests.conftest import CONF, ROOT, TRAIN, run_dirs, run_train, train_in_process

# dropout (random state), a centered momentum RMSprop (three buffers), a plateau scheduler
# fed by validation every 10 steps, a checkpoint every 5 steps, 13 batches an epoch
RUN = (
    "data.source.num_samples=512",
    "trainer.max_steps=40",
    "trainer.val_check_interval=10",
    "trainer.check_val_every_n_epoch=null",
    "callbacks.progress_bar.refresh_rate=0",
    "callbacks.last_checkpoint.every_n_train_steps=5",
    "model.dropout=0.1",
    "optimizer=rmsprop_centered_momentum",
    "optimizer.lr=0.05",
    "scheduler=plateau",
    "scheduler.scheduler.patience=0",
    "+callbacks.self_kill._target_=tests.self_kill.SelfKill",
)


def replaced(overrides: tuple[str, ...], *changes: str) -> tuple[str, ...]:
    """``overrides`` with the keys of ``changes`` dropped (``key=`` alone drops it) and ``changes`` added."""
    keys = {change.split("=")[0] for change in changes}
    kept = tuple(o for o in overrides if o.split("=")[0] not in keys)
    return kept + tuple(change for change in changes if not change.endswith("="))


# validation at each epoch end and a checkpoint at each epoch's last batch (13)
EPOCH_END_RUN = replaced(
    RUN,
    "trainer.val_check_interval=",
    "trainer.check_val_every_n_epoch=",
    "callbacks.last_checkpoint.every_n_train_steps=13",
)
# kill points of the default run and the checkpoint each resumes from: mid-epoch between
# checkpoints, right after the checkpoint of step 15, during the validation at step 20
# (whose checkpoint waits for the validation's end)
DEFAULT_KILLS = (
    ("train_batch_end:17", 15),
    pytest.param("train_batch_start:15", 15, marks=pytest.mark.slow),
    pytest.param("validation_batch_end:20", 15, marks=pytest.mark.slow),
)
HOOKS = ("train_batch_start", "before_optimizer_step", "train_batch_end")


def train(cwd: Path, *overrides: str, kill: str | None = None, check: bool = True):
    """``run_train`` with the test callback importable and, if given, ``SELF_KILL=kill``."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PYTHONPATH", str(ROOT))
        if kill is None:
            patch.delenv("SELF_KILL", raising=False)
        else:
            patch.setenv("SELF_KILL", kill)
        return run_train(cwd, *overrides, check=check)


def last_checkpoint(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)


def assert_same(a, b, path: str = "") -> None:
    """Deep equality; tensors must be bit-identical."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), path
    elif isinstance(a, dict):
        assert set(a) == set(b), path
        for key in a:
            assert_same(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), path
        for index, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{path}[{index}]")
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def assert_same_training_state(expected: dict, actual: dict) -> None:
    """What decides the rest of training is identical: weights, optimizer, schedulers, RNG, loader, steps."""
    for key in ("global_step", "epoch", "state_dict", "optimizer_states", "lr_schedulers"):
        assert_same(expected[key], actual[key], key)
    assert_same(expected["callbacks"]["RandomState"], actual["callbacks"]["RandomState"], "rng")
    assert_same(expected["callbacks"]["FitStats"], actual["callbacks"]["FitStats"], "best values")
    for key in (
        "state_dict",
        "epoch_loop.state_dict",
        "epoch_loop.batch_progress",
        "epoch_loop.scheduler_progress",
    ):
        assert_same(expected["loops"]["fit_loop"][key], actual["loops"]["fit_loop"][key], key)


class References(dict):
    """The final checkpoint of each run done in one go, trained on first use."""

    def __init__(self, factory: pytest.TempPathFactory) -> None:
        super().__init__()
        self.factory = factory

    def __missing__(self, name: str) -> dict:
        folder = self.factory.mktemp(name)
        train_in_process(folder, *{"run": RUN, "epoch_end_run": EPOCH_END_RUN}[name])
        (run_dir,) = run_dirs(folder)
        self[name] = last_checkpoint(run_dir)
        return self[name]


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    return References(tmp_path_factory)


def kill_and_resume(
    tmp_path: Path, overrides: tuple[str, ...], kill: str, resumed_step: int | None = None
) -> Path:
    """Runs until ``kill`` strikes, resumes in the same folder; returns the run folder."""
    killed = train(tmp_path, *overrides, kill=kill, check=False)
    assert killed.returncode == -9, killed.stderr[-2000:]
    (run_dir,) = run_dirs(tmp_path)
    if resumed_step is not None:
        assert last_checkpoint(run_dir)["global_step"] == resumed_step
    train_in_process(tmp_path, f"resume={run_dir}")
    assert run_dirs(tmp_path) == [run_dir]
    return run_dir


@pytest.mark.parametrize(("kill", "resumed_step"), DEFAULT_KILLS)
def test_sigkill_then_resume_is_bit_identical(kill, resumed_step, references, tmp_path):
    run_dir = kill_and_resume(tmp_path, RUN, kill, resumed_step)
    assert_same_training_state(references["run"], last_checkpoint(run_dir))
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "completed"


def random_kill_points(count: int, seed: int = 6) -> list[str]:
    """``count`` distinct hook:step kill points over the 40 steps, drawn with a fixed seed.

    Two of them fall right after a checkpoint (the start of the batch after a step that
    is a multiple of 5), the others anywhere.
    """
    generator = random.Random(seed)
    points: set[str] = set()
    while len(points) < 2:
        points.add(f"train_batch_start:{5 * generator.randrange(1, 8)}")
    while len(points) < count:
        points.add(f"{generator.choice(HOOKS)}:{generator.randrange(1, 40)}")
    return sorted(points)


@pytest.mark.slow
@pytest.mark.parametrize("kill", random_kill_points(10))
def test_sigkill_at_random_steps_then_resume_is_bit_identical(kill, references, tmp_path):
    run_dir = kill_and_resume(tmp_path, RUN, kill)
    assert_same_training_state(references["run"], last_checkpoint(run_dir))


@pytest.mark.slow
@pytest.mark.parametrize("kill", ["train_batch_start:13", "validation_batch_end:26", "train_batch_end:30"])
def test_sigkill_around_epoch_end_checkpoints_then_resume_is_bit_identical(kill, references, tmp_path):
    run_dir = kill_and_resume(tmp_path, EPOCH_END_RUN, kill)
    assert_same_training_state(references["epoch_end_run"], last_checkpoint(run_dir))


def test_sigterm_saves_stops_cleanly_and_resumes_bit_identical(references, tmp_path):
    stopped = train(tmp_path, *RUN, kill="train_batch_end:17:TERM", check=False)
    (run_dir,) = run_dirs(tmp_path)
    assert stopped.returncode == 128 + 15, stopped.stderr[-2000:]
    assert "Traceback" not in stopped.stderr
    assert f"stopped by SIGTERM after step 17; checkpoint saved to {run_dir}" in stopped.stderr
    assert f"resume with: python {TRAIN} resume={run_dir}" in stopped.stderr
    assert last_checkpoint(run_dir)["global_step"] == 17
    summary = json.loads((run_dir / "metrics.json").read_text())
    assert summary["status"] == "interrupted" and summary["steps"] == 17
    assert summary["fit_seconds"] > 0 and summary["wall_seconds"] >= summary["fit_seconds"]
    train_in_process(tmp_path, f"resume={run_dir}")
    assert_same_training_state(references["run"], last_checkpoint(run_dir))


@pytest.mark.parametrize(
    ("restore", "kill"),
    [
        ("full", "train_batch_start:25"),
        pytest.param("weights", "train_batch_start:5", marks=pytest.mark.slow),
    ],
)
def test_a_branch_resumed_before_its_first_checkpoint_starts_again_as_that_branch(restore, kill, tmp_path):
    parent, branch, uninterrupted = (tmp_path / name for name in ("parent", "branch", "uninterrupted"))
    for folder in (parent, branch, uninterrupted):
        folder.mkdir()
    train_in_process(parent, *replaced(RUN, "trainer.max_steps=20"))
    (parent_dir,) = run_dirs(parent)
    branch_run = replaced(
        RUN,
        f"ckpt_path={parent_dir / 'checkpoints' / 'last.ckpt'}",
        f"ckpt_restore={restore}",
        "optimizer.lr=0.01",
        "callbacks.last_checkpoint.every_n_train_steps=100",  # no last.ckpt before the kill
    )
    killed = train(branch, *branch_run, kill=kill, check=False)
    assert killed.returncode == -9, killed.stderr[-2000:]
    (run_dir,) = run_dirs(branch)
    train_in_process(branch, f"resume={run_dir}")
    train_in_process(uninterrupted, *branch_run)
    (expected,) = run_dirs(uninterrupted)
    assert_same_training_state(last_checkpoint(expected), last_checkpoint(run_dir))
    assert last_checkpoint(run_dir)["optimizer_states"][0]["param_groups"][0]["lr"] <= 0.01


def test_a_resume_of_a_run_still_running_elsewhere_is_one_line_and_touches_nothing(tmp_path, capfd):
    train_in_process(tmp_path, *replaced(RUN, "trainer.max_steps=10"))
    (run_dir,) = run_dirs(tmp_path)
    before = {path: path.stat().st_mtime_ns for path in run_dir.rglob("*")}
    capfd.readouterr()
    with folder_lock(run_dir, "its job"):  # as the process that runs it holds it
        code = train_in_process(tmp_path, f"resume={run_dir}", "trainer.max_steps=20", check=False)
    error = capfd.readouterr().err.strip()
    assert code == 2 and error == (
        f"error: resume={run_dir}: the run is still running in another process; allowed: once it has ended "
        "(stopped with Ctrl-C or SIGTERM, it saves its step), resume it"
    )
    assert {path: path.stat().st_mtime_ns for path in run_dir.rglob("*")} == before


def test_a_resume_of_a_folder_that_cannot_be_written_is_one_line_and_touches_nothing(
    tmp_path, capfd, monkeypatch
):
    train_in_process(tmp_path, *replaced(RUN, "trainer.max_steps=10"))
    (run_dir,) = run_dirs(tmp_path)
    before = {path: path.stat().st_mtime_ns for path in run_dir.rglob("*")}
    writable = tempfile.TemporaryFile

    def read_only(*args, dir=None, **kwargs):  # as a read-only mount, which root cannot write either
        if Path(dir) == run_dir:
            raise OSError(errno.EROFS, "Read-only file system")
        return writable(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "TemporaryFile", read_only)
    capfd.readouterr()
    code = train_in_process(tmp_path, f"resume={run_dir}", "trainer.max_steps=20", check=False)
    assert code == 2 and capfd.readouterr().err.strip() == (
        f"error: resume={run_dir} cannot be written: Read-only file system; "
        "allowed: a run folder this process can write in"
    )
    assert {path: path.stat().st_mtime_ns for path in run_dir.rglob("*")} == before


def test_a_run_diverged_before_its_first_save_starts_again_with_skip(tmp_path):
    quick = ("data.source.num_samples=512", "trainer.max_steps=20", "callbacks.progress_bar.refresh_rate=0")
    assert train_in_process(tmp_path, *quick, "optimizer.lr=1e30", check=False) == 3
    (run_dir,) = run_dirs(tmp_path)
    assert not (run_dir / "checkpoints" / "last.ckpt").exists()
    train_in_process(tmp_path, f"resume={run_dir}", "on_nonfinite=skip")
    summary = json.loads((run_dir / "metrics.json").read_text())
    assert (summary["status"], summary["steps"], summary["diverged_at_step"]) == ("completed", 20, None)


def test_a_run_started_again_keeps_only_its_own_best_checkpoint(tmp_path):
    # killed after the validations at 10 and 20 but before any last.ckpt: the resume starts again
    killed = train(
        tmp_path,
        *replaced(RUN, "callbacks.last_checkpoint.every_n_train_steps=100"),
        kill="train_batch_start:25",
        check=False,
    )
    assert killed.returncode == -9, killed.stderr[-2000:]
    (run_dir,) = run_dirs(tmp_path)
    assert list((run_dir / "checkpoints").glob("best-*.ckpt"))  # the earlier part's
    train_in_process(tmp_path, f"resume={run_dir}")
    best_step = json.loads((run_dir / "metrics.json").read_text())["best_step"]["val/loss"]
    names = sorted(path.name for path in (run_dir / "checkpoints").iterdir())
    assert names == [f"best-{best_step:06d}.ckpt", "last.ckpt"]  # no stale file, no -v1 copy


@pytest.mark.slow
def test_ctrl_c_saves_and_stops_with_the_resume_command(tmp_path):
    stopped = train(tmp_path, *RUN, kill="before_optimizer_step:8:INT", check=False)
    (run_dir,) = run_dirs(tmp_path)
    assert stopped.returncode == 128 + 2, stopped.stderr[-2000:]
    assert "Traceback" not in stopped.stderr
    assert "stopped by SIGINT after step 9" in stopped.stderr
    assert last_checkpoint(run_dir)["global_step"] == 9


@pytest.mark.slow
def test_longer_resume_continues_the_finished_run_and_keeps_its_new_length(references, tmp_path):
    train_in_process(tmp_path, *replaced(RUN, "trainer.max_steps=25"))
    (run_dir,) = run_dirs(tmp_path)
    train_in_process(tmp_path, f"resume={run_dir}", "trainer.max_steps=40")
    assert_same_training_state(references["run"], last_checkpoint(run_dir))
    assert OmegaConf.load(run_dir / ".hydra" / "config.yaml").trainer.max_steps == 40
    assert list(OmegaConf.load(run_dir / ".hydra" / "overrides.yaml"))[-1] == "trainer.max_steps=40"
    again = train(tmp_path, f"resume={run_dir}", check=False)
    assert again.returncode == 2 and "nothing left to train" in again.stderr
    assert run_dirs(tmp_path) == [run_dir]


def test_a_run_in_float64_resumes_and_tests_its_checkpoints_with_its_weights_exact(tmp_path):
    run = (*RUN, "trainer.precision=64-true")
    (tmp_path / "whole").mkdir()
    train_in_process(tmp_path / "whole", *run)
    (whole,) = run_dirs(tmp_path / "whole")
    train_in_process(tmp_path, *replaced(run, "trainer.max_steps=25"))
    (run_dir,) = run_dirs(tmp_path)
    train_in_process(tmp_path, f"resume={run_dir}", "trainer.max_steps=40")
    assert_same_training_state(last_checkpoint(whole), last_checkpoint(run_dir))
    (best,) = (whole / "checkpoints").glob("best-*.ckpt")
    (tmp_path / "tested").mkdir()
    train_in_process(tmp_path / "tested", *run, "train=false", f"ckpt_path={best}")
    (tested,) = run_dirs(tmp_path / "tested")
    record, expected = (json.loads((d / "metrics.json").read_text())["final"] for d in (tested, whole))
    assert record["test/loss"] == expected["test/loss"]


def test_a_longer_resume_is_refused_where_the_schedule_follows_the_length(tmp_path, capfd):
    train_in_process(tmp_path, "data.source.num_samples=512", "trainer.max_steps=20", "scheduler=cosine")
    (run_dir,) = run_dirs(tmp_path)
    capfd.readouterr()
    code = train_in_process(tmp_path, f"resume={run_dir}", "trainer.max_steps=40", check=False)
    out, err = capfd.readouterr()
    assert code == 2, out + err
    (line,) = (out + err).strip().splitlines()
    assert line.startswith(
        "error: resume: trainer.max_steps=40 would change scheduler.scheduler.T_max (20 → 40)"
    )
    assert OmegaConf.load(run_dir / ".hydra" / "config.yaml").trainer.max_steps == 20


def test_a_tested_run_continued_without_its_test_is_refused(tmp_path, capfd):
    # TensorBoard's HPARAMS would show the earlier part's test as the run's, which metrics.json has not
    train_in_process(tmp_path, "data.source.num_samples=512", "trainer.max_steps=20")
    (run_dir,) = run_dirs(tmp_path)
    events = sorted((run_dir / "tensorboard").glob("events.*"))
    capfd.readouterr()
    code = train_in_process(tmp_path, f"resume={run_dir}", "trainer.max_steps=40", "test=false", check=False)
    out, err = capfd.readouterr()
    assert code == 2, out + err
    (line,) = (out + err).strip().splitlines()
    assert line.startswith(
        "error: resume: test=false would leave the test/loss, test/r2, test/rmse of the run's earlier part"
    )
    assert line.endswith(f"test=false ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}")
    assert sorted((run_dir / "tensorboard").glob("events.*")) == events
    assert OmegaConf.load(run_dir / ".hydra" / "config.yaml").trainer.max_steps == 20


def test_a_quoted_run_folder_resumes_with_any_form_of_a_safe_key(tmp_path):
    # a job folder named by its overrides holds '=', ',' and brackets: quoted as Hydra's grammar quotes them
    run_dir = tmp_path / "1_logger=[tensorboard,csv]"
    train_in_process(
        tmp_path, "data.source.num_samples=512", "trainer.max_steps=10", f'hydra.run.dir="{run_dir}"'
    )
    forms = (("", "trainer.max_steps=15"), ("++", "++trainer.max_steps=20"), ("+", "+trainer.max_steps=25"))
    for plus, limit in forms:  # resume= as typed in any form; hydra.verbose, which the run's config has not
        train_in_process(tmp_path, f"{plus}resume='{run_dir}'", limit, "hydra.verbose=false")
        assert OmegaConf.load(run_dir / ".hydra" / "config.yaml").trainer.max_steps == int(limit[-2:])
    assert last_checkpoint(run_dir)["global_step"] == 25 and not (tmp_path / "logs").exists()


def test_a_resume_that_fails_to_start_leaves_the_run_as_it_was(tmp_path):
    train_in_process(tmp_path, "data.source.num_samples=512", "trainer.max_steps=10")
    (run_dir,) = run_dirs(tmp_path)
    before = {path: path.read_bytes() for path in sorted(run_dir.rglob("*")) if path.is_file()}
    # Lightning refuses its trainer: no progress bar, yet the progress-bar callback
    code = train_in_process(
        tmp_path,
        f"resume={run_dir}",
        "trainer.max_steps=15",
        "trainer.enable_progress_bar=false",
        check=False,
    )
    assert code != 0
    after = {path: path.read_bytes() for path in sorted(run_dir.rglob("*")) if path.is_file()}
    assert {path: data for path, data in after.items() if path.name != "train.log"} == {
        path: data for path, data in before.items() if path.name != "train.log"
    }


def test_a_resume_that_fails_once_it_changed_its_folder_is_recorded_as_failed(tmp_path, monkeypatch):
    train_in_process(tmp_path, "data.source.num_samples=512", "trainer.max_steps=10")
    (run_dir,) = run_dirs(tmp_path)

    def fails(*args) -> None:  # after the run's records took the new max_steps
        raise RuntimeError("purge failed")

    monkeypatch.setattr(resume_records, "continue_tensorboard", fails)
    assert train_in_process(tmp_path, f"resume={run_dir}", "trainer.max_steps=15", check=False) != 0
    summary = json.loads((run_dir / "metrics.json").read_text())
    assert summary["status"] == "failed" and summary["error"] == "RuntimeError: purge failed"
    assert OmegaConf.load(run_dir / ".hydra" / "config.yaml").trainer.max_steps == 15
    assert "trainer.max_steps=15" in summary["overrides"]  # as the config says


def test_a_safe_key_of_a_callback_the_run_has_not_is_refused():
    saved = OmegaConf.create({"callbacks": {"last_checkpoint": {"every_n_train_steps": 100}}, "trainer": {}})
    parse = OverridesParser.create().parse_overrides
    (missing,) = parse(["callbacks.progress_bar.refresh_rate=5"])  # ++ would add a callback without a class
    with pytest.raises(InputError, match=r"the run has no callbacks.progress_bar"):
        check_override(missing, saved)
    for typed in parse(["++callbacks.last_checkpoint.every_n_train_steps=5", "+trainer.max_steps=9"]):
        check_override(typed, saved)


def test_a_list_that_follows_the_length_is_named_with_its_values():
    saved = OmegaConf.create({"trainer": {"max_steps": 20}, "milestones": [5, "${trainer.max_steps}"]})
    (longer,) = OverridesParser.create().parse_overrides(["trainer.max_steps=40"])
    with pytest.raises(InputError, match=r"would change milestones \(\[5, 20\] → \[5, 40\]\)"):
        check_followers(saved, [longer], Path("run"))


# 13 batches an epoch, validated at its end: a run of 10 steps validates at its last step instead
SCHEDULED_RUN = (
    "data.source.num_samples=512",
    "callbacks.progress_bar.refresh_rate=0",
    "scheduler=step",
    "scheduler.interval=step",
    "scheduler.scheduler.step_size=1",
    "scheduler.scheduler.gamma=0.9",
    "trainer.log_every_n_steps=5",
)


def test_a_completed_run_continued_logs_at_the_steps_of_the_run_never_stopped(tmp_path):
    # the completed run's last.ckpt was written after its validation at step 10, where the longer run
    # validates no more: the resume and a new run from it log the learning rates and the test on time
    first, branch, uninterrupted = (tmp_path / name for name in ("first", "branch", "uninterrupted"))
    for folder in (first, branch, uninterrupted):
        folder.mkdir()
    train_in_process(first, *SCHEDULED_RUN, "trainer.max_steps=10")
    (run_dir,) = run_dirs(first)
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    train_in_process(branch, *SCHEDULED_RUN, f"ckpt_path={checkpoint}", "trainer.max_steps=25")
    train_in_process(first, f"resume={run_dir}", "trainer.max_steps=25")
    train_in_process(uninterrupted, *SCHEDULED_RUN, "trainer.max_steps=25")
    (branch_dir,), (expected_dir,) = run_dirs(branch), run_dirs(uninterrupted)
    expected, expected_state = read_scalars(expected_dir / "tensorboard"), last_checkpoint(expected_dir)
    lr_tags = [tag for tag in expected if tag.startswith("lr-")]
    assert lr_tags and [step for step, _ in expected[lr_tags[0]]] == [4, 9, 14, 19, 24]
    for folder, since in ((run_dir, 0), (branch_dir, 10)):  # a new run logs from its checkpoint on
        scalars = read_scalars(folder / "tensorboard")
        for tag in lr_tags:
            assert [point for point in scalars[tag] if point[0] >= since] == [
                point for point in expected[tag] if point[0] >= since
            ], tag
        assert scalars["test/loss"][-1][0] == expected["test/loss"][-1][0] == 25
        assert [step for step, _ in scalars["val/loss_best"]] == [25]  # not the completed part's too
        state = last_checkpoint(folder)
        for key in ("global_step", "state_dict", "optimizer_states", "lr_schedulers"):
            assert_same(expected_state[key], state[key], key)
        for key in ("epoch_loop.state_dict", "epoch_loop.batch_progress"):  # the loggers' step counter
            assert_same(expected_state["loops"]["fit_loop"][key], state["loops"]["fit_loop"][key], key)


def test_a_resumed_run_keeps_the_best_validation_and_the_logs_of_its_earlier_part(tmp_path, recwarn):
    # validations at steps 10 and 20, then 30 after the resume: 20 is the best (0.94, then 1.10)
    run = (
        "data.source.num_samples=512",
        "trainer.val_check_interval=10",
        "trainer.check_val_every_n_epoch=null",
    )
    run += ("callbacks.progress_bar.refresh_rate=0", "optimizer=rmsprop_momentum", "optimizer.lr=0.05")
    train_in_process(tmp_path, *run, "logger=[tensorboard,csv]", "trainer.max_steps=20")
    (run_dir,) = run_dirs(tmp_path)
    first = json.loads((run_dir / "metrics.json").read_text())
    train_in_process(tmp_path, f"resume={run_dir}", "trainer.max_steps=30")
    # the resumed part warns of nothing in its own checkpoint folder, and logs where the run did
    assert not [w for w in recwarn if "exists and is not empty" in str(w.message)]
    assert [path.name for path in run_dir.glob("*.log")] == ["train.log"]
    assert "Restored all states from the checkpoint" in (run_dir / "train.log").read_text()
    scalars = read_scalars(run_dir / "tensorboard")
    losses = dict(scalars["val/loss"])
    best_step = min(losses, key=losses.get)
    assert sorted(losses) == [10, 20, 30] and best_step < 30
    summary = json.loads((run_dir / "metrics.json").read_text())
    assert summary["best"]["val/loss"] == pytest.approx(losses[best_step])
    assert summary["best_step"]["val/loss"] == best_step
    for seconds in ("wall_seconds", "fit_seconds"):  # both parts of the run
        assert summary[seconds] > first[seconds] > 0
    assert summary["overrides"] == list(OmegaConf.load(run_dir / ".hydra" / "overrides.yaml"))
    assert "trainer.max_steps=30" in summary["overrides"] and "optimizer.lr=0.05" in summary["overrides"]
    assert scalars["val/loss_best"][-1] == (30, pytest.approx(losses[best_step]))
    assert (run_dir / "checkpoints" / f"best-{best_step:06d}.ckpt").is_file()
    tables = [list(csv.DictReader(path.open())) for path in sorted((run_dir / "csv").glob("*/metrics.csv"))]
    assert [[int(row["step"]) for row in table if row["train/loss"]] for table in tables] == [
        list(range(20)),
        list(range(20, 30)),
    ]


def write_table(path: Path, rows: int, seed: int) -> None:
    """A CSV of ``rows`` rows: three features and a target ``y``."""
    generator = random.Random(seed)
    lines = ["a,b,c,y"] + [",".join(f"{generator.gauss(0, 1):.6f}" for _ in range(4)) for _ in range(rows)]
    path.write_text("\n".join(lines) + "\n")


CSV_RUN = ("data=csv", "data.source.path=table.csv", "data.source.target=y", "trainer.max_steps=20")
CSV_RUN += ("trainer.val_check_interval=10", "trainer.check_val_every_n_epoch=null")


def test_a_resume_reads_a_relative_data_path_where_the_run_started_and_refuses_changed_data(tmp_path, capfd):
    started, elsewhere = tmp_path / "started", tmp_path / "elsewhere"
    for folder, seed in ((started, 0), (elsewhere, 1)):
        folder.mkdir()
        write_table(folder / "table.csv", rows=200, seed=seed)
    train_in_process(started, *CSV_RUN)
    (run_dir,) = run_dirs(started)
    train_in_process(elsewhere, f"resume={run_dir}", "trainer.max_steps=30")  # trains on started/table.csv
    record = (run_dir / "metrics.json").read_text()
    assert json.loads(record)["steps"] == 30
    write_table(started / "table.csv", rows=250, seed=0)  # 50 rows more: other splits
    saved = (run_dir / "checkpoints" / "last.ckpt").read_bytes()
    capfd.readouterr()
    code = train_in_process(elsewhere, f"resume={run_dir}", "trainer.max_steps=40", check=False)
    out, err = capfd.readouterr()
    assert code == 2, out + err
    (line,) = (out + err).strip().splitlines()
    assert line.startswith(
        f"error: resume: data.source.path={started / 'table.csv'} no longer holds the data"
    )
    assert (run_dir / "checkpoints" / "last.ckpt").read_bytes() == saved
    assert json.loads((run_dir / "metrics.json").read_text()) == json.loads(record)  # the record as it was


def test_a_relative_data_path_is_read_where_the_run_started_while_the_file_is_there(tmp_path):
    run_dir, started = tmp_path / "run", tmp_path / "started"
    (run_dir / ".hydra").mkdir(parents=True)
    started.mkdir()
    OmegaConf.save({"hydra": {"runtime": {"cwd": str(started)}}}, run_dir / ".hydra" / "hydra.yaml")
    relative, absolute = (OmegaConf.create({"data": {"source": {"path": p}}}) for p in ("t.csv", "/d/t.csv"))
    assert started_where_it_was(relative, run_dir) == []  # the project moved: read where the resume runs
    (started / "t.csv").write_text("a,y\n1,2\n")
    assert started_where_it_was(relative, run_dir) == [f"++data.source.path='{started / 't.csv'}'"]
    assert started_where_it_was(absolute, run_dir) == []


def test_a_data_module_warns_of_a_checkpoint_standardised_on_other_data():
    state = RegressionDataModule(partial(synthetic, num_samples=256)).state_dict()
    RegressionDataModule(partial(synthetic, num_samples=256)).load_state_dict(state)  # the same data: silent
    with pytest.warns(
        UserWarning, match=r"differ from this data set \(rows, features_mean, features_scale\)"
    ):
        RegressionDataModule(partial(synthetic, num_samples=256, seed=1)).load_state_dict(state)


class SignalAt(pl.Callback):
    """Sends this process SIGTERM at the end of one batch."""

    def __init__(self, batch: int) -> None:
        self.batch = batch

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx == self.batch:
            os.kill(os.getpid(), signal.SIGTERM)


def test_a_stop_inside_an_accumulation_waits_for_the_end_of_its_step(tmp_path):
    # batches 3, 4 and 5 make step 2: SIGTERM after batch 4 saves and stops after batch 5
    last = LastCheckpoint(tmp_path, every_n_train_steps=100)
    trainer = pl.Trainer(
        max_steps=10,
        accumulate_grad_batches=3,
        callbacks=[SignalAt(4), GracefulInterrupt(), last],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    module = RegressionModule(FeedForward(), partial(torch.optim.RMSprop, lr=0.01))
    with pytest.raises(InterruptedRun, match="after step 2"):
        trainer.fit(
            module, datamodule=RegressionDataModule(partial(synthetic, num_samples=256), batch_size=16)
        )
    saved = torch.load(last.path, weights_only=True)
    progress = saved["loops"]["fit_loop"]["epoch_loop.batch_progress"]["total"]["processed"]
    assert (saved["global_step"], progress) == (2, 6)  # no batch of step 3 begun


class StopInValidation(pl.Callback):
    """Tells the trainer to stop in the validation after one step, as early stopping does."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_validation_end(self, trainer, pl_module):
        trainer.should_stop = trainer.should_stop or trainer.global_step == self.step


def test_a_stop_told_by_a_validation_saves_that_step_and_resumes_exactly(tmp_path):
    step = 66  # between two of its checkpoints

    def fit(folder, *callbacks, ckpt_path=None):
        pl.seed_everything(0, verbose=False)
        module = RegressionModule(FeedForward(), partial(RMSprop, lr=0.01, momentum=0.9))
        trainer = pl.Trainer(
            max_steps=90,
            callbacks=[LastCheckpoint(tmp_path / folder, every_n_train_steps=50), *callbacks],
            val_check_interval=3,
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        data = RegressionDataModule(partial(synthetic, num_samples=400))  # 10 batches an epoch
        trainer.fit(module, datamodule=data, ckpt_path=ckpt_path, weights_only=False)
        return trainer.global_step, list(module.parameters())

    assert fit("stopped", StopInValidation(step))[0] == step
    assert torch.load(tmp_path / "stopped" / "last.ckpt", weights_only=False)["global_step"] == step
    resumed = fit("stopped", ckpt_path=tmp_path / "stopped" / "last.ckpt")
    whole = fit("whole")
    assert resumed[0] == whole[0] == 90
    assert all(torch.equal(a, b) for a, b in zip(resumed[1], whole[1], strict=True))


def test_a_stop_told_by_a_validation_inside_an_accumulation_saves_nothing_of_it(tmp_path):
    # a step of 4 batches, validated after batch 6: the gradients of batches 5 and 6 are in no state to save
    last = LastCheckpoint(tmp_path, every_n_train_steps=50)
    trainer = pl.Trainer(
        max_steps=20,
        accumulate_grad_batches=4,
        val_check_interval=6,
        check_val_every_n_epoch=None,
        callbacks=[last, StopInValidation(1)],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    module = RegressionModule(FeedForward(), partial(RMSprop, lr=0.01))
    trainer.fit(module, datamodule=RegressionDataModule(partial(synthetic, num_samples=400)))
    assert trainer.global_step == 1 and not last.path.exists()


def test_a_resume_with_another_number_of_processes_is_refused(tmp_path):
    # devices=-1 or auto resume on a machine with other devices: each process's data position would not hold
    checkpoint = tmp_path / "last.ckpt"
    torch.save(
        {"state_dict": {}, "loops": {"fit_loop": {"state_dict": {"combined_loader": [{"world_size": 2}]}}}},
        checkpoint,
    )
    cfg = OmegaConf.create({"ckpt_path": str(checkpoint), "trainer": {"accelerator": "cpu", "devices": 1}})
    with pytest.raises(
        InputError,
        match=r"resume: the run trained with 2 process\(es\), and its trainer's devices and num_nodes give 1",
    ):
        check_same_processes(cfg)
    cfg.trainer.devices = 2
    check_same_processes(cfg)


def test_resume_null_is_the_default_no_resume():
    assert resume_arguments(["resume=null", "seed=1"], CONF) == ["resume=null", "seed=1"]


def test_a_run_with_a_key_of_its_own_resumes(tmp_path):
    """A key the first command line added (``+note=``), its value an interpolation, is in the saved config
    the resume reads, not in its command line: the run goes on, and its record keeps the override as typed."""
    first = ("data.source.num_samples=256", "trainer.max_steps=8", "+note=${seed}", "hydra.run.dir=run")
    train_in_process(tmp_path, *first)
    assert "+note=${seed}" in json.loads((tmp_path / "run" / "metrics.json").read_text())["overrides"]
    train_in_process(tmp_path, "resume=run", "trainer.max_steps=16")
    summary = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert summary["steps"] == 16
    assert "+note=${seed}" in summary["overrides"]


def test_a_resume_ending_before_a_validation_with_its_best_checkpoint_gone_is_refused(tmp_path, capfd):
    # last.ckpt at step 20 names best-000020.ckpt, which the better best-000030.ckpt replaced before the kill
    quick = (*RUN[:5], "trainer.max_steps=40", "callbacks.last_checkpoint.every_n_train_steps=20", RUN[-1])
    quick = (*quick, "optimizer.lr=0.001")  # each validation better than the one before
    killed = train(tmp_path, *quick, kill="train_batch_start:35", check=False)
    assert killed.returncode == -9, killed.stderr[-2000:]
    (run_dir,) = run_dirs(tmp_path)
    assert sorted(path.name for path in (run_dir / "checkpoints").iterdir()) == [
        "best-000030.ckpt",
        "last.ckpt",
    ]
    capfd.readouterr()
    code = train_in_process(tmp_path, f"resume={run_dir}", "trainer.max_steps=25", check=False)
    out, err = capfd.readouterr()
    assert code == 2, out + err
    (line,) = (out + err).strip().splitlines()
    assert line == (
        "error: resume: trainer.max_steps=25 ends before its next validation, which step 30 reaches, and "
        "would test on best-000020.ckpt, the best checkpoint last.ckpt names, which is gone; allowed: "
        "trainer.max_steps >= 30, or test=false"
    )
    train_in_process(tmp_path, f"resume={run_dir}", "trainer.max_steps=30")
    assert json.loads((run_dir / "metrics.json").read_text())["best_step"]["val/loss"] == 30
