"""The eager step allocates no tensor memory: intermediates live in preallocated scratch."""

from __future__ import annotations

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from rmsprop_lightning.optim import RMSprop

OPTIONS = [
    {},
    {"centered": True, "momentum": 0.9, "weight_decay": 0.1},
    {"maximize": True, "eps_in_sqrt": True, "bias_correction": True, "momentum": 0.5, "nesterov": True},
    {"decoupled_weight_decay": True, "weight_decay": 0.1, "lr_in_momentum": True, "momentum": 0.9},
]
# the largest allocation allowed: a wrapped scalar operand (ATen's 0-dim tensors), never a tensor's worth
SCALAR_BYTES = 8


@pytest.mark.parametrize("foreach", [False, True, None])
@pytest.mark.parametrize("options", OPTIONS, ids=lambda options: ",".join(options) or "plain")
def test_a_step_allocates_nothing_but_scalars(options: dict, foreach: bool | None) -> None:
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(shape)) for shape in [(33, 17), (300_000,), (5,)]]
    optimizer = RMSprop(params, foreach=foreach, fast=False, **options)
    for _ in range(2):  # state and scratch are created here
        for param in params:
            param.grad = torch.randn_like(param)
        optimizer.step()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiler:
        optimizer.step()
    allocated = [event.cpu_memory_usage for event in profiler.events() if event.cpu_memory_usage > 0]
    assert max(allocated, default=0) <= SCALAR_BYTES
