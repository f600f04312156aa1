"""The population launcher: members train as their solo runs do, and each job's folder is a solo run's."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, open_dict
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import api_pb2

from rmsprop_lightning.app.jobs import available_cores
from rmsprop_lightning.app.run import run
from rmsprop_lightning.app.sweep_record import job_folders
from rmsprop_lightning.logging.events import read_scalars
from rmsprop_lightning.population.checkpoints import best_until
from rmsprop_lightning.population.members import MODEL_CHECKPOINT, build_member, solo_reason
from rmsprop_lightning.population.outputs import PopulationRecord, lr_tags
from rmsprop_lightning.population.train import train_population
from rmsprop_lightning.report import cli as report
from rmsprop_lightning.summary import read_summary
from tests.conftest import CONF, QUICK, TRAIN, read_hparams, run_train, session_status, train_in_process
from tests.test_sweeps import only_sweep

PRESETS = sorted(path.stem for path in (CONF / "optimizer").glob("*.yaml"))
# 200 steps over 13 batches an epoch, validated every 20 steps; no files but the solo runs' checkpoints
EQUIVALENCE = (
    "data.source.num_samples=512",
    "trainer.max_steps=200",
    "trainer.val_check_interval=20",
    "trainer.check_val_every_n_epoch=null",
    "callbacks.progress_bar.refresh_rate=0",
    "logger=none",
    "~callbacks.learning_rate_monitor",
    "~callbacks.optimizer_state_monitor",
)


@pytest.fixture(scope="module")
def composer(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """Composes job configs as the launcher does, each with its own output folder."""
    root = tmp_path_factory.mktemp("population")
    folders = iter(range(10**6))
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):

        def _compose(*overrides: str) -> DictConfig:
            cfg = compose("train", overrides=list(overrides), return_hydra_config=True)
            with open_dict(cfg):
                cfg.paths.output_dir = str(root / str(next(folders)))
                del cfg["hydra"]
            return cfg

        yield _compose
    GlobalHydra.instance().clear()


def population_weights(
    composer, precision: str
) -> tuple[dict[str, dict[str, torch.Tensor]], PopulationRecord]:
    """Every preset with seeds 0 and 1 trained as one population; the final weights by preset (seed 0)."""
    jobs = [(preset, seed) for preset in PRESETS for seed in (0, 1)]
    members = [
        build_member(index, composer(*EQUIVALENCE, f"optimizer={preset}", f"seed={seed}", precision))
        for index, (preset, seed) in enumerate(jobs)
    ]
    assert len({member.key for member in members}) == 1
    record = PopulationRecord(train_population(members))
    weights = {}
    for index, (preset, seed) in enumerate(jobs):
        if seed == 0:
            state = record.result.checkpoint["state_dict"]
            model = record.result.module.model
            weights[preset] = {name: state[f"model.{model.attribute(name)}"][index] for name in model.names}
    return weights, record


@pytest.fixture(scope="module")
def float64_population(composer):
    return population_weights(composer, "trainer.precision=64-true")


@pytest.fixture(scope="module")
def float32_population(composer):
    return population_weights(composer, "trainer.precision=32-true")


def solo_run(composer, *overrides: str) -> tuple[dict[str, torch.Tensor], dict]:
    """A solo run's final weights (from its last checkpoint) and the trainer's metrics."""
    cfg = composer(*EQUIVALENCE, *overrides, "test=false")
    run(cfg)
    checkpoint = torch.load(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt", weights_only=False)
    state = {name.removeprefix("model."): value for name, value in checkpoint["state_dict"].items()}
    metrics = checkpoint["callbacks"]["LastCheckpoint"]["callback_metrics"]
    return state, metrics


@pytest.mark.parametrize("preset", PRESETS)
def test_a_member_in_float64_ends_where_its_solo_run_ends(composer, float64_population, preset):
    weights, record = float64_population
    solo, metrics = solo_run(composer, f"optimizer={preset}", "seed=0", "trainer.precision=64-true")
    for name, value in solo.items():
        torch.testing.assert_close(weights[preset][name], value, rtol=1e-9, atol=1e-12)
    loss = record.result.module.validations[-1][1]["val/loss"][2 * PRESETS.index(preset)]
    assert loss.dtype == metrics["val/loss"].dtype == torch.float64
    # Lightning's epoch mean of the batch losses agrees with the population's to float32's precision
    assert float(loss) == pytest.approx(float(metrics["val/loss"]), rel=1e-6)


def test_learning_rate_tags_are_named_as_lightnings_monitor_names_them():
    weight, bias = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(1))
    one = torch.optim.RMSprop([{"params": [weight, bias], "name": "decay"}])
    two = torch.optim.RMSprop([{"params": [weight], "name": "decay"}, {"params": [bias]}])
    assert lr_tags(one) == ["lr-RMSprop/decay"]
    assert lr_tags(two) == ["lr-RMSprop/decay", "lr-RMSprop/pg2"]
    assert lr_tags(torch.optim.RMSprop([weight])) == ["lr-RMSprop"]


@pytest.mark.parametrize("preset", ["rmsprop", "rmsprop_centered_momentum", "rmsprop_tf"])
def test_a_member_in_float32_reaches_its_solo_runs_validation_loss(composer, float32_population, preset):
    _, record = float32_population
    _, metrics = solo_run(composer, f"optimizer={preset}", "seed=0", "trainer.precision=32-true")
    _, scores = record.validations[-1]
    member = 2 * PRESETS.index(preset)
    assert scores["val/loss"][member] == pytest.approx(float(metrics["val/loss"]), rel=1e-3)
    # recorded as the solo run logs it: the event file's float32, in metrics.json too
    assert float(torch.tensor(scores["val/loss"][member], dtype=torch.float32)) == scores["val/loss"][member]


@pytest.mark.parametrize(
    ("scheduler", "settings"),
    [
        ("warmup_cosine", ["scheduler.scheduler.warmup_steps=20", "scheduler.scheduler.warmup_steps=50"]),
        ("plateau", ["scheduler.scheduler.patience=0", "scheduler.scheduler.patience=2"]),
    ],
    ids=["warmup_cosine", "plateau"],
)
def test_members_follow_their_own_schedules(composer, scheduler, settings):
    # a plateau scheduler steps at the end of each epoch, after that epoch's validation
    float64 = (f"scheduler={scheduler}", "trainer.precision=64-true", "optimizer.lr=0.05")
    if scheduler == "plateau":
        float64 += ("trainer.val_check_interval=1.0", "trainer.check_val_every_n_epoch=1")
    members = [
        build_member(index, composer(*EQUIVALENCE, *float64, setting, f"seed={index}"))
        for index, setting in enumerate(settings)
    ]
    record = PopulationRecord(train_population(members))
    model = record.result.module.model
    for index, setting in enumerate(settings):
        solo, _ = solo_run(composer, *float64, setting, f"seed={index}")
        state = record.result.checkpoint["state_dict"]
        for name, value in solo.items():
            torch.testing.assert_close(
                state[f"model.{model.attribute(name)}"][index], value, rtol=1e-9, atol=1e-12
            )


def test_jobs_that_cannot_join_a_population_say_why(composer):
    assert solo_reason(composer()) is None
    assert solo_reason(composer("model.dropout=0.1")) == "model.dropout > 0"
    assert solo_reason(composer("trainer=ddp")) == "it uses several devices"
    assert solo_reason(composer("optimizer._target_=torch.optim.Adam")).startswith(
        "optimizer torch.optim.Adam"
    )
    assert solo_reason(composer("on_nonfinite=skip")) == "on_nonfinite=skip"
    assert solo_reason(composer("trainer.fast_dev_run=true")) == "trainer.fast_dev_run is set"
    assert solo_reason(composer("trainer.max_time=00:00:00:03")).startswith("trainer.max_time is set")
    assert solo_reason(composer("callbacks=none")).startswith("Lightning's own checkpointing is on")
    assert solo_reason(composer("callbacks=none", "trainer.enable_checkpointing=false")) is None
    assert solo_reason(composer("scheduler=plateau", "scheduler.monitor=val/rmse")) == (
        "scheduler.monitor=val/rmse"
    )
    for option, reason in (
        ("optimizer_state_monitor.per_parameter=true", "optimizer_state_monitor.per_parameter=True"),
        ("learning_rate_monitor.logging_interval=epoch", "learning_rate_monitor.logging_interval=epoch"),
        ("+learning_rate_monitor.log_momentum=true", "learning_rate_monitor.log_momentum=True"),
        ("model_checkpoint.save_on_train_epoch_end=true", "model_checkpoint.save_on_train_epoch_end=True"),
    ):
        plus = "+" if option.startswith("+") else ""
        assert solo_reason(composer(f"{plus}callbacks.{option.lstrip('+')}")) == f"callbacks.{reason}"
    for kept in ("mode=max", "save_top_k=2", "monitor=val/rmse", "filename='best-{epoch}-{step}'"):
        reason = solo_reason(composer(f"callbacks.model_checkpoint.{kept}"))
        assert reason == f"callbacks.model_checkpoint.{kept}".replace("'", "")
    assert solo_reason(composer("optimizer.fast=true")).startswith("optimizer.fast=true")
    lightnings = composer("callbacks.model_checkpoint._target_=lightning.pytorch.callbacks.ModelCheckpoint")
    assert solo_reason(lightnings).endswith("keeps only finite val/loss values, as " + MODEL_CHECKPOINT)


def test_jobs_whose_splits_follow_their_seed_train_apart(composer):
    # the config as written is the same for both; their validation rows are not
    members = [build_member(seed, composer("data.split_seed=${seed}", f"seed={seed}")) for seed in (0, 1)]
    assert members[0].key != members[1].key
    same = [build_member(seed, composer("data.split_seed=7", f"seed={seed}")) for seed in (0, 1)]
    assert same[0].key == same[1].key


def test_jobs_without_checkpoints_train_as_a_population(composer):
    overrides = ("data.source.num_samples=512", "trainer.max_steps=20", "logger=none", "callbacks=none")
    cfgs = [composer(*overrides, "trainer.enable_checkpointing=false", f"seed={seed}") for seed in (0, 1)]
    result = train_population([build_member(index, cfg) for index, cfg in enumerate(cfgs)])
    assert result.checkpoint["global_step"] == 20 and result.interrupted is None


def scalar_tags(folder: Path) -> dict[str, list[int]]:
    """The steps of every scalar tag in the run's TensorBoard event files."""
    (events,) = (folder / "tensorboard").glob("events.out.tfevents.*")
    accumulator = EventAccumulator(str(events), size_guidance={"scalars": 0})
    accumulator.Reload()
    return {tag: [e.step for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


def files(folder: Path) -> set[str]:
    """The run's files, event files by their folder only."""
    names = {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}
    return {name if "tfevents" not in name else "tensorboard/<events>" for name in names}


def test_each_job_folder_is_a_solo_runs_and_resumes_as_one(tmp_path):
    # 16 jobs, composed and written by forked workers, of a net whose tensors torch splits over threads
    # (every core's, not a test worker's share)
    wide = "model.hidden=[256,256]"
    result = run_train(
        tmp_path,
        "-m",
        "hydra/launcher=population",
        "optimizer=rmsprop,rmsprop_momentum",
        "seed=range(8)",
        wide,
        *QUICK,
        env={"OMP_NUM_THREADS": str(available_cores())},
    )
    assert "Population of 16: jobs #0, #1, #2" in result.stdout + result.stderr
    sweep = only_sweep(tmp_path)
    jobs = job_folders(sweep)
    assert [read_summary(job)["status"] for job in jobs] == ["completed"] * 16
    solo_root = tmp_path / "solo"
    solo_root.mkdir()
    train_in_process(solo_root, "optimizer=rmsprop_momentum", "seed=1", wide, *QUICK)
    (solo,) = (solo_root / "logs" / "train" / "runs").glob("*")
    member = jobs[9]
    assert files(member) == files(solo)
    assert scalar_tags(member) == scalar_tags(solo)
    (ours_events,), (theirs_events,) = (folder.rglob("events.out.tfevents.*") for folder in (member, solo))
    assert read_hparams(ours_events) == read_hparams(theirs_events)
    ours, theirs = read_summary(member), read_summary(solo)
    assert ours["best_step"] == theirs["best_step"] and ours["steps"] == theirs["steps"]
    assert ours["best"]["val/loss"] == pytest.approx(theirs["best"]["val/loss"], rel=1e-4)
    assert ours["value"] == pytest.approx(theirs["value"], rel=1e-4)
    ours_ckpt = torch.load(member / "checkpoints" / "last.ckpt", weights_only=False)
    theirs_ckpt = torch.load(solo / "checkpoints" / "last.ckpt", weights_only=False)
    assert ours_ckpt["loops"] == theirs_ckpt["loops"]
    assert ours_ckpt["callbacks"].keys() == theirs_ckpt["callbacks"].keys()
    saved = [ckpt["callbacks"]["LastCheckpoint"]["saved_in_validation"] for ckpt in (ours_ckpt, theirs_ckpt)]
    assert saved == [True, True]  # after the validation at step 30
    ours_data, theirs_data = ours_ckpt["RegressionDataModule"], theirs_ckpt["RegressionDataModule"]
    assert ours_data.pop("rows_digest") == theirs_data.pop("rows_digest")
    torch.testing.assert_close(ours_data, theirs_data)
    ours_random, theirs_random = (ckpt["callbacks"]["RandomState"] for ckpt in (ours_ckpt, theirs_ckpt))
    assert torch.equal(ours_random["torch"], theirs_random["torch"])  # its seed's, not the last job built's
    assert torch.equal(ours_random["numpy"][1], theirs_random["numpy"][1])
    assert ours_random["python"] == theirs_random["python"]
    ours_best, theirs_best = ours_ckpt["callbacks"]["FitStats"], theirs_ckpt["callbacks"]["FitStats"]
    assert ours_best["best_step"] == theirs_best["best_step"]
    assert ours_best["best"] == pytest.approx(theirs_best["best"], rel=1e-4)
    train_in_process(tmp_path, f"resume={member}", "trainer.max_steps=45")
    assert read_summary(member)["steps"] == 45 and read_summary(member)["population"] is None
    assert report.main([str(sweep), "--no-plots"]) == 0


def test_a_member_ending_an_epoch_keeps_the_plateau_scheduler_its_solo_run_keeps(tmp_path):
    # 512 rows: 13 batches an epoch; 26 steps end the second, whose validation the plateau scheduler follows
    # after the save (it halves the lr from the second epoch on: patience 0, no loss is 99% below the best)
    common = (
        "data.source.num_samples=512",
        "trainer.max_steps=26",
        "scheduler=plateau",
        "scheduler.scheduler.patience=0",
        "+scheduler.scheduler.threshold=0.99",
        "callbacks.progress_bar.refresh_rate=0",
    )
    run_train(tmp_path, "-m", "hydra/launcher=population", "optimizer.lr=0.01,0.02", *common)
    member = job_folders(only_sweep(tmp_path))[0]
    (tmp_path / "solo").mkdir()
    train_in_process(tmp_path / "solo", "optimizer.lr=0.01", *common)
    (solo,) = (tmp_path / "solo" / "logs" / "train" / "runs").glob("*")
    ours, theirs = (torch.load(f / "checkpoints" / "last.ckpt", weights_only=False) for f in (member, solo))
    assert ours["global_step"] == theirs["global_step"] == 26 and ours["loops"] == theirs["loops"]
    assert theirs["lr_schedulers"][0]["_last_lr"] == [0.01, 0.01]  # halved after the save, by the resume
    assert ours["lr_schedulers"][0].keys() == theirs["lr_schedulers"][0].keys()
    for key, value in theirs["lr_schedulers"][0].items():
        assert ours["lr_schedulers"][0][key] == pytest.approx(value, rel=1e-4), key
    (our_optimizer,), (their_optimizer,) = ours["optimizer_states"], theirs["optimizer_states"]
    assert our_optimizer["param_groups"] == their_optimizer["param_groups"]
    torch.testing.assert_close(our_optimizer["state"], their_optimizer["state"], rtol=1e-4, atol=1e-6)


def test_a_diverging_member_is_frozen_and_recorded_while_the_others_go_on(tmp_path):
    # 1e30: the parameters turn infinite; 2e8: the loss does first
    result = run_train(tmp_path, "-m", "hydra/launcher=population", "optimizer.lr=0.01,1e30,2e8", *QUICK)
    jobs = job_folders(only_sweep(tmp_path))
    good, *bad = (read_summary(job) for job in jobs)
    assert good["status"] == "completed" and good["steps"] == 30
    for summary in bad:  # recorded as a solo run records its divergence
        assert summary["status"] == "diverged" and summary["diverged_at_step"] < 30
        assert summary["error"].startswith("DivergedError: training diverged at step")
        assert "likely cause: lr=" in summary["error"] and "value" not in summary
    assert not (jobs[1] / "checkpoints" / "last.ckpt").exists()
    output = result.stdout + result.stderr
    assert output.count("Done: ") == 1 and output.count("diverged; the sweep goes on") == 2


def diverging_member_and_its_solo_run(
    tmp_path: Path, step_size: int, gamma: str, *extra: str
) -> tuple[Path, Path]:
    """The folders of a population's member whose learning rate grows ``gamma``-fold every ``step_size`` steps
    (the other member's stays) and of the same job run alone, both recorded as diverged."""
    common = (
        *QUICK,
        "scheduler=step",
        "scheduler.interval=step",
        f"scheduler.scheduler.step_size={step_size}",
    )
    run_train(
        tmp_path, "-m", "hydra/launcher=population", f"scheduler.scheduler.gamma=1,{gamma}", *common, *extra
    )
    member = job_folders(only_sweep(tmp_path))[1]
    (tmp_path / "solo").mkdir()
    train_in_process(tmp_path / "solo", f"scheduler.scheduler.gamma={gamma}", *common, *extra, check=False)
    (solo,) = (tmp_path / "solo" / "logs" / "train" / "runs").glob("*")
    assert read_summary(member)["status"] == read_summary(solo)["status"] == "diverged"
    return member, solo


def test_a_member_that_diverges_keeps_the_last_checkpoint_its_solo_run_keeps(tmp_path):
    # the learning rate grows 1e30-fold at step 10: the member diverges after its save at step 10, and its
    # scheduler, which would grow it again at step 20, stays where it was
    saved = "callbacks.last_checkpoint.every_n_train_steps=10"
    member, solo = diverging_member_and_its_solo_run(tmp_path, 10, "1e30", saved)
    ours, theirs = read_summary(member), read_summary(solo)
    assert ours["diverged_at_step"] == theirs["diverged_at_step"] > 10
    assert ours["error"].replace(str(member), str(solo)) == theirs["error"]  # the same lr, the same file
    assert ours["final"] == pytest.approx(theirs["final"], rel=1e-5)  # with the lr of the step it diverged at
    ours, theirs = (torch.load(f / "checkpoints" / "last.ckpt", weights_only=False) for f in (member, solo))
    assert ours["global_step"] == theirs["global_step"] == 10 and ours["loops"] == theirs["loops"]
    assert ours["lr_schedulers"] == theirs["lr_schedulers"]
    assert ours["callbacks"].keys() == theirs["callbacks"].keys()
    torch.testing.assert_close(ours["state_dict"], theirs["state_dict"], rtol=1e-4, atol=1e-6)
    (our_optimizer,), (their_optimizer,) = ours["optimizer_states"], theirs["optimizer_states"]
    assert our_optimizer["param_groups"] == their_optimizer["param_groups"]
    torch.testing.assert_close(our_optimizer["state"], their_optimizer["state"], rtol=1e-4, atol=1e-6)


def test_members_whose_val_loss_ends_nonfinite_are_failed_runs_in_hparams(tmp_path):
    # validation rows far out of the training rows' range: the losses overflow, training stays finite
    rows, val = 500, slice(400, 450)  # the split's defaults: 80% train, then 10% val, 10% test
    features = torch.randn(rows, 3, generator=torch.Generator().manual_seed(0)).double()
    features[torch.randperm(rows, generator=torch.Generator().manual_seed(0))[val]] = 1e25
    table = "\n".join(["a,b,c,y", *(f"{a},{b},{c},{a - b}" for a, b, c in features.tolist())])
    (tmp_path / "outliers.csv").write_text(table + "\n")
    data = ("data=csv", f"data.source.path={tmp_path / 'outliers.csv'}", "data.source.target=y")
    train_in_process(tmp_path, "-m", "hydra/launcher=population", *data, "optimizer.lr=0.01,0.03", *QUICK[1:])
    for job in job_folders(only_sweep(tmp_path)):
        assert read_summary(job)["final"]["val/loss"] == "inf"
        assert session_status(job / "tensorboard") == api_pb2.STATUS_FAILURE


def test_a_diverging_member_records_the_learning_rate_of_its_last_step(tmp_path):
    # the learning rate grows 100-fold a step, logged at every step: the last one is the one that diverged
    member, solo = diverging_member_and_its_solo_run(tmp_path, 1, "100", "trainer.log_every_n_steps=1")
    assert read_summary(member)["final"] == pytest.approx(read_summary(solo)["final"], rel=1e-5)
    ours, theirs = (read_scalars(folder / "tensorboard")["lr-RMSprop/decay"] for folder in (member, solo))
    assert [step for step, _ in ours] == [step for step, _ in theirs]
    assert [value for _, value in ours] == pytest.approx([value for _, value in theirs], rel=1e-6)
    for folder in (member, solo):  # an HPARAMS row of its settings, as a failed run
        accumulator = EventAccumulator(str(folder / "tensorboard"))
        accumulator.Reload()
        assert "_hparams_/session_start_info" in accumulator.PluginTagToContent("hparams")
        assert session_status(folder / "tensorboard") == api_pb2.STATUS_FAILURE


def test_a_member_that_diverges_in_half_precision_is_told_why_as_its_solo_run(tmp_path):
    # eps=1e-8 rounds to 0 in float16, the precision of the population's weights (its optimizers' are float32)
    train_in_process(
        tmp_path, "-m", "hydra/launcher=population", "trainer.precision=16-true", "seed=0,1", *QUICK
    )
    for job in job_folders(only_sweep(tmp_path)):
        summary = read_summary(job)
        assert summary["status"] == "diverged" and "rounds to 0 in torch.float16" in summary["error"]


def test_a_bad_launcher_setting_is_one_line_before_any_job(tmp_path):
    result = run_train(
        tmp_path, "-m", "hydra/launcher=population", "hydra.launcher.cpus_per_task=0", "seed=0,1", check=False
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "error: hydra.launcher.cpus_per_task=0 is invalid; allowed: an integer ≥ 1 or null"
    )
    assert not (tmp_path / "logs").exists()  # nor a sweep folder


def test_a_mixed_sweep_splits_into_populations_and_solo_jobs(tmp_path):
    result = run_train(
        tmp_path,
        "-m",
        "hydra/launcher=population",
        "optimizer=rmsprop,rmsprop_centered",
        "data.batch_size=16,32",
        "model.activation=nope,tanh",  # refused by the model once built: those jobs fail alone
        *QUICK,
    )
    output = result.stdout + result.stderr
    assert output.count("Population of 2: jobs") == 2
    summaries = [read_summary(job) for job in job_folders(only_sweep(tmp_path))]
    assert [s["status"] for s in summaries] == ["failed", "completed"] * 4
    assert all("activation='nope' is unknown" in s["error"] for s in summaries if s["status"] == "failed")


def test_an_optuna_batch_trains_as_one_population(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    result = run_train(
        tmp_path,
        "-m",
        "hparams_search=rmsprop_optuna",
        "hydra/launcher=population",
        "hydra.sweeper.n_trials=4",
        "hydra.sweeper.n_jobs=4",
        *QUICK,
    )
    assert "Population of 4" in result.stdout + result.stderr
    sweep = only_sweep(tmp_path)
    summaries = [read_summary(job) for job in job_folders(sweep)]
    best = min(summaries, key=lambda s: s["value"])
    assert f"best_value: {best['value']}" in (sweep / "optimization_results.yaml").read_text()
    assert json.loads((sweep / "sweep.json").read_text())["statuses"] == {"completed": 4}


def test_sigterm_stops_the_population_and_each_job_resumes_alone(tmp_path):
    command = [
        sys.executable,
        str(TRAIN),
        "-m",
        "hydra/launcher=population",
        "seed=0,1",
        "trainer.max_steps=100000",
    ]
    process = subprocess.Popen(
        command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    output = []
    for line in process.stdout:
        output.append(line)
        if "Population of 2: jobs" in line:
            time.sleep(1.0)
            process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 128 + signal.SIGTERM, "".join(output)
    assert "error: stopped by SIGTERM after step" in "".join(output)
    jobs = job_folders(only_sweep(tmp_path))
    summaries = [read_summary(job) for job in jobs]
    assert [s["status"] for s in summaries] == ["interrupted"] * 2
    assert all(s["value"] is None for s in summaries)  # as a solo run, no optimized metric
    assert "val/loss_best" not in read_scalars(jobs[0])  # nor the best values that end a run
    stopped = summaries[0]["steps"]
    assert torch.load(jobs[0] / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == stopped
    train_in_process(tmp_path, f"resume={jobs[0]}", f"trainer.max_steps={stopped + 50}")
    assert read_summary(jobs[0])["steps"] == stopped + 50
    assert [step for step, _ in read_scalars(jobs[0])["val/loss_best"]] == [stopped + 50]


@pytest.mark.parametrize(
    "signum",
    [
        pytest.param(signal.SIGINT, id="SIGINT"),
        pytest.param(signal.SIGTERM, id="SIGTERM", marks=pytest.mark.slow),
    ],
)
def test_a_signal_while_the_jobs_are_set_up_stops_the_sweep_in_one_line(tmp_path, signum):
    # to the process group, as Ctrl-C sends it: the forked workers composing the 16 jobs get it too
    command = [sys.executable, str(TRAIN), "-m", "hydra/launcher=population", "seed=range(16)", *QUICK]
    process = subprocess.Popen(
        command,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    output = []
    for line in process.stdout:
        output.append(line)
        if "Launching 16 jobs as populations" in line:
            os.killpg(process.pid, signum)
    text = "".join(output)
    assert process.wait(timeout=120) == 128 + signum, text
    name = signal.Signals(signum).name
    assert output[-1] == f"error: stopped by {name} while the sweep's jobs were set up; no job ran\n", text
    assert "Traceback" not in text and not job_folders(only_sweep(tmp_path))


@pytest.mark.parametrize(
    ("losses", "until", "kept"),
    [
        ((float("nan"), float("inf"), float("inf")), 30, -1),  # no finite value: none
        ((float("inf"), 0.7, float("nan")), 30, 20),
        ((float("nan"), 0.5, 0.2), 30, 30),
        ((0.5, 0.5, 0.7), 30, 10),  # a tie keeps the earlier
        ((0.5, 0.2, 0.1), 20, 20),  # nothing after the save counts
        ((0.5, 0.2), 5, -1),  # no validation before the save
    ],
)
def test_a_members_best_checkpoint_at_a_save_is_the_one_best_checkpoint_keeps(losses, until, kept) -> None:
    validations = [(10 * (i + 1), {"val/loss": [0.9, loss]}) for i, loss in enumerate(losses)]
    assert best_until(SimpleNamespace(validations=validations), 1, until) == kept


def test_a_population_that_fails_says_why_in_one_line_and_its_jobs_run_alone(tmp_path, monkeypatch, capfd):
    def fail(members):
        raise ValueError("no population today")

    monkeypatch.setattr("rmsprop_lightning.population.launcher.train_population", fail)
    train_in_process(tmp_path, "-m", "hydra/launcher=population", "seed=0,1", *QUICK)
    output = "".join(capfd.readouterr())
    assert "failed (ValueError: no population today); they run one by one" in output
    assert "Traceback" not in output
    summaries = [read_summary(job) for job in job_folders(only_sweep(tmp_path))]
    assert [summary["status"] for summary in summaries] == ["completed", "completed"]
