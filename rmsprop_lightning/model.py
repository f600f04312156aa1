"""The feed-forward regressor trained throughout the project."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from torch import nn

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "sigmoid": nn.Sigmoid,
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
}


class FeedForward(nn.Sequential):
    """``Linear → activation → … → Linear``; the defaults give ``Linear(10,5) → ReLU → Linear(5,1)``.

    ``hidden`` is one width or a list of widths; ``activation=None`` gives a purely linear stack."""

    def __init__(
        self,
        in_features: int = 10,
        hidden: int | list[int] | tuple[int, ...] = 5,
        out_features: int = 1,
        activation: str | None = "relu",
        dropout: float = 0.0,
    ) -> None:
        if isinstance(hidden, str) or not isinstance(hidden, int | Sequence):
            raise ValueError(f"model.hidden must be a positive integer or a list of them, got {hidden!r}")
        widths = [hidden] if isinstance(hidden, int) else list(hidden)
        for name, value in (("in_features", in_features), ("out_features", out_features)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"model.{name} must be a positive integer, got {value!r}")
        if not all(isinstance(width, int) and not isinstance(width, bool) and width >= 1 for width in widths):
            raise ValueError(f"model.hidden must hold positive integers, got {hidden!r}")
        if activation is not None and activation not in ACTIVATIONS:
            raise ValueError(
                f"model.activation={activation!r} is unknown; allowed: "
                f"{', '.join(sorted(ACTIVATIONS))} or null"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"model.dropout must lie in [0, 1), got {dropout!r}")
        layers: list[nn.Module] = []
        sizes = [in_features, *widths]
        for fan_in, fan_out in itertools.pairwise(sizes):
            layers.append(nn.Linear(fan_in, fan_out))
            if activation is not None:
                layers.append(ACTIVATIONS[activation]())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
        layers.append(nn.Linear(sizes[-1], out_features))
        super().__init__(*layers)
        self.in_features = in_features
        self.out_features = out_features
        self.spec = {
            "in_features": in_features,
            "hidden": hidden if isinstance(hidden, int) else widths,
            "out_features": out_features,
            "activation": activation,
            "dropout": dropout,
        }
