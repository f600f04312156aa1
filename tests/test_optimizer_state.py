"""OptimizerStateMonitor: its keys, its values against norms computed independently, and its host syncs."""

from __future__ import annotations

import contextlib
import math
import re
import warnings
from collections.abc import Iterator, Sequence
from functools import partial
from types import SimpleNamespace
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from hydra.utils import instantiate
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch.utils._python_dispatch import TorchDispatchMode

from rmsprop_lightning import FeedForward, RegressionDataModule, RegressionModule
from rmsprop_lightning.callbacks import OptimizerStateMonitor, row_copy, state_norms
from rmsprop_lightning.callbacks.optimizer_state import custom_scalars_layout, global_step_reader
from rmsprop_lightning.callbacks.state_norms import SMALL_NUMEL
from rmsprop_lightning.data import synthetic
from rmsprop_lightning.optim import RMSprop
from rmsprop_lightning.logging.step_metrics import StepMetricBuffer
from rmsprop_lightning.app.run import build_model, build_module
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


def fit(
    module: pl.LightningModule,
    monitor: OptimizerStateMonitor,
    steps: int,
    callbacks: Sequence[pl.Callback] = (),
    **trainer: Any,
) -> RecordingLogger:
    """Fits ``module`` for ``steps`` steps with ``callbacks`` before ``monitor``; what the logger got."""
    logger = RecordingLogger()
    options = {"enable_checkpointing": False, "enable_progress_bar": False, "enable_model_summary": False}
    pl.Trainer(
        max_steps=steps,
        logger=logger,
        callbacks=[*callbacks, monitor],
        limit_val_batches=0,
        **options,
        **trainer,
    ).fit(module, datamodule=RegressionDataModule(partial(synthetic, num_samples=256), batch_size=16))
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
    """Manual optimization with two optimizers of the same class, as with GAN-style training."""

    def __init__(self) -> None:
        super().__init__(FeedForward(), partial(torch.optim.RMSprop, lr=0.01))
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        for optimizer in self.optimizers():
            optimizer.zero_grad()
        self.manual_backward(loss)
        for optimizer in self.optimizers():
            optimizer.step()
        return loss

    def configure_optimizers(self):
        first, second = self.model[0].parameters(), self.model[2].parameters()
        return [torch.optim.RMSprop(first, lr=0.01), torch.optim.RMSprop(second, lr=0.001)]


def test_several_optimizers_get_their_class_and_index_in_the_keys():
    module = ManualTwoOptimizers()
    values = logged(fit(module, OptimizerStateMonitor(), steps=4))
    # Lightning counts both optimizers' steps: each is logged at its own count, two per batch
    assert [{key.split("/")[1] for key in values[step]} for step in range(4)] == [
        {"RMSprop"},
        {"RMSprop-1"},
    ] * 2
    last = values[2] | values[3]
    assert "optim/RMSprop/square_avg_norm" in last and "optim/RMSprop-1/square_avg_norm" in last
    for prefix, layer in (("optim/RMSprop/", module.model[0]), ("optim/RMSprop-1/", module.model[2])):
        norm = torch.cat([p.detach().flatten() for p in layer.parameters()]).norm().item()
        assert last[f"{prefix}param_norm"] == pytest.approx(norm, rel=1e-6)


class Recorder(pl.Callback):
    """Copies everything the monitor reads, independently: the parameters before the step, the rest after.

    Both are taken in torch's own step hooks, registered before the monitor's.
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
        self.before[trainer.global_step] = [p.detach().double().clone() for p in params]

    def _after(self, trainer, optimizer, names):
        params = []
        for group_index, group in enumerate(optimizer.param_groups):
            for p in group["params"]:
                state = {k: v.detach().double().clone() for k, v in optimizer.state[p].items()}
                params.append(
                    {
                        "name": names[id(p)],
                        "group": group.get("name", f"pg{group_index + 1}"),
                        "param": p.detach().double().clone(),
                        "grad": torch.zeros_like(p, dtype=torch.float64)
                        if p.grad is None
                        else p.grad.detach().double().clone(),
                        "state": state,
                        "settings": {
                            k: group.get(k)
                            for k in ("lr", "eps", "alpha", "eps_in_sqrt", "centered", "bias_correction")
                        },
                    }
                )
        self.after[trainer.global_step] = params


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
    "rmsprop": partial(torch.optim.RMSprop, lr=0.01),
    "ours_tf": partial(
        RMSprop, lr=0.01, alpha=0.9, eps=1e-10, momentum=0.9, eps_in_sqrt=True, initial_square_avg=1.0
    ),
    "ours_bias_corrected_nesterov": partial(
        RMSprop, lr=0.01, alpha=0.9, momentum=0.9, nesterov=True, bias_correction=True
    ),
    "centered_momentum_decay": partial(
        torch.optim.RMSprop, lr=0.01, momentum=0.9, centered=True, weight_decay=0.1
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
    """Changes the parameters in place before every other step: that step cannot start from the last one."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx % 2:
            with torch.no_grad():
                for param in pl_module.parameters():
                    param.mul_(0.9)


class TwoStepsPerBatch(RegressionModule):
    """Manual optimization stepping one optimizer twice per batch: each step is logged at its count."""

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


class StridedGradients(pl.Callback):
    """Replaces each gradient by a copy that is every other column of a twice wider tensor of ones."""

    def on_after_backward(self, trainer, pl_module):
        for param in pl_module.parameters():
            if param.grad is not None:
                wide = param.grad.new_ones(*param.shape[:-1], 2 * param.shape[-1])
                wide[..., ::2] = param.grad
                param.grad = wide[..., ::2]


class ZeroGradInPlace(RegressionModule):
    """Gradients zeroed in place (``set_to_none=False``): the same tensors at every step."""

    def optimizer_zero_grad(self, epoch, batch_idx, optimizer):
        optimizer.zero_grad(set_to_none=False)


VARIANTS = [*OPTIMIZERS, "eps_in_sqrt", "large_tensors", "short_history", "lr_scheduled_every_step"]
VARIANTS += ["params_changed_between_steps", "two_steps_per_batch", "grads_zeroed_in_place"]
VARIANTS += ["param_without_grad", "strided_grads", "row_copy_by_torch"]


@pytest.mark.parametrize("name", VARIANTS)
def test_values_equal_norms_computed_from_the_optimizer_state(name, monkeypatch):
    if name == "short_history":  # room for two steps: the history is reduced before each flush is due
        # a row: 61 values each of grad, param, 3 states and θ_before and a zero, in float32; their
        # squares and 61 step sizes in float64
        monkeypatch.setattr(state_norms, "MAX_HISTORY_BYTES", 2 * (4 * (6 * 61 + 1) + 8 * (6 * 61 + 1 + 61)))
    pl.seed_everything(0, verbose=False)
    large = name in ("large_tensors", "ours_bias_corrected_nesterov")
    hidden = [40, 40] if large else 5  # a 40×40 weight takes the per-tensor path
    model = FeedForward(hidden=hidden)
    assert (max(p.numel() for p in model.parameters()) > SMALL_NUMEL) == large
    if name == "param_without_grad":  # in the optimizer, never used: no gradient, no state, no update
        model.register_parameter("unused", torch.nn.Parameter(torch.ones(2, 3)))
    options = {"no_weight_decay_on_bias": True, "lr_multipliers": {"^2": 0.5}}
    if name == "eps_in_sqrt":
        module = EpsInSqrtModule(model, OPTIMIZERS["rmsprop"], **options)
    elif name == "two_steps_per_batch":
        module = TwoStepsPerBatch(model, OPTIMIZERS["rmsprop"], **options)
    elif name == "grads_zeroed_in_place":
        module = ZeroGradInPlace(model, OPTIMIZERS["rmsprop"], **options)
    elif name == "lr_scheduled_every_step":  # the step size is the one of the lr the step used
        halving = partial(torch.optim.lr_scheduler.ExponentialLR, gamma=0.5)
        module = RegressionModule(
            model, OPTIMIZERS["rmsprop"], scheduler=halving, scheduler_interval="step", **options
        )
    else:
        optimizer = OPTIMIZERS.get(name, OPTIMIZERS["centered_momentum_decay"])
        module = RegressionModule(model, optimizer, **options)
    recorder = Recorder()
    native_copy = name != "row_copy_by_torch"  # else torch.cat, as without a C++ compiler
    monitor = OptimizerStateMonitor(per_parameter=True, flush_every=3, native_copy=native_copy)
    logger = RecordingLogger()
    steps = 10 if name == "two_steps_per_batch" else 5  # Lightning counts every optimizer step
    shrink = [ShrinkBetweenSteps()] if name == "params_changed_between_steps" else []
    shrink += [StridedGradients()] if name == "strided_grads" else []
    pl.Trainer(
        max_steps=steps,
        logger=logger,
        callbacks=[*shrink, recorder, monitor],
        limit_val_batches=0,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    ).fit(module, datamodule=RegressionDataModule(partial(synthetic, num_samples=256), batch_size=16))
    values = logged(logger)
    # every optimizer step, as Lightning counts them
    assert sorted(values) == list(range(steps))
    capacity = max(probe.capacity for probe in monitor.probes)
    assert capacity == (2 if name == "short_history" else 3)
    last = max(values)
    groups = {p["group"] for p in recorder.after[last]}
    assert len(groups) > 1 and all(f"optim/{group}/update_norm" in values[last] for group in groups)
    for step, step_values in values.items():
        for key, value in step_values.items():
            expected = expected_value(key, recorder.after[step], recorder.before[step])
            assert value == pytest.approx(expected, rel=1e-6, abs=1e-12), (step, key)
    assert values[last]["optim/update_norm"] > 0
    # the native copy serves every probe on the CPU where it can be built
    copies = {probe._copy.native for probe in monitor.probes}
    assert copies == {native_copy and row_copy.native_module() is not None}
    # and adds up the version counters
    assert {isinstance(probe.snapshot._version_total, partial) for probe in monitor.probes} == copies


def row_copies() -> tuple[list[torch.nn.Parameter], dict[str, Any]]:
    """The canonical net's parameters, and their copies by C++ and by torch into histories of 6 rows of -1.

    A row holds the gradients, the parameters, one state each, then θ before the step.
    """
    if row_copy.native_module() is None:
        pytest.skip("no C++ compiler or Python headers here: torch.cat copies the rows")
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(shape)) for shape in [(5, 10), (5,), (1, 5), (1,)]]
    tensors, before = [*params, *map(torch.rand_like, params)], torch.randn(61)
    histories = {path: torch.full((6, 4 * 61 + 2), -1.0) for path in ("native", "torch")}
    copies = {
        "native": row_copy.RowCopy(params, tensors, before, histories["native"]),
        "torch": row_copy.RowCopy(params, tensors, before, histories["torch"], native=False),
    }
    assert copies["native"].native and not copies["torch"].native
    return params, {"copies": copies, "histories": histories}


def test_the_native_row_copy_writes_what_torch_cat_writes():
    params, made = row_copies()
    native_history, torch_history = made["histories"]["native"], made["histories"]["torch"]
    for row, with_before in [(0, True), (1, False), (3, True), (5, False)]:
        # fresh gradients at each step: one missing; in row 3 one is every other column of a wider one
        for k, param in enumerate(params):
            param.grad = None if k == row % 4 else torch.randn_like(param)
        params[0].grad = torch.randn(5, 20)[:, ::2] if row == 3 else params[0].grad
        for copy in made["copies"].values():
            copy(row, with_before)
        torch.testing.assert_close(native_history, torch_history, rtol=0, atol=0)
    written = native_history != -1.0
    assert written[[0, 3], : 4 * 61].all() and written[[1, 5], : 3 * 61].all()
    # nothing past a row's end, and no other row, is written
    assert not written[[1, 5], 3 * 61 :].any() and not written[:, 4 * 61 :].any()
    assert not written[[2, 4]].any()
    for copy in made["copies"].values():  # a row past the history is refused, as torch's indexing does
        with pytest.raises(IndexError):
            copy(6, True)
    assert torch.equal(written, native_history != -1.0)


@pytest.mark.parametrize(
    "swapped",
    [torch.ones(50), torch.ones(25, dtype=torch.float64)],
    ids=["another_size", "another_dtype_same_bytes"],
)
def test_the_native_row_copy_leaves_a_gradient_laid_out_otherwise_to_torch(swapped):
    params, made = row_copies()
    for param in params:
        param.grad = torch.zeros_like(param)
    params[0].grad.data = swapped  # ``.data`` bypasses torch's checks of a gradient's size and dtype
    for copy in made["copies"].values():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns that it resizes the row it cannot fill
            copy(0, True)
    torch.testing.assert_close(made["histories"]["native"], made["histories"]["torch"], rtol=0, atol=0)


def test_rows_too_short_for_the_copy_are_refused():
    param = torch.nn.Parameter(torch.zeros(3))
    with pytest.raises(ValueError, match="rows of 8 elements cannot hold 9"):
        row_copy.RowCopy([param], [param], torch.zeros(3), torch.zeros(2, 8))


@pytest.mark.parametrize("missing", ["compiler", "python_headers", "tensor_layout"])
def test_without_the_native_module_torch_copies_and_python_counts(monkeypatch, tmp_path, missing):
    monkeypatch.setenv("RMSPROP_LIGHTNING_CACHE", str(tmp_path / "cache"))
    if missing == "compiler":
        monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    elif missing == "python_headers":
        monkeypatch.setattr(row_copy.sysconfig, "get_paths", lambda: {"include": str(tmp_path)})
    else:  # a torch whose Python tensor object is laid out otherwise than the module reads it
        monkeypatch.setattr(
            row_copy.native, "load_module", lambda *args: SimpleNamespace(tensor_impl=lambda t: t._cdata + 8)
        )
    row_copy.native_module.cache_clear()
    try:
        assert row_copy.native_module() is None
        param = torch.nn.Parameter(torch.zeros(3))
        assert not row_copy.RowCopy([param], [param], torch.zeros(3), torch.zeros(2, 9)).native
        versions = row_copy.version_total([param, param[:2]])
        assert not isinstance(versions, partial)
        before = versions()
        param.data.mul_(2)  # through ``.data``: not counted
        with torch.no_grad():
            param.add_(1)
        assert versions() == before + 2  # the parameter and its view share a counter
    finally:
        row_copy.native_module.cache_clear()


def test_the_native_version_total_adds_up_what_python_reads():
    if row_copy.native_module() is None:
        pytest.skip("no C++ compiler or Python headers here: Python adds the versions up")
    tensors = [torch.zeros(3), torch.nn.Parameter(torch.zeros(2, 2)), torch.zeros(4)[1:]]
    versions = row_copy.version_total(tensors)
    assert isinstance(versions, partial)
    with torch.no_grad():
        for k, tensor in enumerate(tensors):
            for _ in range(k + 1):
                tensor.add_(1)
    assert versions() == sum(t._version for t in tensors) == 6
    assert row_copy.version_total([])() == 0
    with pytest.raises(TypeError, match="tuple of tensors"):
        row_copy.native_module().version_total((torch.zeros(1), 3))


def test_only_large_tensors_with_bias_correction():
    pl.seed_everything(0, verbose=False)
    model = torch.nn.Sequential(
        torch.nn.Linear(10, 1100, bias=False), torch.nn.ReLU(), torch.nn.Linear(1100, 1, bias=False)
    )
    assert min(p.numel() for p in model.parameters()) > SMALL_NUMEL
    module = RegressionModule(model, partial(RMSprop, lr=0.01, bias_correction=True))
    recorder = Recorder()
    values = logged(fit(module, OptimizerStateMonitor(flush_every=2), steps=3, callbacks=[recorder]))
    assert sorted(values) == [0, 1, 2]
    for step, step_values in values.items():
        for key, value in step_values.items():
            expected = expected_value(key, recorder.after[step], recorder.before[step])
            assert value == pytest.approx(expected, rel=1e-5, abs=1e-12), (step, key)


def test_buffer_keeps_rows_of_several_steps_in_order():
    buffer = StepMetricBuffer()
    buffer.record_vector(1, ["a"], torch.tensor(0.5))
    buffer.record_rows([2, 3], ["a", "b"], torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
    assert len(buffer) == 3
    assert buffer.drain() == [(1, {"a": 0.5}), (2, {"a": 1.0, "b": 2.0}), (3, {"a": 3.0, "b": 4.0})]
    assert len(buffer) == 0


def test_every_n_steps_and_the_trainer_interval():
    module = RegressionModule(FeedForward(), partial(torch.optim.RMSprop, lr=0.01))
    assert sorted(logged(fit(module, OptimizerStateMonitor(every_n_steps=3), steps=10))) == [2, 5, 8]
    module = RegressionModule(FeedForward(), partial(torch.optim.RMSprop, lr=0.01))
    logger = fit(module, OptimizerStateMonitor(every_n_steps=None), steps=10, log_every_n_steps=4)
    assert sorted(logged(logger)) == [3, 7]
    module = RegressionModule(FeedForward(), partial(torch.optim.RMSprop, lr=0.01))
    logger = fit(module, OptimizerStateMonitor(every_n_steps=2), steps=6, accumulate_grad_batches=3)
    assert sorted(logged(logger)) == [1, 3, 5]


class StepReads(pl.Callback):
    """Reads the step count both ways at every batch end and in every optimizer step."""

    def on_train_start(self, trainer, pl_module):
        self.read = global_step_reader(trainer)
        self.reads = [(self.read(), trainer.global_step)]
        for optimizer in trainer.optimizers:
            optimizer.register_step_post_hook(
                lambda *_: self.reads.append((self.read(), trainer.global_step))
            )

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.reads.append((self.read(), trainer.global_step))


@pytest.mark.parametrize("module_class", [RegressionModule, TwoStepsPerBatch])
def test_the_step_reader_reads_the_global_step(module_class):
    reads = StepReads()
    module = module_class(FeedForward(), partial(torch.optim.RMSprop, lr=0.01))
    fit(module, OptimizerStateMonitor(), steps=6, callbacks=[reads])
    steps = [step for _, step in reads.reads]
    assert [read for read, _ in reads.reads] == steps and max(steps) == 6 and len(set(steps)) == 7


def test_the_step_reader_falls_back_to_the_property():
    trainer = type("Trainer", (), {"global_step": 7})()  # no loops where this Lightning keeps the counter
    assert global_step_reader(trainer)() == 7


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
        ({"native_copy": "no"}, "native_copy must be a bool, got 'no'"),
    ],
)
def test_bad_options_are_refused(options, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        OptimizerStateMonitor(**options)


class SyncCounter(TorchDispatchMode):
    """Counts the ops that make the host wait for a value of the device, in the monitor's current call."""

    def __init__(self, monitor: CountingMonitor) -> None:
        super().__init__()
        self.monitor = monitor

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.monitor._events.append("item")
        return func(*args, **(kwargs or {}))


class CountingMonitor(OptimizerStateMonitor):
    """Records, per hook call, how many host reads happened inside it (a flush, even within a hook,
    is its own call)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.calls: list[tuple[str, int, int]] = []  # (hook, entries flushed, host reads)

    @contextlib.contextmanager
    def _counting(self, hook: str, entries: int = 0) -> Iterator[None]:
        events: list[str] = []
        outer = getattr(self, "_events", None)
        self._events = events
        with SyncCounter(self) if outer is None else contextlib.nullcontext():
            yield
        self._events = outer
        self.calls.append((hook, entries, len(events)))

    def _before_step(self, *args):
        with self._counting("before"):
            super()._before_step(*args)

    def _after_step(self, *args):
        with self._counting("after"):
            super()._after_step(*args)

    def flush(self, trainer):
        waiting = len(self.buffer) + sum(len(probe.steps) for probe in self.probes)
        with self._counting("flush", waiting):
            super().flush(trainer)


def test_one_host_read_per_flush_and_none_on_other_steps(monkeypatch):
    monitor = CountingMonitor(flush_every=4)
    for method in ("tolist", "item", "cpu", "numpy"):
        original = getattr(torch.Tensor, method)

        def counted(self, *args, _original=original, _method=method, **kwargs):
            if monitor.__dict__.get("_events") is not None:
                monitor._events.append(_method)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, method, counted)
    module = RegressionModule(FeedForward(), partial(torch.optim.RMSprop, lr=0.01, centered=True))
    logger = fit(module, monitor, steps=10)
    assert sorted(logged(logger)) == list(range(10))
    hooks = [hook for hook, _, _ in monitor.calls]
    assert hooks.count("before") == hooks.count("after") == 10
    assert all(reads == 0 for hook, _, reads in monitor.calls if hook in ("before", "after"))
    flushes = [(entries, reads) for hook, entries, reads in monitor.calls if hook == "flush" and entries]
    assert [entries for entries, _ in flushes] == [4, 4, 2]
    assert all(reads == 1 for _, reads in flushes)


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
    (loss,) = layout["Loss"]["loss (train every step, val, test)"][1]
    # TensorBoard's custom-scalars plugin matches from the start of the tag
    assert [bool(re.match(loss, tag)) for tag in ("train/loss", "val/loss", "val/rmse")] == [
        True,
        True,
        False,
    ]
