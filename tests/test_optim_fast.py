"""``fast=True``: the ``torch.compile``-d step agrees with the eager one, never recompiles for a new lr.

The compiled graph fuses and reorders the arithmetic, so it agrees with the eager step to
rounding, not bit for bit. One optimizer with a parameter group per option combination and
dtype compiles once for all of them.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from rmsprop_lightning.optim import RMSprop, compiled
from rmsprop_lightning.summary import read_summary
from tests.conftest import read_hparams, run_dirs, train_in_process

# inductor's own deprecation warnings
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")


def compiled_fails(parts: list) -> None:
    """A compiled step that cannot be built, as on a machine without a C++ compiler."""
    raise RuntimeError("no C++ compiler")


VARIANTS = {
    "plain": {},
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
}
# |fast - eager| <= tol * (1 + |eager|) after 20 steps; bfloat16: the graph keeps float32
# intermediates where eager rounds each operation to bfloat16, a few bfloat16 ulps apart
TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-12, torch.complex64: 1e-5, torch.bfloat16: 2**-4}
SHAPES = [(33, 17), ()]


@pytest.fixture(autouse=True)
def fresh_compiler() -> None:
    """Each test starts without compiled graphs, so that recompilation limits never carry over."""
    torch.compiler.reset()


def train(steps: int, fast: bool | None, groups: dict[tuple[str, torch.dtype], dict]) -> RMSprop:
    """``steps`` steps on noisy gradients, one group per entry, with a learning rate changing every step.

    eps is large enough that the centered variance never gets near zero, where a one-ulp
    difference would be amplified without bound in any implementation.
    """
    torch.manual_seed(0)
    param_groups = [
        {"params": [torch.nn.Parameter(torch.randn(shape, dtype=dtype)) for shape in SHAPES], **options}
        for (_, dtype), options in groups.items()
    ]
    optimizer = RMSprop(param_groups, lr=0.01, alpha=0.9, eps=1e-3, fast=fast)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (1 + 0.1 * step))
    generator = torch.Generator().manual_seed(1)
    for _ in range(steps):
        for group in optimizer.param_groups:
            for param in group["params"]:
                param.grad = torch.randn(param.shape, dtype=param.dtype, generator=generator)
        optimizer.step()
        scheduler.step()
    return optimizer


def tensors(optimizer: RMSprop) -> list[torch.Tensor]:
    """Every parameter and state tensor, in a fixed order."""
    result = []
    for group in optimizer.param_groups:
        for param in group["params"]:
            result += [
                param.detach(),
                *(optimizer.state[param][name] for name in sorted(optimizer.state[param])),
            ]
    return result


def test_fast_matches_eager_for_every_variant_and_dtype() -> None:
    groups = {(name, torch.float64): options for name, options in VARIANTS.items()}
    groups[("plain", torch.float32)] = {}
    groups[("centered_momentum", torch.complex64)] = VARIANTS["centered_momentum"]
    groups[("tf", torch.bfloat16)] = VARIANTS["tf"]
    fast = train(20, True, groups)
    eager = train(20, False, groups)
    assert not fast.fast_failed
    for mine, reference in zip(tensors(fast), tensors(eager), strict=True):
        tol = TOLERANCE.get(reference.dtype, TOLERANCE[torch.float32])  # the step counters: float32
        torch.testing.assert_close(mine, reference, rtol=tol, atol=tol)


def test_a_scheduled_learning_rate_never_recompiles() -> None:
    groups = {("momentum", torch.float32): {"momentum": 0.9}}
    optimizer = train(1, True, groups)  # compiles
    param = optimizer.param_groups[0]["params"][0]
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (1 + step))
    with torch.compiler.set_stance("fail_on_recompile"):
        for _ in range(30):
            param.grad = torch.randn_like(param)
            optimizer.step()
            scheduler.step()
        assert optimizer.param_groups[0]["lr"] < 0.01 / 20  # the schedule did change the learning rate
        assert not optimizer.fast_failed
        # the check can fail: a new variant would need a new graph, which the stance refuses
        optimizer.param_groups[0]["centered"] = True
        optimizer.step()
    assert optimizer.fast_failed


def test_compile_failure_logs_once_and_steps_eagerly(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(compiled, "_compiled", lambda: compiled_fails)
    groups = {("momentum", torch.float32): {"momentum": 0.9}}
    with caplog.at_level(logging.WARNING, logger="rmsprop_lightning.optim"):
        fast = train(5, True, groups)
    unavailable = "RMSprop fast step unavailable (torch.compile failed: RuntimeError: no C++ compiler)"
    assert [record.getMessage() for record in caplog.records] == [f"{unavailable}; using the eager step"]
    for mine, reference in zip(tensors(fast), tensors(train(5, False, groups)), strict=True):
        assert torch.equal(mine, reference)


def test_the_recompile_limit_is_named_as_the_cause(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def hits_the_limit(parts: object) -> None:
        raise torch._dynamo.exc.FailOnRecompileLimitHit("Hard failure due to fullgraph=True")

    monkeypatch.setattr(compiled, "_compiled", lambda: hits_the_limit)
    with caplog.at_level(logging.WARNING, logger="rmsprop_lightning.optim"):
        train(2, True, {("plain", torch.float32): {}})
    (record,) = caplog.records
    assert "FailOnRecompileLimitHit" in record.getMessage()
    assert "each set of parameters with a gradient, dtypes and options is a graph" in record.getMessage()
    assert "counted over every RMSprop of this process" in record.getMessage()


def test_a_run_is_told_that_the_fast_step_compiles(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # on a small CPU the first compiled step of a net of many tensors waits for minutes
    monkeypatch.setattr(torch, "compile", lambda function, **options: function)
    compiled._compiled.cache_clear()
    try:
        with caplog.at_level(logging.INFO, logger="rmsprop_lightning.optim"):
            compiled._compiled()
    finally:
        compiled._compiled.cache_clear()
    (record,) = caplog.records
    assert "compiling its step" in record.getMessage()


@pytest.mark.parametrize("fails", [True, False], ids=["falls back", "compiles"])
def test_a_runs_records_say_whether_its_fast_step_fell_back(
    fails: bool, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(compiled, "_compiled", lambda: compiled_fails if fails else compiled._graph_step)
    train_in_process(tmp_path, "optimizer.fast=true", "trainer.max_steps=3", "callbacks=none", "test=false")
    (run,) = run_dirs(tmp_path)
    assert ("[WARNING] - RMSprop fast step unavailable" in (run / "train.log").read_text()) is fails
    assert read_summary(run)["fast_fell_back"] is fails
    (events,) = (run / "tensorboard").glob("events.out.tfevents.*")
    assert read_hparams(events)["optimizer/fast"] is not fails


def test_fast_none_is_the_eager_step(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(compiled, "step", lambda parts: pytest.fail("fast=None compiled"))
    groups = {("plain", torch.float32): {}}
    for mine, reference in zip(
        tensors(train(3, None, groups)), tensors(train(3, False, groups)), strict=True
    ):
        assert torch.equal(mine, reference)


@pytest.mark.parametrize("fast", [False, True])
def test_a_group_that_raises_leaves_every_group_unstepped(fast: bool) -> None:
    first, second = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(3))
    optimizer = RMSprop([{"params": [first]}, {"params": [second]}], fast=fast)
    first.grad, second.grad = torch.ones(3), torch.ones(3).to_sparse()
    with pytest.raises(RuntimeError, match="sparse"):
        optimizer.step()
    assert float(optimizer.state[first]["step"]) == 0
    assert torch.equal(first.detach(), torch.ones(3))


@pytest.mark.filterwarnings("ignore:You defined a `validation_step` but have no `val_dataloader`")
def test_lightning_fit_uses_the_fast_step_through_the_optimizer_config() -> None:
    from pathlib import Path

    import lightning.pytorch as pl
    from hydra.utils import instantiate
    from omegaconf import OmegaConf
    from torch.utils.data import DataLoader, TensorDataset

    from rmsprop_lightning.model import FeedForward
    from rmsprop_lightning.module import RegressionModule

    config = OmegaConf.load(Path(__file__).resolve().parent.parent / "conf" / "optimizer" / "rmsprop.yaml")
    module = RegressionModule(model=FeedForward(), optimizer=instantiate(config, momentum=0.9, fast=True))
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
    assert isinstance(optimizer, RMSprop) and not optimizer.fast_failed
    assert all(float(state["step"]) == 20 for state in optimizer.state.values())
