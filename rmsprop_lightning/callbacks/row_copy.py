"""Copies of a logged step's small tensors into one row of a preallocated history, and version totals.

Inside a CPU training step of the canonical net, ``torch.cat`` of its dozen tensors (with
the two ``ravel`` calls its 2-D gradients need) takes about 38 µs, nearly all of it torch's
dispatch, not the copy; a copy by address still spends about 8 µs reading the gradients'
addresses and layouts from Python. A small C++ extension, built against the installed torch
once per machine (:mod:`rmsprop_lightning.native`), reads the gradients through torch's C++
API and copies the row in one call (60 ns in a loop, about 2 µs inside a fit); it also adds
up the version counters the monitor reads twice a step. On other devices, without a C++
compiler or Python's C headers, or for a gradient that is not one contiguous block of its
parameter's size and dtype, ``torch.cat`` copies the row."""

from __future__ import annotations

import ctypes
import functools
import operator
import sys
import sysconfig
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType

import torch
from torch import Tensor

from rmsprop_lightning import native

_MODULE = "rmsprop_lightning_row_copy"
_SOURCE = r"""
#include <Python.h>
#include <ATen/core/Tensor.h>
#include <cstring>

/* torch's Python tensor object as torch/csrc/autograd/python_variable.h lays it out (checked on
   loading, against Tensor._cdata) */
struct THPVariable {
  PyObject_HEAD
  at::Tensor cdata;
};
extern PyObject *THPVariableClass;

struct plan {
  int64_t grads;               /* first the gradients of the parameters passed */
  const int64_t *grad_bytes;   /* the bytes each must have */
  char *const *zeros;          /* what a missing one copies */
  int64_t count;               /* then blocks at fixed addresses, the last of which is optional */
  char *const *sources;
  const int64_t *bytes;
  char *history;               /* where row 0 starts */
  int64_t row_bytes;           /* the distance between rows */
  int64_t rows;
  int64_t dtype;               /* the history's scalar type, which the gradients must have */
};

static const at::Tensor *unpack(PyObject *object) {
  if (!PyObject_TypeCheck(object, reinterpret_cast<PyTypeObject *>(THPVariableClass))) return nullptr;
  return &reinterpret_cast<THPVariable *>(object)->cdata;
}

/* Whether a gradient is one block of `bytes` bytes of the history's dtype in the CPU's memory. */
static bool addressable(const at::Tensor &grad, int64_t bytes, int64_t dtype) {
  return grad.layout() == at::kStrided && grad.is_cpu() &&
         static_cast<int64_t>(grad.scalar_type()) == dtype &&
         static_cast<int64_t>(grad.nbytes()) == bytes && grad.is_contiguous();
}

/* gather_row(plan, params, row, with_last) -> bool: copies the parameters' gradients, then the
   blocks (all, or all but the last), one after the other into row `row`. False, with nothing
   written, when a gradient is laid out otherwise or the row is out of range. */
static PyObject *gather_row(PyObject *, PyObject *const *args, Py_ssize_t nargs) {
  if (nargs != 4 || !PyTuple_Check(args[1])) {
    PyErr_SetString(PyExc_TypeError, "gather_row(plan, params, row, with_last)");
    return nullptr;
  }
  const plan *p = static_cast<const plan *>(PyLong_AsVoidPtr(args[0]));
  const long row = PyLong_AsLong(args[2]);
  const int with_last = PyObject_IsTrue(args[3]);
  if (PyErr_Occurred()) return nullptr;
  PyObject *params = args[1];
  if (!p || PyTuple_GET_SIZE(params) != p->grads || row < 0 || row >= p->rows) Py_RETURN_FALSE;
  try {
    for (int64_t k = 0; k < p->grads; k++) {
      const at::Tensor *param = unpack(PyTuple_GET_ITEM(params, k));
      if (!param) Py_RETURN_FALSE;
      const at::Tensor &grad = param->grad();
      if (grad.defined() && !addressable(grad, p->grad_bytes[k], p->dtype)) Py_RETURN_FALSE;
    }
    char *dst = p->history + static_cast<int64_t>(row) * p->row_bytes;
    for (int64_t k = 0; k < p->grads; k++) {
      const at::Tensor &grad = unpack(PyTuple_GET_ITEM(params, k))->grad();
      const void *source = grad.defined() ? grad.const_data_ptr() : p->zeros[k];
      if (p->grad_bytes[k]) std::memcpy(dst, source, static_cast<size_t>(p->grad_bytes[k]));
      dst += p->grad_bytes[k];
    }
    const int64_t count = with_last ? p->count : p->count - 1;
    for (int64_t k = 0; k < count; k++) {
      if (p->bytes[k]) std::memcpy(dst, p->sources[k], static_cast<size_t>(p->bytes[k]));
      dst += p->bytes[k];
    }
  } catch (...) {
    Py_RETURN_FALSE;  /* torch.cat then writes the whole row */
  }
  Py_RETURN_TRUE;
}

/* version_total(tensors) -> int: the sum of the tensors' version counters. */
static PyObject *version_total(PyObject *, PyObject *tensors) {
  if (!PyTuple_Check(tensors)) {
    PyErr_SetString(PyExc_TypeError, "version_total takes a tuple of tensors");
    return nullptr;
  }
  unsigned long long total = 0;
  try {
    for (Py_ssize_t k = 0; k < PyTuple_GET_SIZE(tensors); k++) {
      const at::Tensor *tensor = unpack(PyTuple_GET_ITEM(tensors, k));
      if (!tensor) {
        PyErr_SetString(PyExc_TypeError, "version_total takes a tuple of tensors");
        return nullptr;
      }
      total += static_cast<unsigned long long>(tensor->_version());
    }
  } catch (const std::exception &error) {
    PyErr_SetString(PyExc_RuntimeError, error.what());
    return nullptr;
  }
  return PyLong_FromUnsignedLongLong(total);
}

/* tensor_impl(tensor) -> int: the address of the tensor's TensorImpl, as Tensor._cdata gives it. */
static PyObject *tensor_impl(PyObject *, PyObject *object) {
  const at::Tensor *tensor = unpack(object);
  if (!tensor) {
    PyErr_SetString(PyExc_TypeError, "tensor_impl takes a tensor");
    return nullptr;
  }
  return PyLong_FromVoidPtr(tensor->unsafeGetTensorImpl());
}

/* scalar_type(tensor) -> int: torch's number for the tensor's dtype. */
static PyObject *scalar_type(PyObject *, PyObject *object) {
  const at::Tensor *tensor = unpack(object);
  if (!tensor) {
    PyErr_SetString(PyExc_TypeError, "scalar_type takes a tensor");
    return nullptr;
  }
  return PyLong_FromLong(static_cast<long>(tensor->scalar_type()));
}

static PyMethodDef methods[] = {
    {"gather_row", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)(void)>(gather_row)),
     METH_FASTCALL, nullptr},
    {"version_total", version_total, METH_O, nullptr},
    {"tensor_impl", tensor_impl, METH_O, nullptr},
    {"scalar_type", scalar_type, METH_O, nullptr},
    {nullptr, nullptr, 0, nullptr}};

static PyModuleDef module = {PyModuleDef_HEAD_INIT, "rmsprop_lightning_row_copy", nullptr, -1, methods};

PyMODINIT_FUNC PyInit_rmsprop_lightning_row_copy(void) { return PyModule_Create(&module); }
"""

VERSION = operator.attrgetter("_version")  # a tensor's version counter, bumped by every in-place write


class GatherPlan(ctypes.Structure):
    """The C++ side's ``struct plan``: what one call of ``gather_row`` copies, and where."""

    _fields_ = [
        ("grads", ctypes.c_int64),
        ("grad_bytes", ctypes.c_void_p),
        ("zeros", ctypes.c_void_p),
        ("count", ctypes.c_int64),
        ("sources", ctypes.c_void_p),
        ("bytes", ctypes.c_void_p),
        ("history", ctypes.c_void_p),
        ("row_bytes", ctypes.c_int64),
        ("rows", ctypes.c_int64),
        ("dtype", ctypes.c_int64),
    ]


def build_options() -> tuple[list[str], list[str], list[str]]:
    """Compiler flags, libraries, and what the build must match: the installed torch and this Python."""
    python_include = Path(sysconfig.get_paths()["include"])
    if not (python_include / "Python.h").is_file():
        raise native.KernelUnavailable(
            f"Python's C headers are not installed (no Python.h in {python_include})"
        )
    torch_dir = Path(torch.__file__).parent
    flags = [
        "-O2",
        "-shared",
        "-fPIC",
        "-std=c++20",
        f"-I{torch_dir / 'include'}",
        f"-I{python_include}",
        f"-D_GLIBCXX_USE_CXX11_ABI={int(getattr(torch._C, '_GLIBCXX_USE_CXX11_ABI', True))}",
    ]
    lib = torch_dir / "lib"
    libraries = [f"-L{lib}", f"-Wl,-rpath,{lib}", "-lc10", "-ltorch_cpu", "-ltorch_python"]
    return flags, libraries, [torch.__version__, sys.version]


@functools.cache
def native_module() -> ModuleType | None:
    """The C++ extension, built or found in the cache once per process; ``None`` if unavailable.

    It reads torch's tensor objects in place, so it serves only where it finds them laid out
    as it expects: the tensor implementation of a tensor and of a parameter where ``_cdata`` says.
    """
    try:
        flags, libraries, depends_on = build_options()
        library = native.build(
            "row_copy", _SOURCE, flags, cplusplus=True, libraries=libraries, depends_on=depends_on
        )
        module = native.load_module(library, _MODULE)
    except native.KernelUnavailable:
        return None
    samples = (torch.zeros(2), torch.nn.Parameter(torch.zeros(2)))
    if any(module.tensor_impl(sample) != sample._cdata for sample in samples):
        return None
    return module


def version_total(tensors: Sequence[Tensor], native_sum: bool = True) -> Callable[[], int]:
    """A function returning the sum of the version counters of ``tensors``: one C++ call where it can be."""
    module = native_module() if native_sum and tensors else None
    if module is not None:
        return functools.partial(module.version_total, tuple(tensors))
    fixed = list(tensors)
    return lambda: sum(map(VERSION, fixed))


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
    The C++ copy serves a CPU history whose tensors all have its dtype, with contiguous
    parameters and ``tensors``; it checks each gradient's layout at each call.
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
        sources = [*self._views.tensors, before]
        addressable = (
            native
            and history.device.type == "cpu"
            and history.is_contiguous()
            and self._views.stable
            and all(t.dtype == history.dtype and t.device == history.device for t in [*zeros, *sources])
            and all(p.is_contiguous() for p in params)
        )
        module = native_module() if addressable else None
        self._gather = None if module is None else module.gather_row
        if module is not None:
            self._params = tuple(params)
            # the arrays the plan points into, kept with it
            self._grad_bytes = (ctypes.c_int64 * len(params))(*(p.nbytes for p in params))
            self._zeros = (ctypes.c_void_p * len(params))(*(z.data_ptr() for z in zeros))
            self._pointers = (ctypes.c_void_p * len(sources))(*(t.data_ptr() for t in sources))
            self._sizes = (ctypes.c_int64 * len(sources))(*(t.nbytes for t in sources))
            self._plan = GatherPlan(
                len(params),
                ctypes.addressof(self._grad_bytes),
                ctypes.addressof(self._zeros),
                len(sources),
                ctypes.addressof(self._pointers),
                ctypes.addressof(self._sizes),
                history.data_ptr(),
                history.stride(0) * history.element_size(),
                history.shape[0],
                module.scalar_type(history),
            )
            self._plan_address = ctypes.addressof(self._plan)

    @property
    def native(self) -> bool:
        """Whether the copy goes through the C++ extension."""
        return self._gather is not None

    def __call__(self, row: int, with_before: bool) -> None:
        gather = self._gather
        if gather is not None and gather(self._plan_address, self._params, row, with_before):
            return
        # torch copies what the C++ copy leaves: a gradient laid out otherwise (strides, a swapped
        # ``.data``), or a row past the end, which torch's indexing refuses
        grads = [
            zeros if (grad := p.grad) is None else grad.ravel() if ravel else grad
            for p, zeros, ravel in self._grad_sources
        ]
        if with_before:
            torch.cat([*grads, *self._views(), self._before], out=self._rows_with_before[row])
        else:
            torch.cat(grads + self._views(), out=self._rows_without[row])
