"""Copies of a logged step's small tensors into one row of a preallocated history.

Inside a CPU training step of the canonical net, ``torch.cat`` of its dozen tensors (with
the two ``ravel`` calls its 2-D gradients need) takes about 38 µs, nearly all of it torch's
dispatch, not the copy. On the CPU a C function given the tensors' addresses copies them
in one call for about a third of that; it is built with the system C compiler once per
machine (:mod:`rmsprop_lightning.native`). On other devices, without a compiler, or for a
gradient that is not one contiguous block of its parameter's size, ``torch.cat`` does it.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from rmsprop_lightning import native

_SOURCE = r"""
#include <stdint.h>
#include <string.h>

struct plan {
  int64_t count;               /* blocks, the last of which is optional */
  char *const *sources;        /* their addresses */
  const int64_t *bytes;        /* their sizes */
  char *history;               /* where row 0 starts */
  int64_t row_bytes;           /* the distance between rows */
};

/* Copies the blocks (all, or all but the last) one after the other into row `row`. */
void gather_row(const struct plan *plan, int row, int with_last) {
  char *dst = plan->history + (int64_t)row * plan->row_bytes;
  const int64_t count = with_last ? plan->count : plan->count - 1;
  for (int64_t k = 0; k < count; k++) {
    if (plan->bytes[k]) memcpy(dst, plan->sources[k], (size_t)plan->bytes[k]);
    dst += plan->bytes[k];
  }
}
"""


class GatherPlan(ctypes.Structure):
    """The C side's ``struct plan``: what one call of ``gather_row`` copies, and where."""

    _fields_ = [
        ("count", ctypes.c_int64),
        ("sources", ctypes.c_void_p),
        ("bytes", ctypes.c_void_p),
        ("history", ctypes.c_void_p),
        ("row_bytes", ctypes.c_int64),
    ]


@functools.cache
def native_gather() -> Any | None:
    """The C ``gather_row``, built or found in the cache once per process; ``None`` if unavailable.

    It has no ``argtypes``: ctypes converts a prebuilt pointer and two small ints in a third
    of the time it takes to convert arguments through declared types.
    """
    try:
        library = native.build("gather", _SOURCE, ("-O2", "-shared", "-fPIC"))
        return native.load_function(library, "gather_row", None, hold_gil=True)
    except native.KernelUnavailable:
        return None


def flat(tensor: Tensor) -> Tensor:
    """``tensor`` as one dimension: itself when it has one, else a view (a copy when it is not contiguous).

    ``ravel`` takes no arguments, so torch parses its call in about half the time of ``view(-1)``.
    """
    return tensor if tensor.dim() == 1 else tensor.ravel()  # a 1-D tensor is concatenated at any stride


class FlatViews:
    """1-D views of a fixed list of tensors, for ``torch.cat``: made once (non-contiguous ones at each call).

    Parameters and optimizer states are updated in place, so their views keep showing
    their current values. The views are detached: copying them needs no autograd context.
    """

    def __init__(self, tensors: Sequence[Tensor]) -> None:
        self.tensors = [t.detach() for t in tensors]
        self._views = [t.view(-1) if t.is_contiguous() else None for t in self.tensors]
        self.stable = all(view is not None for view in self._views)  # the same views at every call

    def __call__(self) -> list[Tensor]:
        if self.stable:
            return self._views  # type: ignore[return-value]
        return [flat(t) if view is None else view for t, view in zip(self.tensors, self._views, strict=True)]


class RowCopy:
    """Writes a step's gradients of ``params``, ``tensors`` and on request ``before`` into a history row.

    A missing gradient counts as zeros. The rows that leave ``before`` out are shorter by
    its length; both must fit in a row of ``history``. ``native=False`` keeps to ``torch.cat``.
    """

    def __init__(
        self,
        params: Sequence[Tensor],
        tensors: Sequence[Tensor],
        before: Tensor,
        history: Tensor,
        native: bool = True,
    ) -> None:
        zeros = [p.new_zeros(p.numel()) for p in params]
        # per parameter: itself, zeros for a missing gradient, whether its gradient needs a 1-D view
        self._grad_sources = [(p, z, p.dim() != 1) for p, z in zip(params, zeros, strict=True)]
        self._views = FlatViews(tensors)
        self._before = before
        length = sum(p.numel() for p in params) + sum(t.numel() for t in tensors)
        if length + before.numel() > history.shape[1]:
            raise ValueError(f"rows of {history.shape[1]} elements cannot hold {length + before.numel()}")
        self._rows_with_before = list(history[:, : length + before.numel()].unbind(0))
        self._rows_without = list(history[:, :length].unbind(0))
        sources = [*zeros, *self._views.tensors, before]
        addressable = (
            native
            and history.device.type == "cpu"
            and history.is_contiguous()
            and self._views.stable
            and all(t.dtype == history.dtype and t.device == history.device for t in sources)
            and all(p.is_contiguous() for p in params)
        )
        self._gather = native_gather() if addressable else None
        if self._gather is not None:
            self._pointers = (ctypes.c_void_p * len(sources))(*(t.data_ptr() for t in sources))
            self._sizes = (ctypes.c_int64 * len(sources))(*(t.nbytes for t in sources))
            row_bytes = history.stride(0) * history.element_size()
            self._plan = GatherPlan(
                len(sources),
                ctypes.addressof(self._pointers),
                ctypes.addressof(self._sizes),
                history.data_ptr(),
                row_bytes,
            )
            self._plan_pointer = ctypes.pointer(self._plan)
            self._capacity = history.shape[0]
            # per gradient: its index, its parameter, the bytes it must have, the address of its zeros
            self._grad_plan = [
                (k, p, p.nbytes, z.data_ptr()) for k, (p, z, _) in enumerate(self._grad_sources)
            ]

    @property
    def native(self) -> bool:
        """Whether the copy goes through the C function."""
        return self._gather is not None

    def __call__(self, row: int, with_before: bool) -> None:
        gather = self._gather
        if gather is not None and 0 <= row < self._capacity:  # else torch's indexing raises
            pointers = self._pointers
            for k, param, nbytes, zeros in self._grad_plan:
                grad = param.grad
                if grad is None:
                    pointers[k] = zeros
                elif grad.nbytes == nbytes and grad.is_contiguous():
                    pointers[k] = grad.data_ptr()
                else:  # laid out otherwise (strides, or a swapped ``.data``): torch copies it
                    break
            else:
                gather(self._plan_pointer, row, with_before)
                return
        grads = [
            zeros if (grad := p.grad) is None else grad.ravel() if ravel else grad
            for p, zeros, ravel in self._grad_sources
        ]
        if with_before:
            torch.cat([*grads, *self._views(), self._before], out=self._rows_with_before[row])
        else:
            torch.cat(grads + self._views(), out=self._rows_without[row])
