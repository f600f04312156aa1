"""The fast step: :func:`~rmsprop_lightning.optim.functional.update_piece` traced by ``torch.compile``.

The whole step becomes one graph fused into a single pass over memory. Scalars reach it as tensors,
so a scheduled learning rate never recompiles.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable

import torch
from torch import Tensor

from rmsprop_lightning.optim.functional import (
    Coefficients,
    Row,
    TensorOps,
    Variant,
    by_device_and_dtype,
    real_row,
    update_piece,
)

Part = tuple[list[Row], list[float], Variant, Coefficients]

log = logging.getLogger(__name__)


class GraphOps(TensorOps):
    """The update's operations with 0-dim tensors for scalars, in the forms ``torch.compile`` traces."""

    add = staticmethod(lambda src, other, alpha=1.0: src + alpha * other)
    addcmul = staticmethod(lambda src, t1, t2, value: src + value * t1 * t2)
    add_ = staticmethod(lambda t, other, alpha=1.0: t.add_(alpha * other))
    lerp_ = staticmethod(lambda t, end, weight: t.add_(weight * (end - t)))  # any dtype of ``end``
    addcmul_ = staticmethod(lambda t, t1, t2, value: t.add_(value * t1 * t2))
    addcdiv_ = staticmethod(lambda t, t1, t2, value: t.add_(value * t1 / t2))


def _graph_step(parts: list[tuple[list[Row], Tensor, Variant]]) -> None:
    """The update of every part; ``scalars`` holds the coefficients, then one correction per row."""
    count = len(Coefficients._fields)
    for rows_, scalars, variant in parts:
        coefficients = Coefficients(*scalars[:count].unbind())
        for row, correction in zip(rows_, scalars[count:].unbind(), strict=True):
            update_piece(GraphOps, row, correction, -(correction * correction), coefficients, variant)


@functools.cache
def _compiled() -> Callable[[list[tuple[list[Row], Tensor, Variant]]], None]:
    """``torch.compile`` of :func:`_graph_step`, created on first use (importing the compiler is slow)."""
    log.info("RMSprop fast=True: compiling its step; the first step of each parameter layout waits for it")
    return torch.compile(_graph_step, fullgraph=True, dynamic=False)


def step(parts: list[Part]) -> None:
    """Applies one step to every part ``(rows, corrections, variant, coefficients)`` in one compiled call;
    if ``torch.compile`` raises, nothing has been updated."""
    graph_parts = []
    for rows_, corrections, variant, coefficients in parts:
        # as 1-element views, 0-dim tensors keep their in-place updates (torch 2.13's graphs drop them)
        rows_ = [
            tuple(t.view(1) if t is not None and t.dim() == 0 else t for t in real_row(r)) for r in rows_
        ]
        for part, part_corrections in by_device_and_dtype(rows_, corrections):
            param = part[0][0]
            scalars = torch.tensor(
                [*coefficients, *part_corrections],
                dtype=torch.promote_types(param.dtype, torch.float32),
                device=param.device,
            )
            graph_parts.append((part, scalars, variant))
    _compiled()(graph_parts)
