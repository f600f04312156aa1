"""Every config group option composes and instantiates into working objects."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from rmsprop_lightning.app import cli, command_flags, search_path
from rmsprop_lightning.app.config_checks import validate_config
from rmsprop_lightning.app.distributed import HydraDDPStrategy
from rmsprop_lightning.app.entry import checked_command_line
from rmsprop_lightning.app.fit_length import check_schedule_length, check_val_interval, validation_at_the_end
from rmsprop_lightning.app.run import build_model, build_module, build_trainer, instantiate_entries
from rmsprop_lightning.app.validation import processes
from rmsprop_lightning.callbacks.state_norms import group_scopes
from rmsprop_lightning.data import RegressionDataModule
from rmsprop_lightning.errors import InputError
from rmsprop_lightning.internals import hydra_argument_parser
from rmsprop_lightning.model import FeedForward
from rmsprop_lightning.optim.param_groups import build_param_groups
from tests.conftest import ROOT

CONF = Path(__file__).resolve().parent.parent / "conf"


def group_options(group: str) -> list[str]:
    return sorted(path.stem for path in (CONF / group).glob("*.yaml"))


def build_all(cfg):
    """Instantiates data, model, module, callbacks, loggers and trainer as ``run`` does."""
    datamodule = instantiate(cfg.data)
    module = build_module(cfg, build_model(cfg, datamodule))
    callbacks = instantiate_entries(cfg, "callbacks")
    loggers = instantiate_entries(cfg, "logger")
    trainer = build_trainer(cfg, callbacks, loggers, datamodule)
    return datamodule, module, callbacks, loggers, trainer


def test_default_config_builds_every_object(compose_cfg):
    cfg = compose_cfg()
    datamodule, module, callbacks, loggers, trainer = build_all(cfg)
    assert isinstance(datamodule, RegressionDataModule)
    assert isinstance(module.model, FeedForward)
    assert [type(layer).__name__ for layer in module.model] == ["Linear", "ReLU", "Linear"]
    assert (module.model[0].in_features, module.model[0].out_features) == (10, 5)
    assert (module.model[2].in_features, module.model[2].out_features) == (5, 1)
    assert {type(c).__name__ for c in callbacks} == {
        "BestCheckpoint",
        "LastCheckpoint",
        "LearningRateMonitor",
        "OptimizerStateMonitor",
        "TQDMProgressBar",
    }
    assert [type(logger).__name__ for logger in loggers] == ["TensorBoardRunLogger"]
    assert isinstance(trainer, pl.Trainer)
    optimizer = module.configure_optimizers()
    assert isinstance(optimizer, torch.optim.RMSprop)
    assert optimizer.defaults["lr"] == 0.01 and optimizer.defaults["alpha"] == 0.99


@pytest.mark.parametrize("strategy", [None, "+trainer.strategy=ddp"])
def test_lightnings_own_ddp_becomes_the_one_whose_ranks_run_the_job(compose_cfg, strategy):
    overrides = ["trainer.accelerator=cpu", "trainer.devices=2", *([strategy] if strategy else [])]
    trainer = build_all(compose_cfg(*overrides))[-1]
    assert type(trainer.strategy) is HydraDDPStrategy and trainer.world_size == 2


EPOCHS_OF_13 = ("data.batch_size=256", "trainer.max_epochs=1")  # 3277 training rows
# two steps an epoch of 7 batches, the second of 3: the third step ends with the 11th batch
SHORT_WINDOWS = ("data.batch_size=512", "trainer.accumulate_grad_batches=4", "trainer.max_steps=3")


@pytest.mark.parametrize(
    ("overrides", "batches"),
    [
        ((*EPOCHS_OF_13, "trainer.check_val_every_n_epoch=2"), 13),
        ((*SHORT_WINDOWS, "trainer.check_val_every_n_epoch=2"), 11),
        (("trainer.limit_train_batches=50", "trainer.check_val_every_n_epoch=3", "trainer.max_steps=99"), 99),
        (("debug=overfit", "trainer.max_steps=5"), 5),  # one batch an epoch, validated every 100
    ],
)
def test_a_fit_that_would_end_before_its_first_validation_validates_at_its_last_batch(
    compose_cfg, overrides, batches
):
    cfg = compose_cfg(*overrides)
    settings = validation_at_the_end(cfg, instantiate(cfg.data))
    assert settings == {"val_check_interval": batches, "check_val_every_n_epoch": None}


def test_overfitting_takes_the_same_batch_every_epoch():
    datamodule = RegressionDataModule(batch_size=8)
    datamodule.trainer = pl.Trainer(overfit_batches=1, logger=False)
    datamodule.setup("fit")
    loader = datamodule.train_dataloader()
    first, second = (next(iter(loader))[1] for _ in range(2))
    assert torch.equal(first, second)


def test_a_variant_of_lightnings_ddp_is_refused_naming_it(compose_cfg):
    cfg = compose_cfg(
        "trainer.accelerator=cpu", "trainer.devices=2", "+trainer.strategy=ddp_find_unused_parameters_true"
    )
    with pytest.raises(
        InputError, match=r"trainer.strategy=ddp_find_unused_parameters_true starts its extra"
    ):
        build_all(cfg)


@pytest.mark.parametrize(
    "group",
    ["optimizer", "scheduler", "model", "logger", "callbacks", "trainer", "debug"],
)
def test_every_group_option_instantiates(compose_cfg, group):
    for option in group_options(group):
        overrides = [f"{group}={option}"]
        if group == "trainer" and option in ("gpu", "ddp"):
            overrides += ["trainer.accelerator=cpu", "trainer.devices=1"]
        cfg = compose_cfg(*overrides)
        _, module, _, _, trainer = build_all(cfg)
        configured = module.configure_optimizers()
        optimizer = configured["optimizer"] if isinstance(configured, dict) else configured
        assert isinstance(optimizer, torch.optim.Optimizer), option
        assert isinstance(trainer, pl.Trainer), option


def test_data_options_instantiate(compose_cfg, tmp_path):
    csv_path = tmp_path / "table.csv"
    rows = ["a,b,c,target"] + [f"{i},{i % 3},{i * 0.5},{i * 2}" for i in range(40)]
    csv_path.write_text("\n".join(rows))
    npz_path = tmp_path / "arrays.npz"
    generator = torch.Generator().manual_seed(0)
    import numpy as np

    np.savez(
        npz_path,
        X=torch.randn(40, 7, generator=generator).numpy(),
        y=torch.randn(40, generator=generator).numpy(),
    )
    for overrides, features in (
        (["data=synthetic"], 10),
        (["data=random_normal", "data.source.num_samples=16", "data.val_fraction=0.25"], 10),
        (["data=csv", f"data.source.path={csv_path}"], 3),
        (["data=npy", f"data.source.path={npz_path}"], 7),
    ):
        cfg = compose_cfg(*overrides)
        datamodule, module, *_ = build_all(cfg)
        assert datamodule.num_features == features
        assert module.model[0].in_features == features


def test_centered_preset_yields_centered_torch_rmsprop(compose_cfg):
    cfg = compose_cfg("optimizer=rmsprop_centered")
    _, module, *_ = build_all(cfg)
    optimizer = module.configure_optimizers()
    assert isinstance(optimizer, torch.optim.RMSprop)
    assert all(group["centered"] is True for group in optimizer.param_groups)


def test_optimizer_override_reaches_the_optimizer(compose_cfg):
    cfg = compose_cfg("optimizer=rmsprop_momentum", "optimizer.alpha=0.9", "optimizer.lr=0.003")
    _, module, *_ = build_all(cfg)
    optimizer = module.configure_optimizers()
    for group in optimizer.param_groups:
        assert (group["alpha"], group["lr"], group["momentum"]) == (0.9, 0.003, 0.9)


def test_biases_are_exempt_from_weight_decay_in_the_template(compose_cfg):
    cfg = compose_cfg("optimizer.weight_decay=0.1", "module.lr_multipliers={weight:0.5}")
    _, module, *_ = build_all(cfg)
    optimizer = module.configure_optimizers()
    by_name = {group["name"]: group for group in optimizer.param_groups}
    assert set(by_name) == {"decay_lrx0.5", "no_decay"}
    assert by_name["decay_lrx0.5"]["weight_decay"] == 0.1 and by_name["no_decay"]["weight_decay"] == 0.0
    assert by_name["decay_lrx0.5"]["lr"] == pytest.approx(0.005) and by_name["no_decay"]["lr"] == 0.01
    weights = {id(module.model[0].weight), id(module.model[2].weight)}
    assert {id(p) for p in by_name["decay_lrx0.5"]["params"]} == weights


def test_groups_of_close_lr_multipliers_keep_names_of_their_own():
    # shown to six digits both factors read 0.123456, and the monitor's keys would fall back to pg1, pg2, …
    model = FeedForward(in_features=10, hidden=5, out_features=1)
    factors = {"^0": 0.1234561, "^2": 0.1234564}
    groups = build_param_groups(model, no_weight_decay_on_bias=False, lr_multipliers=factors)
    assert group_scopes(groups) == ["decay_lrx0.1234561/", "decay_lrx0.1234564/"]


@pytest.mark.parametrize(
    ("scheduler", "kept"),
    [
        ("scheduler=cosine", True),
        (
            "scheduler.scheduler={_target_:torch.optim.lr_scheduler.OneCycleLR,_partial_:true,max_lr:0.1,total_steps:9}",
            False,
        ),
    ],
)
def test_a_scheduler_that_would_undo_the_lr_multipliers_is_refused(compose_cfg, scheduler, kept):
    cfg = compose_cfg(scheduler, "module.lr_multipliers={weight:0.5}")
    _, module, *_ = build_all(cfg)
    if kept:
        groups = module.configure_optimizers()["optimizer"].param_groups
        assert sorted(group["lr"] for group in groups) == pytest.approx([0.005, 0.01])
    else:
        with pytest.raises(ValueError, match="OneCycleLR sets every parameter group's lr itself"):
            module.configure_optimizers()


def test_scheduler_dict_takes_interval_and_monitor_from_config(compose_cfg):
    configured = build_all(compose_cfg("scheduler=plateau"))[1].configure_optimizers()
    assert configured["lr_scheduler"]["monitor"] == "val/loss"
    assert configured["lr_scheduler"]["interval"] == "epoch"
    configured = build_all(compose_cfg("scheduler=warmup_cosine"))[1].configure_optimizers()
    assert configured["lr_scheduler"]["interval"] == "step"
    assert "monitor" not in configured["lr_scheduler"]


def test_the_config_check_knows_the_modules_losses():
    from rmsprop_lightning.app.rules import LOSS_NAMES
    from rmsprop_lightning.module import LOSSES

    assert tuple(LOSSES) == LOSS_NAMES


@pytest.mark.parametrize(
    "arguments",
    [
        ["logger.tensorboard={name:x}"],  # a mapping merges into the default, as Hydra merges it
        ["-m", "logger.tensorboard={name:x},{name:y}"],
        ["-m", "seed=${hydra:job.num}", "optimizer.lr=0.1,0.2"],  # Hydra's job fields resolve
        ["--cfg", "job", "hparams_search=rmsprop_optuna"],  # printing a search's config needs no -m
        ["-m", "hparams_search=rmsprop_optuna", "data.batch_size=range(1,2000)"],  # a search space
        ["-m", "optimizer=rmsprop,rmsprop_centered", "optimizer.momentum=0.9"],  # a key every option has
        ["--cfg", "job", "data=csv"],  # a printed config may leave the data path for later
        ["callbacks.model_checkpoint.monitor=null"],  # the latest checkpoint
        ["-m", "experiment=lr_alpha_grid"],  # a study's search space in its config
        ["-m", "experiment=variants", "optimizer=glob(rmsprop_c*)"],
        [
            "-m",
            "hparams_search=rmsprop_optuna",
            "seed=int(interval(0,9))",
            "optimizer.lr=tag(log,interval(1e-5,1))",
        ],
        [
            "-m",
            "hparams_search=rmsprop_optuna",
            "optimizer.momentum=range(0,0.9,0.001)",
        ],  # a search: its ends
        ["-m", "seed=glob(*)"],  # no group: Hydra's to expand
        ["-m", "hparams_search=rmsprop_optuna", "optimizer=rmsprop_nesterov"],  # momentum drawn above 0
        ["-m", "hparams_search=rmsprop_optuna", "optimizer.nesterov=true"],  # the same, from the other key
        ["-m", "hparams_search=rmsprop_optuna", "optimizer.momentum=shuffle(range(0.0,1.0,0.5))"],  # below 1
        ["-m", "hydra/sweeper=optuna", "seed=0"],  # the plugin's own defaults (an enum direction)
        ["-m", "experiment=lr_alpha_grid", "~hydra.sweeper.params.seed"],
        [
            "-m",
            "experiment=lr_alpha_grid",
            "hydra.sweeper.params.seed='0,1'",
        ],  # an entry, of a key with no dot
        ["--help", "hparams_search=rmsprop_optuna"],
        # overrides apply in order, as Hydra applies them: a key a former one made, removed or set
        ["model.hidden=[64,64]", "model.hidden.0=32"],
        ["module.lr_multipliers={bias:0.1}", "module.lr_multipliers.bias=0.2"],
        [
            "~callbacks.progress_bar",
            "+callbacks.progress_bar={_target_:lightning.pytorch.callbacks.TQDMProgressBar,refresh_rate:1}",
            "callbacks.progress_bar.refresh_rate=2",
        ],
        ["logger=none", "~callbacks.learning_rate_monitor", "~callbacks.optimizer_state_monitor"],
        ["data=csv", f"++data.source.path={CONF / 'train.yaml'}", "data.source.target=y"],
        ["hydra.mode=MULTIRUN", "seed=0,1"],  # Hydra's -m in the config
        ["hydra.mode=RunMode.MULTIRUN", "seed=0,1"],
        ["seed=0,1", "-m"],  # a flag after the overrides
        ["callbacks.progress_bar.refresh_rate=1", "~callbacks.progress_bar"],  # set, then removed
        ["--shell-completion", "install=bash"],  # its arguments are not overrides
        ["-m", "optimizer.lr=0.01,0.02", "hydra.sweep.subdir=${hydra.job.num}_lr"],
        ["task_name=20261207"],  # a number, as Hydra reads it, names a folder too
        [f"--config-dir={CONF}", "optimizer=rmsprop_centered"],  # the project's own options, as a folder
        ["+callbacks.stop={_target_:lightning.pytorch.callbacks.EarlyStopping,_args_:[val/loss]}"],
        [  # a scheduler of one's own whose options have the names of the shipped ones' (mode, total_steps)
            "scheduler=cosine",
            "~scheduler.scheduler",
            "+scheduler.scheduler={_target_:torch.optim.lr_scheduler.OneCycleLR,_partial_:true,max_lr:0.01,"
            "total_steps:null,epochs:2,steps_per_epoch:2,anneal_strategy:linear}",
        ],
    ],
)
def test_valid_command_lines_pass_the_checks_before_hydra(arguments):
    checked = checked_command_line(CONF, "train", arguments)
    assert [argument for argument in checked if argument in arguments] == arguments
    hydra_argument_parser().parse_args(checked)  # a flag that follows overrides is followed by none


@pytest.mark.parametrize(
    ("sweeper", "params", "refusal"),
    [
        (
            "basic",
            "optimizer: rmsprop,rmsprop_centred",
            "optimizer=rmsprop_centred is not an option of optimizer",
        ),
        ("basic", "seed: range(-2,2)", "seed=-2 is invalid"),
        ("basic", "optimizer.lrr: 0.1,0.2", "optimizer.lrr is not a key of optimizer"),
        ("optuna", "optimizer.momentum: range(0.0, 1.0, 0.5)", "got 1.0"),  # Optuna draws its stop too
        ("optuna", "optimizer.alpha: range(0.9, 1.0, 0.05)", "got 1.0"),  # in decimal: 1.0, not 0.95
        (
            "basic",
            "optimizer: rmsprop,rmsprop_tf\n      optimizer.lr: -1,0.1",
            "got -1",
        ),  # a chosen group's key
        ("basic", "scheduler: plateau\n      scheduler.scheduler.patiense: 1,2", "patiense is not a key"),
    ],
)
def test_a_studys_search_space_in_its_config_is_checked_before_its_first_job(
    tmp_path, sweeper, params, refusal
):
    shutil.copytree(CONF, tmp_path / "conf")
    defaults = f"defaults:\n  - override /hydra/sweeper: {sweeper}\n"
    study = f"# @package _global_\n{defaults}hydra:\n  sweeper:\n    params:\n      {params}\n"
    (tmp_path / "conf" / "experiment" / "study.yaml").write_text(study)
    with pytest.raises(InputError, match=re.escape(refusal)):
        checked_command_line(tmp_path / "conf", "train", ["-m", "experiment=study"])


@pytest.mark.parametrize(
    "arguments",
    [
        ["+module.extra={a:1}", "module.extra.a=2", "trainer.max_stepz=1"],
        ["~hydra/job_logging", "trainer.max_stepz=1"],
        ["trainer.max_stepz=1", "optimizer.lr=0.1"],
    ],
)
def test_the_override_hydra_refuses_is_the_one_named(arguments):
    with pytest.raises(InputError, match=r"^trainer.max_stepz is not a key of trainer \(did you mean"):
        checked_command_line(CONF, "train", arguments)


@pytest.fixture
def user_configs(tmp_path) -> str:
    """A user's own config folder, on Hydra's search path: an optimizer preset, a launcher, a new group."""
    for path, text in {
        "optimizer/mine.yaml": "defaults:\n  - rmsprop\nmomentum: 0.5\n",
        "hydra/launcher/mine.yaml": "defaults:\n  - basic\n",
        "extra/one.yaml": "note: hello\n",
    }.items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(text)
    return f"hydra.searchpath=[file://{tmp_path}]"


@pytest.mark.parametrize(
    "arguments",
    [
        ["optimizer=mine", "optimizer.lr=0.1"],
        ["-m", "optimizer=mine,rmsprop_centered", "seed=0,1"],
        ["-m", "hydra/launcher=mine", "seed=0,1"],
        ["+extra=one", "extra.note=bye"],
    ],
)
def test_a_users_configs_on_the_search_path_pass_the_checks(user_configs, arguments):
    arguments = [*arguments, user_configs]
    assert checked_command_line(CONF, "train", arguments)[: len(arguments)] == arguments


@pytest.mark.parametrize(
    ("arguments", "refusal"),
    [
        (["optimizer=mien"], "optimizer=mien is not an option of optimizer (did you mean mine?)"),
        (["optimizer=mine", "optimizer.momentum=1.5"], "optimizer.momentum must be in [0, 1)"),
        (["-m", "hydra/launcher=mien", "seed=0,1"], "(did you mean mine?)"),
        (["+extra=two"], "extra=two is not an option of extra; allowed: one"),
        (
            ["-m", "optimizer=glob(m*)"],
            "glob() does not see the options of hydra.searchpath; allowed: optimizer=mine",
        ),
    ],
)
def test_a_users_configs_on_the_search_path_are_checked(user_configs, arguments, refusal):
    with pytest.raises(InputError, match=re.escape(refusal)):
        checked_command_line(CONF, "train", [*arguments, user_configs])


@pytest.mark.parametrize(
    ("trainer", "count"),
    [
        ("trainer=default", 1),
        ("trainer=ddp_cpu", 2),
        ("trainer.devices=3", 3),
        ("trainer.devices='3'", 3),
        ("trainer.num_nodes=2", 2),
    ],
)
def test_the_processes_of_a_trainer_config_are_those_lightning_starts(compose_cfg, trainer, count):
    settings = compose_cfg(trainer, "trainer.accelerator=cpu").trainer
    assert processes(settings) == count
    keys = ("accelerator", "devices", "num_nodes")
    assert pl.Trainer(**{key: settings[key] for key in keys}, logger=False).world_size == count


def test_a_source_tree_without_an_editable_install_finds_its_configs_beside_the_package(monkeypatch):
    def not_installed(package: str):
        raise ModuleNotFoundError(f"No module named {package!r}")

    monkeypatch.setattr(cli, "files", not_installed)
    assert (cli.config_dir() / "train.yaml").read_text() == (ROOT / "conf" / "train.yaml").read_text()


@pytest.mark.parametrize(
    ("accelerator", "devices", "count"),
    [
        ("gpu", -1, 4),
        ("gpu", "auto", 4),
        ("auto", -1, 4),
        ("gpu", "0,1", 2),
        ("cuda", [0, 2], 2),
        ("gpu", 3, 3),
    ],
)
def test_the_processes_on_a_machine_of_four_gpus(monkeypatch, accelerator, devices, count):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    settings = OmegaConf.create({"accelerator": accelerator, "devices": devices, "num_nodes": 2})
    assert processes(settings) == 2 * count


@pytest.mark.parametrize("scheduler", ["cosine", "warmup_cosine"])
def test_a_schedule_over_max_steps_that_max_epochs_cuts_short_is_refused(compose_cfg, scheduler):
    cfg = compose_cfg(*EPOCHS_OF_13, f"scheduler={scheduler}")
    data = instantiate(cfg.data)
    with pytest.raises(InputError, match=r"trainer.max_epochs=1 ends the run after 13 steps, before sch"):
        check_schedule_length(cfg, data)
    for fine in ("trainer.max_steps=13", "scheduler.interval=epoch"):
        check_schedule_length(compose_cfg(*EPOCHS_OF_13, f"scheduler={scheduler}", fine), data)


@pytest.mark.parametrize("scheduler", ["none", "step", "plateau"])
def test_a_run_that_max_epochs_ends_first_takes_schedules_of_their_own_length(compose_cfg, scheduler):
    cfg = compose_cfg(*EPOCHS_OF_13, f"scheduler={scheduler}")
    check_schedule_length(cfg, instantiate(cfg.data))


@pytest.mark.parametrize(
    ("overrides", "refused"),
    [
        (["trainer.val_check_interval=200"], True),  # 103 batches an epoch, as Lightning refuses it
        (["trainer.val_check_interval=103"], False),
        (["trainer.val_check_interval=200", "trainer.check_val_every_n_epoch=null"], False),
        (["trainer.val_check_interval=200", "trainer.limit_val_batches=0"], False),  # no validation
        (["trainer.val_check_interval=30", "trainer.limit_train_batches=0"], False),  # no training batch
        (["trainer.val_check_interval=200", "trainer.max_steps=150"], False),  # validates at its last step
    ],
)
def test_a_validation_interval_longer_than_an_epoch_is_refused_where_lightning_refuses_it(
    compose_cfg, overrides, refused
):
    cfg = compose_cfg(*overrides)
    if refused:
        with pytest.raises(InputError, match=r"val_check_interval=200 is more than an epoch's 103 training"):
            check_val_interval(cfg, instantiate(cfg.data))
    else:
        check_val_interval(cfg, instantiate(cfg.data))


def test_the_groups_of_a_search_path_are_listed_two_levels_deep(tmp_path):
    # a path naming a large folder (a home, /tmp) had every folder below it walked before any answer
    for group in ("model/encoder", "deep/er/still"):
        (tmp_path / group).mkdir(parents=True)
        (tmp_path / group / "one.yaml").write_text("{}\n")
    groups = search_path.group_options(CONF, "train", [f"hydra.searchpath=[file://{tmp_path}]"])
    assert groups["model/encoder"] == ["one"] and "deep/er/still" not in groups


def test_a_run_folder_is_refused_inside_a_run_only(tmp_path):
    project, run = tmp_path / "project", tmp_path / "run"
    project.mkdir()
    (project / "metrics.json").write_text("{}\n")  # another tool's file of that name: not a run
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text("{}\n")
    (run / "metrics.json").write_text("{}\n")
    for folder in (project / "out", run / ".." / "sibling"):
        checked_command_line(CONF, "train", [f"hydra.run.dir={folder}"])
    with pytest.raises(InputError, match="lies in the run folder"):
        checked_command_line(CONF, "train", [f"hydra.run.dir={run}/sub"])


def test_a_flags_value_holding_an_equals_sign_is_no_override():
    command_flags.check_flags_first(["-cp", "/runs/0_seed=0/.hydra", "-cn", "config", "seed=1"])
    command_flags.check_flags_first(["seed=1", "--cfg", "job"])  # overrides, then flags: Hydra takes them
    with pytest.raises(InputError, match="~seed comes after a flag that follows overrides"):
        command_flags.check_flags_first(["seed=1", "-m", "~seed"])
    with pytest.raises(InputError, match=r"--multirn is not a flag \(did you mean --multirun\?\)"):
        command_flags.check_flags_first(["seed=1", "--multirn"])


def test_an_experiment_that_sets_multirun_mode_runs_its_sweep_without_m(tmp_path):
    (tmp_path / "experiment").mkdir()
    (tmp_path / "experiment" / "mysweep.yaml").write_text(
        "# @package _global_\nhydra:\n  mode: MULTIRUN\n  sweeper:\n    params:\n      seed: 0,1\n"
    )
    arguments = ["experiment=mysweep", f"hydra.searchpath=[file://{tmp_path}]"]
    assert checked_command_line(CONF, "train", arguments)[:2] == arguments
    swept = [*arguments, "seed=5,6"]  # what it sweeps, typed: a sweep's values
    assert checked_command_line(CONF, "train", swept)[:3] == swept
    (tmp_path / "run" / ".hydra").mkdir(parents=True)  # a finished run's folder, which it must not write into
    (tmp_path / "run" / ".hydra" / "config.yaml").write_text("{}\n")
    (tmp_path / "run" / "metrics.json").write_text("{}\n")
    with pytest.raises(InputError, match=r"hydra.sweep.dir=.* already holds a run"):
        checked_command_line(CONF, "train", [*arguments, f"hydra.sweep.dir={tmp_path / 'run'}"])


def test_a_relative_config_path_is_a_package_beside_the_apps():
    # Hydra reads ../conf from rmsprop_lightning.app as the package rmsprop_lightning.conf
    arguments = ["--config-path", "../conf", "--cfg", "job"]
    assert checked_command_line(CONF, "train", arguments) == arguments


def test_a_search_path_adding_no_option_of_a_globbed_group_and_a_key_only_hydra_reads_pass(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "mydata.yaml").write_text("defaults: [synthetic]\nbatch_size: 64\n")
    (tmp_path / "experiment").mkdir()
    named = "# @package _global_\nstudy: s1\nhydra: {run: {dir: 'logs/${study}'}}\n"
    (tmp_path / "experiment" / "named.yaml").write_text(named)
    (tmp_path / "mygroup").mkdir()  # a group of one's own that an experiment chooses and reads
    (tmp_path / "mygroup" / "small.yaml").write_text("width: 16\n")
    grouped = "# @package _global_\ndefaults:\n  - /mygroup: small\nmodel:\n  hidden: ${mygroup.width}\n"
    (tmp_path / "experiment" / "grouped.yaml").write_text(grouped)
    (tmp_path / "callbacks").mkdir()  # callbacks without the monitor an experiment tunes
    lean = "defaults:\n  - default\n  - _self_\noptimizer_state_monitor: null\n"
    (tmp_path / "callbacks" / "lean.yaml").write_text(lean)
    path = f"hydra.searchpath=[file://{tmp_path}]"
    checked_command_line(
        CONF, "train", ["-m", path, "experiment=variants", "hydra.sweeper.params.data=mydata"]
    )
    checked_command_line(CONF, "train", [path, "experiment=named"])
    checked_command_line(CONF, "train", [path, "experiment=grouped"])
    lean_grid = ["experiment=lr_alpha_grid", "callbacks=lean", "hydra.sweeper.params=null"]
    checked_command_line(CONF, "train", [path, *lean_grid])


def test_a_key_nothing_reads_is_a_warning_naming_a_close_match(tmp_path, capsys):
    """A misspelt key, or an experiment's own key that an override left unread, is said before the run."""
    (tmp_path / "experiment").mkdir()
    knob = "# @package _global_\nsteps: 30\ntrainer: {max_steps: '${steps}'}\n"
    (tmp_path / "experiment" / "knob.yaml").write_text(knob)
    path = f"hydra.searchpath=[file://{tmp_path}]"
    checked_command_line(CONF, "train", [path, "experiment=knob"])
    assert capsys.readouterr().err == ""
    checked_command_line(CONF, "train", [path, "experiment=knob", "trainer.max_steps=5", "+seeds=1"])
    assert capsys.readouterr().err.splitlines() == [
        "warning: steps is set, but nothing reads it (did you mean test?)",
    ]
    (tmp_path / "experiment" / "empty.yaml").write_text("# nothing yet\n")
    checked_command_line(CONF, "train", [path, "experiment=empty"])
    assert capsys.readouterr().err == ""
    (tmp_path / "experiment" / "misspelt.yaml").write_text("# @package _global_\nseeds: 3\n")
    checked_command_line(CONF, "train", ["-m", path, "experiment=empty,misspelt"])
    assert capsys.readouterr().err.splitlines() == [
        "warning: seeds is set, but nothing reads it (did you mean seed?) (with experiment=misspelt)",
    ]
    checked_command_line(CONF, "train", ["-m", path, "scheduler=glob(*)"])  # the path adds no scheduler


class OwnPlateau(torch.optim.lr_scheduler.ReduceLROnPlateau):
    """A plateau scheduler under another name, as a project of one's own may have."""


def test_a_scheduler_class_of_ones_own_may_follow_a_metric(compose_cfg):
    validate_config(
        compose_cfg("scheduler=plateau", "scheduler.scheduler._target_=tests.test_configs.OwnPlateau")
    )
