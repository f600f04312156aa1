"""DDP: two CPU processes train like one with the same global batch, and resume exactly after SIGKILL."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from rmsprop_lightning.summary import read_summary
from tests.conftest import ROOT, TRAIN, run_dirs, run_train
from tests.test_resume import assert_same_training_state, last_checkpoint, train

RUN = (
    "data.source.num_samples=512",
    "trainer.max_steps=30",
    "trainer.val_check_interval=10",
    "trainer.check_val_every_n_epoch=null",
    "callbacks.progress_bar.refresh_rate=0",
    "callbacks.last_checkpoint.every_n_train_steps=4",
    "+callbacks.self_kill._target_=tests.self_kill.SelfKill",
)
GLOBAL_BATCH = 32


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / a.norm())


@pytest.mark.slow
def test_ddp_matches_one_process_and_resumes_exactly_after_sigkill(tmp_path):
    single, ddp, killed = (tmp_path / name for name in ("single", "ddp", "killed"))
    for folder in (single, ddp, killed):
        folder.mkdir()
    train(single, *RUN, "trainer=cpu", f"data.batch_size={GLOBAL_BATCH}")
    ddp_run = (*RUN, "trainer=ddp_cpu", f"data.batch_size={GLOBAL_BATCH // 2}")
    train(ddp, *ddp_run)
    (one,), (two,) = run_dirs(single), run_dirs(ddp)
    one_state, two_state = last_checkpoint(one), last_checkpoint(two)
    assert one_state["global_step"] == two_state["global_step"] == 30
    for name, tensor in one_state["state_dict"].items():
        assert relative_difference(tensor, two_state["state_dict"][name]) <= 1e-6, name

    # SIGKILL to every rank at once (a lost node), then resume under DDP
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SELF_KILL": "train_batch_end:14", "SELF_KILL_GROUP": "1"}
    process = subprocess.run(
        [sys.executable, str(TRAIN), *ddp_run],
        cwd=killed,
        env=env,
        start_new_session=True,
        capture_output=True,
    )
    assert process.returncode == -9, process.stderr[-2000:]
    (run_dir,) = run_dirs(killed)
    assert last_checkpoint(run_dir)["global_step"] == 12
    run_train(killed, f"resume={run_dir}")
    assert_same_training_state(two_state, last_checkpoint(run_dir))


@contextmanager
def ddp_run_training(tmp_path: Path, *overrides: str) -> Iterator[subprocess.Popen]:
    """A ``trainer=ddp_cpu`` run of ``overrides`` in its own process group, once it has saved a ``last.ckpt``;
    killed with its ranks where the block leaves it running."""
    command = [sys.executable, str(TRAIN), "trainer=ddp_cpu", *overrides]
    process = subprocess.Popen(
        command, cwd=tmp_path, start_new_session=True, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 120
        while not list(tmp_path.glob("logs/train/runs/*/checkpoints/last.ckpt")):
            assert time.monotonic() < deadline and process.poll() is None
            time.sleep(0.1)
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)


@pytest.mark.slow
def test_sigterm_to_the_first_rank_stops_every_rank_at_the_same_step(tmp_path):
    overrides = (*RUN[:1], "trainer.max_steps=100000", "callbacks.progress_bar.refresh_rate=0")
    with ddp_run_training(tmp_path, *overrides, f"data.batch_size={GLOBAL_BATCH // 2}") as process:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    lines = [line for line in stderr.splitlines() if line.startswith("error: stopped by SIGTERM")]
    assert len(lines) == 1, stderr[-2000:]
    step = int(re.search(r"after step (\d+);", lines[0]).group(1))
    (run_dir,) = run_dirs(tmp_path)
    assert last_checkpoint(run_dir)["global_step"] == step
    deadline = time.monotonic() + 60
    with pytest.raises(ProcessLookupError):  # no rank is left running
        while time.monotonic() < deadline:
            os.killpg(process.pid, 0)
            time.sleep(0.2)


@pytest.mark.slow
def test_a_second_ctrl_c_ends_a_ddp_run_within_seconds(tmp_path):
    # the other rank may be blocked in a collective its peer left: it was waited for a minute
    overrides = (*RUN[:1], "trainer.max_steps=100000", "model.hidden=[512,512]", *RUN[4:6])
    with ddp_run_training(tmp_path, *overrides) as process:
        os.killpg(process.pid, signal.SIGINT)
        time.sleep(0.01)
        os.killpg(process.pid, signal.SIGINT)
        stopped = time.monotonic()
        _, stderr = process.communicate(timeout=120)
        took = time.monotonic() - stopped
    assert process.returncode == 130 and took < 30, (took, stderr[-2000:])
    (run_dir,) = run_dirs(tmp_path)
    assert read_summary(run_dir)["status"] == "interrupted"


def ranks_started(group: int) -> list[str]:
    """The command lines of the processes in the process group ``group``."""
    commands = []
    for stat in os.listdir("/proc"):
        try:
            fields = Path(f"/proc/{stat}/stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == group:
                commands.append(Path(f"/proc/{stat}/cmdline").read_text().replace("\0", " "))
        except (OSError, ValueError, IndexError):
            continue
    return commands


@pytest.mark.slow
@pytest.mark.parametrize("wait", [0.2, 1.0])
def test_a_ctrl_c_while_the_ranks_start_stops_every_rank_after_the_first_step(tmp_path, wait):
    # a rank that stopped before joining left the first one waiting in torch's store for 30 minutes; a
    # signal none acted on was lost (a preempted job ran on until killed)
    command = [sys.executable, str(TRAIN), "trainer=ddp_cpu", *RUN[:2], *RUN[4:5]]
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT, "text": True}
    process = subprocess.Popen(command, cwd=tmp_path, start_new_session=True, **pipes)
    try:
        deadline = time.monotonic() + 120
        while not any("train_rank1" in line for line in ranks_started(process.pid)):
            assert time.monotonic() < deadline and process.poll() is None
            time.sleep(0.05)
        time.sleep(wait)  # the second rank starting Python, or importing torch
        os.killpg(process.pid, signal.SIGINT)
        output, _ = process.communicate(timeout=180)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 130, output[-2000:]
    assert output.count("every rank stops after its first training step") == 1, output[-2000:]
    (run_dir,) = run_dirs(tmp_path)
    assert read_summary(run_dir)["status"] == "interrupted" and read_summary(run_dir)["steps"] == 1


@pytest.mark.slow
def test_a_ddp_run_continued_from_its_validations_checkpoint_writes_that_validation_back_once(tmp_path):
    # the checkpoint of step 20 follows the validation at step 20, which the resumed run's first rank writes
    # back into the event file (the other rank has none to write to)
    run_dir = tmp_path / "run"
    first = ("trainer=ddp_cpu", RUN[0], *RUN[2:5], "trainer.max_steps=20", "test=false")
    run_train(tmp_path, *first, f"hydra.run.dir={run_dir}")
    run_train(tmp_path, f"resume={run_dir}", "trainer.max_steps=30")
    assert read_summary(run_dir)["status"] == "completed" and read_summary(run_dir)["steps"] == 30
