"""The fast (fused) step: same results as the eager step, compiled once, falls back with a warning.

Tolerance of the C kernel (CPU, float32/float64) against the eager step, after 20 noisy
steps with a scheduled learning rate: ``|fast - eager| <= tol * (1 + |eager|)`` with
tol = 1e-5 in float32 and 1e-12 in float64, for parameters and every state tensor. The
kernel repeats ATen's arithmetic except for its IEEE square root, where torch's MKL build
is off by one ulp for ~0.6% of inputs (on this machine ~0.1-1% of the elements end up
differing, by at most a few ulps); with an IEEE ``torch.sqrt`` the two are bit-identical.
The ``torch.compile`` back-end (other devices and dtypes) agrees to 1e-5 relative in
float32 and to a few ulps in bfloat16 (the slow tests below).
"""

from __future__ import annotations

import warnings

import pytest
import torch

from rmsprop_lightning.optim import RMSprop, compiled

VARIANTS = {
    "plain": {},
    "momentum": {"momentum": 0.9},
    "centered": {"centered": True},
    "centered_momentum": {"centered": True, "momentum": 0.9, "weight_decay": 0.1},
    "tf": {
        "eps_in_sqrt": True,
        "initial_square_avg": 1.0,
        "lr_in_momentum": True,
        "momentum": 0.9,
        "maximize": True,
    },
    "optax": {
        "eps_in_sqrt": True,
        "nesterov": True,
        "momentum": 0.9,
        "bias_correction": True,
        "centered": True,
    },
    "decoupled": {"weight_decay": 0.1, "decoupled_weight_decay": True, "nesterov": True, "momentum": 0.5},
    "bias_corrected": {"bias_correction": True, "eps_in_sqrt": True, "momentum": 0.9},
}
TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-12}
# a tensor above the kernel's parallel threshold, so both threads and the split point are exercised
SHAPES = [(33_000,), (33, 17), (1,), ()]


def train(dtype: torch.dtype, steps: int, schedule: bool = True, **options) -> tuple[list, RMSprop]:
    """``steps`` steps on noisy gradients with a learning rate that changes every step."""
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(shape, dtype=dtype)) for shape in SHAPES]
    optimizer = RMSprop(params, lr=0.01, alpha=0.9, **options)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (1 + 0.1 * step))
    generator = torch.Generator().manual_seed(1)
    for _ in range(steps):
        for param in params:
            param.grad = torch.randn(param.shape, dtype=dtype, generator=generator)
        optimizer.step()
        if schedule:
            scheduler.step()
    return params, optimizer


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_fast_equals_eager(variant: str, dtype: torch.dtype) -> None:
    fast_params, fast = train(dtype, 20, fast=True, **VARIANTS[variant])
    eager_params, eager = train(dtype, 20, fast=False, **VARIANTS[variant])
    assert fast._fast.kernel_loads == 1
    tol = TOLERANCE[dtype]
    for mine, reference in zip(fast_params, eager_params, strict=True):
        tensors = [(mine, reference)] + [
            (fast.state[mine][k], eager.state[reference][k]) for k in eager.state[reference]
        ]
        for a, b in tensors:
            torch.testing.assert_close(a, b, rtol=tol, atol=tol)


def test_no_recompilation_across_scheduled_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    loads = []
    load = compiled.cpu_kernel.load
    monkeypatch.setattr(compiled.cpu_kernel, "load", lambda *a: loads.append(a) or load(*a))
    _, optimizer = train(torch.float32, 100, fast=True, momentum=0.9)
    assert optimizer.param_groups[0]["lr"] < 0.01 / 5  # the schedule did change the learning rate
    assert len(loads) == 1


def test_missing_compiler_falls_back_with_one_warning(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("RMSPROP_LIGHTNING_CACHE", str(tmp_path / "cache"))
    with pytest.warns(UserWarning, match="fast step unavailable") as record:
        params, _ = train(torch.float32, 5, fast=True, momentum=0.9)
    assert len([w for w in record if "fast step unavailable" in str(w.message)]) == 1
    eager_params, _ = train(torch.float32, 5, fast=False, momentum=0.9)
    for mine, reference in zip(params, eager_params, strict=True):
        assert torch.equal(mine, reference)


def test_automatic_mode_keeps_small_models_eager() -> None:
    net = torch.nn.Sequential(torch.nn.Linear(10, 5), torch.nn.ReLU(), torch.nn.Linear(5, 1))
    optimizer = RMSprop(net.parameters(), momentum=0.9)
    inputs, targets = torch.randn(32, 10), torch.randn(32, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(3000):
            optimizer.zero_grad()
            torch.nn.functional.mse_loss(net(inputs), targets).backward()
            optimizer.step()
    assert optimizer._fast.kernel_loads == 0


def test_automatic_mode_switches_once_the_compile_cost_is_repaid(monkeypatch: pytest.MonkeyPatch) -> None:
    assert not compiled.worthwhile("kernel", 61, 1e9)  # the canonical net: never
    assert not compiled.worthwhile("kernel", 10**7, 10)
    assert compiled.worthwhile("kernel", 10**7, 100)
    assert not compiled.worthwhile("graph", 10**7, 100)  # torch.compile costs more, so it waits longer
    monkeypatch.setitem(compiled.COMPILE_SECONDS, "kernel", 0.002)  # repaid after 31 steps of 2**16
    param = torch.nn.Parameter(torch.zeros(1 << 16))
    optimizer = RMSprop([param])
    steps = 0
    while optimizer._fast.kernel_loads == 0:
        param.grad = torch.ones_like(param)
        optimizer.step()
        steps += 1
    assert steps == 31


def test_non_contiguous_parameters_take_the_eager_step() -> None:
    def run(fast: bool) -> torch.Tensor:
        torch.manual_seed(0)
        param = torch.nn.Parameter(torch.randn(64, 32).t())
        optimizer = RMSprop([param], momentum=0.9, fast=fast)
        for _ in range(5):
            param.grad = torch.randn(64, 32).t()
            optimizer.step()
        return param.detach()

    assert torch.equal(run(True), run(False))


@pytest.mark.filterwarnings("ignore:You defined a `validation_step` but have no `val_dataloader`")
def test_lightning_fit_uses_the_fast_step_through_the_optimizer_config() -> None:
    from pathlib import Path

    import lightning.pytorch as pl
    from hydra.utils import instantiate
    from omegaconf import OmegaConf
    from torch.utils.data import DataLoader, TensorDataset

    from rmsprop_lightning.model import FeedForward
    from rmsprop_lightning.module import RegressionModule

    config = OmegaConf.load(
        Path(__file__).resolve().parent.parent / "conf" / "optimizer" / "rmsprop_momentum.yaml"
    )
    module = RegressionModule(model=FeedForward(), optimizer=instantiate(config, fast=True))
    data = DataLoader(TensorDataset(torch.randn(256, 10), torch.randn(256, 1)), batch_size=32)
    trainer = pl.Trainer(
        max_steps=20,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, data)
    optimizer = trainer.optimizers[0]
    assert isinstance(optimizer, RMSprop)
    assert optimizer._fast.kernel_loads == 1
    assert all(float(state["step"]) == 20 for state in optimizer.state.values())


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["centered_momentum", "tf", "decoupled", "bias_corrected"])
def test_compiled_graph_backend_matches_eager_without_recompiling(
    monkeypatch: pytest.MonkeyPatch, variant: str
) -> None:
    """The torch.compile back-end (forced onto float32 CPU tensors): one compilation for 100 scheduled steps.

    eps is large enough that the centered variance never gets near zero: there a rounding
    difference of one ulp would be amplified without bound, whatever the implementation
    (the same holds for centered with bias correction at t=1, where it is exactly zero).
    """
    from torch._dynamo.utils import counters

    monkeypatch.setattr(compiled, "_route", lambda row: ("graph", row[0].device, row[0].dtype))
    torch._dynamo.reset()
    counters.clear()
    options = {**VARIANTS[variant], "eps": 1e-3}
    fast_params, fast = train(torch.float32, 100, fast=True, **options)
    assert not fast._fast._graph_failed
    assert counters["stats"]["unique_graphs"] == 1
    eager_params, _ = train(torch.float32, 100, fast=False, **options)
    for mine, reference in zip(fast_params, eager_params, strict=True):
        torch.testing.assert_close(mine, reference, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_compiled_graph_backend_takes_bfloat16() -> None:
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    params, optimizer = train(torch.bfloat16, 20, fast=True, momentum=0.9)
    assert not optimizer._fast._graph_failed
    assert counters["stats"]["unique_graphs"] == 1
    eager_params, _ = train(torch.bfloat16, 20, fast=False, momentum=0.9)
    for mine, reference in zip(params, eager_params, strict=True):
        # the graph keeps float32 intermediates where eager rounds every operation to bfloat16:
        # after 20 steps the two may differ by a few bfloat16 ulps (2**-8 relative each)
        torch.testing.assert_close(mine, reference, rtol=2**-4, atol=2**-4)
