"""Every new option against a NumPy reference written from the equations (float64, 1e-12)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from rmsprop_lightning.optim import RMSprop

STEPS = 50
BASE = {"alpha": 0.9, "eps": 1e-6}
SHAPES = [(6, 4), (3,), (700,)]
NEW_OPTIONS = {
    "torch": {},
    "eps_in_sqrt": {"eps_in_sqrt": True},
    "initial_square_avg": {"initial_square_avg": 1.0},
    "lr_in_momentum": {"lr_in_momentum": True},
    "nesterov": {"nesterov": True},
    "nesterov_lr_in_momentum": {"nesterov": True, "lr_in_momentum": True},
    "bias_correction": {"bias_correction": True},
    "decoupled_weight_decay": {"decoupled_weight_decay": True},
    "tf": {"eps_in_sqrt": True, "initial_square_avg": 1.0, "lr_in_momentum": True, "maximize": True},
}


def learning_rate(step: int) -> float:
    """A schedule that changes every step, so that where the learning rate enters matters."""
    return 0.01 * (1.0 + 0.5 * math.sin(step))


def reference(
    theta: np.ndarray,
    grads: list[np.ndarray],
    *,
    alpha: float,
    eps: float,
    weight_decay: float = 0.0,
    momentum: float = 0.0,
    centered: bool = False,
    maximize: bool = False,
    eps_in_sqrt: bool = False,
    initial_square_avg: float = 0.0,
    lr_in_momentum: bool = False,
    nesterov: bool = False,
    bias_correction: bool = False,
    decoupled_weight_decay: bool = False,
) -> np.ndarray:
    """RMSprop from its equations, one option at a time, in float64."""
    theta = theta.copy()
    v = np.full_like(theta, initial_square_avg)
    m = np.zeros_like(theta)
    b = np.zeros_like(theta)
    for t, g in enumerate(grads, start=1):
        lr = learning_rate(t - 1)
        g = -g if maximize else g
        if weight_decay and not decoupled_weight_decay:
            g = g + weight_decay * theta
        v = alpha * v + (1 - alpha) * g**2
        m = alpha * m + (1 - alpha) * g
        v_hat, m_hat = (v / (1 - alpha**t), m / (1 - alpha**t)) if bias_correction else (v, m)
        variance = np.maximum(v_hat - m_hat**2, 0.0) if centered else v_hat
        d = np.sqrt(variance + eps) if eps_in_sqrt else np.sqrt(variance) + eps
        u = g / d
        if weight_decay and decoupled_weight_decay:
            theta = theta * (1 - lr * weight_decay)
        if not momentum:
            theta = theta - lr * u
        elif lr_in_momentum:  # Keras / TF / timm / optax: the buffer holds lr * u
            b = momentum * b + lr * u
            theta = theta - (lr * u + momentum * b if nesterov else b)
        else:  # torch: the buffer holds u, lr scales the step
            b = momentum * b + u
            theta = theta - lr * (u + momentum * b if nesterov else b)
    return theta


def run_ours(
    options: dict, grads: list[list[torch.Tensor]], params0: list[torch.Tensor], **extra
) -> list[torch.Tensor]:
    """Our optimizer on the same gradients and learning-rate schedule."""
    params = [torch.nn.Parameter(p.clone()) for p in params0]
    optimizer = RMSprop(params, **{**BASE, **options}, **extra)
    for step, step_grads in enumerate(grads):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step)
        for param, grad in zip(params, step_grads, strict=True):
            param.grad = grad.clone()
        optimizer.step()
    return [p.detach() for p in params]


def cases() -> list:
    """Each new option with and without centered, momentum and weight decay."""
    result = []
    for name, new in NEW_OPTIONS.items():
        for centered, momentum, weight_decay in itertools.product((False, True), (0.0, 0.9), (0.0, 0.1)):
            if new.get("nesterov") and not momentum:
                continue
            options = {**new, "centered": centered, "momentum": momentum, "weight_decay": weight_decay}
            if centered and new.get("bias_correction"):
                # at t=1 the corrected variance v/(1-a) - (m/(1-a))² is 0 exactly, so the step
                # depends on rounding noise relative to eps in any implementation: put eps inside
                # the root (optax's default) and make it large enough to swamp that noise
                options.update(eps_in_sqrt=True, eps=1e-2)
            result.append(pytest.param(options, id=f"{name}-c{int(centered)}-m{momentum}-wd{weight_decay}"))
    return result


@pytest.mark.parametrize("implementation", [{"foreach": False}, {"foreach": True}], ids=["single", "multi"])
@pytest.mark.parametrize("options", cases())
def test_matches_numpy_reference(options: dict, implementation: dict) -> None:
    generator = torch.Generator().manual_seed(0)
    params0 = [torch.randn(shape, dtype=torch.float64, generator=generator) for shape in SHAPES]
    grads = [
        [torch.randn(shape, dtype=torch.float64, generator=generator) for shape in SHAPES]
        for _ in range(STEPS)
    ]
    ours = run_ours(options, grads, params0, **implementation)
    for index, param in enumerate(ours):
        expected = reference(
            params0[index].numpy(), [step[index].numpy() for step in grads], **{**BASE, **options}
        )
        assert np.max(np.abs(param.numpy() - expected)) <= 1e-12


def test_learning_rate_placement_matters_when_lr_changes() -> None:
    """With a scheduled lr, lr inside vs outside the momentum buffer gives different parameters."""
    generator = torch.Generator().manual_seed(0)
    params0 = [torch.randn(5, dtype=torch.float64, generator=generator)]
    grads = [[torch.randn(5, dtype=torch.float64, generator=generator)] for _ in range(STEPS)]
    inside = run_ours({"momentum": 0.9, "lr_in_momentum": True}, grads, params0)[0]
    outside = run_ours({"momentum": 0.9}, grads, params0)[0]
    assert (inside - outside).abs().max() > 1e-6


@pytest.mark.parametrize("foreach", [False, True], ids=["single", "multi"])
def test_complex_parameter_steps_as_its_real_view(foreach: bool) -> None:
    """Real and imaginary parts are separate coordinates: both start at ``initial_square_avg``."""
    options = {**BASE, **NEW_OPTIONS["tf"], "centered": True, "momentum": 0.9, "foreach": foreach}
    generator = torch.Generator().manual_seed(0)
    complex_param = torch.nn.Parameter(torch.randn(5, dtype=torch.complex128, generator=generator))
    real_param = torch.nn.Parameter(torch.view_as_real(complex_param.detach()).clone())
    optimizers = [RMSprop([complex_param], **options), RMSprop([real_param], **options)]
    for _ in range(STEPS):
        grad = torch.randn(5, dtype=torch.complex128, generator=generator)
        complex_param.grad, real_param.grad = grad, torch.view_as_real(grad).clone()
        for optimizer in optimizers:
            optimizer.step()
    assert torch.equal(torch.view_as_real(complex_param.detach()), real_param.detach())
    complex_state, real_state = optimizers[0].state[complex_param], optimizers[1].state[real_param]
    for name in ("square_avg", "grad_avg", "momentum_buffer"):
        assert torch.equal(torch.view_as_real(complex_state[name]), real_state[name]), name
