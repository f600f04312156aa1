"""Checkpoint files: atomic writes under SIGKILL, random states that load weights-only."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from rmsprop_lightning.app.checkpoint_io import AtomicCheckpointIO
from rmsprop_lightning.atomic import remove_stale_temporaries, replace_atomically
from rmsprop_lightning.callbacks.last_checkpoint import LastCheckpoint
from rmsprop_lightning.callbacks.random_state import RandomState
from rmsprop_lightning.errors import InterruptedRun

# rewrites a ~32 MB checkpoint through AtomicCheckpointIO until killed, counting versions
WRITER = """
import sys, torch
from rmsprop_lightning.app.checkpoint_io import AtomicCheckpointIO
io, version = AtomicCheckpointIO(), 0
while True:
    version += 1
    io.save_checkpoint({"version": version, "weights": torch.full((8_000_000,), float(version))}, sys.argv[1])
    print(version, flush=True)
"""


def test_a_kill_during_a_write_leaves_the_previous_complete_checkpoint(tmp_path):
    path = tmp_path / "last.ckpt"
    for _ in range(2):
        writer = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True
        )
        assert writer.stdout is not None
        writer.stdout.readline()  # one complete version exists; kill while the next one is half written
        while not any(p.stat().st_size > 0 for p in tmp_path.glob(".last.ckpt.*.tmp")):
            time.sleep(0.001)
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        checkpoint = torch.load(path, weights_only=True)
        assert torch.equal(checkpoint["weights"], torch.full((8_000_000,), float(checkpoint["version"])))
        assert remove_stale_temporaries(path), "the kill did not land during a write"
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_a_fit_removes_what_killed_writes_of_its_folders_checkpoints_left(tmp_path):
    kept = ["best-000030.ckpt", "last.ckpt", ".notes.tmp"]
    stale = [".last.ckpt.0a1b2c3d.tmp", ".best-000039.ckpt.5c28c305.tmp"]
    for name in kept + stale:
        (tmp_path / name).write_bytes(b"x")
    LastCheckpoint(dirpath=tmp_path).setup(SimpleNamespace(is_global_zero=True), None, "fit")
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(kept)


def test_replace_atomically_keeps_the_old_file_when_the_write_fails(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text("old")

    def failing(file) -> None:
        file.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        replace_atomically(path, failing)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_a_stop_raised_while_torch_writes_a_checkpoint_is_the_stop(tmp_path):
    # a second Ctrl-C raises from its handler while torch's zip writer is at work, which then fails itself
    def stop(signum, frame):
        raise InterruptedRun("stopped by SIGINT again", signal.SIGINT)

    checkpoint = {"weights": torch.ones(2**25)}  # 128 MiB: written in far more than 10 ms
    previous = signal.signal(signal.SIGALRM, stop)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.01)
        with pytest.raises(InterruptedRun, match="again"):
            AtomicCheckpointIO().save_checkpoint(checkpoint, tmp_path / "x.ckpt")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert list(tmp_path.iterdir()) == []  # nor a temporary file


def test_checkpoint_files_get_the_permissions_of_a_plain_open(tmp_path):
    umask = os.umask(0o022)
    os.umask(umask)
    AtomicCheckpointIO().save_checkpoint({"a": torch.zeros(1)}, tmp_path / "x.ckpt")
    (tmp_path / "plain").write_bytes(b"")
    assert (tmp_path / "x.ckpt").stat().st_mode & 0o777 == 0o666 & ~umask
    assert (tmp_path / "x.ckpt").stat().st_mode == (tmp_path / "plain").stat().st_mode


def test_random_states_round_trip_through_a_weights_only_checkpoint(tmp_path):
    callback = RandomState()
    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    torch.save({"rng": callback.state_dict()}, tmp_path / "rng.ckpt")
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(2), np.random.seed(2), random.seed(2)
    callback.load_state_dict(torch.load(tmp_path / "rng.ckpt", weights_only=True)["rng"])
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1])
    assert random.random() == expected[2]
