"""DDP inside Hydra: one folder per job, one set of logs, no stray sweep folders."""

from __future__ import annotations

import shutil

import pytest

from rmsprop_lightning.logging.events import read_scalars
from rmsprop_lightning.summary import read_summary
from tests.conftest import CONF, run_dirs, run_train

DDP_QUICK = (
    "trainer=ddp_cpu",
    "data.source.num_samples=512",
    "trainer.max_steps=20",
    "callbacks.progress_bar.refresh_rate=0",
)


def assert_one_set_of_logs(job_dir):
    """A job folder with its checkpoint and exactly one TensorBoard run holding every step."""
    assert (job_dir / "checkpoints" / "last.ckpt").is_file()
    event_dirs = {path.parent for path in job_dir.rglob("events.out.tfevents.*")}
    assert event_dirs == {job_dir / "tensorboard"}
    assert [step for step, _ in read_scalars(job_dir / "tensorboard")["train/loss"]] == list(range(20))
    assert not list(job_dir.glob("*rank*.log"))


def test_ddp_cpu_run_writes_one_folder(tmp_path):
    run_train(tmp_path, *DDP_QUICK)
    (run_dir,) = run_dirs(tmp_path)
    assert_one_set_of_logs(run_dir)
    final = read_summary(run_dir)["final"]
    # 51 test rows, 26 and 25 per rank: the MSE loss weighs every row once, as RMSE does
    assert final["test/loss"] == pytest.approx(final["test/rmse"] ** 2, rel=1e-5)
    assert not (tmp_path / "logs" / "train" / "multiruns").exists()


@pytest.mark.slow
def test_every_rank_reads_the_config_folder_the_command_line_names(tmp_path):
    # a copy of the configs under another name: a rank reading conf/ would not find it
    shutil.copytree(CONF, tmp_path / "mine")
    (tmp_path / "mine" / "train.yaml").rename(tmp_path / "mine" / "other.yaml")
    run_train(tmp_path, f"--config-path={tmp_path / 'mine'}", "--config-name=other", *DDP_QUICK)
    (run_dir,) = run_dirs(tmp_path)
    assert_one_set_of_logs(run_dir)


@pytest.mark.slow
def test_every_rank_finds_an_option_of_the_search_path(tmp_path):
    # a trainer option of one's own: a rank without the search path would not find it
    (tmp_path / "mine" / "trainer").mkdir(parents=True)
    (tmp_path / "mine" / "trainer" / "my_ddp.yaml").write_text("defaults: [ddp_cpu]\n")
    quick = [setting for setting in DDP_QUICK if not setting.startswith("trainer=")]
    run_train(
        tmp_path, f"hydra.searchpath=[file://{tmp_path / 'mine'}]", "trainer=my_ddp", *quick, timeout=300
    )
    (run_dir,) = run_dirs(tmp_path)
    assert_one_set_of_logs(run_dir)


@pytest.mark.slow
def test_lightnings_own_ddp_in_a_multirun_runs_the_job_in_every_rank(tmp_path):
    # two devices and no strategy: Lightning picks its DDP, whose extra rank would start the sweep again
    devices = ("trainer.accelerator=cpu", "trainer.devices=2", *DDP_QUICK[1:])
    result = run_train(tmp_path, "-m", *devices, "seed=3", timeout=600)
    assert result.stdout.count("Launching 1 jobs") + result.stderr.count("Launching 1 jobs") == 1
    (sweep_dir,) = (tmp_path / "logs" / "train" / "multiruns").iterdir()
    (job,) = (path for path in sweep_dir.iterdir() if path.is_dir())
    assert_one_set_of_logs(job)
    assert read_summary(job)["status"] == "completed"


@pytest.mark.slow
def test_ddp_cpu_multirun_writes_one_folder_per_job(tmp_path):
    run_train(tmp_path, "-m", *DDP_QUICK, "optimizer=rmsprop,rmsprop_centered", "seed=0,1", timeout=600)
    assert not (tmp_path / "logs" / "train" / "runs").exists()
    (sweep_dir,) = (tmp_path / "logs" / "train" / "multiruns").iterdir()
    jobs = sorted(path for path in sweep_dir.iterdir() if path.is_dir())
    assert [job.name.split("_", 1)[0] for job in jobs] == ["0", "1", "2", "3"]
    assert ["optimizer=rmsprop_centered" in job.name for job in jobs] == [False, False, True, True]
    for job in jobs:
        assert_one_set_of_logs(job)


@pytest.mark.slow
def test_a_diverged_ddp_job_leaves_the_rest_of_its_multirun_alone(tmp_path):
    # Lightning's watch over job 0's ranks would kill the sweep during job 1 or 2, once job 0's
    # second rank had ended with the divergence's error code
    overrides = ("-m", *DDP_QUICK, "trainer.max_steps=150", "optimizer.lr=1e9,0.01,0.02")
    run_train(tmp_path, *overrides, timeout=240)
    (sweep_dir,) = (tmp_path / "logs" / "train" / "multiruns").iterdir()
    jobs = sorted(path for path in sweep_dir.iterdir() if path.is_dir())
    assert [read_summary(job)["status"] for job in jobs] == ["diverged", "completed", "completed"]
