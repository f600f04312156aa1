"""StackedRMSprop steps each member as the member's own RMSprop would; StackedStateNorms measures each as
StateNorms does."""

from __future__ import annotations

import copy
import io
import math
import random
from pathlib import Path
from typing import Any

import pytest
import torch
from omegaconf import OmegaConf
from torch import Tensor, nn

from rmsprop_lightning.callbacks.state_norms import StateNorms
from rmsprop_lightning.optim import RMSprop
from rmsprop_lightning.optim.param_groups import build_param_groups
from rmsprop_lightning.population.norms import StackedStateNorms
from rmsprop_lightning.population.optim import StackedRMSprop

PRESETS = sorted((Path(__file__).resolve().parent.parent / "conf" / "optimizer").glob("*.yaml"))
STEPS = 200
Member = tuple[type[torch.optim.Optimizer], dict[str, Any]]  # an optimizer class and its options


def preset_options(path: Path) -> dict[str, Any]:
    """A preset's options as Hydra composes them: ``rmsprop.yaml``'s, then the preset's own."""
    merged = OmegaConf.merge(OmegaConf.load(path.parent / "rmsprop.yaml"), OmegaConf.load(path))
    options = OmegaConf.to_container(merged)
    assert isinstance(options, dict)
    return {
        k: v for k, v in options.items() if k not in {"defaults", "_target_", "_partial_", "fast", "foreach"}
    }


def mixed_members(seed: int = 0) -> list[Member]:
    """Every preset and two more, with random lr, alpha, eps and weight decay; and one of torch's RMSprop."""
    rng = random.Random(seed)
    members: list[Member] = []
    for path in [*PRESETS, *rng.sample(PRESETS, 2)]:
        options = preset_options(path)
        options["lr"] *= 10 ** rng.uniform(-0.5, 0.5)
        options["alpha"] = rng.uniform(0.8, 0.999)
        options["eps"] = 10 ** rng.uniform(-8, -3)
        options["weight_decay"] = rng.choice([0.0, rng.uniform(0.0, 0.1)])
        options["decoupled_weight_decay"] = rng.random() < 0.5
        options["maximize"] = rng.random() < 0.2
        members.append((RMSprop, options))
    torch_options = {"lr": 3e-3, "alpha": 0.95, "weight_decay": 0.05, "momentum": 0.5, "centered": True}
    return [*members, (torch.optim.RMSprop, torch_options)]


def network(generator: torch.Generator) -> nn.Module:
    """A member's network, Linear(10, 5) → Linear(5, 1) in float64, drawn from ``generator``."""
    network = nn.Sequential(nn.Linear(10, 5), nn.ReLU(), nn.Linear(5, 1)).double()
    with torch.no_grad():
        for param in network.parameters():
            param.copy_(torch.randn(param.shape, generator=generator, dtype=torch.float64))
    return network


def optimizer(net: nn.Module, member: Member) -> torch.optim.Optimizer:
    """``member``'s optimizer on ``net``: weights with weight decay, biases without."""
    cls, options = member
    return cls(build_param_groups(net, no_weight_decay_on_bias=True), **options)


class Population:
    """Stacked members and, for each, its shadow and a solo run of its own optimizer on its own network."""

    def __init__(self, members: list[Member]) -> None:
        generator = torch.Generator().manual_seed(0)
        nets = [network(generator) for _ in members]
        self.members = members
        self.shadows = [optimizer(net, member) for net, member in zip(nets, members, strict=True)]
        self.nets = [copy.deepcopy(net) for net in nets]
        self.solos = [optimizer(net, member) for net, member in zip(self.nets, members, strict=True)]
        self.base_lr = [[group["lr"] for group in shadow.param_groups] for shadow in self.shadows]
        names = {id(param): name for name, param in nets[0].named_parameters()}
        self.stacked = {
            name: nn.Parameter(torch.stack([net.get_parameter(name).detach() for net in nets]))
            for name, _ in nets[0].named_parameters()
        }
        groups = [
            {"name": group["name"], "params": [self.stacked[names[id(param)]] for param in group["params"]]}
            for group in build_param_groups(nets[0], no_weight_decay_on_bias=True)
        ]
        self.optimizer = StackedRMSprop(groups, self.shadows)
        self.stepping = set(range(len(members)))  # the solo runs that still step
        self.noise = torch.Generator().manual_seed(1)
        self.t = 0

    def step(self, poisoned: int | None = None) -> None:
        """One step: lr scheduled; gradients of ½|θ|² plus noise, NaN in member ``poisoned``'s; the solo
        runs in :attr:`stepping` step."""
        factor = 0.55 + 0.45 * math.cos(math.pi * self.t / STEPS)
        for shadow, solo, base in zip(self.shadows, self.solos, self.base_lr, strict=True):
            for shadow_group, solo_group, lr in zip(
                shadow.param_groups, solo.param_groups, base, strict=True
            ):
                shadow_group["lr"] = solo_group["lr"] = lr * factor
        for name, stacked in self.stacked.items():
            noise = torch.randn(stacked.shape, generator=self.noise, dtype=torch.float64)
            stacked.grad = stacked.detach() + noise
            if poisoned is not None:
                stacked.grad[poisoned].view(-1)[0] = math.nan
            for i, net in enumerate(self.nets):
                param = net.get_parameter(name)
                param.grad = param.detach() + noise[i]
        self.optimizer.step()
        for i in self.stepping:
            self.solos[i].step()
        self.t += 1

    def assert_members_match(self, members: set[int] | None = None) -> None:
        """The stacked parameters and states of ``members`` (all by default) are their solo runs'."""
        for i in range(len(self.members)) if members is None else members:
            for name, stacked in self.stacked.items():
                torch.testing.assert_close(
                    stacked[i], self.nets[i].get_parameter(name), rtol=1e-9, atol=1e-12
                )
            member_state, solo_state = self.optimizer.member_state_dict(i), self.solos[i].state_dict()
            assert member_state["param_groups"] == solo_state["param_groups"]
            torch.testing.assert_close(member_state["state"], solo_state["state"], rtol=1e-9, atol=1e-12)

    def snapshot(self, member: int) -> tuple[list[Tensor], dict[str, Any]]:
        """Copies of member ``member``'s stacked parameters and state dict."""
        params = [stacked[member].clone() for stacked in self.stacked.values()]
        return params, copy.deepcopy(self.optimizer.member_state_dict(member))


@pytest.mark.parametrize("path", PRESETS, ids=lambda path: path.stem)
def test_a_population_of_each_preset_matches_its_solo_runs(path: Path) -> None:
    population = Population([(RMSprop, preset_options(path))] * 3)
    for _ in range(STEPS):
        population.step()
    population.assert_members_match()
    assert population.optimizer.alive.all()
    assert population.optimizer.step_count == STEPS


def test_a_mixed_population_matches_its_solo_runs() -> None:
    population = Population(mixed_members())
    for t in range(STEPS):
        population.step()
        if t in (0, 1, 50):
            population.assert_members_match()
    population.assert_members_match()
    state = population.optimizer.state[population.stacked["0.weight"]]
    assert list(state) == ["step", "square_avg", "momentum_buffer", "grad_avg"]
    assert state["step"].dtype == torch.float32 and state["step"].shape == (12,)


def test_a_member_with_a_nonfinite_step_freezes_for_good() -> None:
    population = Population(mixed_members())
    nan_member, inf_member = 3, 7
    for t in range(30):
        if t == 5:
            nan_frozen = population.snapshot(nan_member)
            population.stepping.discard(nan_member)
        if t == 9:  # a finite gradient, but an infinite learning rate: non-finite parameters
            inf_frozen = population.snapshot(inf_member)
            population.stepping.discard(inf_member)
            population.base_lr[inf_member] = [math.inf] * 2
        population.step(poisoned=nan_member if t == 5 else None)
    optimizer = population.optimizer
    assert optimizer.frozen_at.tolist() == [
        9 if i == inf_member else 5 if i == nan_member else -1 for i in range(12)
    ]
    assert optimizer.alive.tolist() == [i not in (nan_member, inf_member) for i in range(12)]
    for member, frozen in ((nan_member, nan_frozen), (inf_member, inf_frozen)):
        params, member_state = population.snapshot(member)
        assert all(map(torch.equal, params, frozen[0]))
        assert member_state["state"].keys() == frozen[1]["state"].keys()
        for index, state in member_state["state"].items():
            assert all(torch.equal(value, frozen[1]["state"][index][key]) for key, value in state.items())
    population.assert_members_match(population.stepping)


def test_a_member_state_dict_resumes_the_member_on_its_own() -> None:
    population = Population(mixed_members())
    population.stepping.discard(2)  # frozen at step 0: it never steps, its state is empty
    for t in range(30):
        population.step(poisoned=2 if t == 0 else None)
    assert population.optimizer.member_state_dict(2)["state"] == {}
    for i, member in enumerate(population.members):
        net = network(torch.Generator())
        with torch.no_grad():
            for name, stacked in population.stacked.items():
                net.get_parameter(name).copy_(stacked[i].clone())
        population.nets[i] = net
        population.solos[i] = optimizer(net, member)
        population.solos[i].load_state_dict(population.optimizer.member_state_dict(i))
    for _ in range(20):
        population.step()
    population.assert_members_match()


def test_the_stacked_state_dict_round_trips() -> None:
    population = Population(mixed_members())
    for t in range(10):
        population.step(poisoned=1 if t == 3 else None)
    buffer = io.BytesIO()
    torch.save(population.optimizer.state_dict(), buffer)
    params = {name: nn.Parameter(stacked.detach().clone()) for name, stacked in population.stacked.items()}
    clones = {id(population.stacked[name]): param for name, param in params.items()}
    groups = [
        {"name": group["name"], "params": [clones[id(param)] for param in group["params"]]}
        for group in population.optimizer.param_groups
    ]
    resumed = StackedRMSprop(groups, population.shadows)
    resumed.load_state_dict(torch.load(io.BytesIO(buffer.getvalue())))
    assert resumed.step_count == 10 and resumed.frozen_at.tolist() == population.optimizer.frozen_at.tolist()
    assert torch.equal(resumed.alive, population.optimizer.alive)
    for _ in range(5):
        population.step()
        for name, param in params.items():
            param.grad = population.stacked[name].grad
        resumed.step()
    for name, param in params.items():
        assert torch.equal(param, population.stacked[name])
    for param, stacked in zip(params.values(), population.stacked.values(), strict=True):
        state, expected = resumed.state[param], population.optimizer.state[stacked]
        assert state.keys() == expected.keys() and all(torch.equal(state[k], expected[k]) for k in state)


def test_misaligned_shapes_are_refused() -> None:
    population = Population(mixed_members()[:2])
    groups = [{"params": [p[:1] for p in group["params"]]} for group in population.optimizer.param_groups]
    with pytest.raises(ValueError, match="expected"):
        StackedRMSprop(groups, population.shadows)


@pytest.mark.parametrize("large", [None, "near", "overflow"])
def test_stacked_state_norms_are_each_members_state_norms(large: str | None) -> None:
    population = Population(mixed_members())
    population.stepping.discard(0)  # frozen at step 0: no state, so no state keys
    for t in range(5):
        population.step(poisoned=0 if t == 0 else None)
    with torch.no_grad():  # −θ in the optimizers' order, as OptimizerStateMonitor keeps it
        minus_before, *solo_minus_before = (
            torch._foreach_neg([param for group in optimizer.param_groups for param in group["params"]])
            for optimizer in (population.optimizer, *population.solos)
        )
    population.step()
    for optimizer, index in ((population.optimizer, 3), (population.solos[3], ...)):
        params = [param for group in optimizer.param_groups for param in group["params"]]
        if large == "overflow":  # one member's state too large to square in float32: inf in its scopes only
            optimizer.state[params[0]]["square_avg"][index].view(-1)[0] = 1e30
        elif large == "near":  # each of its norms 1.5e19: their squares fit float32, their sum does not
            for state in (optimizer.state[param]["square_avg"][index] for param in params):
                state.mul_(1.5e19 / state.double().norm().item())
    norms = StackedStateNorms(population.optimizer)
    values = norms.values(minus_before)
    assert values.shape == (12, len(norms.names)) and values.dtype == torch.float32
    assert torch.isnan(values[~norms.applies]).all() and not torch.isnan(values[norms.applies]).any()
    assert "optim/decay/momentum_buffer_norm" in norms.names and "optim/effective_lr_max" in norms.names
    for i, solo in enumerate(population.solos):
        solo_norms = StateNorms(solo, "optim/", {}, None)
        expected = dict(
            zip(solo_norms.names, solo_norms.values(solo, solo_minus_before[i]).tolist(), strict=True)
        )
        got = {
            name: value
            for name, value, applies in zip(norms.names, values[i].tolist(), norms.applies[i], strict=True)
            if applies
        }
        assert got.keys() == expected.keys()
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=0.0)
    if large == "near":
        total = values[3, norms.names.index("optim/square_avg_norm")].item()
        assert total == pytest.approx(1.5e19 * len(norms.params) ** 0.5, rel=1e-5)
