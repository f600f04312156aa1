"""Parameter groups: no weight decay on biases and per-group learning-rate multipliers."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from rmsprop_lightning.optim.validation import checked_lr_multipliers

LR_MULTIPLIER_KEY = "lr_multiplier"


def build_param_groups(
    model: nn.Module,
    *,
    no_weight_decay_on_bias: bool = False,
    lr_multipliers: Mapping[str, float] | None = None,
) -> list[dict[str, Any]]:
    """Splits ``model``'s trainable parameters into named optimizer groups.

    ``lr_multipliers`` maps a regular expression on parameter names to a factor (the first match decides);
    ``no_weight_decay_on_bias`` puts 1-D parameters (biases, norm scales) into groups with ``weight_decay=0``.
    """
    names = [name for name, parameter in model.named_parameters() if parameter.requires_grad]
    patterns = checked_lr_multipliers(lr_multipliers)
    for compiled, _ in patterns:
        if not any(compiled.search(name) for name in names):  # a typo would change nothing
            raise ValueError(
                f"lr_multipliers[{compiled.pattern!r}] matches no parameter; names: {', '.join(names)}"
            )
    groups: dict[tuple[float, bool], dict[str, Any]] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        factor = next((f for pattern, f in patterns if pattern.search(name)), 1.0)
        exempt = no_weight_decay_on_bias and parameter.ndim <= 1
        if (factor, exempt) not in groups:
            name = "no_decay" if exempt else "decay"
            shown = f"{factor:g}" if float(f"{factor:g}") == factor else repr(float(factor))  # each its own
            group = {"params": [], "name": name if factor == 1.0 else f"{name}_lrx{shown}"}
            if exempt:
                group["weight_decay"] = 0.0
            if factor != 1.0:
                group[LR_MULTIPLIER_KEY] = factor
            groups[(factor, exempt)] = group
        groups[(factor, exempt)]["params"].append(parameter)
    if not groups:
        raise ValueError("the model has no trainable parameters")
    return list(groups.values())


def apply_lr_multipliers(optimizer: torch.optim.Optimizer) -> None:
    """Scales each group's ``lr`` by its ``lr_multiplier`` once, after the optimizer set it."""
    for group in optimizer.param_groups:
        factor = group.pop(LR_MULTIPLIER_KEY, None)
        if factor is not None:
            group["lr"] = group["lr"] * factor


def lr_ratios_kept(before: Sequence[float], after: Sequence[float]) -> bool:
    """Whether the groups' learning rates ``after`` a scheduler was built keep their ratios ``before``
    (OneCycleLR and CyclicLR, for instance, set one value for all groups)."""
    return all(
        math.isclose(a * before[0], b * after[0], rel_tol=1e-9) for b, a in zip(before, after, strict=True)
    )
