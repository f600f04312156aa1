"""The fast step: the whole RMSprop update as one fused kernel per step.

Contiguous float32/float64 tensors on CPU go to the hand-written C kernel of
:mod:`~rmsprop_lightning.optim.cpu_kernel`: one pass over memory, ATen's arithmetic
except for an IEEE square root (torch's MKL square root is off by one ulp for ~0.6% of
inputs), about 0.2 s to build once per option combination and dtype (then cached on
disk). Tensors on other devices or of other dtypes (bfloat16, float16) go to the
eager update traced by ``torch.compile``, with every scalar passed as a tensor so that
a scheduled learning rate never recompiles; it agrees with the eager step to rounding
(the compiled arithmetic fuses and orders operations its own way: in the tests, within
1e-5 relative in float32 after 100 steps, a few ulps in bfloat16). Anything else, and
any back-end that cannot be built (no C compiler, say), runs the eager step, after one
warning per optimizer.

``fast=None`` switches the fused step on only once it pays: when a group has at least
:data:`AUTO_MIN_NUMEL` elements and the steps already taken, times the time the fused
step saves per step, exceed the back-end's compile cost. A run that has lasted ``t``
steps is expected to last about as long again, so the cost is repaid. The canonical
61-parameter net never qualifies; a 1e7-parameter model switches after about 100 steps.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch import Tensor

from rmsprop_lightning.native import KernelUnavailable
from rmsprop_lightning.optim import cpu_kernel
from rmsprop_lightning.optim.functional import Coefficients, Hyper, Variant, split_rows, update_piece

# below this many elements per group the automatic mode never compiles
AUTO_MIN_NUMEL = 1 << 16
# time the fused step saves per element and step on CPU (1e6-1e7 elements, measured)
SAVED_SECONDS_PER_ELEMENT = 1e-9
# estimated cost of building a back-end in a fresh process, in seconds
COMPILE_SECONDS = {"kernel": 1.0, "graph": 30.0}


class _GraphOps:
    """The update's operations inside a ``torch.compile`` graph: results are new tensors."""

    neg = staticmethod(lambda src, out: -src)
    add = staticmethod(lambda src, other, out, alpha=1.0: src + alpha * other)
    mul = staticmethod(lambda src, value, out: src * value)
    addcmul = staticmethod(lambda src, t1, t2, value, out: src + value * t1 * t2)
    sqrt = staticmethod(lambda src, out: torch.sqrt(src))
    clamp_min = staticmethod(lambda src, low, out: torch.clamp_min(src, low))
    mul_ = staticmethod(Tensor.mul_)
    lerp_ = staticmethod(Tensor.lerp_)
    addcmul_ = staticmethod(lambda t, t1, t2, value: t.add_(value * t1 * t2))
    addcdiv_ = staticmethod(lambda t, t1, t2, value: t.add_(value * t1 / t2))
    add_ = staticmethod(lambda t, other, alpha: t.add_(alpha * other))


def _graph_update(rows_: list[tuple], corrections: Tensor, coefficients: Tensor, variant: Variant) -> None:
    """The update of all ``rows_``, written to be traced; scalars arrive as tensors."""
    coeffs = Coefficients(*coefficients.unbind())
    square_scales = -(corrections * corrections)
    for k, piece in enumerate(rows_):
        update_piece(_GraphOps, piece, None, None, corrections[k], square_scales[k], coeffs, variant)


_compiled_graph: Callable[..., None] | None = None


def _graph() -> Callable[..., None]:
    """``torch.compile`` of :func:`_graph_update`, created on first use."""
    global _compiled_graph
    if _compiled_graph is None:
        _compiled_graph = torch.compile(_graph_update, fullgraph=True, dynamic=False)
    return _compiled_graph


_CPU = torch.device("cpu")


def _route(row: tuple) -> tuple[str, torch.device, torch.dtype]:
    """Which back-end takes ``row`` (``kernel``, ``graph`` or ``eager``), with its device and dtype.

    The C kernel needs every tensor of the row on the CPU, contiguous, of the parameter's
    dtype and size.
    """
    param = row[0]
    dtype = param.dtype
    if not param.is_cpu or dtype not in cpu_kernel.DTYPES:
        return "graph", param.device, dtype
    numel = param.numel()
    for t in row:
        if t is not None and not (t.is_contiguous() and t.dtype is dtype and t.numel() == numel and t.is_cpu):
            return "eager", _CPU, dtype
    return "kernel", _CPU, dtype


def worthwhile(backend: str, numel: int, steps: float) -> bool:
    """Whether the automatic mode compiles ``backend`` for ``numel`` elements after ``steps`` steps."""
    saved = steps * numel * SAVED_SECONDS_PER_ELEMENT
    return numel >= AUTO_MIN_NUMEL and saved >= COMPILE_SECONDS[backend]


class FastStep:
    """The fused step of one optimizer: routes tensors to a back-end, loads kernels once, warns once."""

    def __init__(self) -> None:
        self._kernels: dict[tuple[Variant, torch.dtype], cpu_kernel.Kernel | None] = {}
        self._graph_failed = False
        self._warned: set[str] = set()
        self.kernel_loads = 0

    def __call__(
        self, mode: bool | None, rows_: list[tuple], corrections: list[float], hyper: Hyper, steps: Tensor
    ) -> tuple[list[tuple], list[float]]:
        """Steps the ``rows_`` a fused back-end takes; returns the rows and corrections left over.

        ``mode`` is the group's ``fast`` option (``None``: automatic); ``steps`` its step counter.
        """
        if mode is None and sum(row[0].numel() for row in rows_) < AUTO_MIN_NUMEL:
            return rows_, corrections
        routes = split_rows(rows_, corrections, _route)
        left_rows: list[tuple] = []
        left_corrections: list[float] = []
        for (backend, device, dtype), (chosen, chosen_corrections) in routes.items():
            numel = sum(row[0].numel() for row in chosen)
            skip = backend == "eager" or (mode is None and not worthwhile(backend, numel, float(steps)))
            if skip or not self._run(backend, device, dtype, chosen, chosen_corrections, hyper):
                left_rows += chosen
                left_corrections += chosen_corrections
        return left_rows, left_corrections

    def _run(
        self,
        backend: str,
        device: torch.device,
        dtype: torch.dtype,
        rows_: list[tuple],
        corrections: list[float],
        hyper: Hyper,
    ) -> bool:
        """Steps ``rows_`` on ``backend``; ``False`` if that back-end is unavailable here."""
        if backend == "kernel":
            kernel = self._kernel(hyper, dtype)
            if kernel is not None:
                kernel(rows_, corrections, hyper.coefficients, torch.get_num_threads())
            return kernel is not None
        if self._graph_failed:
            return False
        scalar = torch.promote_types(dtype, torch.float32)
        try:
            _graph()(
                rows_,
                torch.tensor(corrections, dtype=scalar, device=device),
                torch.tensor(hyper.coefficients, dtype=scalar, device=device),
                hyper.variant,
            )
        except Exception as error:  # any compiler failure: fall back to the eager step
            self._graph_failed = True
            self._warn_once("graph", f"torch.compile failed: {type(error).__name__}: {error}")
        return not self._graph_failed

    def _warn_once(self, backend: str, reason: str) -> None:
        """Warns, once per back-end, that the eager step replaces the fused one."""
        if backend not in self._warned:
            self._warned.add(backend)
            warnings.warn(f"RMSprop fast step unavailable ({reason}); using the eager step", stacklevel=4)

    def _kernel(self, hyper: Hyper, dtype: torch.dtype) -> cpu_kernel.Kernel | None:
        """The loaded C kernel for ``hyper``'s variant and ``dtype``; ``None`` if it cannot be built."""
        key = (hyper.variant, dtype)
        if key not in self._kernels:
            try:
                self._kernels[key] = cpu_kernel.load(hyper.variant, dtype)
                self.kernel_loads += 1
            except KernelUnavailable as error:
                self._kernels[key] = None
                self._warn_once("kernel", str(error))
        return self._kernels[key]
