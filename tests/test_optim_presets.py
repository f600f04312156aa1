"""Every preset in conf/optimizer builds our RMSprop and steps; the torch presets match torch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from rmsprop_lightning.optim import RMSprop

PRESETS = sorted((Path(__file__).resolve().parent.parent / "conf" / "optimizer").glob("*.yaml"))
BASE = "rmsprop"


def preset(name: str) -> DictConfig:
    """The optimizer config of preset ``name`` as the template composes it (inherited keys included)."""
    with initialize_config_dir(config_dir=str(PRESETS[0].parent.parent), version_base="1.3"):
        return compose("train", overrides=[f"optimizer={name}"]).optimizer


TORCH_PRESETS = ["rmsprop", "rmsprop_momentum", "rmsprop_centered", "rmsprop_centered_momentum"]
TORCH_KEYS = ["lr", "alpha", "eps", "weight_decay", "momentum", "centered", "maximize", "foreach"]


def net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(10, 5), torch.nn.ReLU(), torch.nn.Linear(5, 1))


def train(model: torch.nn.Module, optimizer: torch.optim.Optimizer, steps: int = 5) -> None:
    generator = torch.Generator().manual_seed(1)
    for _ in range(steps):
        optimizer.zero_grad()
        inputs = torch.randn(16, 10, generator=generator)
        model(inputs).square().mean().backward()
        optimizer.step()


def test_the_expected_presets_exist() -> None:
    names = {path.stem for path in PRESETS}
    assert names >= {*TORCH_PRESETS, "rmsprop_tf", "rmsprop_keras", "rmsprop_graves"}
    assert names >= {"rmsprop_nesterov", "rmsprop_bias_corrected"}


@pytest.mark.parametrize("path", [p for p in PRESETS if p.stem != BASE], ids=lambda path: path.stem)
def test_preset_inherits_the_base_and_lists_only_what_differs(path: Path) -> None:
    own = OmegaConf.load(path)
    assert list(own.defaults) == [BASE, "_self_"]
    base = OmegaConf.load(path.parent / f"{BASE}.yaml")
    listed = {key: value for key, value in own.items() if key != "defaults"}
    assert listed, "a preset changes at least one option"
    assert all(base[key] != value for key, value in listed.items()), listed


@pytest.mark.parametrize("path", PRESETS, ids=lambda path: path.stem)
def test_preset_composes_into_an_optimizer_and_steps(path: Path) -> None:
    assert path.read_text().startswith("# "), "each preset starts with a comment saying what it reproduces"
    config = preset(path.stem)
    assert config._partial_ is True
    model = net()
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = instantiate(config)(model.parameters())
    assert isinstance(optimizer, RMSprop)
    train(model, optimizer)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("name", TORCH_PRESETS)
def test_torch_presets_are_bit_identical_to_torch(name: str) -> None:
    config = preset(name)
    ours, theirs = net(), net()
    our_optimizer = instantiate(config)(ours.parameters())
    their_optimizer = torch.optim.RMSprop(theirs.parameters(), **{key: config[key] for key in TORCH_KEYS})
    train(ours, our_optimizer, 20)
    train(theirs, their_optimizer, 20)
    for a, b in zip(ours.parameters(), theirs.parameters(), strict=True):
        assert torch.equal(a, b)


def test_tf_preset_has_tf_semantics() -> None:
    optimizer = instantiate(preset("rmsprop_tf"))(net().parameters())
    defaults = optimizer.defaults
    assert (defaults["alpha"], defaults["eps"], defaults["initial_square_avg"]) == (0.9, 1e-10, 1.0)
    assert defaults["eps_in_sqrt"] and defaults["lr_in_momentum"]


def keras_reference(
    theta: np.ndarray, grads: list[np.ndarray], lr: float, weight_decay: float, momentum: float
):
    """Keras 3's ``RMSprop.update_step`` after its base optimizer's decoupled weight decay, in float64."""
    velocity, buffer = np.zeros_like(theta), np.zeros_like(theta)
    for grad in grads:
        theta = theta - theta * weight_decay * lr
        velocity = 0.9 * velocity + 0.1 * grad**2
        increment = lr * grad / np.sqrt(velocity + 1e-7)
        buffer = momentum * buffer + increment
        theta = theta - (buffer if momentum else increment)
    return theta


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_keras_preset_decays_the_weights_as_keras_does(momentum: float) -> None:
    config = preset("rmsprop_keras")
    generator = torch.Generator().manual_seed(0)
    param = torch.nn.Parameter(torch.randn(40, dtype=torch.float64, generator=generator))
    grads = [torch.randn(40, dtype=torch.float64, generator=generator) for _ in range(30)]
    expected = keras_reference(param.detach().numpy().copy(), [g.numpy() for g in grads], 1e-3, 0.1, momentum)
    optimizer = instantiate(config, weight_decay=0.1, momentum=momentum)([param])
    for grad in grads:
        param.grad = grad
        optimizer.step()
    assert np.max(np.abs(param.detach().numpy() - expected)) <= 1e-12
