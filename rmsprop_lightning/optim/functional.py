"""RMSprop's update as a function of tensors: one description of the arithmetic for every path.

:func:`update_piece` states the update once in terms of an ``ops`` object that runs each operation on
single tensors, on lists of tensors (torch's ``_foreach`` kernels) or inside a ``torch.compile`` graph. The
eager paths run the same ATen operations with the same scalars in the same order as
``torch.optim.RMSprop``, so at torch's options they give torch's bits.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor

# With foreach=None, CPU tensors from this size on are stepped one by one: an operation's result is
# then still in cache for the next one, which outweighs the per-call overhead batching saves.
LARGE_BYTES = 128 << 10
# CPU tensors of these types are always stepped one by one, as torch's default does: its list kernels
# round their intermediate results otherwise
HALF_TYPES = (torch.float16, torch.bfloat16)

State = MutableMapping[str, Any]
Row = tuple[Tensor, Tensor, Tensor, Tensor | None, Tensor | None]


class Variant(NamedTuple):
    """Which operations a step runs; a compiled graph is specialised on it."""

    maximize: bool
    grad_decay: bool
    param_decay: bool
    centered: bool
    bias_correction: bool
    eps_in_sqrt: bool
    momentum: bool
    nesterov: bool


class Coefficients(NamedTuple):
    """The scalars of one step: Python floats on the eager paths, 0-dim tensors in a graph."""

    grad_decay: Any
    param_decay: Any
    alpha: Any
    one_minus_alpha: Any
    eps: Any
    momentum: Any
    buffer_scale: Any
    grad_step: Any
    buffer_step: Any


def hyper(options: Mapping[str, Any]) -> tuple[Variant, Coefficients]:
    """The variant and coefficients of a parameter group."""
    lr, alpha, momentum = float(options["lr"]), float(options["alpha"]), float(options["momentum"])
    weight_decay = float(options["weight_decay"])
    decoupled, lr_in_momentum = options["decoupled_weight_decay"], options["lr_in_momentum"]
    lr_outside = 1.0 if lr_in_momentum else lr
    variant = Variant(
        maximize=options["maximize"],
        grad_decay=weight_decay != 0 and not decoupled,
        param_decay=weight_decay != 0 and decoupled,
        centered=options["centered"],
        bias_correction=options["bias_correction"],
        eps_in_sqrt=options["eps_in_sqrt"],
        momentum=momentum > 0,
        nesterov=options["nesterov"],
    )
    coefficients = Coefficients(
        grad_decay=weight_decay,
        param_decay=1.0 - lr * weight_decay,
        alpha=alpha,
        one_minus_alpha=1 - alpha,
        eps=float(options["eps"]),
        momentum=momentum,
        buffer_scale=lr if lr_in_momentum else 1.0,
        grad_step=-lr,
        buffer_step=-(momentum * lr_outside) if options["nesterov"] else -lr_outside,
    )
    return variant, coefficients


def state_dtype() -> torch.dtype:
    """The dtype torch's optimizers use for the ``step`` counter."""
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


# the states RMSprop keeps only for some settings, in the order init_state adds them, and the setting of each
OPTIONAL_STATES = {"momentum_buffer": "momentum", "grad_avg": "centered"}


def init_state(
    state: State, param: Tensor, *, momentum: float, centered: bool, initial_square_avg: float
) -> None:
    """Adds the entries ``state`` lacks, under torch's names: step, square_avg, momentum_buffer, grad_avg.

    A state loaded from a checkpoint written with fewer options gains only the buffers it now needs.
    """
    if "step" not in state:
        state["step"] = torch.zeros((), dtype=state_dtype())
    if "square_avg" not in state:  # a complex parameter's real and imaginary parts both start there
        start = complex(initial_square_avg, initial_square_avg) if param.is_complex() else initial_square_avg
        state["square_avg"] = torch.full_like(param, start, memory_format=torch.preserve_format)
    settings = {"momentum": momentum > 0, "centered": centered}
    for name, setting in OPTIONAL_STATES.items():
        if settings[setting] and name not in state:
            state[name] = torch.zeros_like(param, memory_format=torch.preserve_format)


def advance(states: Sequence[State], alpha: float, bias_correction: bool) -> list[float]:
    """Counts one step in every state (as torch does); returns each bias correction ``1/(1-alpha^t)``."""
    steps = [state["step"] for state in states]
    if steps[0].is_cpu:  # one wrapped operand instead of one per tensor, as in torch
        torch._foreach_add_(steps, torch.tensor(1.0), alpha=1.0)
    else:
        torch._foreach_add_(steps, 1)
    if not bias_correction:
        return [1.0] * len(steps)
    return [1.0 / (1.0 - float(alpha) ** float(step)) for step in steps]


class TensorOps:
    """The update's operations on single tensors, as torch's single-tensor RMSprop calls them."""

    neg = staticmethod(torch.neg)
    add = staticmethod(torch.add)
    mul = staticmethod(torch.mul)
    addcmul = staticmethod(torch.addcmul)
    sqrt = staticmethod(torch.sqrt)
    add_ = staticmethod(Tensor.add_)
    mul_ = staticmethod(Tensor.mul_)
    lerp_ = staticmethod(Tensor.lerp_)
    sqrt_ = staticmethod(Tensor.sqrt_)
    clamp_min_ = staticmethod(Tensor.clamp_min_)
    addcmul_ = staticmethod(Tensor.addcmul_)
    addcdiv_ = staticmethod(Tensor.addcdiv_)


class ForeachOps:
    """The same operations on lists of tensors, as torch's multi-tensor RMSprop calls them.

    ``value`` goes positionally to ``addcmul``, where it may also be a list of scalars."""

    neg = staticmethod(torch._foreach_neg)
    add = staticmethod(torch._foreach_add)
    mul = staticmethod(torch._foreach_mul)
    addcmul = staticmethod(lambda src, t1, t2, value: torch._foreach_addcmul(src, t1, t2, value))
    sqrt = staticmethod(torch._foreach_sqrt)
    add_ = staticmethod(torch._foreach_add_)
    mul_ = staticmethod(torch._foreach_mul_)
    lerp_ = staticmethod(torch._foreach_lerp_)
    sqrt_ = staticmethod(torch._foreach_sqrt_)
    clamp_min_ = staticmethod(torch._foreach_clamp_min_)
    addcmul_ = staticmethod(lambda src, t1, t2, value: torch._foreach_addcmul_(src, t1, t2, value))
    addcdiv_ = staticmethod(torch._foreach_addcdiv_)


def update_piece(
    ops: Any, piece: Sequence[Any], correction: Any, square_scale: Any, c: Coefficients, variant: Variant
) -> None:
    """One step on ``piece = (param, grad, square_avg, grad_avg, momentum_buffer)``, in place.

    ``correction`` and ``square_scale`` are the bias corrections of the square average and of the squared
    gradient average. Intermediates are allocated where torch allocates them."""
    param, grad, square_avg, grad_avg, buffer = piece
    if variant.maximize:
        grad = ops.neg(grad)
    if variant.grad_decay:
        grad = ops.add(grad, param, alpha=c.grad_decay)
    ops.mul_(square_avg, c.alpha)
    ops.addcmul_(square_avg, grad, grad, value=c.one_minus_alpha)
    denom = ops.mul(square_avg, correction) if variant.bias_correction else None
    if variant.centered:
        ops.lerp_(grad_avg, grad, c.one_minus_alpha)
        if denom is None:
            denom = ops.addcmul(square_avg, grad_avg, grad_avg, value=square_scale)
        else:
            ops.addcmul_(denom, grad_avg, grad_avg, value=square_scale)
        ops.clamp_min_(denom, 0.0)  # torch takes the root of a negative variance and gets NaN
    if variant.eps_in_sqrt:
        if denom is None:
            denom = ops.add(square_avg, c.eps)
        else:
            ops.add_(denom, c.eps)
        ops.sqrt_(denom)
    else:
        if denom is None:
            denom = ops.sqrt(square_avg)
        else:
            ops.sqrt_(denom)
        ops.add_(denom, c.eps)
    if variant.param_decay:
        ops.mul_(param, c.param_decay)
    if variant.momentum:
        ops.mul_(buffer, c.momentum)
        ops.addcdiv_(buffer, grad, denom, value=c.buffer_scale)
        if variant.nesterov:
            ops.addcdiv_(param, grad, denom, value=c.grad_step)
        ops.add_(param, buffer, alpha=c.buffer_step)
    else:
        ops.addcdiv_(param, grad, denom, value=c.grad_step)


def rows(params: Sequence[Tensor], grads: Sequence[Tensor], states: Sequence[State]) -> list[Row]:
    """Per parameter ``(param, grad, square_avg, grad_avg, momentum_buffer)``; see :func:`real_row`."""
    return [
        (param, grad, state["square_avg"], state.get("grad_avg"), state.get("momentum_buffer"))
        for param, grad, state in zip(params, grads, states, strict=True)
    ]


def real_row(row: Row) -> Row:
    """``row`` with complex tensors as real views: real and imaginary parts are scaled apart, as in torch."""
    if not row[0].is_complex():
        return row
    return tuple(None if t is None else torch.view_as_real(t) for t in row)  # type: ignore[return-value]


def update_alone(row: Row, correction: float, variant: Variant, c: Coefficients) -> None:
    """One row by single-tensor operations; like torch, decays a complex gradient before its real view."""
    param, grad = row[0], row[1]
    if variant.grad_decay and param.is_complex():
        grad = (torch.neg(grad) if variant.maximize else grad).add(param, alpha=c.grad_decay)
        row = (param, grad, *row[2:])
        variant = variant._replace(maximize=False, grad_decay=False)
    update_piece(TensorOps, real_row(row), correction, -(correction * correction), c, variant)


def by_device_and_dtype(rows_: list[Row], corrections: list[float]) -> list[tuple[list[Row], list[float]]]:
    """``rows_`` and their ``corrections`` split by the parameter's device and dtype, in order."""
    parts: dict[tuple[torch.device, torch.dtype], tuple[list[Row], list[float]]] = {}
    for row, correction in zip(rows_, corrections, strict=True):
        part = parts.setdefault((row[0].device, row[0].dtype), ([], []))
        part[0].append(row)
        part[1].append(correction)
    return list(parts.values())


def update(
    rows_: list[Row], corrections: list[float], variant: Variant, c: Coefficients, foreach: bool | None
) -> None:
    """One eager step on :func:`rows` whose counters :func:`advance` moved.

    ``foreach=None`` batches all tensors but CPU ones of :data:`LARGE_BYTES` or more, of :data:`HALF_TYPES`
    or, with weight decay, complex ones (as torch's default on CPU)."""
    batch: list[Row] = []
    batch_corrections: list[float] = []
    for row, correction in zip(rows_, corrections, strict=True):
        param = row[0]
        alone = param.is_cpu and (
            param.nbytes >= LARGE_BYTES
            or param.dtype in HALF_TYPES
            or (variant.grad_decay and param.is_complex())
        )
        if foreach is False or (foreach is None and alone):
            update_alone(row, correction, variant, c)
        else:
            batch.append(real_row(row))
            batch_corrections.append(correction)
    for part, part_corrections in by_device_and_dtype(batch, batch_corrections):
        columns = [None if column[0] is None else list(column) for column in zip(*part, strict=True)]
        square_scales = [-(correction * correction) for correction in part_corrections]
        if not variant.bias_correction:  # one scalar, so that ATen takes the overloads torch takes
            part_corrections, square_scales = part_corrections[0], square_scales[0]
        update_piece(ForeachOps, columns, part_corrections, square_scales, c, variant)
