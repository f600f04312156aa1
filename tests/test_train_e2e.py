"""``train.py`` run as a user would, in a temporary directory."""

from __future__ import annotations

import json
import re
from functools import partial
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from rmsprop_lightning import FeedForward, RegressionDataModule
from rmsprop_lightning.app.rules import METRICS
from rmsprop_lightning.callbacks import UpdateReport
from rmsprop_lightning.data import synthetic
from rmsprop_lightning.logging.events import read_scalars
from rmsprop_lightning.module import UNDESCRIBED, RegressionModule
from rmsprop_lightning.optim import RMSprop
from tests.conftest import CONF, QUICK, run_dirs, train_in_process


def test_default_run_writes_every_step_loss_and_checkpoints_that_reload_weights_only(tmp_path):
    train_in_process(tmp_path, *QUICK, "module.loss_flush_every=7")
    (run_dir,) = run_dirs(tmp_path)
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    scalars = read_scalars(run_dir / "tensorboard")
    assert [step for step, _ in scalars["train/loss"]] == list(range(30))
    assert all(value > 0 for _, value in scalars["train/loss"])
    assert [step for step, _ in scalars["val/loss"]] == [10, 20, 30]
    evaluated = {tag for tag in scalars if tag.split("/")[0] in ("val", "test")}
    assert evaluated == set(METRICS)  # the metrics the config check allows (the best values' among them)
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    module = RegressionModule.load_from_checkpoint(checkpoint, weights_only=True)
    saved = torch.load(checkpoint, weights_only=True)
    assert all(torch.equal(module.state_dict()[name], tensor) for name, tensor in saved["state_dict"].items())
    assert set(saved["RegressionDataModule"]) == {
        "features_mean",
        "features_scale",
        "rows_digest",
    }  # synthetic targets as drawn
    assert module.configure_optimizers().defaults["lr"] == 0.01


def test_runs_started_together_get_their_own_folders():
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        folders = [Path(compose("train", return_hydra_config=True).hydra.run.dir) for _ in range(2)]
    GlobalHydra.instance().clear()
    assert folders[0] != folders[1] and folders[0].parent == folders[1].parent
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d_[0-9a-f]{6}", folder.name) for folder in folders)


def test_seed_example_prints_the_snippets_losses(tmp_path, capfd):
    train_in_process(tmp_path, "-m", "experiment=seed_example", "seed=0,1")  # one job a seed
    output = capfd.readouterr().out
    before = re.findall(r"Loss before the update: (\d+\.\d{4})", output)
    after = re.findall(r"Loss after one update: (\d+\.\d{4})", output)
    assert len(before) == len(after) == 2 and after[0] != after[1], output
    assert before[0] == "1.8270"
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(10, 5), torch.nn.Linear(5, 1))
    optimizer = torch.optim.RMSprop(model.parameters(), lr=0.01, alpha=0.99, momentum=0.9)
    inputs, targets = torch.randn(2, 10), torch.randn(2, 1)
    torch.nn.functional.mse_loss(model(inputs), targets).backward()
    optimizer.step()
    assert after[0] == f"{torch.nn.functional.mse_loss(model(inputs), targets).item():.4f}"


def test_a_job_moved_into_its_folder_reads_input_files_from_where_the_command_ran(tmp_path):
    rows = ["a,b,y", *(f"{i},{i % 3},{i * 0.5}" for i in range(40))]
    (tmp_path / "table.csv").write_text("\n".join(rows) + "\n")
    data = ("data=csv", "data.source.path=table.csv", "data.source.target=y")
    train_in_process(tmp_path, *data, "trainer.max_steps=5", "hydra.job.chdir=true")
    (run_dir,) = run_dirs(tmp_path)
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "completed"


def test_bf16_mixed_precision_trains_on_cpu(tmp_path, capfd):
    train_in_process(tmp_path, *QUICK, "trainer.accelerator=cpu", "trainer.precision=bf16-mixed")
    assert "bfloat16 Automatic Mixed Precision" in "".join(capfd.readouterr())
    (run_dir,) = run_dirs(tmp_path)
    losses = [value for _, value in read_scalars(run_dir / "tensorboard")["train/loss"]]
    assert len(losses) == 30 and all(0 < value < 100 for value in losses)


class WideNet(FeedForward):
    """A subclass with a constructor of its own, which does not take its base's ``spec``."""

    def __init__(self, width: int = 8) -> None:
        super().__init__(in_features=10, hidden=[width], out_features=1)


class ScaledNet(FeedForward):
    """A subclass with its base's parameters and one of its own, which its base's ``spec`` leaves out."""

    def __init__(self, in_features: int = 10, hidden: int = 5, out_features: int = 1, scale: float = 1.0):
        super().__init__(in_features=in_features, hidden=hidden, out_features=out_features)
        self.scale = scale

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return super().forward(features) * self.scale


def in_a_script(*args: Any, **kwargs: Any) -> torch.optim.Optimizer:
    """An optimizer factory as a training script defines it: another process cannot import it."""
    return torch.optim.SGD(*args, **kwargs)


in_a_script.__module__ = "__main__"


def undescribed(case: str) -> Any:
    """A model, optimizer or scheduler that no data lets another process rebuild."""
    if case == "subclass":
        return WideNet(width=4)
    if case == "subclass with a parameter of its own":
        return ScaledNet(hidden=4, scale=100.0)
    if case == "script":
        return partial(in_a_script, lr=0.1)

    def local(*args: Any) -> None:  # defined in a function: not importable by its name
        return None

    return local if case == "function" else partial(local, step_size=1)


@pytest.mark.parametrize(
    ("part", "case"),
    [
        ("model", "subclass"),
        ("model", "subclass with a parameter of its own"),
        ("optimizer", "function"),
        ("optimizer", "script"),
        ("scheduler", "function"),
        ("scheduler", "local partial"),
    ],
)
def test_a_part_the_checkpoint_cannot_describe_is_asked_for_on_load(part, case):
    parts = {
        "model": FeedForward(hidden=5),
        "optimizer": partial(torch.optim.SGD, lr=0.1),
        "scheduler": partial(torch.optim.lr_scheduler.StepLR, step_size=1),
    }
    parts[part] = undescribed(case)
    module = RegressionModule(**parts)
    hparams = dict(module.hparams)  # what load_from_checkpoint passes back
    with pytest.raises(
        ValueError,
        match=rf"not described in the checkpoint .*: {part}; pass {part}=\.\.\. to load_from_checkpoint",
    ):
        RegressionModule(**hparams)
    RegressionModule(**{**hparams, part: parts[part]})


def test_every_part_the_checkpoint_cannot_describe_is_asked_for_at_once():
    module = RegressionModule(model=WideNet(width=4), optimizer=undescribed("function"))
    with pytest.raises(ValueError, match=r": model, optimizer; pass model=\.\.\., optimizer=\.\.\. to"):
        RegressionModule(**module.hparams)


def test_a_factory_passed_as_it_is_is_described():
    module = RegressionModule(model=FeedForward(hidden=5), optimizer=RMSprop)
    assert module.hparams["optimizer"] == {
        "_target_": "rmsprop_lightning.optim.rmsprop.RMSprop",
        "_partial_": True,
    }
    rebuilt = RegressionModule(**module.hparams).optimizer_factory(torch.nn.Linear(2, 1).parameters())
    assert isinstance(rebuilt, RMSprop)


class HalvedNet(FeedForward):
    """A subclass with its base's constructor, which its base's ``spec`` describes."""

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return super().forward(features) / 2


class Factories:
    """Optimizer factories as class methods, whose every lookup makes a new (equal) bound method."""

    @classmethod
    def sgd(cls, params: Any, lr: float) -> torch.optim.Optimizer:
        return torch.optim.SGD(params, lr=lr)


def test_a_class_methods_partial_is_described_and_a_spawned_scripts_is_not(monkeypatch):
    module = RegressionModule(model=FeedForward(hidden=5), optimizer=partial(Factories.sgd, lr=0.1))
    assert module.hparams["optimizer"]["_target_"] == "tests.test_train_e2e.Factories.sgd"
    RegressionModule(**module.hparams)
    monkeypatch.setattr(HalvedNet, "__module__", "__mp_main__")  # the script, as a spawned process names it
    spawned = RegressionModule(model=HalvedNet(hidden=5), optimizer=partial(torch.optim.SGD, lr=0.1))
    assert spawned.hparams["model"] == UNDESCRIBED


def test_a_subclass_with_its_base_constructor_is_rebuilt_as_itself():
    module = RegressionModule(model=HalvedNet(hidden=5), optimizer=partial(torch.optim.SGD, lr=0.1))
    loaded = RegressionModule(**module.hparams)
    assert type(loaded.model) is HalvedNet and loaded.model.spec == module.model.spec


def test_overfitting_one_batch_validates_at_its_epochs(tmp_path):
    # one batch an epoch, validated every 100 epochs as debug=overfit asks
    train_in_process(
        tmp_path, "debug=overfit", "trainer.max_steps=200", "callbacks.progress_bar.refresh_rate=0"
    )
    (run_dir,) = run_dirs(tmp_path)
    assert [step for step, _ in read_scalars(run_dir / "tensorboard")["val/loss"]] == [100, 200]


# a fit that writes nothing and does not validate
UNRECORDED = {
    "logger": False,
    "enable_checkpointing": False,
    "enable_progress_bar": False,
    "enable_model_summary": False,
    "limit_val_batches": 0,
}


def test_the_update_report_leaves_a_dropout_models_training_as_it_was(capfd):
    def fit(*callbacks):
        pl.seed_everything(0, verbose=False)
        module = RegressionModule(FeedForward(hidden=[8, 8], dropout=0.5), partial(RMSprop, lr=0.01))
        module.model[2].eval()  # the first dropout layer stays off, as its user set it
        trainer = pl.Trainer(max_steps=5, callbacks=list(callbacks), **UNRECORDED)
        trainer.fit(module, datamodule=RegressionDataModule(partial(synthetic, num_samples=256)))
        return list(module.parameters())

    reported = fit(UpdateReport(num_steps=3))
    assert "Loss after 3 updates" in capfd.readouterr().out
    assert all(torch.equal(a, b) for a, b in zip(reported, fit(), strict=True))


def test_the_update_report_reports_each_update_of_accumulated_steps(capfd):
    module = RegressionModule(FeedForward(hidden=5), partial(RMSprop, lr=0.01))
    trainer = pl.Trainer(
        max_steps=3, accumulate_grad_batches=2, callbacks=[UpdateReport(num_steps=2)], **UNRECORDED
    )
    trainer.fit(module, datamodule=RegressionDataModule(partial(synthetic, num_samples=256)))
    lines = [line.split(":")[0] for line in capfd.readouterr().out.splitlines() if line.startswith("Loss")]
    assert lines == [
        "Loss before the update",
        "Loss after one update",
        "Loss before the update",
        "Loss after 2 updates",
    ]


@pytest.mark.parametrize("num_steps", [0, 1.5, "2", True])
def test_the_update_report_takes_a_positive_integer(num_steps):
    with pytest.raises(ValueError, match="num_steps must be a positive integer"):
        UpdateReport(num_steps=num_steps)


class ThreadsAtSetUp(pl.Callback):
    """Sets torch's threads as the trainer sets up, as Lightning's DDP on the CPU does for each process."""

    def setup(self, *args: Any, **kwargs: Any) -> None:
        torch.set_num_threads(3)


def test_the_summary_records_the_threads_the_fit_ran_with(tmp_path):
    callback = f"+callbacks.threads._target_={__name__}.ThreadsAtSetUp"
    train_in_process(tmp_path, *QUICK, "trainer.max_steps=2", callback)
    (run_dir,) = run_dirs(tmp_path)
    assert json.loads((run_dir / "metrics.json").read_text())["threads"] == 3


def test_a_checkpoint_saved_between_validations_is_named_after_its_own_step(tmp_path):
    # validation every 103 steps; a step the module logged there named the saves up to the next one
    module = RegressionModule(
        model=FeedForward(in_features=10, hidden=5, out_features=1), optimizer=partial(RMSprop)
    )
    saves = pl.callbacks.ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=50, save_top_k=-1)
    trainer = pl.Trainer(
        max_steps=260, callbacks=[saves], logger=False, enable_progress_bar=False, enable_model_summary=False
    )
    trainer.fit(module, datamodule=RegressionDataModule(batch_size=32))
    steps = {
        path.name: torch.load(path, weights_only=False)["global_step"] for path in tmp_path.glob("*.ckpt")
    }
    assert {name: step for name, step in steps.items() if f"step={step}." not in name} == {}
    assert sorted(steps.values()) == [50, 100, 150, 200, 250]


@pytest.mark.parametrize(
    "overrides",
    [
        ("trainer.overfit_batches=2", "trainer.limit_val_batches=0.5"),
        ("trainer=debug", "trainer.limit_val_batches=0.5", "trainer.limit_test_batches=0.5"),
        ("test=false", "trainer.limit_test_batches=0.5"),
    ],
    ids=["overfit_batches replaces it", "fast_dev_run replaces them", "no test to limit"],
)
def test_a_limit_of_no_batch_that_does_not_apply_is_not_refused(tmp_path, overrides):
    assert train_in_process(tmp_path, *QUICK, "trainer.max_steps=4", *overrides, check=False) == 0


def test_config_files_of_ones_own_run_as_written(tmp_path):
    """A trainer file without devices, an optimizer file without _partial_, keys of one's own that an
    interpolation reads (Hydra's too) and a +key the command line adds pass the checks, and the run takes
    what they set."""
    mine = tmp_path / "myconf"
    files = {
        "trainer/mine.yaml": "_target_: lightning.pytorch.Trainer\naccelerator: cpu\nmax_steps: 12\n",
        "optimizer/mine.yaml": "_target_: rmsprop_lightning.optim.RMSprop\nlr: ${base_lr}\n",
        "experiment/mine.yaml": (
            "# @package _global_\ndefaults:\n  - override /trainer: mine\n  - override /optimizer: mine\n"
            "base_lr: 0.004\nstudy: first\n"
            "hydra: {run: {dir: '${paths.log_dir}/${task_name}/runs/${study}'}}\n"
        ),
    }
    for name, text in files.items():
        (mine / name).parent.mkdir(parents=True, exist_ok=True)
        (mine / name).write_text(text)
    train_in_process(
        tmp_path,
        f"--config-dir={mine}",
        "experiment=mine",
        "+note=first try",
        "logger=none",
        "callbacks=none",
    )
    (run,) = run_dirs(tmp_path)
    assert run.name == "first"  # a key only Hydra's settings read
    checkpoint = torch.load(next((run / "checkpoints").glob("*.ckpt")), weights_only=False)
    assert checkpoint["global_step"] == 12
    assert checkpoint["optimizer_states"][0]["param_groups"][0]["lr"] == 0.004
    assert OmegaConf.load(run / ".hydra" / "config.yaml").note == "first try"


def test_an_entry_that_names_no_class_is_said_to_build_nothing(tmp_path, capfd):
    """``callbacks=none`` with a setting of a callback it dropped (an experiment's progress bar, say) runs,
    and says that setting goes unused."""
    settings = (
        "trainer.max_steps=5",
        "logger=none",
        "callbacks=none",
        "+callbacks.progress_bar={refresh_rate:0}",
    )
    train_in_process(tmp_path, *settings)
    output = "".join(capfd.readouterr())
    assert "callbacks.progress_bar names no class (_target_): nothing builds it" in output
