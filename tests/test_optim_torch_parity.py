"""In its torch-compatible mode our RMSprop is bit-identical to ``torch.optim.RMSprop``."""

from __future__ import annotations

import itertools

import pytest
import torch

from rmsprop_lightning.optim import RMSprop, functional

SHAPES = [(7, 3), (5,), (), (1000,)]
TORCH_OPTIONS = [
    {"weight_decay": weight_decay, "momentum": momentum, "centered": centered, "maximize": maximize}
    for weight_decay, momentum, centered, maximize in itertools.product(
        (0.0, 0.1), (0.0, 0.9), (False, True), (False, True)
    )
]
# ours (eager): single-tensor path, multi-tensor path, default (foreach=None: by size, see LARGE_BYTES)
IMPLEMENTATIONS = {"single": {"foreach": False}, "multi": {"foreach": True}, "default": {}}


@pytest.fixture(autouse=True)
def small_large_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    """With foreach=None the 1000-element tensors are then stepped alone and the others batched."""
    monkeypatch.setattr(functional, "LARGE_BYTES", 1024)


def train(
    make: type[torch.optim.Optimizer], dtype: torch.dtype, steps: int = 50, shapes=SHAPES, **options
) -> tuple[list[torch.nn.Parameter], torch.optim.Optimizer]:
    """``steps`` steps on noisy gradients from fixed seeds; returns the parameters and the optimizer."""
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(shape, dtype=dtype)) for shape in shapes]
    optimizer = make(params, lr=0.01, alpha=0.9, **options)
    generator = torch.Generator().manual_seed(1)
    for _ in range(steps):
        for param in params:
            param.grad = torch.randn(param.shape, dtype=dtype, generator=generator)
        optimizer.step()
    return params, optimizer


def assert_identical(ours: tuple, theirs: tuple) -> None:
    """Same parameters and same state, tensor for tensor, bit for bit (NaN where the other has NaN)."""
    (our_params, our_optimizer), (their_params, their_optimizer) = ours, theirs
    for mine, their in zip(our_params, their_params, strict=True):
        torch.testing.assert_close(mine, their, rtol=0, atol=0, equal_nan=True)
        our_state, their_state = our_optimizer.state[mine], their_optimizer.state[their]
        assert set(our_state) == set(their_state)
        for name, value in their_state.items():
            assert our_state[name].dtype == value.dtype, name
            torch.testing.assert_close(our_state[name], value, rtol=0, atol=0, equal_nan=True, msg=name)


@pytest.mark.parametrize("implementation", list(IMPLEMENTATIONS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("options", TORCH_OPTIONS, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_bit_identical_to_torch(implementation: str, dtype: torch.dtype, options: dict) -> None:
    ours = train(RMSprop, dtype, **IMPLEMENTATIONS[implementation], **options)
    theirs = train(torch.optim.RMSprop, dtype, foreach=implementation == "multi", **options)
    assert_identical(ours, theirs)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("options", TORCH_OPTIONS, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_half_precision_by_default_is_torchs_default(dtype: torch.dtype, options: dict) -> None:
    # torch's default steps CPU tensors one by one; list kernels would round intermediate results otherwise
    assert_identical(train(RMSprop, dtype, **options), train(torch.optim.RMSprop, dtype, **options))


COMPLEX_OPTIONS = [
    {"momentum": 0.9, "centered": True, "maximize": True},
    {"weight_decay": 0.1},  # torch's single-tensor step decays the complex gradient, before its real view
    {"weight_decay": 0.1, "momentum": 0.9, "centered": True, "maximize": True},
]


@pytest.mark.parametrize("implementation", list(IMPLEMENTATIONS))
@pytest.mark.parametrize("options", COMPLEX_OPTIONS, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_bit_identical_to_torch_for_complex_parameters(implementation: str, options: dict) -> None:
    shapes = [(4, 3), (1000,)]
    ours = train(RMSprop, torch.complex64, shapes=shapes, **IMPLEMENTATIONS[implementation], **options)
    theirs = train(
        torch.optim.RMSprop, torch.complex64, shapes=shapes, foreach=implementation == "multi", **options
    )
    assert_identical(ours, theirs)


def test_is_a_torch_rmsprop_with_torch_defaults() -> None:
    optimizer = RMSprop([torch.nn.Parameter(torch.zeros(2))])
    assert isinstance(optimizer, torch.optim.RMSprop)
    reference = torch.optim.RMSprop([torch.nn.Parameter(torch.zeros(2))])
    for name, value in reference.defaults.items():
        assert optimizer.defaults[name] == value, name


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
@pytest.mark.parametrize("fast", [False, True])
def test_centered_constant_gradient_stays_finite_where_torch_turns_nan(fast: bool) -> None:
    """Each element sees its own constant gradient; torch's ``sqrt(v - m²)`` turns some NaN.

    The variance tends to 0 and then is rounding noise, which the compiled step rounds its own
    way: only the eager step is compared with torch, element for element.
    """
    gradient = torch.linspace(0.05, 2.0, 256)

    def run(make: type[torch.optim.Optimizer], **options) -> torch.Tensor:
        param = torch.nn.Parameter(torch.zeros(256))
        optimizer = make([param], lr=1e-3, alpha=0.9, centered=True, **options)
        for _ in range(3000):
            param.grad = gradient.clone()
            optimizer.step()
        return param.detach()

    theirs, ours = run(torch.optim.RMSprop), run(RMSprop, fast=fast)
    finite = torch.isfinite(theirs)  # NaN is absorbing: finite now means finite at every step
    assert not finite.all(), "torch's centered RMSprop was expected to turn NaN here"
    assert torch.isfinite(ours).all()
    if not fast:
        assert torch.equal(ours[finite], theirs[finite])
