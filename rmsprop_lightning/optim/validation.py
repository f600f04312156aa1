"""Checks of RMSprop's hyper-parameters, so that a bad value fails at construction, by name."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from numbers import Real
from typing import Any

# name -> (lowest allowed, highest allowed, whether the highest is excluded)
_RANGES: dict[str, tuple[float, float, bool]] = {
    "lr": (0.0, math.inf, False),
    "alpha": (0.0, 1.0, True),
    "eps": (0.0, math.inf, False),
    "weight_decay": (0.0, math.inf, False),
    "momentum": (0.0, 1.0, True),
    "initial_square_avg": (0.0, math.inf, False),
}
_FLAGS = (
    "centered",
    "maximize",
    "eps_in_sqrt",
    "lr_in_momentum",
    "nesterov",
    "bias_correction",
    "decoupled_weight_decay",
)
_OPTIONAL_FLAGS = ("foreach", "fast")  # None: the default path for foreach, off for fast


def _range_text(low: float, high: float, open_high: bool) -> str:
    """The allowed interval in words, e.g. ``in [0, 1)`` or ``>= 0 and finite``."""
    if math.isinf(high):
        return f">= {low:g} and finite"
    return f"in [{low:g}, {high:g}{')' if open_high else ']'}"


def validate_options(options: Mapping[str, Any]) -> None:
    """Raises ``ValueError`` naming the first option in ``options`` that is out of range or mistyped; only
    the options present are checked, so a parameter group's overrides can be validated on their own."""
    for name, (low, high, open_high) in _RANGES.items():
        if name not in options:
            continue
        value = options[name]
        allowed = _range_text(low, high, open_high)
        if isinstance(value, bool) or not isinstance(value, Real):
            raise ValueError(f"{name} must be a real number {allowed}, got {value!r}")
        value = float(value) if not isinstance(value, int) or abs(value) < 2**1023 else math.inf
        above = value >= high if open_high else value > high
        if not math.isfinite(value) or value < low or above:
            raise ValueError(f"{name} must be {allowed}, got {value!r}")
    for name in _FLAGS:
        if name in options and not isinstance(options[name], bool):
            raise ValueError(f"{name} must be True or False, got {options[name]!r}")
    for name in _OPTIONAL_FLAGS:
        if name in options and options[name] is not None and not isinstance(options[name], bool):
            raise ValueError(f"{name} must be True, False or None, got {options[name]!r}")
    for name in ("capturable", "differentiable"):  # torch's modes this optimizer does not have
        if options.get(name, False) is not False:
            raise ValueError(f"{name} must be False (torch.optim.RMSprop has it), got {options[name]!r}")
    if options.get("nesterov") and not options.get("momentum", 0.0) > 0.0:
        raise ValueError("nesterov must be False when momentum is 0 (Nesterov momentum needs momentum > 0)")


def checked_lr_multipliers(lr_multipliers: Any) -> list[tuple[re.Pattern[str], float]]:
    """``lr_multipliers`` as compiled regular expressions on parameter names and their factors; ``ValueError``
    naming an entry that is not a regular expression mapped to a number > 0."""
    if lr_multipliers is None:
        return []
    if not isinstance(lr_multipliers, Mapping):
        raise ValueError(f"lr_multipliers={lr_multipliers!r} is not a mapping; allowed: {{regex: factor}}")
    checked = []
    for pattern, factor in lr_multipliers.items():
        try:
            compiled = re.compile(pattern)
        except (re.error, TypeError) as error:
            raise ValueError(f"lr_multipliers[{pattern!r}] is not a regular expression: {error}") from None
        if isinstance(factor, bool) or not isinstance(factor, Real) or not 0 < factor < math.inf:
            raise ValueError(f"lr_multipliers[{pattern!r}] must be a number > 0 and finite, got {factor!r}")
        checked.append((compiled, float(factor)))
    return checked
