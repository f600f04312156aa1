"""Bad input → one clear line, a non-zero exit, no traceback, and no other run touched.

Every case of the corpus runs ``train.py``'s ``__main__`` in this process (the same code
path as the command line, without paying the ~4 s start-up of a new interpreter per
case); a subset also runs as real subprocesses. Next to the cases lives a real earlier
run whose folder must come out of every case byte for byte as it went in.
"""

from __future__ import annotations

import fractions
import hashlib
import runpy
import shutil
import struct
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.core.global_hydra import GlobalHydra

from rmsprop_lightning.app.validation import check_intact
from rmsprop_lightning.errors import InputError
from tests.conftest import TRAIN, run_dirs, run_train, train_in_process

EARLIER_RUN = (
    "data.source.num_samples=512",
    "trainer.max_steps=30",
    "trainer.val_check_interval=10",
    "trainer.check_val_every_n_epoch=null",
    "callbacks.progress_bar.refresh_rate=0",
    "callbacks.last_checkpoint.every_n_train_steps=10",
)

# the folder of a user's own config files that the corpus writes
OWN_CONFIGS = "hydra.searchpath=[file://{files}/configs]"
# (case id, command-line arguments, words the message must contain); {files} and {earlier} are filled in
CASES = [
    # optimizer hyper-parameters, keys and options
    ("negative lr", ["optimizer.lr=-0.1"], ["optimizer.lr", "-0.1", ">= 0"]),
    ("negative eps", ["optimizer.eps=-1e-8"], ["optimizer.eps", ">= 0"]),
    ("alpha of 1", ["optimizer.alpha=1.0"], ["optimizer.alpha", "[0, 1)"]),
    ("negative alpha", ["optimizer.alpha=-0.5"], ["optimizer.alpha", "[0, 1)"]),
    ("negative momentum", ["optimizer.momentum=-0.9"], ["optimizer.momentum", "[0, 1)"]),
    ("negative weight decay", ["optimizer.weight_decay=-1"], ["optimizer.weight_decay", ">= 0"]),
    ("lr not a number", ["optimizer.lr=abc"], ["optimizer.lr", "'abc'", "real number"]),
    ("centered not a flag", ["optimizer.centered=maybe"], ["optimizer.centered", "'maybe'", "true or false"]),
    ("unknown optimizer key", ["optimizer.lrr=0.1"], ["optimizer.lrr", "did you mean optimizer.lr", "alpha"]),
    (
        "added unknown key",
        ["+optimizer.betas=[0.9,0.99]"],
        ["optimizer.betas", "not an option", "eps_in_sqrt"],
    ),
    ("nesterov without momentum", ["optimizer.nesterov=true"], ["optimizer.nesterov", "momentum > 0"]),
    (
        "option of another optimizer",
        ["optimizer=rmsprop_keras", "optimizer._target_=torch.optim.RMSprop"],
        ["not an option of torch.optim.RMSprop", "allowed", "centered"],
    ),
    ("unknown optimizer preset", ["optimizer=adamx"], ["optimizer=adamx", "rmsprop_centered"]),
    ("misspelt preset", ["optimizer=rmsprp"], ["optimizer=rmsprp", "did you mean rmsprop?"]),
    (
        "misspelt preset in a sweep",
        ["-m", "optimizer=rmsprop,rmsprop_centred"],
        ["did you mean rmsprop_centered"],
    ),
    ("misspelt config of several", ["logger=[tensorboard,cvs]"], ["logger=cvs", "did you mean csv"]),
    # sweeps: every value and every option is checked before any job runs
    ("a bad value in a sweep", ["-m", "optimizer.lr=0.01,-1"], ["optimizer.lr", "-1", ">= 0"]),
    ("a bad seed in a sweep", ["-m", "seed=0,1.5"], ["seed=1.5", "integer"]),
    (
        "a misspelt added key in a sweep",
        ["-m", "+optimizer.lrr=0.1,0.2"],
        ["optimizer.lrr", "did you mean optimizer.lr"],
    ),
    ("a bad value forced in a sweep", ["-m", "++optimizer.lr=0.1,-1"], ["optimizer.lr", "-1", ">= 0"]),
    ("a bad width in a sweep", ["-m", "model.hidden=4,-3"], ["model.hidden=-3 is invalid", "[64,64]"]),
    (
        "a key of one swept option only",
        ["-m", "scheduler=cosine,none", "scheduler.scheduler.T_max=30"],
        ["scheduler.scheduler.T_max", "not a key of scheduler.scheduler", "scheduler=none"],
    ),
    ("a sweep without -m", ["optimizer.lr=0.01,0.1"], ["optimizer.lr=0.01,0.1", "with -m"]),
    (
        "an interval for the basic sweeper",
        ["-m", "optimizer.lr=interval(0.01,0.1)"],
        ["optimizer.lr=interval(0.01,0.1)", "basic sweeper", "hparams_search=rmsprop_optuna"],
    ),
    ("resolve without cfg", ["--resolve"], ["--resolve", "with --cfg"]),
    ("a config name no folder has", ["--config-name=trian"], ["--config-name=trian: trian.yaml is in"]),
    ("a config folder not there", ["--config-dir={files}/nope"], ["--config-dir=", "is not a folder"]),
    (
        "a path of a two-key job folder unquoted",
        ["ckpt_path=sweep/0_optimizer.lr=0.01,seed=0/last.ckpt"],
        ["\"ckpt_path='sweep/0_optimizer.lr=0.01,seed=0/last.ckpt'\""],
    ),
    (
        "a path holding '=' unquoted",
        ["ckpt_path=sweep/0_seed=0/checkpoints/last.ckpt"],
        ["a value holding '=' is quoted for Hydra", "\"ckpt_path='sweep/0_seed=0/checkpoints/last.ckpt'\""],
    ),
    ("a sweep in a printed config", ["--cfg", "job", "seed=0,1"], ["seed=0,1", "one value"]),
    ("a sweep in a printed multirun", ["--cfg", "job", "hydra.mode=MULTIRUN", "seed=0,1"], ["one value"]),
    ("adding a key that is there", ["+seed=1"], ["+seed=1", "already set", "seed=1 (or ++seed=1)"]),
    ("test not a flag", ["test=maybe"], ["test='maybe'", "true or false"]),
    ("bias decay not a flag", ["module.no_weight_decay_on_bias=null"], ["no_weight_decay_on_bias=null"]),
    ("a scheduler never stepped", ["scheduler=step", "scheduler.frequency=0"], ["scheduler.frequency=0"]),
    (
        "a data flag of text",
        ["data.standardize_targets=no"],
        ["data.standardize_targets='no'", "true or false"],
    ),
    ("a split seed not an integer", ["data.split_seed=1.5"], ["data.split_seed=1.5", "integer"]),
    (
        "an empty data path",
        ["data=csv", "data.source.path=''"],
        ["data.source.path=''", "names no file; allowed: the path of a data file"],
    ),
    ("threads per job of zero", ["threads_per_job=0"], ["threads_per_job=0", "auto", "null"]),
    ("negative refresh rate", ["callbacks.progress_bar.refresh_rate=-1"], ["refresh_rate=-1", "≥ 0"]),
    ("a range of no values", ["-m", "seed=range(0,3,0)"], ["seed=range(0,3,0) has no values"]),
    (
        "a search from an empty range",
        ["-m", "hparams_search=rmsprop_optuna", "seed=range(5,0)"],
        ["no values"],
    ),
    (
        "a search over a glob",
        ["-m", "hparams_search=rmsprop_optuna", "optimizer=glob(rmsprop_c*)"],
        ["optimizer=glob(rmsprop_c*)", "choice(...)"],
    ),
    (
        "an experiment file without its package line",
        [OWN_CONFIGS, "experiment=no_package"],
        ["experiment=no_package sets experiment.trainer", "# @package _global_"],
    ),
    (
        "a misspelt scheduler key in a config file",
        [OWN_CONFIGS, "scheduler=typo"],
        ["scheduler.intervall is not a key of scheduler", "did you mean scheduler.interval?"],
    ),
    (
        "a misspelt callback in a config file",
        [OWN_CONFIGS, "callbacks=typo"],
        ["callbacks.model_checkpont names no class", "did you mean callbacks.model_checkpoint?"],
    ),
    (
        "a misspelt key of Hydra's in a config file",
        [OWN_CONFIGS, "experiment=hydra_typo"],
        ["experiment/hydra_typo", "chdirr"],
    ),
    (
        "a file's misspelt option in a sweep",
        ["-m", OWN_CONFIGS, "experiment=trainer_typo", "seed=0,1"],
        ["trainer.max_step is not an option", "did you mean trainer.max_steps?"],
    ),
    (
        "a file's misspelt module option",
        ["--config-dir={files}/configs", "experiment=module_typo"],
        ["module.los is not an option", "did you mean module.loss?"],
    ),
    (
        "a group a file sets null",
        [OWN_CONFIGS, "experiment=no_optimizer"],
        ["optimizer is null", "optimizer="],
    ),
    (
        "an optimizer file without a class",
        [OWN_CONFIGS, "optimizer=no_target"],
        ["optimizer has no _target_"],
    ),
    (
        "an optimizer class that cannot be imported",
        [OWN_CONFIGS, "optimizer=not_importable"],
        ["optimizer._target_=no_such_module.Optimizer cannot be imported", "No module named", "PYTHONPATH"],
    ),
    (
        "a scheduler's class at the top of its file",
        [OWN_CONFIGS, "scheduler=flat"],
        ["scheduler._target_=torch.optim.lr_scheduler.StepLR", "scheduler.scheduler"],
    ),
    (
        "an option of one's own that the project's hides",
        [OWN_CONFIGS, "optimizer=rmsprop_momentum"],
        ["optimizer=rmsprop_momentum is also an option of this project", "another name"],
    ),
    (
        "a glob that misses the search path",
        ["-m", OWN_CONFIGS, "experiment=variants"],
        ["experiment=variants sweeps optimizer=glob(*)", "--config-dir"],
    ),
    (
        "a config file that is not YAML",
        [OWN_CONFIGS, "experiment=tabbed"],
        ["experiment/tabbed.yaml, line 3", "cannot start any token"],
    ),
    (
        "a config file's defaults naming no option",
        [OWN_CONFIGS, "experiment=missing_option"],
        ["Could not find 'optimizer/rmsprop_momentm'", "rmsprop_momentum"],
    ),
    (
        "a misspelt key beside a config folder",
        ["--config-dir={files}/configs", "optimizer.lrr=0.1"],
        ["optimizer.lrr is not a key of optimizer", "did you mean optimizer.lr?"],
    ),
    (
        "a misspelt option beside a config folder",
        ["--config-dir={files}/configs", "optimizer=mien"],
        ["optimizer=mien is not an option", "did you mean mine?"],
    ),
    ("search path not a list", ["hydra.searchpath=/tmp"], ["hydra.searchpath=/tmp", "[file:///abs/dir]"]),
    ("removing a key that is not there", ["~optimizer.lrr"], ["optimizer.lrr", "not a key of optimizer"]),
    (
        "removing a null key",
        ["~trainer.max_time"],
        ["~trainer.max_time: trainer.max_time is null", "max_time=<"],
    ),
    (
        "lr multipliers as a list",
        ["module.lr_multipliers=[1,2]"],
        ["module.lr_multipliers", "{regex: factor}"],
    ),
    (
        "an lr multiplier of text",
        ["module.lr_multipliers={{bias:x}}"],
        ["module.lr_multipliers['bias']", "> 0", "'x'"],
    ),
    (
        "a misspelt launcher setting",
        ["-m", "hydra/launcher=population", "hydra.launcher.cpus_per_tsk=1", "seed=0,1"],
        ["hydra.launcher.cpus_per_tsk", "did you mean hydra.launcher.cpus_per_task"],
    ),
    (
        "a launcher setting of another launcher",
        ["-m", "hydra.launcher.n_jobs=2", "seed=0,1"],
        [
            "hydra.launcher.n_jobs is not a key of hydra.launcher; allowed: none",
            "may: hydra/launcher=<option>",
        ],
    ),
    (
        "a bad launcher setting in a sweep",
        ["-m", "hydra/launcher=population", "hydra.launcher.cpus_per_task=0", "seed=0,1"],
        ["hydra.launcher.cpus_per_task=0", "integer ≥ 1"],
    ),
    (
        "a misspelt sweeper setting",
        ["-m", "hparams_search=rmsprop_optuna", "hydra.sweeper.n_trial=3"],
        ["hydra.sweeper.n_trial is not a key", "did you mean hydra.sweeper.n_trials"],
    ),
    (
        "a bad sweeper setting",
        ["-m", "hparams_search=rmsprop_optuna", "hydra.sweeper.direction=minimise"],
        ["hydra.sweeper.direction='minimise' is invalid", "allowed: minimize or maximize"],
    ),
    (
        "a search space reaching past a range",
        ["-m", "hparams_search=rmsprop_optuna", "optimizer.momentum=interval(0.5,1.5)"],
        ["optimizer.momentum=interval(0.5,1.5) draws values it refuses", "must be in [0, 1)"],
    ),
    (
        "a real interval for an integer",
        ["-m", "hparams_search=rmsprop_optuna", "seed=interval(0,10)"],
        ["seed=interval(0,10)", "seed takes integers; allowed: int(interval(...))"],
    ),
    (
        "a bad choice of a search",
        ["-m", "hparams_search=rmsprop_optuna", "optimizer.lr=choice(0.1,-1)"],
        ["optimizer.lr", "got -1"],
    ),
    ("a needed group removed", ["~optimizer"], ["~optimizer removes a group", "rmsprop_centered"]),
    (
        "a search of a metric no trial logs",
        ["-m", "hparams_search=rmsprop_optuna", "optimized_metric=test/loss", "test=false"],
        ["optimized_metric=test/loss needs a test split, but test=false leaves none"],
    ),
    (
        "fewer validation rows than processes",
        ["trainer=ddp_cpu", "data.source.num_samples=20", "data.val_fraction=0.05", "data.test_fraction=0.1"],
        ["data.val_fraction=0.05 leaves 1 val row(s) for 2 processes"],
    ),
    ("a time limit Lightning cannot read", ["trainer.max_time=abc"], ["trainer.max_time='abc' is invalid"]),
    (
        "a misspelt launcher",
        ["-m", "hydra/launcher=populaton", "seed=0,1"],
        ["hydra/launcher=populaton is not an option of hydra/launcher", "did you mean population"],
    ),
    ("a misspelt launcher without -m", ["hydra/launcher=populaton"], ["did you mean population"]),
    (
        "a search of a metric with no test rows",
        ["-m", "hparams_search=rmsprop_optuna", "optimized_metric=test/loss", "data.test_fraction=0"],
        ["optimized_metric=test/loss needs a test split, but data.test_fraction=0 leaves none"],
    ),
    ("testing no checkpoint", ["train=false"], ["train=false", "allowed: train=false ckpt_path="]),
    (
        "an interval a search cannot draw from",
        ["-m", "hparams_search=rmsprop_optuna", "optimizer.lr=tag(log,interval(0,0.1))"],
        ["optimizer.lr=tag(log,interval(0,0.1)): a search cannot draw from it"],
    ),
    (
        "a study storage that is no URL",
        ["-m", "hparams_search=rmsprop_optuna", "hydra.sweeper.storage=nope"],
        ["hydra.sweeper.storage=nope is not a database URL"],
    ),
    (
        "a study storage that is no database",
        ["-m", "hparams_search=rmsprop_optuna", "hydra.sweeper.storage=sqlite:///{files}/garbage.ckpt"],
        ["garbage.ckpt is not an SQLite database"],
    ),
    (
        "a study storage in a folder that cannot be written",
        ["-m", "hparams_search=rmsprop_optuna", "hydra.sweeper.storage=sqlite:////proc/nope/x.db"],
        ["hydra.sweeper.storage=/proc cannot be written", "a writable folder for the study's file"],
    ),
    (
        "a sweep of a Hydra setting",
        ["-m", "hydra.launcher.n_jobs=1,2", "seed=0,1"],
        ["hydra.launcher.n_jobs=1,2: Hydra sweeps none of its own settings; allowed: one value"],
    ),
    (
        "a sweep typed as a search space entry",
        ["-m", "hparams_search=rmsprop_optuna", "hydra.sweeper.params.optimizer.lr=interval(1e-3,1e-1)"],
        ["allowed: -m optimizer.lr=interval(1e-3,1e-1)"],
    ),
    (
        "a search space entry of a dotted key",
        ["-m", "hparams_search=rmsprop_optuna", "hydra.sweeper.params.optimizer.lr='interval(1e-3,1e-1)'"],
        ["Hydra reads optimizer.lr as keys nested in the search space", "-m optimizer.lr="],
    ),
    (
        "a search space entry where the sweeper has none",
        ["-m", "hydra.sweeper.params.seed='0,1'"],
        ["this sweeper has no search space to set an entry of; allowed: -m seed=0,1"],
    ),
    (
        "a malformed search space entry",
        ["-m", "experiment=throughput", "hydra.sweeper.params.seed='range(0,'"],
        ["hydra.sweeper.params.seed=range(0,:"],
    ),
    (
        "a bad value in a search space",
        ["-m", "experiment=throughput", "hydra.sweeper.params.seed='-1,0'"],
        ["seed=-1 is invalid"],
    ),
    ("a glob matching no option", ["-m", "optimizer=glob(rmsprop_x*)"], ["matches no option of optimizer"]),
    ("a broken interpolation", ["optimizer.lr=${{nope}}"], ["optimizer", "'nope' not found"]),
    ("a broken interpolation at a checked key", ["seed=${{nope}}"], ["seed", "'nope' not found"]),
    ("a search without -m", ["hparams_search=rmsprop_optuna"], ["hparams_search=rmsprop_optuna", "with -m"]),
    ("a printed config with a bad value", ["--cfg", "job", "optimizer.lr=-1"], ["optimizer.lr", ">= 0"]),
    ("swept lists of configs", ["-m", "logger=[tensorboard,cvs],none"], ["logger=cvs", "did you mean csv"]),
    ("null config", ["logger=null"], ["logger=null", "allowed: csv, none, tensorboard"]),
    (
        "group added twice",
        ["+logger=csv"],
        ["+logger=csv: the config already chooses an option of logger", "allowed: logger=csv"],
    ),
    (
        "plateau without validation",
        ["scheduler=plateau", "data.val_fraction=0"],
        ["scheduler.monitor=val/loss", "data.val_fraction=0", "a scheduler that follows the steps"],
    ),
    (
        "plateau between validations",
        ["scheduler=plateau", "trainer.check_val_every_n_epoch=2"],
        ["scheduler.frequency=1", "trainer.check_val_every_n_epoch=2", "scheduler.frequency=2"],
    ),
    ("unknown scheduler", ["scheduler=cosin"], ["scheduler=cosin", "did you mean cosine", "warmup_cosine"]),
    ("misspelt group", ["optimzer.lr=0.1"], ["optimzer", "did you mean optimizer"]),
    (
        "a process-group backend misspelt",
        ["trainer=ddp_cpu", "trainer.strategy.process_group_backend=glo"],
        ["trainer.strategy.process_group_backend='glo' is invalid", "allowed: gloo or nccl"],
    ),
    (
        "a process-group backend this torch lacks",
        ["trainer=ddp_cpu", "trainer.strategy.process_group_backend=mpi"],
        ["trainer.strategy.process_group_backend=mpi: this build of torch has no mpi", "allowed: gloo"],
    ),
    (
        "a strategy flag that is not one",
        ["trainer=ddp_cpu", "trainer.strategy.find_unused_parameters=maybe"],
        ["trainer.strategy.find_unused_parameters='maybe' is invalid", "true or false"],
    ),
    (
        "a batch larger than each process's share, dropped",
        ["trainer=ddp_cpu", "trainer.devices=4", "data.batch_size=1000", "data.drop_last=true"],
        ["data.batch_size=1000 is more than the 819 training rows each of the 4 processes"],
    ),
    (
        "misspelt key of Hydra's",
        ["hydra.run.dirr=x"],
        ["hydra.run.dirr is not a key of hydra.run", "hydra.run.dir?"],
    ),
    (
        "value Hydra's schema refuses",
        ["hydra.job.chdir=maybe"],
        ["hydra.job.chdir=maybe: ", "not a valid bool"],
    ),
    ("override parse error", ["optimizer.lr=0.1)"], ["optimizer.lr=0.1): extraneous input ')'", "grammar"]),
    # data
    ("missing csv", ["data=csv", "data.source.path={files}/missing.csv"], ["missing.csv", "no such file"]),
    ("empty csv", ["data=csv", "data.source.path={files}/empty.csv"], ["empty.csv", "empty"]),
    (
        "text in a cell",
        ["data=csv", "data.source.path={files}/text.csv"],
        ["line 3", "'b'", "'oops'", "number"],
    ),
    (
        "missing target column",
        ["data=csv", "data.source.path={files}/good.csv", "data.source.target=price"],
        ["data.source.target: column 'price'", "columns found", "a, b, target"],
    ),
    (
        "a file separated by semicolons",
        ["data=csv", "data.source.path={files}/semicolons.csv", "data.source.target=target"],
        ["column 'target' not found", "columns found: a;b;target", "allowed: \"data.source.delimiter=';'\""],
    ),
    (
        "a file separated by tabs",
        ["data=csv", "data.source.path={files}/tabs.csv", "data.source.target=target"],
        ["column 'target' not found", "allowed: \"data.source.delimiter='\\t'\""],
    ),
    (
        "a delimiter of two characters",
        ["data=csv", "data.source.path={files}/good.csv", "data.source.delimiter=ab"],
        ["data.source.delimiter='ab' is not one character", "allowed: one character"],
    ),
    (
        "archive arrays of other names",
        ["data=npy", "data.source.path={files}/named.npz"],
        ["named.npz lacks array(s) ['X', 'y']", "data.source.features_key", "inputs, target"],
    ),
    (
        "missing feature column",
        ["data=csv", "data.source.path={files}/good.csv", "data.source.features=[a,c]"],
        ["data.source.features: column 'c'", "columns found", "a, b, target"],
    ),
    (
        "row of empty cells",
        ["data=csv", "data.source.path={files}/empty_cells.csv"],
        ["empty_cells.csv line 3", "column 'a'", "'' is not a number"],
    ),
    (
        "unnamed column",
        ["data=csv", "data.source.path={files}/unnamed.csv"],
        ["unnamed.csv", "header column 1 has no name", "data.source.features"],
    ),
    ("folder as data file", ["data=csv", "data.source.path={files}"], ["data.source.path=", "is a folder"]),
    ("nan in csv", ["data=csv", "data.source.path={files}/nan.csv"], ["nan.csv", "data row 2", "column 'b'"]),
    ("folder as checkpoint", ["ckpt_path={earlier}"], ["is a folder", "checkpoints/last.ckpt", "resume="]),
    (
        "scheduler undoing lr multipliers",
        [
            "scheduler.scheduler={{_target_:torch.optim.lr_scheduler.CyclicLR,_partial_:true,base_lr:0.001,max_lr:0.1}}",
            "module.lr_multipliers={{weight:0.5}}",
        ],
        ["CyclicLR sets every parameter group's lr itself", "module.lr_multipliers"],
    ),
    ("run folder in use", ["hydra.run.dir={earlier}"], ["hydra.run.dir=", "already holds a run", "resume="]),
    (
        "run folder in use, bad value",  # refused before Hydra writes in the folder
        ["hydra.run.dir={earlier}", "optimizer.lr=-0.1"],
        ["optimizer.lr", ">= 0"],
    ),
    (
        "run folder in use, interpolated",
        ["hydra.run.dir=${{paths.root_dir}}/logs/train/runs/{earlier.name}"],
        ["hydra.run.dir=${paths.root_dir}/logs", "already holds a run"],
    ),
    (
        "run folder in use, interpolated with a typed key",
        ["+where=train/runs/{earlier.name}", "hydra.run.dir=${{paths.root_dir}}/logs/${{where}}"],
        ["hydra.run.dir=${paths.root_dir}/logs/${where}", "already holds a run"],
    ),
    ("sweep folder in use", ["-m", "hydra.sweep.dir={earlier}/..", "seed=0,1"], ["hydra.sweep.dir="]),
    ("a sweep into a run's folder", ["-m", "hydra.sweep.dir={earlier}", "seed=0,1"], ["already holds a run"]),
    ("a run into a folder of runs", ["hydra.run.dir={earlier}/.."], ["already holds a run"]),
    ("a run into a run's folder", ["hydra.run.dir={earlier}/checkpoints"], ["lies in the run folder"]),
    ("a sweep into a sweep's folder", ["-m", "hydra.sweep.dir={files}/sweep", "seed=0,1"], ["holds a sweep"]),
    (
        "an output folder of the run's own",
        ["paths.output_dir={files}/elsewhere"],
        ["paths.output_dir is the folder Hydra makes for each run", "allowed: hydra.run.dir=<folder>"],
    ),
    ("an output folder removed", ["~paths.output_dir"], ["~paths.output_dir: paths.output_dir is the"]),
    ("a key other settings read, removed", ["~seed"], ["~seed: other settings read seed"]),
    ("a node other settings read, null", ["module=null"], ["module=null: other settings read module"]),
    ("Hydra's config resolved alone", ["--cfg", "hydra", "--resolve"], ["allowed: --cfg all --resolve"]),
    (
        "a flag between overrides",
        ["debug=fast", "-m", "seed=0,1"],
        ["seed=0,1 comes after a flag that follows overrides", "as in -m debug=fast seed=0,1"],
    ),
    ("an empty root folder", ["paths.root_dir=''"], ["paths.root_dir='' names no folder"]),
    ("no log folder", ["paths.log_dir=null"], ["paths.log_dir=null: other settings read paths.log_dir"]),
    (
        "shell completion without a subcommand",
        ["--shell-completion"],
        ["needs one subcommand", "install=bash"],
    ),
    ("a rerun of no file", ["--experimental-rerun", "{files}/none.pickle"], ["none.pickle: no such file"]),
    ("a relative config path", ["--config-path", "rel"], ["--config-path=rel: Hydra reads a relative path"]),
    ("a config path without the config", ["--config-path={files}"], ["train.yaml is in none of"]),
    ("a typo after naming the config", ["-cn", "train", "optimizer.lrr=0.1"], ["optimizer.lrr is not a key"]),
    (
        "an experiment's sweep without -m",
        ["experiment=lr_alpha_grid"],
        ["experiment=lr_alpha_grid sweeps optimizer, optimizer.lr", "allowed: the same with -m"],
    ),
    ("too few rows", ["data=csv", "data.source.path={files}/tiny.csv"], ["3 rows", "too few"]),
    ("pickled npy", ["data=npy", "data.source.path={files}/objects.npy"], ["objects.npy", "numeric"]),
    ("empty npy", ["data=npy", "data.source.path={files}/empty.npy"], ["empty.npy"]),
    (
        "complex arrays",
        ["data=npy", "data.source.path={files}/complex.npz"],
        ["complex.npz", "'X' holds complex128", "allowed: integers or reals"],
    ),
    (
        "timedelta arrays",
        ["data=npy", "data.source.path={files}/timedelta.npz"],
        ["timedelta.npz", "'X' holds timedelta64", "allowed: integers or reals"],
    ),
    (
        "targets key equal to features key",
        ["data=npy", "data.source.path={files}/arrays.npz", "data.source.targets_key=X"],
        ["data.source.targets_key='X' is data.source.features_key too", "X, y"],
    ),
    (
        "arrays without rows",
        ["data=npy", "data.source.path={files}/no_rows.npz"],
        ["no_rows.npz", "'X' has shape (0, 2)", "one row per sample"],
    ),
    (
        "0-d arrays",
        ["data=npy", "data.source.path={files}/scalars.npz"],
        ["scalars.npz", "'X' has shape ()", "one row per sample"],
    ),
    (
        "3-d arrays",
        ["data=npy", "data.source.path={files}/cubes.npz"],
        ["cubes.npz", "'X' has shape (40, 2, 2)", "(n,) or (n, columns)"],
    ),
    (
        "values too large to standardise",
        ["data=csv", "data.source.path={files}/huge.csv"],
        ["data column 'b' is too large", "allowed: values below 1e154"],
    ),
    (
        "values too large for float32",
        ["data=csv", "data.source.path={files}/large.csv", "data.standardize_features=false"],
        [
            "data column 'b' is too large",
            "allowed: values below about 3e38",
            "data.standardize_features=true",
        ],
    ),
    (
        "an offset float32 rounds away",
        [
            "data=csv",
            "data.source.path={files}/times.csv",
            "data.source.target=t",
            "data.standardize_targets=false",
        ],
        ["data column 't' varies by", "float32 rounds by up to", "allowed: data.standardize_targets=true"],
    ),
    (
        "a text file as NumPy's",
        ["data=npy", "data.source.path={files}/text.npy"],
        ["text.npy is not a numeric NumPy file", "allowed: an .npy array"],
    ),
    ("a home folder unquoted", ["data=csv", "data.source.path=~/table.csv"], ["starting with '~' is quoted"]),
    (
        "a batch larger than the training split, dropped",
        ["data=csv", "data.source.path={files}/good.csv", "data.batch_size=64", "data.drop_last=true"],
        ["data.batch_size=64 is more than the 32 training rows", "data.drop_last=false"],
    ),
    ("features vs in_features", ["model.in_features=12"], ["model.in_features=12", "10 feature columns"]),
    ("val fraction above 1", ["data.val_fraction=1.5"], ["data.val_fraction", "[0, 1)"]),
    ("zero batch size", ["data.batch_size=0"], ["data.batch_size=0 is invalid", "integer ≥ 1"]),
    ("negative batch size", ["data.batch_size=-4"], ["data.batch_size=-4 is invalid", "integer ≥ 1"]),
    (
        "misspelt lr multiplier",
        ["module.lr_multipliers={{baises:0.1}}"],
        ["'baises'", "matches no parameter"],
    ),
    # model
    ("zero width", ["model.hidden=0"], ["model.hidden", "positive"]),
    ("negative width in list", ["model.hidden=[64,-1]"], ["model.hidden", "positive"]),
    ("no width", ["model.hidden=null"], ["model.hidden=null", "positive integer or a list"]),
    ("unknown activation", ["model.activation=relu6"], ["model.activation", "'relu6'", "tanh"]),
    ("dropout of 1.5", ["model.dropout=1.5"], ["model.dropout", "[0, 1)"]),
    # trainer
    ("zero steps", ["trainer.max_steps=0"], ["trainer.max_steps=0", "integer ≥ 1 or -1"]),
    ("steps not a number", ["trainer.max_steps=abc"], ["trainer.max_steps='abc'", "integer"]),
    ("train forever", ["trainer.max_steps=-1", "trainer.max_epochs=-1"], ["forever", "trainer.max_steps"]),
    ("negative epochs", ["trainer.max_epochs=-5"], ["trainer.max_epochs=-5", "integer ≥ 1"]),
    (
        "min above max",
        ["+trainer.min_steps=50", "trainer.max_steps=10"],
        ["trainer.min_steps=50", "max_steps=10"],
    ),
    (
        "val interval above 1",
        ["trainer.val_check_interval=1.5"],
        ["trainer.val_check_interval=1.5", "(0, 1]"],
    ),
    ("no accumulation", ["trainer.accumulate_grad_batches=0"], ["trainer.accumulate_grad_batches=0"]),
    ("unknown precision", ["trainer.precision=33"], ["precision", "33", "bf16-mixed"]),
    ("unknown accelerator", ["trainer.accelerator=gpx"], ["accelerator='gpx'", "cpu"]),
    (
        "checkpoint every 0 steps",
        ["callbacks.last_checkpoint.every_n_train_steps=0"],
        ["every_n_train_steps=0"],
    ),
    # schedulers, whose mistakes showed only at their first step, or trained a wrong run
    (
        "a step schedule of 0 epochs",
        ["scheduler=step", "scheduler.scheduler.step_size=0"],
        ["step_size=0", "≥ 1"],
    ),
    (
        "a plateau on no metric",
        ["scheduler=plateau", "scheduler.monitor=val/los"],
        ["monitor='val/los'", "val/loss"],
    ),
    (
        "a warm-up past the end",
        ["scheduler=warmup_cosine", "debug=fast"],
        ["warmup_steps=100", "trainer.max_steps=20"],
    ),
    ("a negative lr floor", ["scheduler=cosine", "scheduler.scheduler.eta_min=-1"], ["eta_min=-1", "≥ 0"]),
    # devices, data sizes, the output folders and callbacks' options
    (
        "float16 on the cpu",
        ["trainer=cpu", "trainer.precision=16-mixed"],
        ["precision=16-mixed", "bf16-mixed"],
    ),
    ("all devices of a cpu", ["trainer=cpu", "trainer.devices=-1"], ["trainer.devices=-1", "≥ 1"]),
    ("text as devices", ["trainer.devices=abc"], ["trainer.devices='abc'", "auto"]),
    ("nodes outside a cluster", ["trainer.num_nodes=2"], ["trainer.num_nodes=2", "trainer.num_nodes=1"]),
    ("a sweep's nodes", ["-m", "seed=0,1", "trainer.num_nodes=2"], ["trainer.num_nodes=2"]),
    ("a sweep's gpu ids", ["-m", "seed=0,1", "trainer=cpu", "trainer.devices=[0]"], ["trainer.devices=[0]"]),
    ("text as the data seed", ["data.source.seed=abc"], ["data.source.seed='abc'", "an integer"]),
    ("determinism maybe", ["trainer.deterministic=maybe"], ["trainer.deterministic='maybe'", "warn"]),
    ("a task name with a slash", ["task_name=a/b"], ["task_name='a/b'", "folder name"]),
    ("no task name", ["task_name=null"], ["task_name=null", "folder name"]),
    ("one folder for all jobs", ["-m", "seed=0,1", "hydra.sweep.subdir=x"], ["subdir=x", "${hydra.job.num}"]),
    (
        "one folder for jobs differing in a left-out key",  # trainer is left out of override_dirname
        ["-m", "trainer=cpu,default", "hydra.sweep.subdir=${{hydra.job.override_dirname}}"],
        ["subdir=${hydra.job.override_dirname}", "${hydra.job.num}"],
    ),
    ("an empty sweep folder", ["-m", "seed=0,1", "hydra.sweep.dir="], ["hydra.sweep.dir=''", "a folder"]),
    (
        "test nothing",
        ["train=false", "test=false", "ckpt_path={earlier}/checkpoints/last.ckpt"],
        ["test=true"],
    ),
    (
        "monitor every 0 steps",
        ["callbacks.optimizer_state_monitor.every_n_steps=0"],
        ["callbacks.optimizer_state_monitor.every_n_steps=0", "≥ 1"],
    ),
    (
        "monitor of no regex",
        ["callbacks.optimizer_state_monitor.per_parameter='(a'"],
        ["callbacks.optimizer_state_monitor.per_parameter='(a' is not a valid regular expression"],
    ),
    (
        "a lightning callback's option",
        ["callbacks.learning_rate_monitor.logging_interval=batch"],
        ["callbacks.learning_rate_monitor.logging_interval should be", "step"],
    ),
    ("half of one test batch", ["trainer.limit_test_batches=0.5"], ["limit_test_batches=0.5", "1 batch(es)"]),
    (
        "a validation interval longer than an epoch",
        ["data.batch_size=400", "trainer.val_check_interval=20"],
        [
            "trainer.val_check_interval=20 is more than an epoch's 9 training batches",
            "check_val_every_n_epoch=null",
        ],
    ),
    # other top-level keys
    ("weights of no checkpoint", ["ckpt_restore=weights"], ["ckpt_restore=weights", "ckpt_path="]),
    ("negative seed", ["seed=-1"], ["seed=-1", "integer"]),
    ("unknown nonfinite mode", ["on_nonfinite=ignore"], ["on_nonfinite='ignore'", "stop or skip"]),
    ("unknown loss", ["module.loss=mae"], ["module.loss='mae'", "mse or l1 or huber"]),
    (
        "monitors without logger",
        ["logger=none"],
        ["learning_rate_monitor and callbacks.optimizer_state_monitor need a logger", "callbacks=none"],
    ),
    ("missing csv path", ["data=csv"], ["data.source.path is missing", "set data.source.path=..."]),
    ("a swept option missing a path", ["-m", "data=synthetic,csv"], ["data.source.path is missing"]),
    ("no flush", ["module.loss_flush_every=0"], ["module.loss_flush_every=0", "integer ≥ 1"]),
    ("empty cosine", ["scheduler=cosine", "scheduler.scheduler.T_max=0"], ["scheduler.scheduler.T_max=0"]),
    ("negative gamma", ["scheduler=step", "scheduler.scheduler.gamma=-1"], ["gamma=-1", "a number > 0"]),
    ("misspelt metric", ["optimized_metric=val/los"], ["optimized_metric='val/los'", "val/loss or"]),
    (
        "misspelt checkpoint metric",
        ["callbacks.model_checkpoint.monitor=val/los"],
        ["callbacks.model_checkpoint.monitor='val/los'", "val/loss or val/rmse"],
    ),
    ("misspelt mode", ["callbacks.model_checkpoint.mode=minn"], ["mode='minn'", "min or max"]),
    ("no nodes", ["trainer.num_nodes=0"], ["trainer.num_nodes=0", "integer ≥ 1"]),
    ("no devices", ["trainer.devices=0"], ["trainer.devices=0", "-1 (all)"]),
    (
        "a strategy that spawns its processes",
        ["trainer=cpu", "+trainer.strategy=ddp_spawn", "trainer.devices=2"],
        ["trainer.strategy=ddp_spawn trains in processes it starts itself", "allowed: trainer=ddp"],
    ),
    (
        "a DDP config forking its processes",
        ["trainer=ddp_cpu", "+trainer.strategy.start_method=fork"],
        ["trainer.strategy.start_method=fork trains", "allowed: trainer.strategy.start_method=popen"],
    ),
    (
        "a TPU on a machine without one",
        ["trainer.accelerator=tpu"],
        ["trainer.accelerator=tpu: this machine"],
    ),
    ("a swept TPU", ["-m", "trainer.accelerator=cpu,tpu"], ["trainer.accelerator=tpu: this machine"]),
    (
        "a swept strategy that spawns its processes",
        ["-m", "+trainer.strategy=auto,ddp_spawn"],
        ["trainer.strategy=ddp_spawn trains in processes it starts itself"],
    ),
    (
        "plateau every step",
        ["scheduler=plateau", "scheduler.interval=step"],
        ["scheduler.interval=step", "every 1 batch(es) of an epoch", "allowed: scheduler.interval=epoch"],
    ),
    (
        "a plateau scheduler without a metric",
        ["scheduler=plateau", "scheduler.monitor=null"],
        ["scheduler.monitor=null", "allowed: scheduler.monitor=val/loss"],
    ),
    (
        "a monitor no scheduler reads",
        ["scheduler=step", "scheduler.monitor=val/loss"],
        ["scheduler.monitor=val/loss", "StepLR", "allowed: scheduler.monitor=null, or scheduler=plateau"],
    ),
    (
        "a monitor a scheduler stepped every step does not read",
        ["scheduler=cosine", "scheduler.monitor=val/loss"],
        ["scheduler.monitor=val/loss is read by a plateau scheduler only", "CosineAnnealingLR"],
    ),
    (
        "a frequency counted in each epoch's batches",
        ["scheduler=cosine", "scheduler.frequency=3"],
        ["scheduler.frequency=3", "each epoch's start", "allowed: scheduler.frequency=1"],
    ),
    (
        "a schedule in steps stepped every epoch",
        ["scheduler=cosine", "scheduler.interval=epoch"],
        ["scheduler.interval=epoch", "T_max follows trainer.max_steps", "scheduler.scheduler.T_max=<epochs>"],
    ),
    (
        "a schedule following no step limit",
        ["scheduler=cosine", "trainer.max_steps=-1", "trainer.max_epochs=2"],
        ["T_max follows trainer.max_steps=-1", "allowed: trainer.max_steps=<steps>"],
    ),
    (
        "a warm-up as long as the run",
        ["scheduler=warmup_cosine", "trainer.max_steps=60"],
        ["warmup_steps=100 is not below trainer.max_steps=60", "total_steps follows"],
    ),
    (
        "a plateau whose epochs end between validations",
        [
            "scheduler=plateau",
            "trainer.val_check_interval=150",
            "trainer.check_val_every_n_epoch=null",
            "trainer.max_steps=300",
        ],
        ["trainer.val_check_interval=150", "follow no new validation", "val_check_interval ≤ 103"],
    ),
    (
        "unknown scheduler interval",
        ["scheduler.interval=batch"],
        ["scheduler.interval='batch'", "step or epoch"],
    ),
    # checkpoints
    ("missing checkpoint", ["ckpt_path={files}/missing.ckpt"], ["missing.ckpt", "no such file"]),
    (
        "truncated checkpoint",
        ["ckpt_path={files}/truncated.ckpt"],
        ["truncated.ckpt", "truncated or corrupt"],
    ),
    ("garbage checkpoint", ["ckpt_path={files}/garbage.ckpt"], ["garbage.ckpt", "truncated or corrupt"]),
    (
        "checkpoint with a damaged tensor",
        ["ckpt_path={files}/damaged.ckpt"],
        ["damaged.ckpt is corrupt: its entry", "/data/0 does not match the checksum"],
    ),
    ("pickled checkpoint", ["ckpt_path={files}/pickled.ckpt"], ["pickled.ckpt", "weights-only"]),
    (
        "checkpoint of another shape",
        ["ckpt_path={earlier}/checkpoints/last.ckpt", "model.hidden=7", "trainer.max_steps=60"],
        ["different model", "model.0.weight", "[5, 10]", "[7, 10]"],
    ),
    (
        "checkpoint already at max_steps",
        ["ckpt_path={earlier}/checkpoints/last.ckpt", "trainer.max_steps=30"],
        ["step 30", "nothing left to train", "trainer.max_steps > 30"],
    ),
    (
        "checkpoint already at max_epochs",
        ["ckpt_path={earlier}/checkpoints/last.ckpt", "trainer.max_steps=-1", "trainer.max_epochs=1"],
        ["2 epoch(s)", "nothing left to train", "trainer.max_epochs > 2"],
    ),
    # resume
    ("resume a non-run folder", ["resume={files}"], ["not a run folder", ".hydra/config.yaml"]),
    (
        "resume a missing folder",
        ["resume=no/such/run"],
        ["resume=no/such/run is not a run folder (no such folder)"],
    ),
    ("a CSV as checkpoint", ["ckpt_path={files}/good.csv"], ["good.csv is not a checkpoint torch can read"]),
    ("resume changing lr", ["resume={earlier}", "optimizer.lr=0.5"], ["optimizer.lr=0.5", "would change"]),
    (
        "resume with a bad safe value",
        ["resume={earlier}", "trainer.max_steps=40", "test=maybe"],
        ["test='maybe'", "true or false"],
    ),
    ("resume with a sweep", ["resume={earlier}", "trainer.max_steps=40,50"], ["is a sweep", "one value"]),
    ("resume changing preset", ["resume={earlier}", "optimizer=rmsprop_centered"], ["would change"]),
    ("resume a finished run", ["resume={earlier}"], ["step 30", "nothing left to train"]),
    (
        "resume a run whose summary is cut short",
        ["resume={files}/cut_summary_run", "trainer.max_steps=40"],
        ["cut_summary_run: its records cannot be read", "metrics.json is not a JSON record"],
    ),
    (
        "resume a run whose config is edited",
        ["resume={files}/edited_config_run", "trainer.max_steps=40"],
        ["edited_config_run: its records cannot be read", ".hydra/config.yaml and metrics.json"],
    ),
    (
        "resume a run with no last checkpoint",
        ["resume={files}/no_last_run", "trainer.max_steps=40"],
        ["completed 30 steps and has no last.ckpt to continue from", "ckpt_path=<a checkpoint of it>"],
    ),
    (
        "resume a run at its epoch limit",
        ["resume={earlier}", "trainer.max_steps=-1", "trainer.max_epochs=2"],
        ["2 epoch(s)", "nothing left to train", "trainer.max_epochs > 2"],
    ),
    (
        "resume a moved run",
        ["resume={files}/moved_run", "trainer.max_steps=60"],
        ["moved_run: the run was written in", "moved since", "ckpt_path="],
    ),
    ("resume as a multirun", ["-m", "resume={earlier}"], ["--multirun"]),
    (
        "no features",
        [
            "data=csv",
            "data.source.path={files}/good.csv",
            "data.source.target=target",
            "data.source.features=[]",
        ],
        ["data.source.features is empty"],
    ),
    # output
    (
        "log dir under a file",
        ["paths.log_dir={files}/good.csv/logs"],
        ["paths.log_dir=", "good.csv/logs", "cannot be written"],
    ),
]
# cases that also run as real processes: refused by Hydra, in the job (its folder removed), before Hydra
SUBPROCESS_CASES = ("unknown optimizer key", "text in a cell", "resume changing lr")


def damaged(checkpoint: Path) -> bytes:
    """``checkpoint``'s bytes with the first of its first tensor's overwritten: a zip archive still, which
    torch loads."""
    data = bytearray(checkpoint.read_bytes())
    with zipfile.ZipFile(checkpoint) as archive:
        entry = next(info for info in archive.infolist() if info.filename.endswith("/data/0"))
    name_length, extra_length = struct.unpack_from("<HH", data, entry.header_offset + 26)
    data[entry.header_offset + 30 + name_length + extra_length] ^= 0xFF
    return bytes(data)


def test_a_checkpoint_saved_without_checksums_is_taken(tmp_path, monkeypatch):
    from torch.utils.serialization import config

    monkeypatch.setattr(config.save, "compute_crc32", False)
    torch.save({"state_dict": {"weight": torch.ones(3)}}, tmp_path / "unchecked.ckpt")
    check_intact(tmp_path / "unchecked.ckpt")  # torch's option, not damage


def write_bad_files(folder: Path, earlier: Path) -> None:
    """The broken data and checkpoint files the corpus points at."""
    folder.mkdir()
    rows = ["a,b,target", *(f"{i},{i % 3},{i * 0.5}" for i in range(40))]
    (folder / "good.csv").write_text("\n".join(rows) + "\n")
    (folder / "empty.csv").write_text("")
    (folder / "text.csv").write_text("a,b,target\n1,2,3\n4,oops,6\n")
    (folder / "nan.csv").write_text("a,b,target\n1,2,3\n4,nan,6\n" + "\n".join(rows[1:]) + "\n")
    (folder / "tiny.csv").write_text("a,b,target\n1,2,3\n4,5,6\n7,8,9\n")
    (folder / "empty_cells.csv").write_text("\n".join([*rows[:2], ",,", *rows[2:]]) + "\n")
    indexed = [f",{rows[0]}", *(f"{i},{row}" for i, row in enumerate(rows[1:]))]  # pandas' index column
    (folder / "unnamed.csv").write_text("\n".join(indexed) + "\n")
    np.savez(folder / "arrays.npz", X=np.ones((40, 2)), y=np.arange(40.0))
    np.savez(folder / "named.npz", inputs=np.ones((40, 2)), target=np.arange(40.0))
    (folder / "semicolons.csv").write_text("\n".join(row.replace(",", ";") for row in rows) + "\n")
    (folder / "tabs.csv").write_text("\n".join(row.replace(",", "\t") for row in rows) + "\n")
    np.savez(folder / "complex.npz", X=np.ones((40, 2), dtype=complex), y=np.arange(40.0))
    np.savez(folder / "timedelta.npz", X=np.ones((40, 2), dtype="m8[s]"), y=np.arange(40.0))
    np.savez(folder / "no_rows.npz", X=np.ones((0, 2)), y=np.ones(0))
    np.savez(folder / "scalars.npz", X=np.float64(1), y=np.float64(2))
    np.savez(folder / "cubes.npz", X=np.ones((40, 2, 2)), y=np.arange(40.0))
    (folder / "sweep").mkdir()
    (folder / "sweep" / "multirun.yaml").write_text("hydra: {}\n")  # a sweep whose jobs wrote nothing yet
    (folder / "huge.csv").write_text("\n".join([rows[0], *(f"{i},{i}e200,{i}" for i in range(40))]) + "\n")
    (folder / "large.csv").write_text("\n".join([rows[0], *(f"{i},{i}e38,{i}" for i in range(40))]) + "\n")
    np.save(folder / "objects.npy", np.array([{"x": 1}, None], dtype=object), allow_pickle=True)
    (folder / "empty.npy").write_bytes(b"")
    (folder / "text.npy").write_text("not numbers\n")
    times = "\n".join(f"{i},{1_700_000_000 + 37 * i % 101}" for i in range(40))  # a Unix time's offset
    (folder / "times.csv").write_text(f"a,t\n{times}\n")
    checkpoint = (earlier / "checkpoints" / "last.ckpt").read_bytes()
    (folder / "truncated.ckpt").write_bytes(checkpoint[: len(checkpoint) // 2])
    (folder / "garbage.ckpt").write_bytes(bytes(range(256)) * 40)
    (folder / "damaged.ckpt").write_bytes(damaged(earlier / "checkpoints" / "last.ckpt"))
    torch.save({"state_dict": {}, "note": fractions.Fraction(1, 3)}, folder / "pickled.ckpt")
    shutil.copytree(earlier, folder / "moved_run")
    shutil.copytree(earlier, folder / "no_last_run")  # trained, with its last.ckpt gone
    (folder / "no_last_run" / "checkpoints" / "last.ckpt").unlink()
    shutil.copytree(earlier, folder / "cut_summary_run")
    (folder / "cut_summary_run" / "metrics.json").write_text("{")
    shutil.copytree(earlier, folder / "edited_config_run")
    (folder / "edited_config_run" / ".hydra" / "config.yaml").write_text(": :")
    write_config_files(folder / "configs")


# a user's own config files, beside the project's (hydra.searchpath, --config-dir)
CONFIG_FILES = {
    "experiment/no_package.yaml": "trainer: {max_steps: 5}\n",
    "scheduler/typo.yaml": "defaults: [step]\nintervall: step\n",
    "callbacks/typo.yaml": "defaults: [default]\nmodel_checkpont: {mode: max}\n",
    "experiment/hydra_typo.yaml": "# @package _global_\nhydra: {job: {chdirr: true}}\n",
    "experiment/trainer_typo.yaml": "# @package _global_\ntrainer: {max_step: 5}\n",
    "experiment/module_typo.yaml": "# @package _global_\nmodule: {los: l1}\n",
    "experiment/no_optimizer.yaml": "# @package _global_\noptimizer: null\n",
    "optimizer/mine.yaml": "defaults: [rmsprop, _self_]\nlr: 0.004\n",
    "optimizer/rmsprop_momentum.yaml": "defaults: [rmsprop, _self_]\nmomentum: 0.5\n",
    "optimizer/no_target.yaml": "lr: 0.01\n",
    "optimizer/not_importable.yaml": "_target_: no_such_module.Optimizer\nlr: 0.01\n",
    "experiment/tabbed.yaml": "# @package _global_\ntrainer:\n\tmax_steps: 5\n",
    "experiment/missing_option.yaml": (
        "# @package _global_\ndefaults:\n  - override /optimizer: rmsprop_momentm\n"
    ),
    "scheduler/flat.yaml": "_target_: torch.optim.lr_scheduler.StepLR\nstep_size: 10\n",
}


def write_config_files(folder: Path) -> None:
    for name, text in CONFIG_FILES.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)


def snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    """Every file below ``folder`` with the hash of its bytes and the time it was last written."""
    return {
        str(path.relative_to(folder)): (
            hashlib.sha256(path.read_bytes()).hexdigest(),
            path.stat().st_mtime_ns,
        )
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="module")
def corpus_root(tmp_path_factory):
    """A folder holding one real finished run (30 steps) and the broken files."""
    root = tmp_path_factory.mktemp("corpus")
    train_in_process(root, *EARLIER_RUN)
    (earlier,) = run_dirs(root)
    write_bad_files(root / "files", earlier)
    return root, earlier


def fill(arguments: list[str], root: Path, earlier: Path) -> list[str]:
    return [argument.format(files=root / "files", earlier=earlier) for argument in arguments]


def assert_clear_rejection(
    code: int, output: str, words: list[str], root: Path, earlier: Path, before
) -> None:
    assert code == 2, output
    assert "Traceback" not in output, output
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), output
    for word in words:
        assert word.lower() in output.lower(), f"{word!r} missing from:\n{output}"
    assert run_dirs(root) == [earlier], "a rejected run left a folder behind"
    assert not list(root.glob("logs/*/multiruns")), "a rejected sweep left a folder behind"
    assert snapshot(earlier) == before, "the earlier run's folder changed"


def test_the_corpus_is_large_enough():
    assert len(CASES) >= 30
    assert len({case for case, _, _ in CASES}) == len(CASES)
    assert set(SUBPROCESS_CASES) <= {case for case, _, _ in CASES}


@pytest.mark.parametrize(("case", "arguments", "words"), CASES, ids=[case for case, _, _ in CASES])
def test_bad_input_is_one_clear_line(case, arguments, words, corpus_root, monkeypatch, capfd):
    root, earlier = corpus_root
    before = snapshot(earlier)
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    capfd.readouterr()
    code = train_in_process(root, *fill(arguments, root, earlier), check=False)
    assert_clear_rejection(code, "".join(capfd.readouterr()), words, root, earlier, before)


def test_a_runs_checkpoint_folder_as_checkpoint_names_its_files(corpus_root, capfd):
    root, earlier = corpus_root
    capfd.readouterr()
    assert train_in_process(root, f"ckpt_path={earlier}/checkpoints", check=False) == 2
    line = "".join(capfd.readouterr()).strip()
    assert line.endswith(f"such as {earlier}/checkpoints/last.ckpt, or resume={earlier} to continue that run")


@pytest.mark.skipif(torch.cuda.is_available() or torch.backends.mps.is_available(), reason="a GPU is here")
@pytest.mark.parametrize("sweep", [(), ("-m", "seed=0,1")], ids=["run", "sweep"])
def test_a_gpu_on_a_machine_without_one_is_one_clear_line(corpus_root, monkeypatch, capfd, sweep):
    words = ["trainer.accelerator=gpu", "allowed: trainer=cpu"]
    arguments = [*sweep, "trainer=gpu"]
    test_bad_input_is_one_clear_line("gpu", arguments, words, corpus_root, monkeypatch, capfd)


@pytest.mark.parametrize("case", SUBPROCESS_CASES)
def test_bad_input_in_a_real_process(case, corpus_root, monkeypatch):
    root, earlier = corpus_root
    _, arguments, words = next(entry for entry in CASES if entry[0] == case)
    before = snapshot(earlier)
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    result = run_train(root, *fill(arguments, root, earlier), check=False)
    assert_clear_rejection(result.returncode, result.stdout + result.stderr, words, root, earlier, before)


def test_full_error_variable_brings_the_traceback_back(corpus_root, monkeypatch, capfd):
    root, earlier = corpus_root
    monkeypatch.chdir(root)
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    GlobalHydra.instance().clear()
    monkeypatch.setattr(sys, "argv", [str(TRAIN), "optimizer.lr=-0.1"])
    with pytest.raises(InputError, match=r"optimizer\.lr"):
        runpy.run_path(str(TRAIN), run_name="__main__")
    GlobalHydra.instance().clear()
    assert run_dirs(root) == [earlier]
