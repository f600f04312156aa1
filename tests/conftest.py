"""Shared fixtures: composing the template's configs and running ``train.py`` as a user would."""

from __future__ import annotations

import gc
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, open_dict
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import metadata, plugin_data_pb2

from rmsprop_lightning.app import cli
from rmsprop_lightning.app.jobs import available_cores
from rmsprop_lightning.app.resolvers import register_resolvers
from rmsprop_lightning.errors import PROGRAM_ENV

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "conf"
TRAIN = ROOT / "train.py"
register_resolvers()

# a few dozen steps on a small data set: seconds per run
QUICK = (
    "data.source.num_samples=512",
    "trainer.max_steps=30",
    "trainer.val_check_interval=10",
    "trainer.check_val_every_n_epoch=null",
    "callbacks.progress_bar.refresh_rate=0",
)


@pytest.fixture
def compose_cfg(tmp_path: Path) -> Iterator[Callable[..., DictConfig]]:
    """Composes ``conf/train.yaml`` with overrides, with Hydra's run-time keys filled in."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):

        def _compose(*overrides: str) -> DictConfig:
            cfg = compose("train", overrides=list(overrides), return_hydra_config=True)
            with open_dict(cfg):
                cfg.paths.output_dir = str(tmp_path / "run")
                cfg.paths.root_dir = str(tmp_path)
                del cfg["hydra"]
            return cfg

        yield _compose
    GlobalHydra.instance().clear()


def pytest_configure(config: pytest.Config) -> None:
    """Gives each pytest-xdist worker, and the processes it starts, its share of the cores, and those
    processes Ctrl-C as a terminal gives it.

    With torch's default of every core in each of several workers, small-op training slows many times over.
    A shell starts a background job (``pytest &``) with SIGINT ignored, which its processes would inherit;
    a handler of this process is not inherited.
    """
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1 and "OMP_NUM_THREADS" not in os.environ:
        threads = max(available_cores() // workers, 1)
        os.environ["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)
    import lightning.pytorch  # noqa: F401  (most tests build a Trainer)

    # the objects of the imports live to the end: the collections the tests' allocations set off skip them
    gc.collect()
    gc.freeze()


def run_train(
    cwd: Path,
    *overrides: str,
    timeout: float = 300,
    check: bool = True,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess:
    """Runs ``python train.py overrides...`` in ``cwd``, with ``env`` added to the environment; fails the test
    with its output on error."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    result = subprocess.run(
        [sys.executable, str(TRAIN), *overrides],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and result.returncode != 0:
        pytest.fail(
            f"train.py {' '.join(overrides)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
        )
    return result


def train_in_process(cwd: Path, *overrides: str, check: bool = True) -> int:
    """Runs ``train.py overrides...`` in ``cwd`` inside this process, as Hydra's basic launcher runs a
    multirun's jobs, and returns its exit code; with ``check``, fails the test unless it is 0. For runs
    whose process is not under test: it saves the start of a Python process with torch and Lightning."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(cwd)
        patch.setattr(sys, "argv", [str(TRAIN), *overrides])
        patch.setenv(PROGRAM_ENV, "")  # the entry point writes it: undone with the rest
        # a process's end, which this one does not meet after each run: a full collection of the tests' heap
        patch.setattr(cli, "leave_out_of_shutdown_collections", lambda: None)
        GlobalHydra.instance().clear()
        code = 0
        try:
            cli.train_main()
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else 1
        finally:
            GlobalHydra.instance().clear()
            for handler in root.handlers[:]:  # Hydra's job logging, into the run's folder
                if handler not in handlers:
                    root.removeHandler(handler)
                    handler.close()
            for handler in handlers:  # pytest's, which Hydra's logging set-up took off
                root.addHandler(handler)
            root.setLevel(level)
    if check and code:
        pytest.fail(f"train.py {' '.join(overrides)} exited {code}")
    return code


def run_dirs(root: Path, task: str = "train") -> list[Path]:
    """The single-run folders written below ``root``."""
    return sorted((root / "logs" / task / "runs").glob("*"))


def session_status(folder: Path) -> int:
    """The end status HPARAMS record for the run of the event files in ``folder`` (``api_pb2.STATUS_*``)."""
    accumulator = EventAccumulator(str(folder))
    accumulator.Reload()
    content = accumulator.PluginTagToContent(metadata.PLUGIN_NAME)[metadata.SESSION_END_INFO_TAG]
    return plugin_data_pb2.HParamsPluginData.FromString(content).session_end_info.status


def read_hparams(event_file: Path) -> dict[str, object]:
    """The HPARAMS an event file records for its run: name → value."""
    accumulator = EventAccumulator(str(event_file))
    accumulator.Reload()
    content = accumulator.PluginTagToContent(metadata.PLUGIN_NAME)[metadata.SESSION_START_INFO_TAG]
    hparams = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
    return {name: getattr(value, value.WhichOneof("kind")) for name, value in hparams.items()}
