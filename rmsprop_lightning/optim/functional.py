"""RMSprop's update as a function of tensors, with a single-tensor and a multi-tensor path.

Both paths run the same sequence of element-wise ATen operations as
``torch.optim.RMSprop`` (same operations, same order, same scalars), so in its
torch-compatible mode the result is bit-identical to torch's. They differ from torch
in how they walk memory: a large tensor is updated slice by slice (``chunk_bytes`` per
slice) so that all the operations of one slice run while it is still in cache, and
the intermediate results live in preallocated scratch memory instead of fresh
tensors. The DRAM traffic per parameter therefore drops from about 13 passes to the
5 the arithmetic needs (read parameter, gradient and square average, write parameter
and square average), and a step allocates nothing.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, MutableMapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, NamedTuple

import torch
from torch import Tensor

State = MutableMapping[str, Any]

# Bytes of one tensor slice: large enough to amortise the per-operation overhead, small
# enough that the slices of all tensors of one update stay in the last-level cache.
CHUNK_BYTES = 1 << 20
# With foreach=None, tensors up to this size take the multi-tensor path: for them the
# per-call overhead dominates, which batching saves; larger ones are faster one by one,
# where out= operations spare the copies the foreach kernels need (measured on the 2-core
# CPU machine: batching wins at 100 KB per tensor, loses at 250 KB).
SMALL_BYTES = 128 << 10


class Variant(NamedTuple):
    """Which element-wise operations a step runs; a compiled kernel is specialised on it."""

    maximize: bool
    grad_decay: bool
    param_decay: bool
    centered: bool
    bias_correction: bool
    eps_in_sqrt: bool
    momentum: bool
    nesterov: bool


class Coefficients(NamedTuple):
    """The scalars of one step, computed once in float64 so that every implementation rounds alike."""

    grad_decay: float
    param_decay: float
    alpha: float
    one_minus_alpha: float
    eps: float
    momentum: float
    buffer_scale: float
    grad_step: float
    buffer_step: float


@dataclass(frozen=True)
class Hyper:
    """One parameter group's RMSprop hyper-parameters."""

    lr: float
    alpha: float
    eps: float
    weight_decay: float
    momentum: float
    centered: bool
    maximize: bool
    eps_in_sqrt: bool = False
    lr_in_momentum: bool = False
    nesterov: bool = False
    bias_correction: bool = False
    decoupled_weight_decay: bool = False

    @classmethod
    def from_group(cls, group: MutableMapping[str, Any]) -> Hyper:
        """Reads the hyper-parameters out of an optimizer parameter group, as Python floats and bools.

        Plain values keep :attr:`variant` and :attr:`coefficients`, which are cached per
        configuration, right when a scheduler sets a learning rate (even as a 0-dim tensor).
        """
        return cls(*[kind(group[name]) for name, kind in _HYPER_FIELDS])

    @property
    def variant(self) -> Variant:
        """The operations this configuration needs (computed once per distinct configuration)."""
        return _derived(self)[0]

    @property
    def coefficients(self) -> Coefficients:
        """The scalars of the update, as torch's RMSprop passes them to ATen where it has them."""
        return _derived(self)[1]

    def _variant(self) -> Variant:
        decay = self.weight_decay != 0
        return Variant(
            maximize=self.maximize,
            grad_decay=decay and not self.decoupled_weight_decay,
            param_decay=decay and self.decoupled_weight_decay,
            centered=self.centered,
            bias_correction=self.bias_correction,
            eps_in_sqrt=self.eps_in_sqrt,
            momentum=self.momentum > 0,
            nesterov=self.nesterov,
        )

    def _coefficients(self) -> Coefficients:
        lr_outside = 1.0 if self.lr_in_momentum else self.lr
        return Coefficients(
            grad_decay=self.weight_decay,
            param_decay=1.0 - self.lr * self.weight_decay,
            alpha=self.alpha,
            one_minus_alpha=1 - self.alpha,
            eps=self.eps,
            momentum=self.momentum,
            buffer_scale=self.lr if self.lr_in_momentum else 1.0,
            grad_step=-self.lr,
            buffer_step=-(self.momentum * lr_outside) if self.nesterov else -lr_outside,
        )


_HYPER_FIELDS = tuple((field.name, float if field.type == "float" else bool) for field in fields(Hyper))


@functools.lru_cache(maxsize=256)
def _derived(hyper: Hyper) -> tuple[Variant, Coefficients]:
    """``hyper``'s variant and coefficients; a step reads them for every group, so they are kept."""
    return hyper._variant(), hyper._coefficients()


def state_dtype() -> torch.dtype:
    """The dtype torch's optimizers use for the ``step`` counter."""
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


def init_state(
    state: State, param: Tensor, *, momentum: float, centered: bool, initial_square_avg: float
) -> None:
    """Adds the entries ``state`` lacks, under torch's names: step, square_avg, momentum_buffer, grad_avg.

    Entries already present are kept, so a state loaded from a checkpoint written with
    fewer options (no momentum, say) gains only the buffers it now needs.
    """
    if "step" not in state:
        state["step"] = torch.zeros((), dtype=state_dtype())
    if "square_avg" not in state:
        state["square_avg"] = torch.full_like(param, initial_square_avg, memory_format=torch.preserve_format)
    if momentum > 0 and "momentum_buffer" not in state:
        state["momentum_buffer"] = torch.zeros_like(param, memory_format=torch.preserve_format)
    if centered and "grad_avg" not in state:
        state["grad_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)


_ONE = torch.tensor(1.0)


def advance(states: Sequence[State], alpha: float, bias_correction: bool) -> list[float]:
    """Counts one step in every state; returns each tensor's bias-correction factor ``1/(1-alpha^t)``."""
    steps = [state["step"] for state in states]
    if steps[0].is_cpu:  # a tensor operand spares wrapping the scalar once per tensor (as in torch)
        torch._foreach_add_(steps, _ONE, alpha=1.0)
    else:  # a counter on the device, from a checkpoint of torch's capturable mode
        torch._foreach_add_(steps, 1.0)
    if not bias_correction:
        return [1.0] * len(steps)
    return [1.0 / (1.0 - alpha ** float(step)) for step in steps]


# the coefficients that reach ATen as a plain scalar operand (mul_, add), not as value=/alpha=
_OPERANDS = ("alpha", "eps", "momentum", "param_decay")
# operand sets kept by a Scratch (one per distinct coefficients and dtype)
MAX_OPERAND_SETS = 64


class Scratch:
    """Reusable work memory of the eager step: a flat buffer per device and dtype, and views of it."""

    def __init__(self) -> None:
        self._buffers: dict[tuple[torch.device, torch.dtype], Tensor] = {}
        self._views: dict[tuple, tuple[list[Tensor], list[Tensor]]] = {}
        self._operands: dict[tuple[Coefficients, torch.dtype], Coefficients] = {}
        self._scalars: dict[tuple[float, torch.dtype], Tensor] = {}

    def operands(self, coeffs: Coefficients, dtype: torch.dtype) -> Coefficients:
        """``coeffs`` with its scalar operands as 0-dim CPU tensors of ``dtype``, kept for reuse.

        ATen wraps a Python number into a fresh 0-dim tensor on every call and rounds it
        to the tensor's dtype; a kept tensor holding the rounded value computes the same
        bits without the allocation. Only for float32/float64, where that rounding is the
        one ATen applies (reduced-precision tensors compute with float32 scalars). A
        scheduled learning rate makes new operands at every step, so the store is bounded.
        """
        if dtype not in (torch.float32, torch.float64):
            return coeffs
        key = (coeffs, dtype)
        held = self._operands.get(key)
        if held is None:
            if len(self._operands) >= MAX_OPERAND_SETS:
                self._operands.clear()
                self._scalars.clear()
            tensors = {name: self._scalar(getattr(coeffs, name), dtype) for name in _OPERANDS}
            held = self._operands[key] = coeffs._replace(**tensors)
        return held

    def _scalar(self, value: float, dtype: torch.dtype) -> Tensor:
        """A kept 0-dim tensor holding ``value`` in ``dtype`` (a changing lr leaves the others alone)."""
        scalar = self._scalars.get((value, dtype))
        if scalar is None:
            scalar = self._scalars[(value, dtype)] = torch.tensor(value, dtype=dtype)
        return scalar

    def pair(self, shapes: tuple[torch.Size, ...], like: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """Two lists of scratch tensors of ``shapes`` (work and denominator), the same on every step."""
        key = (shapes, like.dtype, like.device)
        views = self._views.get(key)
        if views is None:
            sizes = [math.prod(shape) for shape in shapes]
            total = sum(sizes)
            buffer = self._buffer(2 * total, like)
            views = tuple(
                [part.view(shape) for part, shape in zip(half.split(sizes), shapes, strict=True)]
                for half in (buffer[:total], buffer[total : 2 * total])
            )
            self._views[key] = views
        return views

    def _buffer(self, numel: int, like: Tensor) -> Tensor:
        """The flat buffer for ``like``'s device and dtype, grown to at least ``numel`` elements."""
        key = (like.device, like.dtype)
        buffer = self._buffers.get(key)
        if buffer is None or buffer.numel() < numel:
            buffer = torch.empty(numel, dtype=like.dtype, device=like.device)
            self._buffers[key] = buffer
            self._views.clear()
        return buffer


class _TensorOps:
    """The update's operations on single tensors; ``out`` may alias the source."""

    neg = staticmethod(torch.neg)
    add = staticmethod(torch.add)
    mul = staticmethod(torch.mul)
    addcmul = staticmethod(lambda src, t1, t2, value, out: torch.addcmul(src, t1, t2, value=value, out=out))
    sqrt = staticmethod(torch.sqrt)
    clamp_min = staticmethod(torch.clamp_min)
    mul_ = staticmethod(Tensor.mul_)
    lerp_ = staticmethod(Tensor.lerp_)
    addcmul_ = staticmethod(Tensor.addcmul_)
    addcdiv_ = staticmethod(Tensor.addcdiv_)
    add_ = staticmethod(Tensor.add_)


def _into(inplace: Callable[..., Any]) -> Callable[..., list[Tensor]]:
    """Turns an in-place foreach operation into one that writes ``out`` from ``src``."""

    def operation(src: list[Tensor], *args: Any, out: list[Tensor], **kwargs: Any) -> list[Tensor]:
        if out is not src:
            torch._foreach_copy_(out, src)
        inplace(out, *args, **kwargs)
        return out

    return operation


class _ForeachOps:
    """The update's operations on lists of tensors, through torch's ``_foreach`` kernels."""

    neg = staticmethod(_into(torch._foreach_neg_))
    add = staticmethod(_into(torch._foreach_add_))
    mul = staticmethod(_into(torch._foreach_mul_))
    addcmul = staticmethod(_into(torch._foreach_addcmul_))
    sqrt = staticmethod(_into(torch._foreach_sqrt_))
    clamp_min = staticmethod(_into(torch._foreach_clamp_min_))
    mul_ = staticmethod(torch._foreach_mul_)
    lerp_ = staticmethod(torch._foreach_lerp_)
    addcmul_ = staticmethod(torch._foreach_addcmul_)
    addcdiv_ = staticmethod(torch._foreach_addcdiv_)
    add_ = staticmethod(torch._foreach_add_)


def update_piece(
    ops: Any,
    piece: Sequence[Any],
    work: Any,
    denom: Any,
    correction: Any,
    square_scale: Any,
    coeffs: Coefficients,
    variant: Variant,
) -> None:
    """One step on one piece ``(param, grad, square_avg, grad_avg, momentum_buffer)``.

    ``ops`` runs each operation on tensors, on lists of tensors or inside a compiled
    graph; its out-of-place operations return their result, written into the scratch
    ``work`` or ``denom`` where ``ops`` uses scratch. ``correction`` scales the square
    average and ``square_scale`` the squared gradient average (bias correction).
    """
    param, grad, square_avg, grad_avg, buffer = piece
    if variant.maximize:
        grad = ops.neg(grad, out=work)
    if variant.grad_decay:
        grad = ops.add(grad, param, alpha=coeffs.grad_decay, out=work)
    ops.mul_(square_avg, coeffs.alpha)
    ops.addcmul_(square_avg, grad, grad, value=coeffs.one_minus_alpha)
    variance = square_avg
    if variant.bias_correction:
        variance = ops.mul(square_avg, correction, out=denom)
    if variant.centered:
        ops.lerp_(grad_avg, grad, coeffs.one_minus_alpha)
        variance = ops.clamp_min(
            ops.addcmul(variance, grad_avg, grad_avg, square_scale, out=denom), 0.0, out=denom
        )
    if variant.eps_in_sqrt:
        root = ops.sqrt(ops.add(variance, coeffs.eps, out=denom), out=denom)
    else:
        root = ops.add(ops.sqrt(variance, out=denom), coeffs.eps, out=denom)
    if variant.param_decay:
        ops.mul_(param, coeffs.param_decay)
    if variant.momentum:
        ops.mul_(buffer, coeffs.momentum)
        ops.addcdiv_(buffer, grad, root, value=coeffs.buffer_scale)
        if variant.nesterov:
            ops.addcdiv_(param, grad, root, value=coeffs.grad_step)
        ops.add_(param, buffer, alpha=coeffs.buffer_step)
    else:
        ops.addcdiv_(param, grad, root, value=coeffs.grad_step)


def rows(params: Sequence[Tensor], grads: Sequence[Tensor], states: Sequence[State]) -> list[tuple]:
    """Per parameter the tuple ``(param, grad, square_avg, grad_avg, momentum_buffer)``, real-valued.

    A complex tensor appears as its real view: torch's RMSprop treats both parts alike.
    """
    result = []
    for param, grad, state in zip(params, grads, states, strict=True):
        row = (param, grad, state["square_avg"], state.get("grad_avg"), state.get("momentum_buffer"))
        if param.is_complex():
            row = tuple(None if t is None else torch.view_as_real(t) for t in row)
        result.append(row)
    return result


def split_rows(
    rows_: list[tuple], corrections: list[float], key: Callable[[tuple], Any]
) -> dict[Any, tuple[list[tuple], list[float]]]:
    """``rows_`` and their ``corrections`` split by ``key(row)``, in order of first appearance."""
    parts: dict[Any, tuple[list[tuple], list[float]]] = {}
    for row, correction in zip(rows_, corrections, strict=True):
        part = parts.setdefault(key(row), ([], []))
        part[0].append(row)
        part[1].append(correction)
    return parts


def _pieces(row: tuple, chunk_bytes: int) -> list[tuple]:
    """``row`` as flat slices of at most ``chunk_bytes`` each; whole if small or not contiguous."""
    numel = row[0].numel()
    chunk = max(1, chunk_bytes // row[0].element_size())
    if numel <= chunk or not all(t.is_contiguous() for t in row if t is not None):
        return [row]
    flat = [None if t is None else t.view(-1) for t in row]
    return [
        tuple(None if t is None else t[start : start + chunk] for t in flat)
        for start in range(0, numel, chunk)
    ]


def _single_tensor(
    rows_: list[tuple], corrections: list[float], hyper: Hyper, scratch: Scratch, chunk_bytes: int
) -> None:
    """The single-tensor path: one parameter (slice) at a time."""
    variant, base = hyper.variant, hyper.coefficients
    by_dtype: dict[torch.dtype, Coefficients] = {}
    for row, correction in zip(rows_, corrections, strict=True):
        dtype = row[0].dtype
        coeffs = by_dtype.get(dtype) or by_dtype.setdefault(dtype, scratch.operands(base, dtype))
        square_scale = -(correction * correction)
        for piece in _pieces(row, chunk_bytes):
            work, denom = scratch.pair((piece[0].shape,), piece[0])
            update_piece(_TensorOps, piece, work[0], denom[0], correction, square_scale, coeffs, variant)


def _batches(
    rows_: list[tuple], corrections: list[float], chunk_bytes: int
) -> list[list[tuple[tuple, float]]]:
    """Groups the slices of same-kind rows into batches of at most one slice's bytes in all."""
    sizes = [row[0].numel() * row[0].element_size() for row in rows_]
    if sum(sizes) <= chunk_bytes:  # the common case of small tensors: one batch, no slicing
        return [list(zip(rows_, corrections, strict=True))]
    batches: list[list[tuple[tuple, float]]] = []
    current: list[tuple[tuple, float]] = []
    size = 0
    for row, correction in zip(rows_, corrections, strict=True):
        for piece in _pieces(row, chunk_bytes):
            nbytes = piece[0].numel() * piece[0].element_size()
            if current and size + nbytes > chunk_bytes:
                batches.append(current)
                current, size = [], 0
            current.append((piece, correction))
            size += nbytes
    if current:
        batches.append(current)
    return batches


def _multi_tensor(
    rows_: list[tuple], corrections: list[float], hyper: Hyper, scratch: Scratch, chunk_bytes: int
) -> None:
    """The multi-tensor path: batches of parameters (slices) per ``_foreach`` call."""
    variant, base = hyper.variant, hyper.coefficients
    kinds = split_rows(rows_, corrections, lambda row: (row[0].device, row[0].dtype))
    for (_, dtype), (kind_rows, kind_corrections) in kinds.items():
        coeffs = scratch.operands(base, dtype)
        for batch in _batches(kind_rows, kind_corrections, chunk_bytes):
            pieces = [piece for piece, _ in batch]
            work, denom = scratch.pair(tuple(piece[0].shape for piece in pieces), pieces[0][0])
            columns = [None if column[0] is None else list(column) for column in zip(*pieces, strict=True)]
            batch_corrections = [correction for _, correction in batch]
            square_scales = [-(correction * correction) for correction in batch_corrections]
            update_piece(_ForeachOps, columns, work, denom, batch_corrections, square_scales, coeffs, variant)


def update(
    rows_: list[tuple],
    corrections: list[float],
    hyper: Hyper,
    *,
    foreach: bool | None,
    scratch: Scratch,
    chunk_bytes: int | None = None,
) -> None:
    """Applies one eager step to :func:`rows` whose step counters were already advanced.

    ``foreach`` picks the multi-tensor path; ``None`` takes it for tensors of at most
    :data:`SMALL_BYTES` and the single-tensor path for the others. ``chunk_bytes`` is the
    slice size (default :data:`CHUNK_BYTES`).
    """
    chunk_bytes = chunk_bytes or CHUNK_BYTES
    if foreach is not None:
        path = _multi_tensor if foreach else _single_tensor
        path(rows_, corrections, hyper, scratch, chunk_bytes)
        return
    by_size = split_rows(
        rows_, corrections, lambda row: row[0].numel() * row[0].element_size() <= SMALL_BYTES
    )
    for small, (chosen, chosen_corrections) in by_size.items():
        path = _multi_tensor if small else _single_tensor
        path(chosen, chosen_corrections, hyper, scratch, chunk_bytes)


def rmsprop(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    states: Sequence[State],
    *,
    lr: float,
    alpha: float,
    eps: float,
    weight_decay: float,
    momentum: float,
    centered: bool,
    maximize: bool = False,
    foreach: bool | None = None,
    eps_in_sqrt: bool = False,
    lr_in_momentum: bool = False,
    nesterov: bool = False,
    bias_correction: bool = False,
    decoupled_weight_decay: bool = False,
    scratch: Scratch | None = None,
) -> None:
    """Functional RMSprop: one step on ``params`` and their initialised ``states``, in place.

    ``states`` hold torch's names (``step``, ``square_avg``, ``momentum_buffer``,
    ``grad_avg``; see :func:`init_state`). ``foreach`` picks the multi-tensor path
    (``None``: per tensor, see :func:`update`); both paths give identical results.
    """
    hyper = Hyper(
        lr=lr,
        alpha=alpha,
        eps=eps,
        weight_decay=weight_decay,
        momentum=momentum,
        centered=centered,
        maximize=maximize,
        eps_in_sqrt=eps_in_sqrt,
        lr_in_momentum=lr_in_momentum,
        nesterov=nesterov,
        bias_correction=bias_correction,
        decoupled_weight_decay=decoupled_weight_decay,
    )
    corrections = advance(states, alpha, bias_correction)
    update(rows(params, grads, states), corrections, hyper, foreach=foreach, scratch=scratch or Scratch())
