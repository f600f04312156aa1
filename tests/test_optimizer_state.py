"""OptimizerStateMonitor: its keys, its values against norms computed independently, and its host syncs."""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Iterator, Sequence
from functools import partial
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from hydra.utils import instantiate
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch.utils._python_dispatch import TorchDispatchMode

from rmsprop_lightning import FeedForward, RegressionDataModule, RegressionModule
from rmsprop_lightning.app.run import build_model, build_module
from rmsprop_lightning.callbacks import OptimizerStateMonitor
from rmsprop_lightning.callbacks.optimizer_state import custom_scalars_layout
from rmsprop_lightning.callbacks.state_norms import StateNorms
from rmsprop_lightning.data import synthetic
from rmsprop_lightning.internals import logger_step
from rmsprop_lightning.optim import RMSprop, build_param_groups
from tests.conftest import CONF
from tests.test_step_loss import RecordingLogger

SCOPES = ("", "decay/", "no_decay/")


def scoped(*leaves: str) -> set[str]:
    """``optim/<leaf>`` for the whole optimizer and each of the template's two groups."""
    return {f"optim/{scope}{leaf}" for scope in SCOPES for leaf in leaves}


BASE = ("grad_norm", "param_norm", "update_norm", "update_to_param_ratio")
RMSPROP = (*BASE, "square_avg_norm", "effective_lr_mean")
EXTREMES = {"optim/effective_lr_max", "optim/effective_lr_min"}
TEMPLATE_KEYS = {
    "rmsprop": scoped(*RMSPROP) | EXTREMES,
    "rmsprop_momentum": scoped(*RMSPROP, "momentum_buffer_norm") | EXTREMES,
    "rmsprop_centered": scoped(*RMSPROP, "grad_avg_norm") | EXTREMES,
    "rmsprop_centered_momentum": scoped(*RMSPROP, "momentum_buffer_norm", "grad_avg_norm") | EXTREMES,
}
PRESETS = sorted(path.stem for path in (CONF / "optimizer").glob("*.yaml"))


def fit(
    module: pl.LightningModule,
    monitor: OptimizerStateMonitor,
    steps: int,
    callbacks: Sequence[pl.Callback] = (),
    ckpt_path: Any = None,
    **trainer: Any,
) -> RecordingLogger:
    """Fits ``module`` for ``steps`` steps with ``callbacks`` before ``monitor``; what the logger got.

    The trainer logs every step unless ``trainer`` says otherwise.
    """
    logger = RecordingLogger()
    options = {"enable_checkpointing": False, "enable_progress_bar": False, "enable_model_summary": False}
    pl.Trainer(
        max_steps=steps,
        logger=logger,
        callbacks=[*callbacks, monitor],
        limit_val_batches=0,
        **{"log_every_n_steps": 1, **options, **trainer},
    ).fit(
        module,
        datamodule=RegressionDataModule(partial(synthetic, num_samples=256), batch_size=16),
        ckpt_path=ckpt_path,
        weights_only=False,
    )
    return logger


def logged(logger: RecordingLogger) -> dict[int, dict[str, float]]:
    """``{step: {key: value}}`` of the monitor's keys."""
    steps: dict[int, dict[str, float]] = {}
    for step, metrics in logger.calls:
        steps.setdefault(step, {}).update({k: v for k, v in metrics.items() if k.startswith("optim/")})
    return {step: values for step, values in steps.items() if values}


@pytest.mark.parametrize("preset", sorted(TEMPLATE_KEYS))
def test_keys_of_the_template_presets(compose_cfg, preset):
    cfg = compose_cfg(f"optimizer={preset}", "data.source.num_samples=256")
    module = build_module(cfg, build_model(cfg, instantiate(cfg.data)))
    logger = fit(module, OptimizerStateMonitor(), steps=3)
    values = logged(logger)
    assert sorted(values) == [0, 1, 2]
    assert set(values[2]) == TEMPLATE_KEYS[preset]


def test_keys_for_adam_have_its_states_and_no_step_size():
    module = RegressionModule(FeedForward(), partial(torch.optim.Adam, lr=0.01), no_weight_decay_on_bias=True)
    values = logged(fit(module, OptimizerStateMonitor(), steps=2))
    assert set(values[1]) == scoped(*BASE, "exp_avg_norm", "exp_avg_sq_norm")


def test_one_group_has_no_group_keys_and_per_parameter_selects_by_regex():
    module = RegressionModule(FeedForward(), partial(torch.optim.RMSprop, lr=0.01))
    values = logged(fit(module, OptimizerStateMonitor(per_parameter=r"weight$"), steps=2))
    leaves = (*RMSPROP, "square_avg_norm")
    expected = {f"optim/{leaf}" for leaf in leaves} | EXTREMES
    expected |= {f"optim/param/model.{i}.weight/{leaf}" for i in (0, 2) for leaf in leaves}
    assert set(values[1]) == expected


class ManualTwoOptimizers(RegressionModule):
    """Manual optimization with two optimizers of the same class, as with GAN-style training; the second
    steps at every ``second_every``-th batch."""

    def __init__(self, second_every: int = 1) -> None:
        super().__init__(FeedForward(), partial(torch.optim.RMSprop, lr=0.01))
        self.automatic_optimization = False
        self.second_every = second_every

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        self.log("logged/loss", loss)  # at the loggers' step, which counts batches here
        first, second = self.optimizers()
        first.zero_grad()
        second.zero_grad()
        self.manual_backward(loss)
        first.step()
        if batch_idx % self.second_every == self.second_every - 1:
            second.step()
        return loss

    def configure_optimizers(self):
        first, second = self.model[0].parameters(), self.model[2].parameters()
        return [torch.optim.RMSprop(first, lr=0.01), torch.optim.RMSprop(second, lr=0.001)]


def turns(values: dict[int, dict[str, float]]) -> dict[int, set[str]]:
    """``{step: {optimizer key, ...}}``: which optimizers the monitor logged at each step."""
    return {step: {key.split("/")[1] for key in keys} for step, keys in values.items()}


def test_several_optimizers_get_their_class_and_index_in_the_keys():
    module = ManualTwoOptimizers()
    logger = fit(module, OptimizerStateMonitor(), steps=4)  # two batches: Lightning counts both steps of each
    values = logged(logger)
    # one logger call per batch, both optimizers in it
    steps = [step for step, metrics in logger.calls if any(key.startswith("optim/") for key in metrics)]
    assert steps == [0, 1]
    assert turns(values) == {0: {"RMSprop", "RMSprop-1"}, 1: {"RMSprop", "RMSprop-1"}}
    for prefix, layer in (("optim/RMSprop/", module.model[0]), ("optim/RMSprop-1/", module.model[2])):
        norm = torch.cat([p.detach().flatten() for p in layer.parameters()]).norm().item()
        assert values[1][f"{prefix}param_norm"] == pytest.approx(norm, rel=1e-6)


def test_under_manual_optimization_the_monitor_logs_at_the_steps_self_log_does():
    logger = fit(ManualTwoOptimizers(), OptimizerStateMonitor(), steps=16, log_every_n_steps=2)
    loss_steps = [step for step, metrics in logger.calls if "logged/loss" in metrics]
    assert loss_steps == [1, 3, 5, 7]  # 8 batches
    assert turns(logged(logger)) == {step: {"RMSprop", "RMSprop-1"} for step in loss_steps}
    # an optimizer that steps at every third batch logs its first step at or past each multiple
    values = logged(fit(ManualTwoOptimizers(3), OptimizerStateMonitor(every_n_steps=4), steps=16))
    assert turns(values) == {
        3: {"RMSprop"},
        5: {"RMSprop-1"},
        7: {"RMSprop"},
        8: {"RMSprop-1"},
        11: {"RMSprop", "RMSprop-1"},
    }
    # one that starts stepping after the first multiple logs its first step (at batch 5, 14 optimizer steps)
    values = logged(fit(ManualTwoOptimizers(6), OptimizerStateMonitor(every_n_steps=4), steps=14))
    assert turns(values) == {3: {"RMSprop"}, 5: {"RMSprop-1"}, 7: {"RMSprop"}, 11: {"RMSprop", "RMSprop-1"}}


def test_several_optimizers_keep_their_turns_across_a_resume(tmp_path):
    # the second optimizer's turn at batch 8 comes after the cut, which the due step it saved keeps
    pl.seed_everything(0, verbose=False)
    straight = turns(logged(fit(ManualTwoOptimizers(3), OptimizerStateMonitor(every_n_steps=4), steps=16)))
    assert straight[8] == {"RMSprop-1"}
    pl.seed_everything(0, verbose=False)
    module, checkpoint = ManualTwoOptimizers(3), tmp_path / "cut.ckpt"
    save = [SaveAtEnd(checkpoint)]
    # 10 optimizer steps: 8 batches
    first = logged(fit(module, OptimizerStateMonitor(every_n_steps=4), steps=10, callbacks=save))
    second = logged(fit(module, OptimizerStateMonitor(every_n_steps=4), steps=16, ckpt_path=checkpoint))
    assert max(first) < 8 <= min(second)
    assert turns(first) | turns(second) == straight


def test_a_checkpoint_of_an_older_monitor_counting_global_steps_starts_new_turns(tmp_path):
    pl.seed_everything(0, verbose=False)
    module, checkpoint = ManualTwoOptimizers(), tmp_path / "cut.ckpt"
    fit(module, OptimizerStateMonitor(every_n_steps=4), steps=16, callbacks=[SaveAtEnd(checkpoint)])
    saved = torch.load(checkpoint, weights_only=False)
    (key,) = [key for key in saved["callbacks"] if key.startswith("OptimizerStateMonitor")]
    saved["callbacks"][key] = {"interval": 4, "due": [20, 20]}  # global_step's count: 16 steps in 8 batches
    torch.save(saved, checkpoint)
    second = logged(fit(module, OptimizerStateMonitor(every_n_steps=4), steps=32, ckpt_path=checkpoint))
    assert turns(second) == {11: {"RMSprop", "RMSprop-1"}, 15: {"RMSprop", "RMSprop-1"}}


class SaveAtEnd(pl.Callback):
    """Saves a checkpoint when training ends."""

    def __init__(self, path) -> None:
        self.path = path

    def on_train_end(self, trainer, pl_module):
        trainer.save_checkpoint(self.path)


class Recorder(pl.Callback):
    """Copies everything the monitor reads, independently: the parameters before the step, the rest after.

    Both are taken in torch's own step hooks, registered before the monitor's, at the first step of a
    loggers' step (of a batch, under manual optimization), which the monitor logs.
    """

    def __init__(self) -> None:
        self.before: dict[int, list[torch.Tensor]] = {}
        self.after: dict[int, list[dict[str, Any]]] = {}

    def on_train_start(self, trainer, pl_module):
        (optimizer,) = trainer.optimizers
        names = {id(p): name for name, p in pl_module.named_parameters()}
        optimizer.register_step_pre_hook(lambda *_: self._before(trainer, optimizer))
        optimizer.register_step_post_hook(lambda *_: self._after(trainer, optimizer, names))

    def _before(self, trainer, optimizer):
        params = [p for group in optimizer.param_groups for p in group["params"]]
        self.before.setdefault(logger_step(trainer), [real64(p) for p in params])

    def _after(self, trainer, optimizer, names):
        params = []
        for group_index, group in enumerate(optimizer.param_groups):
            for p in group["params"]:
                state = {k: real64(v) for k, v in optimizer.state[p].items()}
                params.append(
                    {
                        "name": names[id(p)],
                        "group": group.get("name", f"pg{group_index + 1}"),
                        "param": real64(p),
                        "grad": real64(torch.zeros_like(p) if p.grad is None else p.grad),
                        "state": state,
                        "settings": {
                            k: group.get(k)
                            for k in ("lr", "eps", "alpha", "eps_in_sqrt", "centered", "bias_correction")
                        },
                    }
                )
        self.after.setdefault(logger_step(trainer), params)


def real64(tensor: torch.Tensor) -> torch.Tensor:
    """A float64 copy; a complex tensor as its real and imaginary parts."""
    return (torch.view_as_real(tensor) if tensor.is_complex() else tensor).detach().double().clone()


def expected_value(key: str, params: list[dict[str, Any]], before: list[torch.Tensor]) -> float:
    """The value ``key`` should have, from float64 copies of the tensors."""
    leaf = key.rsplit("/", 1)[-1]
    scope = key[len("optim/") : -len(leaf)]
    chosen = [
        (p, b)
        for p, b in zip(params, before, strict=True)
        if scope == "" or scope == f"{p['group']}/" or scope == f"param/{p['name']}/"
    ]

    def tensors(quantity: str) -> list[torch.Tensor]:
        if quantity == "update":
            return [p["param"] - b for p, b in chosen]
        if quantity in ("grad", "param"):
            return [p[quantity] for p, _ in chosen]
        return [p["state"][quantity] for p, _ in chosen if quantity in p["state"]]

    def norm(quantity: str) -> float:
        return math.sqrt(sum(t.pow(2).sum().item() for t in tensors(quantity)))

    if leaf.endswith("_norm"):
        return norm(leaf[: -len("_norm")])
    if leaf == "update_to_param_ratio":
        return norm("update") / norm("param")
    step_sizes = []
    for p, _ in chosen:
        settings, state = p["settings"], p["state"]
        if "square_avg" not in state:  # a parameter the optimizer never stepped has no step size
            continue
        correction = 1 - settings["alpha"] ** state["step"].item() if settings["bias_correction"] else 1.0
        v = state["square_avg"] / correction
        if settings["centered"]:
            v = (v - (state["grad_avg"] / correction) ** 2).clamp_min(0)
        eps = settings["eps"]
        denominator = (v + eps).sqrt() if p["settings"]["eps_in_sqrt"] else v.sqrt() + eps
        step_sizes.append((p["settings"]["lr"] / denominator).flatten())
    values = torch.cat(step_sizes)
    return {
        "effective_lr_mean": values.mean(),
        "effective_lr_max": values.max(),
        "effective_lr_min": values.min(),
    }[leaf].item()


OPTIMIZERS = {
    "torch_centered_momentum_decay": partial(
        torch.optim.RMSprop, lr=0.01, momentum=0.9, centered=True, weight_decay=0.1
    ),
    # square_avg from 1: else the first step's variance is 0 up to rounding, and so its step size
    "ours_centered_bias_corrected": partial(
        RMSprop, lr=0.01, alpha=0.9, momentum=0.9, centered=True, bias_correction=True, initial_square_avg=1.0
    ),
    "adam": partial(torch.optim.Adam, lr=0.01),
}


class EpsInSqrtModule(RegressionModule):
    """RMSprop, one group with eps inside the square root (as our optimizer can), one centered."""

    def configure_optimizers(self):
        optimizer = super().configure_optimizers()
        optimizer.param_groups[1]["eps_in_sqrt"] = True
        optimizer.param_groups[1]["eps"] = 1e-3
        optimizer.param_groups[0]["centered"] = True  # and one centered group beside a plain one
        return optimizer


class ShrinkBetweenSteps(pl.Callback):
    """Changes the parameters in place before every other step: the update is only the step's."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx % 2:
            with torch.no_grad():
                for param in pl_module.parameters():
                    param.mul_(0.9)


class CenteredMomentumFromStep2(pl.Callback):
    """Turns every group centered with momentum before step 2: new states and a new step form mid-fit."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == 2:
            for group in trainer.optimizers[0].param_groups:
                group.update(centered=True, momentum=0.9)


class ComplexTerm(RegressionModule):
    """Adds ``|z|²`` of a complex parameter ``model.z`` to the loss: RMSprop steps its two parts apart."""

    def training_step(self, batch, batch_idx):
        return super().training_step(batch, batch_idx) + self.model.z.abs().square().sum()


class TwoStepsPerBatch(RegressionModule):
    """Manual optimization stepping one optimizer twice per batch: the first step of each is logged."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        optimizer = self.optimizers()
        for _ in range(2):
            loss = super().training_step(batch, batch_idx)
            optimizer.zero_grad()
            self.manual_backward(loss)
            optimizer.step()
        return loss


VARIANTS = [*PRESETS, *OPTIMIZERS, "eps_in_sqrt", "large_bias_corrected", "lr_scheduled_every_step"]
VARIANTS += ["params_changed_between_steps", "two_steps_per_batch", "param_without_grad", "complex_param"]
VARIANTS += ["states_added_mid_fit"]  # new states and a new step form mid-fit: the plan is rebuilt


@pytest.mark.parametrize("name", VARIANTS)
def test_values_equal_norms_computed_from_the_optimizer_state(compose_cfg, name):
    def preset(preset_name: str) -> Any:  # the optimizer factory of conf/optimizer/<preset_name>.yaml
        return instantiate(compose_cfg(f"optimizer={preset_name}").optimizer)

    pl.seed_everything(0, verbose=False)
    large = name == "large_bias_corrected"
    model = FeedForward(hidden=[40, 40] if large else 5)  # a 40×40 weight: sums of 1600 squares
    if name == "param_without_grad":  # in the optimizer, never used: no gradient, no state, no update
        model.register_parameter("unused", torch.nn.Parameter(torch.ones(2, 3)))
    if name == "complex_param":
        model.register_parameter("z", torch.nn.Parameter(torch.randn(2, 3, dtype=torch.complex64)))
    if name in OPTIMIZERS:
        factory = OPTIMIZERS[name]
    elif name in PRESETS:
        factory = preset(name)
    elif name == "states_added_mid_fit":
        factory = preset("rmsprop")
    else:
        factory = preset("rmsprop_bias_corrected" if large else "rmsprop_centered")
    options = {"no_weight_decay_on_bias": True, "lr_multipliers": {"^2": 0.5}}
    if name == "eps_in_sqrt":
        module = EpsInSqrtModule(model, factory, **options)
    elif name == "two_steps_per_batch":
        module = TwoStepsPerBatch(model, factory, **options)
    elif name == "complex_param":
        module = ComplexTerm(model, factory, **options)
    elif name == "lr_scheduled_every_step":  # the step size is the one of the lr the step used
        halving = partial(torch.optim.lr_scheduler.ExponentialLR, gamma=0.5)
        module = RegressionModule(model, factory, scheduler=halving, scheduler_interval="step", **options)
    else:
        module = RegressionModule(model, factory, **options)
    recorder = Recorder()
    steps = 8 if name == "two_steps_per_batch" else 4  # Lightning counts every optimizer step
    changes = {"params_changed_between_steps": [ShrinkBetweenSteps()]}
    changes["states_added_mid_fit"] = [CenteredMomentumFromStep2()]
    monitor = OptimizerStateMonitor(per_parameter=True, flush_every=3)
    values = logged(fit(module, monitor, steps, callbacks=[*changes.get(name, []), recorder]))
    assert sorted(values) == list(range(4))  # every batch, as the loggers count them
    last = max(values)
    groups = {p["group"] for p in recorder.after[last]}
    assert len(groups) > 1 and all(f"optim/{group}/update_norm" in values[last] for group in groups)
    for step, step_values in values.items():
        for key, value in step_values.items():
            expected = expected_value(key, recorder.after[step], recorder.before[step])
            assert value == pytest.approx(expected, rel=1e-6, abs=1e-12), (step, key)
    assert values[last]["optim/update_norm"] > 0
    if name == "states_added_mid_fit":
        assert "optim/grad_avg_norm" not in values[1] and "optim/grad_avg_norm" in values[2]


class SparseEmbedding(pl.LightningModule):
    """An embedding with sparse gradients, trained with SGD; keeps the dense gradient of each step."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embedding = torch.nn.Embedding(20, 1, sparse=True)
        self.grad_norms: list[float] = []

    def training_step(self, batch, batch_idx):
        features, targets = batch
        rows = (features[:, 0].abs() * 5).long().clamp(max=19)  # repeated rows: their gradients add up
        return torch.nn.functional.mse_loss(self.embedding(rows), targets)

    def on_before_optimizer_step(self, optimizer) -> None:
        self.grad_norms.append(self.embedding.weight.grad.to_dense().norm().item())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_a_sparse_gradient_has_the_norm_of_its_dense_form():
    module = SparseEmbedding()
    values = logged(fit(module, OptimizerStateMonitor(every_n_steps=1), steps=3))
    assert [values[step]["optim/grad_norm"] for step in range(3)] == pytest.approx(module.grad_norms)


def test_two_monitors_in_one_trainer_keep_their_own_turns():
    # Lightning keys a callback's state in checkpoints by its state_key, and refuses two alike
    every, weights = OptimizerStateMonitor(every_n_steps=1), OptimizerStateMonitor(2, per_parameter="weight$")
    values = logged(fit(RegressionModule(FeedForward(10, 4, 1), torch.optim.RMSprop), every, 4, [weights]))
    for key, steps in (("optim/grad_norm", [0, 1, 2, 3]), ("optim/param/model.0.weight/grad_norm", [1, 3])):
        assert sorted(step for step, at_step in values.items() if key in at_step) == steps


def test_every_n_steps_and_the_trainer_interval():
    module = RegressionModule(FeedForward(), partial(torch.optim.RMSprop, lr=0.01))
    assert sorted(logged(fit(module, OptimizerStateMonitor(every_n_steps=3), steps=10))) == [2, 5, 8]
    module = RegressionModule(FeedForward(), partial(torch.optim.RMSprop, lr=0.01))
    logger = fit(module, OptimizerStateMonitor(), steps=10, log_every_n_steps=4)
    assert sorted(logged(logger)) == [3, 7]
    module = RegressionModule(FeedForward(), partial(torch.optim.RMSprop, lr=0.01))
    logger = fit(module, OptimizerStateMonitor(every_n_steps=2), steps=6, accumulate_grad_batches=3)
    assert sorted(logged(logger)) == [1, 3, 5]
    for every_n_steps, steps in ((None, []), (4, [3, 7])):  # log_every_n_steps=0: self.log logs nothing
        module = RegressionModule(FeedForward(), partial(torch.optim.RMSprop, lr=0.01))
        logger = fit(module, OptimizerStateMonitor(every_n_steps), steps=10, log_every_n_steps=0)
        assert sorted(logged(logger)) == steps


def test_no_logger_is_a_clear_error():
    module = RegressionModule(FeedForward(), partial(torch.optim.RMSprop, lr=0.01))
    trainer = pl.Trainer(
        max_steps=2, logger=False, callbacks=[OptimizerStateMonitor()], enable_progress_bar=False
    )
    with pytest.raises(MisconfigurationException, match="OptimizerStateMonitor needs a logger"):
        trainer.fit(
            module, datamodule=RegressionDataModule(partial(synthetic, num_samples=64), batch_size=16)
        )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"every_n_steps": 0}, "every_n_steps must be a positive integer or None, got 0"),
        ({"every_n_steps": 2.5}, "every_n_steps must be a positive integer or None, got 2.5"),
        ({"per_parameter": "weight("}, "per_parameter='weight(' is not a valid regular expression"),
        ({"per_parameter": 3}, "per_parameter must be a bool or a regular expression, got 3"),
        ({"flush_every": 0}, "flush_every must be a positive integer, got 0"),
        ({"flush_secs": 0}, "flush_secs must be a positive number of seconds or None, got 0"),
        ({"flush_secs": "1"}, "flush_secs must be a positive number of seconds or None, got '1'"),
    ],
)
def test_bad_options_are_refused(options, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        OptimizerStateMonitor(**options)


class OpCounter(TorchDispatchMode):
    """Counts the torch ops run, and apart those that make the host wait for a value of the device."""

    def __init__(self) -> None:
        super().__init__()
        self.ops = self.reads = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        self.reads += func is torch.ops.aten._local_scalar_dense.default
        return func(*args, **(kwargs or {}))


class CountingMonitor(OptimizerStateMonitor):
    """Records, per hook call, the torch ops and host reads inside it (a flush is its own call)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.calls: list[tuple[str, int, int, int]] = []  # (hook, entries flushed, ops, host reads)
        self.counter: OpCounter | None = None

    @contextlib.contextmanager
    def _counting(self, hook: str, entries: int = 0) -> Iterator[None]:
        outer, self.counter = self.counter, OpCounter()
        with self.counter if outer is None else contextlib.nullcontext():
            yield
        self.calls.append((hook, entries, self.counter.ops, self.counter.reads))
        self.counter = outer

    def _before_step(self, *args):
        with self._counting("before"):
            super()._before_step(*args)

    def _after_step(self, *args):
        with self._counting("after"):
            super()._after_step(*args)

    def flush(self, trainer):
        with self._counting("flush", len(self.buffer)):
            super().flush(trainer)


def test_one_host_read_per_flush_and_nothing_on_steps_not_logged(monkeypatch):
    monitor = CountingMonitor(every_n_steps=2, flush_every=4)
    for method in ("tolist", "item", "cpu", "numpy"):
        original = getattr(torch.Tensor, method)

        def counted(self, *args, _original=original, **kwargs):
            if monitor.counter is not None:
                monitor.counter.reads += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, method, counted)
    module = RegressionModule(FeedForward(), partial(torch.optim.RMSprop, lr=0.01, centered=True))
    logger = fit(module, monitor, steps=20)
    assert sorted(logged(logger)) == list(range(1, 20, 2))
    hooks = [call for call in monitor.calls if call[0] in ("before", "after")]
    assert len(hooks) == 40 and all(reads == 0 for *_, reads in hooks)
    # the hooks of the steps not logged run no torch op at all
    assert [ops > 0 for _, _, ops, _ in hooks] == [False, False, True, True] * 10
    flushes = [(entries, reads) for hook, entries, _, reads in monitor.calls if hook == "flush" and entries]
    assert flushes == [(4, 1), (4, 1), (2, 1)]


def test_layout_charts_every_state_and_the_losses():
    keys = [
        "optim/square_avg_norm",
        "optim/decay/momentum_buffer_norm",
        "optim/grad_norm",
        "optim/update_norm",
    ]
    keys += ["optim/param_norm", "optim/update_to_param_ratio", "optim/effective_lr_max"]
    layout = custom_scalars_layout(keys)
    assert list(layout["Optimizer state"]) == ["square_avg norm", "momentum_buffer norm"]
    assert list(layout["Optimizer step"]) == [
        "grad norm",
        "param norm",
        "update norm",
        "update / param norm",
        "effective lr: mean, max, min",
    ]
    (pattern,) = layout["Optimizer state"]["momentum_buffer norm"][1]
    assert re.match(pattern, "optim/decay/momentum_buffer_norm") and re.match(
        pattern, "optim/momentum_buffer_norm"
    )
    assert not re.match(pattern, "optim/square_avg_norm")
    assert re.match(pattern, "exp-optim/momentum_buffer_norm")  # a logger's prefix
    (loss,) = layout["Loss"]["loss (train every step, val, test)"][1]
    # TensorBoard's custom-scalars plugin matches from the start of the tag
    assert [bool(re.match(loss, tag)) for tag in ("train/loss", "val/loss", "val/rmse")] == [
        True,
        True,
        False,
    ]


def one_rmsprop_step() -> tuple[torch.optim.Optimizer, list[torch.nn.Parameter], list[torch.Tensor]]:
    """torch's RMSprop after one step on the canonical net: the optimizer, its parameters and −θ before it."""
    model = FeedForward(hidden=5)
    optimizer = torch.optim.RMSprop(model.parameters(), lr=0.01)
    model(torch.randn(4, 10)).square().sum().backward()
    params = list(model.parameters())
    before = torch._foreach_neg(params)
    optimizer.step()
    return optimizer, params, before


def measured(optimizer: torch.optim.Optimizer, before: list[torch.Tensor]) -> dict[str, float]:
    norms = StateNorms(optimizer, "optim/", {}, None)
    return dict(zip(norms.names, norms.values(optimizer, before).tolist(), strict=True))


def test_an_infinite_state_leaves_the_other_values_as_they_are():
    optimizer, params, before = one_rmsprop_step()
    optimizer.state[params[0]]["square_avg"][0, 0] = math.inf  # overflowed, as a huge lr makes it
    values = measured(optimizer, before)
    assert values["optim/square_avg_norm"] == math.inf
    param_norm = math.sqrt(sum(p.detach().double().square().sum().item() for p in params))
    assert values["optim/param_norm"] == pytest.approx(param_norm, rel=1e-6)
    assert math.isfinite(values["optim/grad_norm"]) and values["optim/effective_lr_min"] == 0.0


def test_norms_whose_squares_sum_above_float32s_range_are_finite():
    optimizer, params, before = one_rmsprop_step()
    for state in (optimizer.state[param]["square_avg"] for param in params):  # each norm 1.5e19: its square
        state.mul_(1.5e19 / state.double().norm().item())  # (2.25e38) fits float32, the sum of four does not
    assert measured(optimizer, before)["optim/square_avg_norm"] == pytest.approx(3e19, rel=1e-6)


def test_a_nan_state_of_one_group_leaves_the_other_groups_values_finite():
    model = FeedForward(hidden=5)
    groups = build_param_groups(model, no_weight_decay_on_bias=True)
    optimizer = torch.optim.RMSprop(groups, lr=0.01)
    model(torch.randn(4, 10)).square().sum().backward()
    before = torch._foreach_neg([param for group in groups for param in group["params"]])
    optimizer.step()
    optimizer.state[groups[0]["params"][0]]["square_avg"][0, 0] = math.nan
    norms = StateNorms(optimizer, "optim/", {}, None)
    values = dict(zip(norms.names, norms.values(optimizer, before).tolist(), strict=True))
    nan = {name for name, value in values.items() if math.isnan(value)}
    assert nan == {
        "optim/square_avg_norm",
        "optim/decay/square_avg_norm",
        "optim/effective_lr_mean",
        "optim/decay/effective_lr_mean",
        "optim/effective_lr_max",  # extremes over the whole optimizer
        "optim/effective_lr_min",
    }
    assert all(math.isfinite(value) for name, value in values.items() if name not in nan)
