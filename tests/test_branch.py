"""A new run from a checkpoint (``ckpt_path=``) trains with its own optimizer settings, and records them."""

from __future__ import annotations

import functools
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from omegaconf import open_dict

from rmsprop_lightning import FeedForward, RegressionDataModule, RegressionModule
from rmsprop_lightning.app.jobs import run_job
from rmsprop_lightning.callbacks import CheckpointBranch
from rmsprop_lightning.logging.events import read_scalars
from rmsprop_lightning.summary import read_summary
from tests.conftest import QUICK, ROOT, run_train, train_in_process

STEPS = ("trainer.max_steps=40", "trainer.log_every_n_steps=5")


def job(compose_cfg, folder: Path, *overrides: str) -> dict:
    """Runs one job in ``folder``; returns its summary."""
    cfg = compose_cfg(*QUICK, "~callbacks.optimizer_state_monitor", *overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(folder)
    run_job(cfg)
    return read_summary(folder)


def last_state(folder: Path) -> dict:
    return torch.load(folder / "checkpoints" / "last.ckpt", weights_only=True)["optimizer_states"][0]


@pytest.fixture
def parent(compose_cfg, tmp_path) -> Path:
    """A 30-step run of the centered variant at lr 0.01."""
    folder = tmp_path / "parent"
    job(compose_cfg, folder, "optimizer=rmsprop_centered")
    return folder / "checkpoints" / "last.ckpt"


@pytest.mark.filterwarnings("error:The dirpath has changed")
def test_a_branch_trains_and_records_the_new_learning_rate(compose_cfg, parent, tmp_path):
    slow = job(compose_cfg, tmp_path / "slow", f"ckpt_path={parent}", "optimizer.lr=0.001", *STEPS)
    same = job(compose_cfg, tmp_path / "same", f"ckpt_path={parent}", "optimizer.lr=0.01", *STEPS)
    lrs = read_scalars(tmp_path / "slow" / "tensorboard")["lr-RMSprop/decay"]
    branch_lrs = [value for step, value in lrs if step >= 30]
    assert branch_lrs and all(value == pytest.approx(0.001) for value in branch_lrs)
    groups = last_state(tmp_path / "slow")["param_groups"]
    assert [group["lr"] for group in groups] == [0.001, 0.001]
    assert [group["centered"] for group in groups] == [False, False]
    assert slow["optimizer"]["lr"] == groups[0]["lr"] and slow["optimizer"]["centered"] is False
    assert slow["steps"] == same["steps"] == 40 and slow["start_step"] == 30
    losses = [read_scalars(tmp_path / name / "tensorboard")["train/loss"] for name in ("slow", "same")]
    assert [step for step, _ in losses[0]] == list(range(30, 40))
    assert losses[0] != losses[1]
    assert all("grad_avg" not in state for state in last_state(tmp_path / "slow")["state"].values())


@pytest.mark.filterwarnings("error:The dirpath has changed")
@pytest.mark.parametrize("restore", ["full", "weights"])
def test_train_false_tests_the_checkpoint_given(compose_cfg, tmp_path, restore):
    trained = job(compose_cfg, tmp_path / "trained")
    (best,) = (tmp_path / "trained" / "checkpoints").glob("best-*.ckpt")
    options = (f"ckpt_path={best}", "train=false", f"ckpt_restore={restore}")
    tested = job(compose_cfg, tmp_path / "tested", *options)
    assert tested["final"]["test/loss"] == trained["final"]["test/loss"]


@pytest.mark.parametrize("restore", ["full", "weights"])
def test_train_false_on_other_data_warns_as_a_branch_does(compose_cfg, tmp_path, restore):
    job(compose_cfg, tmp_path / "trained")
    (best,) = (tmp_path / "trained" / "checkpoints").glob("best-*.ckpt")
    options = (f"ckpt_path={best}", "train=false", f"ckpt_restore={restore}", "data.split_seed=7")
    with pytest.warns(UserWarning, match="this data set is not the one its model was trained on"):
        job(compose_cfg, tmp_path / "other", *options)


def test_switching_to_centered_momentum_creates_the_states_it_needs(compose_cfg, tmp_path):
    job(compose_cfg, tmp_path / "plain", "optimizer=rmsprop")
    parent = tmp_path / "plain" / "checkpoints" / "last.ckpt"
    job(
        compose_cfg, tmp_path / "branch", f"ckpt_path={parent}", "optimizer=rmsprop_centered_momentum", *STEPS
    )
    state = last_state(tmp_path / "branch")
    assert state["param_groups"][0]["centered"] and state["param_groups"][0]["momentum"] == 0.9
    assert all({"grad_avg", "momentum_buffer", "square_avg"} <= set(s) for s in state["state"].values())


def test_weights_only_branch_starts_at_step_zero_with_a_fresh_optimizer(compose_cfg, parent, tmp_path):
    summary = job(compose_cfg, tmp_path / "weights", f"ckpt_path={parent}", "ckpt_restore=weights")
    assert summary["status"] == "completed" and summary["steps"] == 30
    losses = read_scalars(tmp_path / "weights" / "tensorboard")["train/loss"]
    assert losses[0][0] == 0
    job(compose_cfg, tmp_path / "fresh")
    first = read_scalars(tmp_path / "fresh" / "tensorboard")["train/loss"][0]
    assert losses[0][1] < first[1], "the branch starts from the parent's trained weights"


SCHEDULE = ("scheduler=cosine", "scheduler.interval=step", "scheduler.scheduler.T_max=40")


@pytest.mark.parametrize("parent_schedule", [SCHEDULE, ("scheduler=none",), ("scheduler=step",)])
def test_a_branch_schedule_goes_on_at_the_checkpoints_step(compose_cfg, tmp_path, parent_schedule):
    # the parent: the same cosine (stepped every step), none, or a step schedule stepped every epoch
    schedule = SCHEDULE
    job(compose_cfg, tmp_path / "whole", *schedule, *STEPS)
    job(compose_cfg, tmp_path / "first", *parent_schedule, "trainer.max_steps=20")
    parent = tmp_path / "first" / "checkpoints" / "last.ckpt"
    job(compose_cfg, tmp_path / "branch", f"ckpt_path={parent}", *schedule, *STEPS)
    whole, branch = (
        read_scalars(tmp_path / name / "tensorboard")["train/loss"] for name in ("whole", "branch")
    )
    saved = torch.load(tmp_path / "branch" / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["lr_schedulers"][0]["last_epoch"] == 40
    whole_lr = torch.load(tmp_path / "whole" / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["lr_schedulers"][0]["_last_lr"] == pytest.approx(whole_lr["lr_schedulers"][0]["_last_lr"])
    assert [g["lr"] for g in last_state(tmp_path / "branch")["param_groups"]] == pytest.approx(
        [g["lr"] for g in last_state(tmp_path / "whole")["param_groups"]]
    )
    assert [step for step, _ in branch] == list(range(20, 40)) and whole


EPOCHLY = ("scheduler=step", "scheduler.scheduler.step_size=1")  # the lr halves at each epoch's end


def test_a_branch_at_an_epochs_end_has_that_epochs_scheduler_step(compose_cfg, tmp_path):
    job(compose_cfg, tmp_path / "whole", *EPOCHLY, *STEPS)
    job(compose_cfg, tmp_path / "first", *EPOCHLY, "trainer.max_steps=26")  # two epochs of 13 batches
    parent = tmp_path / "first" / "checkpoints" / "last.ckpt"
    job(compose_cfg, tmp_path / "branch", f"ckpt_path={parent}", *EPOCHLY, *STEPS)
    whole, branch = (
        dict(read_scalars(tmp_path / name / "tensorboard")["lr-RMSprop/decay"])
        for name in ("whole", "branch")
    )
    assert branch == pytest.approx({step: lr for step, lr in whole.items() if step >= 26})


EACH_EPOCH = ("trainer.val_check_interval=1.0", "trainer.check_val_every_n_epoch=1")  # 13 batches each
# mode=max: the lr halves after a validation whose loss went down
HALVING = ("scheduler=plateau", "scheduler.scheduler.patience=0", "scheduler.scheduler.mode=max", *EACH_EPOCH)


def test_a_plateau_branch_keeps_the_reductions_made(compose_cfg, tmp_path):
    longer = ("trainer.max_steps=52", "trainer.log_every_n_steps=1")
    job(compose_cfg, tmp_path / "whole", *HALVING, *longer)
    job(compose_cfg, tmp_path / "first", *HALVING, "trainer.max_steps=40")  # halved at step 39
    parent = tmp_path / "first" / "checkpoints" / "last.ckpt"
    job(compose_cfg, tmp_path / "branch", f"ckpt_path={parent}", *HALVING, *longer)
    job(compose_cfg, tmp_path / "faster", f"ckpt_path={parent}", *HALVING, "optimizer.lr=0.02", *longer)
    whole, branch, faster = (
        dict(read_scalars(tmp_path / name / "tensorboard")["lr-RMSprop/decay"])
        for name in ("whole", "branch", "faster")
    )
    assert whole[38] == pytest.approx(0.01) and whole[40] == pytest.approx(0.005)
    assert branch == {step: lr for step, lr in whole.items() if step >= 40}
    assert faster[40] == pytest.approx(0.01)  # the new lr, halved as the parent's was
    saved = torch.load(tmp_path / "faster" / "checkpoints" / "last.ckpt", weights_only=True)
    assert [group["initial_lr"] for group in saved["optimizer_states"][0]["param_groups"]] == [0.02, 0.02]


@pytest.mark.parametrize("parent", [("scheduler=cosine",), ("scheduler=none", "optimizer.lr=0.005")])
def test_a_plateau_branch_carries_no_reductions_but_a_plateaus(compose_cfg, tmp_path, parent):
    # a cosine's decay is none, nor is the base lr an earlier plateau left in the groups of a run without one
    job(compose_cfg, tmp_path / "plateau", *HALVING, "trainer.max_steps=40")
    grandparent = tmp_path / "plateau" / "checkpoints" / "last.ckpt"
    job(compose_cfg, tmp_path / "parent", f"ckpt_path={grandparent}", *parent, "trainer.max_steps=45")
    parent_ckpt = tmp_path / "parent" / "checkpoints" / "last.ckpt"
    each = ("trainer.max_steps=46", "trainer.log_every_n_steps=1")
    job(compose_cfg, tmp_path / "branch", f"ckpt_path={parent_ckpt}", *HALVING, *each)
    lrs = dict(read_scalars(tmp_path / "branch" / "tensorboard")["lr-RMSprop/decay"])
    assert lrs[45] == pytest.approx(0.01)  # the configured lr, which its own plateau then reduces


def test_a_plateau_branch_from_an_older_checkpoint_says_it_starts_at_the_configured_lr(
    compose_cfg, tmp_path, caplog
):
    job(compose_cfg, tmp_path / "first", *HALVING, "trainer.max_steps=40")  # halved at step 39
    parent = tmp_path / "first" / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(parent, weights_only=True)
    for group in checkpoint["optimizer_states"][0]["param_groups"]:  # as a run before they recorded it
        del group["initial_lr"]
    torch.save(checkpoint, parent)
    each = ("trainer.max_steps=41", "trainer.log_every_n_steps=1")
    with caplog.at_level("WARNING", logger="rmsprop_lightning.callbacks.branch"):
        job(compose_cfg, tmp_path / "branch", f"ckpt_path={parent}", *HALVING, *each)
    assert "the branch starts at the configured lr" in caplog.text
    assert dict(read_scalars(tmp_path / "branch" / "tensorboard")["lr-RMSprop/decay"])[40] == pytest.approx(
        0.01
    )


def test_a_branch_refuses_a_step_frequency_it_cannot_replay(tmp_path):
    def fit(frequency: int, max_steps: int, ckpt_path: Path | None = None) -> None:
        module = RegressionModule(
            FeedForward(),
            functools.partial(torch.optim.RMSprop, lr=0.01),
            scheduler=functools.partial(torch.optim.lr_scheduler.StepLR, step_size=1),
            scheduler_interval="step",
            scheduler_frequency=frequency,
        )
        callbacks = [CheckpointBranch()] if ckpt_path else []
        trainer = pl.Trainer(
            max_steps=max_steps,
            default_root_dir=tmp_path,
            callbacks=callbacks,
            logger=False,
            enable_progress_bar=False,
        )
        trainer.fit(module, datamodule=RegressionDataModule(batch_size=32), ckpt_path=ckpt_path)

    fit(1, 5)
    parent = next((tmp_path / "checkpoints").glob("*.ckpt"))
    fit(1, 8, parent)
    with pytest.raises(MisconfigurationException, match="frequency=3: Lightning counts"):
        fit(3, 8, parent)


def test_a_plateau_branch_takes_every_new_setting_and_keeps_the_progress(compose_cfg, tmp_path):
    plateau = ("scheduler=plateau", "scheduler.scheduler.patience=0", *EACH_EPOCH)
    job(compose_cfg, tmp_path / "first", *plateau, "trainer.max_steps=30")
    parent = tmp_path / "first" / "checkpoints" / "last.ckpt"
    options = ("+scheduler.scheduler.min_lr=0.008", "scheduler.scheduler.patience=2")
    job(compose_cfg, tmp_path / "branch", f"ckpt_path={parent}", *plateau, *options, *STEPS)
    before, after = (
        torch.load(folder / "checkpoints" / "last.ckpt", weights_only=True)["lr_schedulers"][0]
        for folder in (tmp_path / "first", tmp_path / "branch")
    )
    assert after["min_lrs"] == [0.008, 0.008] and after["patience"] == 2
    assert min(after["_last_lr"]) >= 0.008 and after["best"] <= before["best"]


def test_a_branch_at_an_epochs_end_keeps_no_best_of_its_parents(compose_cfg, tmp_path):
    each_epoch = ("trainer.val_check_interval=1.0", "trainer.check_val_every_n_epoch=1")  # 13 batches each
    job(compose_cfg, tmp_path / "first", *each_epoch, "trainer.max_steps=26")
    parent = tmp_path / "first" / "checkpoints" / "last.ckpt"
    worse = "optimizer.lr=0.3"  # the branch's validations come out worse than the parent's last one
    summary = job(compose_cfg, tmp_path / "branch", f"ckpt_path={parent}", *each_epoch, worse, *STEPS)
    assert [path.name for path in (tmp_path / "branch" / "checkpoints").glob("best-*")] == [
        "best-000039.ckpt"
    ]
    assert summary["best_step"]["val/loss"] == 39


@pytest.mark.parametrize("recorded", [True, False], ids=["batches recorded", "an older checkpoint"])
def test_a_branch_that_would_end_before_its_next_validation_validates_at_its_end(
    compose_cfg, tmp_path, recorded
):
    each_epoch = ("trainer.val_check_interval=1.0", "trainer.check_val_every_n_epoch=1")  # 13 batches each
    job(compose_cfg, tmp_path / "first", *each_epoch, "trainer.max_steps=15")  # validated at 13
    parent = tmp_path / "first" / "checkpoints" / "last.ckpt"
    if not recorded:  # as a run before checkpoints recorded their batches wrote it
        checkpoint = torch.load(parent, weights_only=True)
        del checkpoint["callbacks"]["FitStats"]["batches"], checkpoint["callbacks"]["FitStats"]["start_step"]
        torch.save(checkpoint, parent)
    summary = job(
        compose_cfg, tmp_path / "branch", f"ckpt_path={parent}", *each_epoch, "trainer.max_steps=20"
    )
    assert summary["best_step"] == {"val/loss": 20, "val/rmse": 20} and summary["value"] is not None
    assert [path.name for path in (tmp_path / "branch" / "checkpoints").glob("best-*")] == [
        "best-000020.ckpt"
    ]


def test_a_resumed_branch_validates_at_its_end_as_the_branch_would_have(tmp_path):
    each_epoch = [
        "trainer.val_check_interval=1.0",
        "trainer.check_val_every_n_epoch=1",
        *QUICK[:1],
        *QUICK[-1:],
    ]
    train_in_process(tmp_path, *each_epoch, "trainer.max_steps=15", f"hydra.run.dir={tmp_path / 'parent'}")
    branch = [*each_epoch, f"ckpt_path={tmp_path / 'parent' / 'checkpoints' / 'last.ckpt'}"]
    kill = "+callbacks.self_kill._target_=tests.self_kill.SelfKill"
    environment = {"PYTHONPATH": str(ROOT), "SELF_KILL": "train_batch_start:20:TERM"}
    folder = tmp_path / "branch"
    run = [*branch, "trainer.max_steps=24", kill, f"hydra.run.dir={folder}"]
    stopped = run_train(tmp_path, *run, env=environment, check=False)
    assert stopped.returncode == 143 and read_summary(folder)["steps"] == 21  # the step under way ends
    (tmp_path / "parent" / "checkpoints" / "last.ckpt").unlink()  # the resume needs its own checkpoint only
    train_in_process(tmp_path, f"resume={folder}")  # its next validation would be at step 26
    assert read_summary(folder)["best_step"] == {"val/loss": 24, "val/rmse": 24}


def test_a_branch_with_larger_batches_serves_the_rest_of_its_parents_epoch(compose_cfg, tmp_path):
    """410 training rows: the parent's 5 batches of 32 leave 250, 4 batches of 64 (Lightning's count of
    the parent's batches against 7 per epoch ended the epoch after 2 of them)."""
    job(compose_cfg, tmp_path / "first", "trainer.max_steps=5")
    parent = tmp_path / "first" / "checkpoints" / "last.ckpt"
    job(compose_cfg, tmp_path / "branch", f"ckpt_path={parent}", "data.batch_size=64", "trainer.max_steps=10")
    saved = torch.load(tmp_path / "branch" / "checkpoints" / "last.ckpt", weights_only=True)
    (loader,) = saved["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    assert (loader["epoch"], loader["position"]) == (1, 64)  # the epoch's 4 batches, then the next's first


@pytest.mark.parametrize("checkpoint", ["last.ckpt", "best-000013.ckpt"])
def test_a_branch_from_an_epochs_end_trains_and_logs_as_the_run_it_continues(
    compose_cfg, tmp_path, checkpoint
):
    # both written in the validation at the end of the first 13-batch epoch; the branch validates at its end
    each_epoch = (
        "trainer.val_check_interval=1.0",
        "trainer.check_val_every_n_epoch=1",
        "trainer.log_every_n_steps=1",
    )
    job(compose_cfg, tmp_path / "first", *each_epoch, "trainer.max_steps=13")
    job(compose_cfg, tmp_path / "whole", *each_epoch, "trainer.max_steps=20")
    parent = tmp_path / "first" / "checkpoints" / checkpoint
    job(compose_cfg, tmp_path / "branch", f"ckpt_path={parent}", *each_epoch, "trainer.max_steps=20")
    whole, branch = (
        read_scalars(tmp_path / name / "tensorboard")["train/loss"] for name in ("whole", "branch")
    )
    assert branch == whole[13:]
