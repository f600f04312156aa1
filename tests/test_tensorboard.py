"""TensorBoard output: one event file per run, HPARAMS with real metrics, what a real server serves."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from tensorboard.backend.event_processing import plugin_event_accumulator
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import metadata, plugin_data_pb2

from rmsprop_lightning import FeedForward, OptimizerStateMonitor, RegressionDataModule, RegressionModule
from rmsprop_lightning.app.resume import SAFE_KEYS
from rmsprop_lightning.data import synthetic
from rmsprop_lightning.logging.events import read_scalars
from rmsprop_lightning.logging.tensorboard import (
    TensorBoardRunLogger,
    continue_tensorboard,
    finish_tensorboard,
    flatten_hparams,
    run_hparams,
)
from tests.conftest import QUICK, ROOT, read_hparams, run_dirs, run_train, train_in_process

HPARAMS_COLUMNS = ["val/loss_best", "test/loss", "test/rmse"]
EVERY_STEP = ("callbacks.optimizer_state_monitor.every_n_steps=1",)


def event_files(folder: Path) -> list[Path]:
    return sorted(folder.rglob("events.out.tfevents.*"))


def test_fit_test_and_hparams_share_one_event_file(tmp_path):
    pl.seed_everything(0, verbose=False)
    module = RegressionModule(
        FeedForward(), partial(torch.optim.RMSprop, lr=0.01), no_weight_decay_on_bias=True
    )
    data = RegressionDataModule(partial(synthetic, num_samples=512), batch_size=32)
    logger = TensorBoardRunLogger(tmp_path, name="", version="")  # HPARAMS: ours alone, by default
    trainer = pl.Trainer(
        max_steps=24,
        val_check_interval=8,
        check_val_every_n_epoch=None,
        logger=logger,
        callbacks=[OptimizerStateMonitor(every_n_steps=1, flush_every=5)],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, datamodule=data)
    trainer.test(module, datamodule=data, verbose=False)
    finish_tensorboard(trainer.loggers, {"optimizer/lr": 0.01, "optimizer/centered": False, "seed": 0})
    (event_file,) = event_files(tmp_path)
    scalars = read_scalars(tmp_path)
    assert [step for step, _ in scalars["train/loss"]] == list(range(24))
    assert [step for step, _ in scalars["optim/square_avg_norm"]] == list(range(24))
    assert [step for step, _ in scalars["val/loss"]] == [8, 16, 24]  # the optimizer steps done
    assert scalars["val/loss_best"] == [(24, pytest.approx(min(v for _, v in scalars["val/loss"])))]
    assert len(scalars["test/loss"]) == 1
    accumulator = EventAccumulator(str(event_file.parent))
    accumulator.Reload()
    content = accumulator.PluginTagToContent(metadata.PLUGIN_NAME)
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content[metadata.EXPERIMENT_TAG]).experiment
    assert [info.name.tag for info in experiment.metric_infos] == HPARAMS_COLUMNS
    types = {info.name: info.type for info in experiment.hparam_infos}
    assert types == {"optimizer/lr": 3, "optimizer/centered": 2, "seed": 3}  # FLOAT64, BOOL, FLOAT64
    start = plugin_data_pb2.HParamsPluginData.FromString(content[metadata.SESSION_START_INFO_TAG])
    assert start.session_start_info.hparams["optimizer/centered"].bool_value is False
    assert start.session_start_info.hparams["optimizer/lr"].number_value == 0.01


def test_best_follows_the_mode_and_bad_modes_are_refused(tmp_path):
    logger = TensorBoardRunLogger(
        tmp_path, name="", version="", hparams_metrics={"a": "min", "b": "max", "c": "last"}
    )
    for step, (a, b) in enumerate([(3.0, 1.0), (1.0, 5.0), (float("nan"), 2.0), (2.0, 4.0)]):
        logger.log_metrics({"a": a, "b": torch.tensor(b)}, step=step)
    logger.log_metrics({"c": 7.0, "a": 0.5}, step=4)
    logger.log_metrics({"c": 8.0, "a": 9.0}, step=5)
    assert logger.best == {"a": 0.5, "b": 5.0}
    assert logger.metric_tags == ["a_best", "b_best", "c"]
    logger.write_hparams({"lr": 0.1})
    assert read_scalars(tmp_path)["a_best"] == [(5, 0.5)]
    assert len(event_files(tmp_path)) == 1
    prefixed = TensorBoardRunLogger(tmp_path / "p", hparams_metrics={"a": "min", "c": "last"}, prefix="exp")
    assert prefixed.metric_tags == ["exp-a_best", "exp-c"]  # the tags it writes
    with pytest.raises(
        ValueError, match=r"hparams_metrics\['a'\]='best' is unknown; allowed: last, min, max"
    ):
        TensorBoardRunLogger(tmp_path, hparams_metrics={"a": "best"})


def test_closing_summaries_are_the_prefixed_best_values_then_the_hparams(tmp_path):
    logger = TensorBoardRunLogger(tmp_path, name="", version="", prefix="fold1")
    for metrics in ({"val/loss": 2.0, "test/loss": 5.0}, {"val/loss": 1.0}, {"val/loss": 3.0}):
        logger.keep_best(metrics)
    best, *hparams = logger.closing_summaries({"lr": 0.1})
    assert [(value.tag, value.simple_value) for value in best.value] == [("fold1-val/loss_best", 1.0)]
    tags = [metadata.EXPERIMENT_TAG, metadata.SESSION_START_INFO_TAG, metadata.SESSION_END_INFO_TAG]
    assert [summary.value[0].tag for summary in hparams] == tags
    assert TensorBoardRunLogger(tmp_path / "other").closing_summaries({})[0].value[0].tag == tags[0]


def write_earlier_part(folder: Path) -> None:
    """Steps 0..39 of a run killed at step 40: train/loss = step, val/loss 3, 2, 1 at steps 10, 20, 30;
    its event file dated a second back, as an earlier process's is."""
    logger = TensorBoardRunLogger(folder, name="", version="")
    for step in range(40):
        logger.log_metrics({"train/loss": float(step)}, step)
        if step in (10, 20, 30):
            logger.log_metrics({"val/loss": 4.0 - step / 10}, step)
    logger.close()
    (path,) = event_files(folder)
    path.rename(path.with_name(re.sub(r"tfevents\.(\d+)", lambda m: f"tfevents.{int(m[1]) - 1}", path.name)))


def test_a_resumed_logger_purges_the_steps_after_the_checkpoint_and_keeps_the_best_before(tmp_path):
    write_earlier_part(tmp_path)
    logger = TensorBoardRunLogger(tmp_path, name="", version="")
    logger.continue_run(20)  # from the checkpoint of step 20, saved after the validation at 20
    assert logger.best == {"val/loss": 2.0}  # not the 1.0 of step 30, which is purged
    for step in range(20, 40):  # the resumed part logs the batch of step 20 again
        logger.log_metrics({"train/loss": step + 0.5}, step)
    logger.log_metrics({"val/loss": 1.5}, 30)
    logger.close()
    scalars = read_scalars(tmp_path)
    assert scalars["train/loss"] == [(step, step + 0.5 * (step >= 20)) for step in range(40)]
    assert scalars["val/loss"] == [(10, 3.0), (20, 2.0), (30, 1.5)]
    # what TensorBoard's server loads without RustBoard (load_fast=false): the earlier part before step 20 and
    # its validation at step 20, then the resumed part: one point a step
    accumulator = plugin_event_accumulator.EventAccumulator(str(tmp_path))
    accumulator.Reload()
    assert [event.step for event in accumulator.Tensors("train/loss")] == [*range(20), *range(20, 40)]
    assert [event.step for event in accumulator.Tensors("val/loss")] == [10, 20, 30]


def test_a_run_resumed_without_a_checkpoint_purges_its_whole_earlier_part(tmp_path):
    write_earlier_part(tmp_path)
    logger = TensorBoardRunLogger(tmp_path, name="", version="")
    continue_tensorboard([logger], None)  # no last.ckpt yet: the run starts again from step 0
    assert logger.best == {}
    logger.log_metrics({"train/loss": 7.0}, 0)
    logger.close()
    assert read_scalars(tmp_path) == {"train/loss": [(0, 7.0)]}


@pytest.mark.slow
def test_a_run_killed_after_a_validation_and_resumed_logs_each_point_once(tmp_path):
    # a checkpoint at step 20 (after its validation); killed at 35, after the validation at 30 wrote
    # the buffered train/loss of steps 20..29
    run = [override for override in QUICK if not override.startswith("trainer.max_steps=")]
    run += ["trainer.max_steps=40", "callbacks.last_checkpoint.every_n_train_steps=20"]
    run += ["+callbacks.self_kill._target_=tests.self_kill.SelfKill"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PYTHONPATH", str(ROOT))
        patch.setenv("SELF_KILL", "train_batch_start:35")
        killed = run_train(tmp_path, *run, check=False)
    assert killed.returncode == -9, killed.stderr[-2000:]
    (run_dir,) = run_dirs(tmp_path)
    assert len(read_scalars(run_dir / "tensorboard")["train/loss"]) == 30
    train_in_process(tmp_path, f"resume={run_dir}")
    scalars = read_scalars(run_dir / "tensorboard")
    assert [step for step, _ in scalars["train/loss"]] == list(range(40))
    assert [step for step, _ in scalars["val/loss"]] == [10, 20, 30, 40]
    summary = json.loads((run_dir / "metrics.json").read_text())
    assert summary["best"]["val/loss"] == pytest.approx(min(value for _, value in scalars["val/loss"]))


def test_hparams_hold_no_setting_a_resume_may_change(compose_cfg):
    # TensorBoard shows a run's first HPARAMS record: one that a longer resume changed would stay stale
    keys = set(run_hparams(compose_cfg()))
    assert {"seed", "data/batch_size", "optimizer/lr", "module/loss"} <= keys
    assert not keys & {key.replace(".", "/") for key in SAFE_KEYS}


def test_hparams_hold_what_changes_the_run_beyond_the_optimizer(compose_cfg):
    cfg = compose_cfg("scheduler=step", "scheduler.interval=step", "+module.lr_multipliers={bias$: 0.1}")
    params = run_hparams(cfg)
    assert params["scheduler/interval"] == "step" and params["scheduler/frequency"] == 1
    assert params["module/lr_multipliers/bias$"] == 0.1 and params["module/loss"] == "mse"


def test_hparams_name_the_presets_and_each_key_the_command_line_set_also_after_a_resume(tmp_path):
    # a sweep of any of them compares its runs on the HPARAMS tab; a resume's own command line changes none
    parent_root = tmp_path / "parent"
    parent_root.mkdir()
    train_in_process(parent_root, "data.source.noise_std=0.3", *QUICK)
    (parent,) = run_dirs(parent_root)
    branch = f"ckpt_path={parent}/checkpoints/last.ckpt"  # a resume points ckpt_path at its own checkpoint
    typed = ["optimizer=rmsprop_centered", "data.source.noise_std=0.3", "trainer.precision=bf16-mixed"]
    train_in_process(
        tmp_path, *typed, "+trainer.gradient_clip_val=0.5", branch, *QUICK, "trainer.max_steps=40"
    )
    (run_dir,) = run_dirs(tmp_path)
    train_in_process(tmp_path, f"resume={run_dir}", "trainer.max_steps=50")
    first, resumed = (read_hparams(path) for path in event_files(run_dir / "tensorboard"))
    assert first == resumed and first["ckpt_path"] == f"{parent}/checkpoints/last.ckpt"
    assert first["optimizer"] == "rmsprop_centered" and first["data"] == "synthetic"
    assert first["trainer"] == "default"  # a sweep of trainer=cpu,ddp_cpu compares processes
    assert (
        first["optimizer/centered"] is True and first["optimizer/lr"] == 0.01 and first["model/hidden"] == "5"
    )
    # as text: in another run the same key may be null or a list, and TensorBoard sorts no mixed column
    assert first["data/source/noise_std"] == "0.3" and first["trainer/gradient_clip_val"] == "0.5"
    assert first["data/source/num_samples"] == "512" and first["trainer/val_check_interval"] == "10"
    assert first["trainer/precision"] == "bf16-mixed"
    assert not [name for name in first if name.startswith(("callbacks", "trainer/max_steps", "resume"))]


def test_flattened_hparams_name_the_class_and_keep_types():
    config = {
        "_target_": "torch.optim.RMSprop",
        "_partial_": True,
        "lr": 0.01,
        "centered": True,
        "foreach": None,
    }
    assert flatten_hparams(config, "optimizer") == {
        "optimizer/class": "torch.optim.RMSprop",
        "optimizer/lr": 0.01,
        "optimizer/centered": True,
        "optimizer/foreach": "null",
    }
    assert flatten_hparams([64, 64], "model/hidden") == {"model/hidden": "[64, 64]"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def tensorboard_server(log_dir: Path) -> Iterator[str]:
    """A real ``tensorboard`` serving ``log_dir`` on 127.0.0.1; stopped by its PID afterwards."""
    port = free_port()
    command = [sys.executable, "-m", "tensorboard.main", "--logdir", str(log_dir)]
    command += ["--host", "127.0.0.1", "--port", str(port), "--reload_interval", "1"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        os.kill(process.pid, 15)
        process.wait(timeout=30)


def get(url: str, payload: dict | None = None) -> object:
    data = json.dumps(payload).encode() if payload is not None else None
    headers = {"Content-Type": "application/json"}
    with urllib.request.urlopen(urllib.request.Request(url, data=data, headers=headers), timeout=10) as reply:
        return json.load(reply)


def poll(url: str, ready, timeout: float = 90.0, payload: dict | None = None) -> object:
    """GETs (or POSTs) ``url`` until ``ready(answer)`` holds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            answer = get(url, payload)
            if ready(answer):
                return answer
        except OSError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"TensorBoard did not serve {url} in {timeout} s")
        time.sleep(0.5)


SESSION_QUERY = {
    "experimentName": "",
    "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"],
    "colParams": [],
    "startIndex": 0,
    "sliceSize": 100,
}


@pytest.mark.slow
def test_tensorboard_serves_the_curves_and_lists_every_run_of_a_multirun(tmp_path):
    run_train(
        tmp_path, "-m", *QUICK, *EVERY_STEP, "optimizer=rmsprop_centered_momentum", "optimizer.lr=0.01,0.003"
    )
    (sweep,) = (tmp_path / "logs" / "train" / "multiruns").iterdir()
    jobs = sorted(path for path in sweep.iterdir() if path.is_dir())
    assert [len(event_files(job)) for job in jobs] == [1, 1]
    expected_runs = {f"{job.name}/tensorboard" for job in jobs}
    # runs are named by their job folder: number and swept overrides
    assert sorted(expected_runs) == ["0_optimizer.lr=0.01/tensorboard", "1_optimizer.lr=0.003/tensorboard"]
    with tensorboard_server(sweep) as server:
        tags = poll(
            f"{server}/data/plugin/scalars/tags",
            lambda answer: set(answer) == expected_runs and all("test/rmse" in t for t in answer.values()),
        )
        for run in expected_runs:
            assert {
                "train/loss",
                "optim/square_avg_norm",
                "optim/decay/momentum_buffer_norm",
                "optim/no_decay/grad_avg_norm",
                "optim/update_norm",
                "optim/update_to_param_ratio",
                "optim/effective_lr_mean",
                "optim/effective_lr_min",
                "val/loss_best",
            } <= set(tags[run])
        run = sorted(expected_runs)[0]
        query = urllib.parse.urlencode({"run": run, "tag": "optim/update_norm"})
        points = get(f"{server}/data/plugin/scalars/scalars?{query}")
        assert [step for _, step, _ in points] == list(range(30))
        layout = get(f"{server}/data/plugin/custom_scalars/layout")
        charts = {c["title"]: c["chart"] for c in layout["category"]}
        assert [chart["title"] for chart in charts["Optimizer state"]] == [
            "square_avg norm",
            "momentum_buffer norm",
            "grad_avg norm",
        ]
        (loss_chart,) = charts["Loss"]
        query = urllib.parse.urlencode({"run": run, "tag": loss_chart["multiline"]["tag"][0]})
        matched = get(f"{server}/data/plugin/custom_scalars/scalars?{query}")["tag_to_events"]
        assert {"train/loss", "val/loss", "test/loss"} <= set(matched) and "val/rmse" not in matched
        experiment = get(f"{server}/data/plugin/hparams/experiment", {"experimentName": ""})
        assert [info["name"]["tag"] for info in experiment["metricInfos"]] == HPARAMS_COLUMNS
        assert {"optimizer/lr", "optimizer/alpha", "optimizer/centered", "optimizer/momentum"} <= {
            info["name"] for info in experiment["hparamInfos"]
        }
        groups = poll(
            f"{server}/data/plugin/hparams/session_groups",
            lambda answer: answer.get("totalSize") == 2,
            payload=SESSION_QUERY,
        )["sessionGroups"]
    assert {group["name"] for group in groups} == expected_runs
    for group in groups:
        job = sweep / group["name"].split("/")[0]
        scalars = read_scalars(job / "tensorboard")
        metrics = {value["name"]["tag"]: value["value"] for value in group["metricValues"]}
        assert metrics == {
            "val/loss_best": pytest.approx(min(v for _, v in scalars["val/loss"])),
            "test/loss": pytest.approx(scalars["test/loss"][-1][1]),
            "test/rmse": pytest.approx(scalars["test/rmse"][-1][1]),
        }
        lr = float(group["name"].split("optimizer.lr=")[1].split("/")[0])
        assert group["hparams"]["optimizer/lr"] == pytest.approx(lr)
        assert group["hparams"]["optimizer/centered"] is True


@pytest.mark.slow
def test_ddp_cpu_run_with_the_monitor_writes_one_set_of_curves(tmp_path):
    run_train(tmp_path, *QUICK, *EVERY_STEP, "trainer=ddp_cpu", timeout=600)
    (run_dir,) = sorted((tmp_path / "logs" / "train" / "runs").iterdir())
    (event_file,) = event_files(run_dir)
    scalars = read_scalars(event_file.parent)
    optim = [tag for tag in scalars if tag.startswith("optim/")]
    assert "optim/no_decay/square_avg_norm" in optim and len(optim) == 20
    assert all([step for step, _ in scalars[tag]] == list(range(30)) for tag in optim)
    assert all(value == value for tag in optim for _, value in scalars[tag])  # no NaN
