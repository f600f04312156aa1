"""The members' feed-forward networks as one module: each layer's weights stacked over a member dimension."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from rmsprop_lightning.model import FeedForward


class StackedFeedForward(nn.Module):
    """``P`` same-shaped :class:`FeedForward` networks evaluated together with ``torch.baddbmm``: parameter
    ``layer_0_weight`` holds member ``i``'s ``0.weight`` at index ``i``."""

    def __init__(self, networks: Sequence[FeedForward]) -> None:
        super().__init__()
        first = networks[0]
        self.size = len(networks)
        self.names = [name for name, _ in first.named_parameters()]
        for name in self.names:
            stacked = torch.stack([dict(net.named_parameters())[name].detach() for net in networks])
            self.register_parameter(self.attribute(name), nn.Parameter(stacked.clone()))
        # the layers between the linear ones (activations); dropout never joins a population
        self.layers = [(int(name.split(".")[0]), module) for name, module in first.named_children()]

    @staticmethod
    def attribute(name: str) -> str:
        """The stacked parameter's attribute name for a member parameter name."""
        return "layer_" + name.replace(".", "_")

    def stacked(self, name: str) -> nn.Parameter:
        """The stacked tensor of member parameter ``name``."""
        return getattr(self, self.attribute(name))

    def forward(self, features: Tensor) -> Tensor:
        """``[P, B, out]`` from ``[P, B, in]`` (a batch per member) or ``[B, in]`` (one batch for all)."""
        hidden = features if features.dim() == 3 else features.expand(self.size, *features.shape)
        for index, module in self.layers:
            if isinstance(module, nn.Linear):
                weight, bias = self.stacked(f"{index}.weight"), self.stacked(f"{index}.bias")
                hidden = torch.baddbmm(bias.unsqueeze(1), hidden, weight.transpose(1, 2))
            else:
                hidden = module(hidden)
        return hidden
