"""A population member's RMSprop options as coefficients, one tensor per coefficient and entry per member: a
variant a member lacks enters as an exact neutral element (a factor 1, a term 0)."""

from __future__ import annotations

import inspect
import operator
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor

from rmsprop_lightning.callbacks.state_norms import precise_dtype
from rmsprop_lightning.optim.functional import OPTIONAL_STATES, hyper
from rmsprop_lightning.optim.rmsprop import RMSprop

# the options torch.optim.RMSprop's groups lack, at the values that give torch's update
TORCH_DEFAULTS = {
    name: option.default
    for name, option in inspect.signature(RMSprop).parameters.items()
    if option.kind is option.KEYWORD_ONLY and name != "fast"  # fast changes how, not what
}
OPTION_VALUES = operator.itemgetter(
    "lr", "alpha", "eps", "weight_decay", "momentum", "centered", "maximize", *TORCH_DEFAULTS
)
STATE_KEYS = ("square_avg", *OPTIONAL_STATES)  # in the order init_state adds them


class MemberCoefficients(NamedTuple):
    """A step's scalars (floats for a member, [P] float64 tensors for all), neutral where a variant is off."""

    sign: Any  # -1 with maximize
    grad_decay: Any  # coupled weight decay, else 0
    param_decay: Any  # 1 - lr * weight_decay when decoupled, else 1
    alpha: Any
    one_minus_alpha: Any
    center: Any  # grad_avg's lerp weight: 1 - alpha when centered, else 0
    eps_in: Any  # eps inside the root, else 0
    eps_out: Any  # eps outside the root, else 0
    momentum: Any  # 0 without momentum
    buffer_scale: Any  # c of b ← μb + c·g/d; 0 without momentum
    grad_step: Any  # the step along g/d: -lr, 0 with plain momentum
    buffer_step: Any  # the step along b; 0 without momentum
    bias_correction: Any  # 1 or 0
    centered: Any  # 1 or 0
    lr: Any
    initial_square_avg: Any


def member_options(shadow: torch.optim.Optimizer, group: int) -> dict[str, Any]:
    """The options of ``shadow``'s group ``group``, with RMSprop's defaults where torch's groups lack them."""
    return {**TORCH_DEFAULTS, **shadow.param_groups[group]}


def member_keys(options: Mapping[str, Any]) -> list[str]:
    """The states a member's variant keeps, in the order init_state adds them."""
    return ["square_avg", *(name for name, setting in OPTIONAL_STATES.items() if options[setting])]


def coefficients(options: Mapping[str, Any]) -> MemberCoefficients:
    """One member's coefficients, from RMSprop's own :func:`~rmsprop_lightning.optim.functional.hyper`."""
    variant, c = hyper(options)
    momentum = variant.momentum
    return MemberCoefficients(
        sign=-1.0 if variant.maximize else 1.0,
        grad_decay=c.grad_decay if variant.grad_decay else 0.0,
        param_decay=c.param_decay if variant.param_decay else 1.0,
        alpha=c.alpha,
        one_minus_alpha=c.one_minus_alpha,
        center=c.one_minus_alpha if variant.centered else 0.0,
        eps_in=c.eps if variant.eps_in_sqrt else 0.0,
        eps_out=0.0 if variant.eps_in_sqrt else c.eps,
        momentum=c.momentum if momentum else 0.0,
        buffer_scale=c.buffer_scale if momentum else 0.0,
        grad_step=c.grad_step if variant.nesterov or not momentum else 0.0,
        buffer_step=c.buffer_step if momentum else 0.0,
        bias_correction=float(variant.bias_correction),
        centered=float(variant.centered),
        lr=float(options["lr"]),
        initial_square_avg=float(options["initial_square_avg"]),
    )


def per_member(tensor: Tensor) -> Tensor:
    """A stacked tensor as [P, n]: one row of elements per member."""
    return tensor.unsqueeze(-1).flatten(1)


def finite(tensor: Tensor) -> Tensor:
    """Per member [P]: whether all its elements of a stacked tensor are finite."""
    return per_member(tensor.isfinite()).all(1)


def broadcast(values: Tensor, like: Tensor) -> Tensor:
    """Per-member ``values`` [P] shaped to broadcast over the member slices of ``like``."""
    return values.view(-1, *[1] * (like.ndim - 1))


def coefficient(values: Tensor, like: Tensor) -> Tensor:
    """Per-member coefficients [P] as a factor of ``like``: in its dtype, broadcast over its member slices."""
    return broadcast(values.to(like.dtype), like)


def corrections(k: MemberCoefficients, step: Tensor) -> Tensor:
    """Per member ``1 - alpha^t`` at step counts ``step`` with bias correction, else 1, in the precision of
    the optimizer's Python floats."""
    precise = precise_dtype(step.device)
    return torch.where(k.bias_correction > 0, 1 - k.alpha.to(precise) ** step.to(precise), 1.0)


def options_signature(shadows: Sequence[torch.optim.Optimizer], group: int) -> tuple[Any, ...]:
    """Every member's options in group ``group``: the coefficients change only when this does."""
    try:
        return tuple(OPTION_VALUES(shadow.param_groups[group]) for shadow in shadows)
    except KeyError:  # torch.optim.RMSprop groups lack some options
        return tuple(OPTION_VALUES(member_options(shadow, group)) for shadow in shadows)
