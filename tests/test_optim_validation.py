"""Hyper-parameter validation, state dicts that move between torch's RMSprop and ours, pickling."""

from __future__ import annotations

import copy
import inspect
import math

import pytest
import torch

from rmsprop_lightning.optim import RMSprop
from rmsprop_lightning.optim.param_groups import build_param_groups

BAD = [
    ({"lr": -0.1}, "lr"),
    ({"lr": math.inf}, "lr"),
    ({"lr": "0.1"}, "lr"),
    ({"lr": True}, "lr"),
    ({"lr": 10**400}, "lr"),  # too large for a float
    ({"alpha": 1.0}, "alpha"),
    ({"alpha": -0.5}, "alpha"),
    ({"alpha": math.nan}, "alpha"),
    ({"eps": -1e-8}, "eps"),
    ({"eps": None}, "eps"),
    ({"weight_decay": -1e-4}, "weight_decay"),
    ({"momentum": -0.9}, "momentum"),
    ({"momentum": 1.0}, "momentum"),
    ({"initial_square_avg": -1.0}, "initial_square_avg"),
    ({"centered": 1}, "centered"),
    ({"maximize": "no"}, "maximize"),
    ({"foreach": 0}, "foreach"),
    ({"eps_in_sqrt": None}, "eps_in_sqrt"),
    ({"lr_in_momentum": "yes"}, "lr_in_momentum"),
    ({"nesterov": True}, "nesterov"),
    ({"nesterov": 1, "momentum": 0.9}, "nesterov"),
    ({"bias_correction": 0}, "bias_correction"),
    ({"decoupled_weight_decay": "false"}, "decoupled_weight_decay"),
    ({"fast": "auto"}, "fast"),
    ({"capturable": True}, "capturable"),
    ({"differentiable": True}, "differentiable"),
]


def params(n: int = 3) -> list[torch.nn.Parameter]:
    return [torch.nn.Parameter(torch.randn(4, 3)) for _ in range(n)]


@pytest.mark.parametrize(
    ("options", "name"), BAD, ids=[f"{name}={next(iter(o.values()))!r}" for o, name in BAD]
)
def test_bad_hyper_parameter_is_named(options: dict, name: str) -> None:
    with pytest.raises(ValueError, match=rf"^{name} ") as error:
        RMSprop(params(), **options)
    assert "must be" in str(error.value)


def test_the_positional_arguments_are_torchs() -> None:
    ours = list(inspect.signature(RMSprop).parameters.values())
    theirs = list(inspect.signature(torch.optim.RMSprop).parameters.values())
    assert [(p.name, p.default) for p in ours[: len(theirs)]] == [(p.name, p.default) for p in theirs]
    assert all(p.kind is p.KEYWORD_ONLY for p in ours[len(theirs) :])
    weight = torch.nn.Parameter(torch.ones(1))
    weight.grad = torch.ones(1)
    RMSprop([weight], 0.1, 0.99, 1e-8, 0.0, 0.0, False, False, None, False, False).step()
    assert weight.item() < 1  # the eighth is capturable, as in torch, not maximize


def test_range_is_stated() -> None:
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\), got 1.5"):
        RMSprop(params(), alpha=1.5)
    with pytest.raises(ValueError, match=r"lr must be >= 0 and finite, got -1.0"):
        RMSprop(params(), lr=-1.0)


def test_parameter_group_overrides_are_validated() -> None:
    with pytest.raises(ValueError, match=r"^momentum "):
        RMSprop([{"params": params(1), "momentum": -1.0}, {"params": params(1)}])
    with pytest.raises(ValueError, match=r"^nesterov "):
        RMSprop([{"params": params(1), "momentum": 0.0}], momentum=0.9, nesterov=True)
    optimizer = RMSprop([{"params": params(1), "lr": 0.1, "name": "decay"}])
    with pytest.raises(ValueError, match=r"^eps "):
        optimizer.add_param_group({"params": params(1), "eps": -1.0})


def test_sparse_gradients_are_refused() -> None:
    param = torch.nn.Parameter(torch.zeros(3))
    param.grad = torch.zeros(3).to_sparse()
    with pytest.raises(RuntimeError, match="sparse"):
        RMSprop([param]).step()


@pytest.mark.parametrize("factor", [math.inf, math.nan, 0.0, -1.0, "0.1", True])
def test_bad_lr_multiplier_is_named(factor: float) -> None:
    with pytest.raises(ValueError, match=r"^lr_multipliers\['bias'\] must be a number > 0 and finite"):
        build_param_groups(torch.nn.Linear(2, 2), lr_multipliers={"weight": 0.5, "bias": factor})


@pytest.mark.parametrize(
    ("multipliers", "message"),
    [([1, 2], "is not a mapping"), ({"(": 2.0}, r"\['\('\] is not a regular expression")],
)
def test_lr_multipliers_that_are_not_regular_expressions_to_factors_are_named(multipliers, message) -> None:
    with pytest.raises(ValueError, match=message):
        build_param_groups(torch.nn.Linear(2, 2), lr_multipliers=multipliers)


def fit(
    optimizer: torch.optim.Optimizer, parameters: list[torch.nn.Parameter], steps: int, seed: int
) -> None:
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        for param in parameters:
            param.grad = torch.randn(param.shape, generator=generator)
        optimizer.step()


def pair(make_first, make_second, **options):
    """Two optimizers of given kinds on two equal copies of the same parameters."""
    torch.manual_seed(0)
    first = params()
    second = [torch.nn.Parameter(p.detach().clone()) for p in first]
    return (first, make_first(first, **options)), (second, make_second(second, **options))


def assert_same(first: list, second: list) -> None:
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("options", [{}, {"momentum": 0.9, "centered": True}])
def test_state_dict_round_trip(options: dict) -> None:
    (left, left_opt), (right, right_opt) = pair(RMSprop, RMSprop, **options)
    fit(left_opt, left, 10, seed=1)
    fit(right_opt, right, 10, seed=1)
    restored_params = [torch.nn.Parameter(p.detach().clone()) for p in right]
    restored = RMSprop(restored_params, **options)
    restored.load_state_dict(copy.deepcopy(right_opt.state_dict()))
    fit(left_opt, left, 10, seed=2)
    fit(restored, restored_params, 10, seed=2)
    assert_same(left, restored_params)


@pytest.mark.parametrize("options", [{}, {"momentum": 0.9}, {"centered": True, "weight_decay": 0.1}])
def test_torch_checkpoint_loads_into_ours_and_back(options: dict) -> None:
    (theirs, their_opt), (ours, our_opt) = pair(torch.optim.RMSprop, RMSprop, **options)
    fit(their_opt, theirs, 10, seed=1)
    our_opt.load_state_dict(copy.deepcopy(their_opt.state_dict()))  # as from a file: no shared tensors
    with torch.no_grad():
        for mine, their in zip(ours, theirs, strict=True):
            mine.copy_(their)
    assert set(our_opt.param_groups[0]) >= {"eps_in_sqrt", "fast", "nesterov"}  # our options refilled
    fit(their_opt, theirs, 10, seed=2)
    fit(our_opt, ours, 10, seed=2)
    assert_same(theirs, ours)
    # and back: torch continues from our state exactly as we do
    back = torch.optim.RMSprop(theirs, **options)
    back.load_state_dict(copy.deepcopy(our_opt.state_dict()))
    assert set(our_opt.state_dict()["state"][0]) == set(their_opt.state_dict()["state"][0])
    fit(back, theirs, 10, seed=3)
    fit(our_opt, ours, 10, seed=3)
    assert_same(theirs, ours)


def test_state_loaded_without_momentum_gains_a_buffer() -> None:
    (theirs, their_opt), (ours, _) = pair(torch.optim.RMSprop, RMSprop)
    fit(their_opt, theirs, 3, seed=1)
    momentum_opt = RMSprop(ours, momentum=0.9)
    momentum_opt.load_state_dict(copy.deepcopy(their_opt.state_dict()))
    momentum_opt.param_groups[0]["momentum"] = 0.9
    fit(momentum_opt, ours, 2, seed=2)
    assert all("momentum_buffer" in state for state in momentum_opt.state.values())


def test_deepcopy_and_pickle_keep_working() -> None:
    (first, optimizer), _ = pair(RMSprop, RMSprop, momentum=0.9)
    fit(optimizer, first, 3, seed=1)
    clone = copy.deepcopy(optimizer)
    clone_params = clone.param_groups[0]["params"]
    fit(clone, clone_params, 3, seed=2)
    fit(optimizer, first, 3, seed=2)
    assert_same(first, clone_params)


def test_an_lr_multiplier_that_matches_no_parameter_is_refused() -> None:
    with pytest.raises(
        ValueError, match=r"^lr_multipliers\['baises'\] matches no parameter; names: weight, bias$"
    ):
        build_param_groups(torch.nn.Linear(2, 2), lr_multipliers={"weight": 0.5, "baises": 0.1})
    with pytest.raises(ValueError, match=r"^lr_multipliers\['\('\] is not a regular expression"):
        build_param_groups(torch.nn.Linear(2, 2), lr_multipliers={"(": 0.1})
