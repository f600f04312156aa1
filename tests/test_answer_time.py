"""Commands that need no training answer without importing torch or Lightning."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import TRAIN

GROUPS = ("optimizer", "scheduler", "model", "data", "logger", "callbacks", "trainer", "experiment")

COMMANDS = {
    "help": (["--help"], 0, "Configuration groups"),
    "config": (["--cfg", "job"], 0, "optimizer:"),
    "info": (["--info", "defaults"], 0, "Defaults List"),
    "multirun config": (["-m", "--cfg", "job", "seed=0,1"], 2, "--multirun and --cfg cannot be combined"),
    "unknown option": (["optimizer=rmsprp"], 2, "did you mean rmsprop?"),
    "unknown key": (["optimizer.lrr=0.1"], 2, "did you mean optimizer.lr?"),
    "out of range": (["optimizer.alpha=1.5"], 2, "optimizer.alpha must be in [0, 1)"),
    "bad type": (["trainer.max_steps=many"], 2, "trainer.max_steps='many' is invalid"),
    "missing file": (["data=csv", "data.source.path=/no/such.csv"], 2, "data.source.path=/no/such.csv"),
}


def imported_modules(stderr: str) -> set[str]:
    """The top-level modules ``python -X importtime`` reported."""
    return {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in stderr.splitlines() if "|" in line}


@pytest.mark.parametrize("name", COMMANDS)
def test_answers_without_torch_or_lightning(name, tmp_path):
    arguments, code, expected = COMMANDS[name]
    result = subprocess.run(
        [sys.executable, "-X", "importtime", str(TRAIN), *arguments],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == code, result.stdout + result.stderr[-2000:]
    assert expected in result.stdout + result.stderr
    assert not {"torch", "lightning"} & imported_modules(result.stderr)
    assert not (tmp_path / "logs").exists() or not any((tmp_path / "logs").rglob("metrics.json"))


def test_help_lists_every_config_group(tmp_path):
    result = subprocess.run(
        [sys.executable, str(TRAIN), "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    groups = result.stdout.split("== Configuration groups ==")[1].split("== Config ==")[0]
    for group in (*GROUPS, "hparams_search", "debug"):
        assert f"{group}:" in groups, result.stdout
