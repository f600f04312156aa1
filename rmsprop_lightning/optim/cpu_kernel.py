"""A hand-written C kernel for the RMSprop step on CPU: one pass over memory, same rounding as ATen.

The kernel reads each element of the parameter, gradient and state once and writes
the parameter and state once (5 passes over memory for plain RMSprop, the minimum).
It repeats ATen's arithmetic operation by operation: the same products and fused
multiply-adds (``addcmul``, ``lerp`` and ``add(alpha=)`` use FMA in ATen's CPU
kernels), the same scalars rounded to the tensor's dtype, and the same square root
(ATen's is MKL's vector square root where torch ships it, and IEEE ``sqrt``
otherwise). :func:`load` runs the kernel and the eager step side by side on a probe
problem and keeps the square root with which the two agree bit for bit;
:attr:`Kernel.exact` records whether they did.

It is compiled with the system C compiler once per option combination and dtype,
then cached on disk (``$RMSPROP_LIGHTNING_CACHE``, else ``~/.cache/rmsprop_lightning``),
so later processes only load it.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rmsprop_lightning.optim.functional import (
    Coefficients,
    Hyper,
    Scratch,
    State,
    Variant,
    advance,
    init_state,
    rows,
    update,
)

DTYPES = {torch.float32: "float", torch.float64: "double"}

_SOURCE = r"""
#include <math.h>
#include <stdint.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#if IS_DOUBLE
typedef double T;
#define FMA fma
#define SQRT sqrt
#define FABS fabs
#else
typedef float T;
#define FMA fmaf
#define SQRT sqrtf
#define FABS fabsf
#endif

#define BLOCK 1024
#define PARALLEL_MIN 32768

/* MKL's vector square root, as ATen calls it: (n, in, out, mode) */
typedef void (*vsqrt_fn)(int64_t, const T *, T *, int64_t);

static void roots(int64_t n, const T *restrict in, T *restrict out, vsqrt_fn vsqrt, int64_t mode) {
  if (vsqrt) {
    vsqrt(n, in, out, mode);
  } else {
    for (int64_t j = 0; j < n; j++) out[j] = SQRT(in[j]);
  }
}

/* One tensor's elements [lo, hi): the operations of functional._update, fused. */
static void span(int64_t lo, int64_t hi, T *restrict param, const T *restrict grad,
                 T *restrict square_avg, T *restrict grad_avg, T *restrict buffer,
                 const double *c, double correction, vsqrt_fn vsqrt, int64_t mode) {
  const T grad_decay = (T)c[0], param_decay = (T)c[1], alpha = (T)c[2], one_minus_alpha = (T)c[3];
  const T eps = (T)c[4], momentum = (T)c[5], buffer_scale = (T)c[6], grad_step = (T)c[7];
  const T buffer_step = (T)c[8], scale = (T)correction, square_scale = (T)(-(correction * correction));
  const T weight = one_minus_alpha, weight_minus_one = weight - (T)1;
  const int small_weight = FABS(weight) < (T)0.5;
  T work[BLOCK], variance[BLOCK], denom[BLOCK];
  for (int64_t start = lo; start < hi; start += BLOCK) {
    const int64_t len = hi - start < BLOCK ? hi - start : BLOCK;
    T *restrict p = param + start;
    const T *restrict gr = grad + start;
    T *restrict v = square_avg + start;
    for (int64_t j = 0; j < len; j++) {
      T g = gr[j];
#if MAXIMIZE
      g = -g;
#endif
#if GRAD_DECAY
      g = FMA(grad_decay, p[j], g);
#endif
      work[j] = g;
      const T decayed = v[j] * alpha;
      T var = FMA(one_minus_alpha * g, g, decayed);
      v[j] = var;
#if BIAS_CORRECTION
      var = var * scale;
#endif
#if CENTERED
      T m = grad_avg[start + j];
      const T diff = g - m;
      m = small_weight ? FMA(weight, diff, m) : FMA(weight_minus_one, diff, g);
      grad_avg[start + j] = m;
      var = FMA(square_scale * m, m, var);
      var = var < (T)0 ? (T)0 : var;
#endif
#if EPS_IN_SQRT
      var = var + eps;
#endif
      variance[j] = var;
    }
    roots(len, variance, denom, vsqrt, mode);
    for (int64_t j = 0; j < len; j++) {
      T d = denom[j];
#if !EPS_IN_SQRT
      d = d + eps;
#endif
      const T g = work[j];
      T w = p[j];
#if PARAM_DECAY
      w = w * param_decay;
#endif
#if MOMENTUM
      T b = buffer[start + j] * momentum;
      b = b + (buffer_scale * g) / d;
      buffer[start + j] = b;
#if NESTEROV
      w = w + (grad_step * g) / d;
#endif
      w = FMA(buffer_step, b, w);
#else
      w = w + (grad_step * g) / d;
#endif
      p[j] = w;
    }
  }
}

/* pointers: n params, n grads, n square_avgs, n grad_avgs, n buffers (NULL where unused) */
void rmsprop_step(int64_t n, T *const *pointers, const int64_t *sizes, const double *corrections,
                  const double *coefficients, int threads, vsqrt_fn vsqrt, int64_t mode) {
  int64_t total = 0;
  for (int64_t k = 0; k < n; k++) total += sizes[k];
#pragma omp parallel num_threads(threads) if (total >= PARALLEL_MIN)
  {
    int64_t count = 1, rank = 0;
#ifdef _OPENMP
    count = omp_get_num_threads();
    rank = omp_get_thread_num();
#endif
    /* contiguous shares, aligned to 64 elements so no cache line is written by two threads */
    const int64_t lo = rank == 0 ? 0 : (total * rank / count) & ~(int64_t)63;
    const int64_t hi = rank == count - 1 ? total : (total * (rank + 1) / count) & ~(int64_t)63;
    int64_t offset = 0;
    for (int64_t k = 0; k < n; k++) {
      const int64_t a = lo > offset ? lo - offset : 0;
      const int64_t b = hi - offset < sizes[k] ? hi - offset : sizes[k];
      offset += sizes[k];
      if (a < b)
        span(a, b, pointers[k], pointers[n + k], pointers[2 * n + k], pointers[3 * n + k],
             pointers[4 * n + k], coefficients, corrections[k], vsqrt, mode);
    }
  }
}
"""

_FLAGS = ("-O3", "-march=native", "-ffp-contract=off", "-fno-math-errno", "-fopenmp", "-shared", "-fPIC")
# MKL vector-math mode ATen uses: high accuracy, denormals kept, errors ignored
_VML_MODE = 0x2 | 0x140000 | 0x100
_VML_SYMBOLS = {torch.float32: "vmsSqrt_64", torch.float64: "vmdSqrt_64"}
_PROBE = 4096


class KernelUnavailable(RuntimeError):
    """The C kernel cannot be built or loaded here (e.g. no C compiler)."""


def _compiler() -> str:
    """The C compiler to use: ``$CC``, else gcc, else cc."""
    compiler = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if not compiler:
        raise KernelUnavailable("no C compiler found (set CC or install gcc)")
    return compiler


def _cache_dir() -> Path:
    """Where built kernels are kept across processes."""
    root = os.environ.get("RMSPROP_LIGHTNING_CACHE")
    if root:
        return Path(root)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "rmsprop_lightning"


def _machine() -> str:
    """Describes the CPU, so that a shared cache never serves a build for another CPU (-march=native)."""
    try:
        with open("/proc/cpuinfo") as info:
            flags = next((line for line in info if line.startswith("flags")), "")
    except OSError:
        flags = ""
    return f"{platform.machine()} {platform.processor()} {flags}"


def _defines(variant: Variant, dtype: torch.dtype) -> list[str]:
    """Preprocessor switches selecting the operations of ``variant`` for ``dtype``."""
    switches = {name.upper(): int(on) for name, on in variant._asdict().items()}
    switches["IS_DOUBLE"] = int(dtype == torch.float64)
    return [f"-D{name}={value}" for name, value in sorted(switches.items())]


def _build(variant: Variant, dtype: torch.dtype) -> Path:
    """Compiles the kernel for ``variant`` and ``dtype`` unless a cached build exists; returns its path."""
    compiler = _compiler()
    command = [*_FLAGS, *_defines(variant, dtype)]
    key = hashlib.sha256("\n".join([_SOURCE, compiler, *command, _machine()]).encode()).hexdigest()[:24]
    directory = _cache_dir()
    library = directory / f"rmsprop_{key}.so"
    if library.exists():
        return library
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=directory) as work:
            source = Path(work) / "rmsprop.c"
            source.write_text(_SOURCE)
            output = Path(work) / "rmsprop.so"
            result = subprocess.run(
                [compiler, *command, str(source), "-o", str(output), "-lm"],
                capture_output=True,
                text=True,
                timeout=120,
            )
            if result.returncode != 0:
                raise KernelUnavailable(f"{compiler} failed:\n{result.stderr.strip()}")
            os.replace(output, library)  # atomic: concurrent builders never see a partial file
    except (OSError, subprocess.TimeoutExpired) as error:
        raise KernelUnavailable(f"building with {compiler} in {directory} failed: {error}") from error
    return library


def _mkl_sqrt(dtype: torch.dtype) -> int | None:
    """The address of the MKL vector square root torch's own ``sqrt`` calls, if torch exports it."""
    try:
        library = ctypes.CDLL(str(Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"))
        return ctypes.cast(getattr(library, _VML_SYMBOLS[dtype]), ctypes.c_void_p).value
    except (OSError, AttributeError):
        return None


def _probe_rows(dtype: torch.dtype, hyper: Hyper) -> tuple[list[tuple], list[State]]:
    """A small problem whose square averages span many magnitudes, to compare implementations on."""
    generator = torch.Generator().manual_seed(0)
    magnitudes = torch.logspace(-12, 12, _PROBE, dtype=torch.float64).to(dtype)
    param = torch.randn(_PROBE, dtype=dtype, generator=generator)
    grad = torch.randn(_PROBE, dtype=dtype, generator=generator) * magnitudes
    state: State = {}
    init_state(state, param, momentum=hyper.momentum, centered=hyper.centered, initial_square_avg=0.0)
    return rows([param], [grad], [state]), [state]


@dataclass(frozen=True)
class Kernel:
    """One loaded kernel and the square root it uses; ``exact`` if it matched the eager step bit for bit."""

    function: Any
    sqrt: int | None
    exact: bool

    def __call__(
        self,
        rows_: Sequence[tuple],
        corrections: Sequence[float],
        coefficients: Coefficients,
        threads: int,
    ) -> None:
        """Runs one step on ``rows_`` of contiguous ``(param, grad, square_avg, grad_avg, buffer)``."""
        n = len(rows_)
        pointers = [0 if t is None else t.data_ptr() for column in zip(*rows_, strict=True) for t in column]
        self.function(
            n,
            (ctypes.c_void_p * (5 * n))(*pointers),
            (ctypes.c_int64 * n)(*[row[0].numel() for row in rows_]),
            (ctypes.c_double * n)(*corrections),
            (ctypes.c_double * len(coefficients))(*coefficients),
            threads,
            self.sqrt,
            _VML_MODE,
        )


def _matches_eager(kernel: Kernel, hyper: Hyper, dtype: torch.dtype) -> bool:
    """Whether ``kernel`` reproduces the eager step bit for bit on a probe problem (three steps)."""
    eager_rows, eager_states = _probe_rows(dtype, hyper)
    fused_rows, fused_states = _probe_rows(dtype, hyper)
    scratch = Scratch()
    for _ in range(3):
        corrections = advance(eager_states, hyper.alpha, hyper.bias_correction)
        update(eager_rows, corrections, hyper, foreach=False, scratch=scratch)
        kernel(fused_rows, advance(fused_states, hyper.alpha, hyper.bias_correction), hyper.coefficients, 1)
    return all(
        a is None or torch.equal(a, b)
        for eager, fused in zip(eager_rows, fused_rows, strict=True)
        for a, b in zip(eager, fused, strict=True)
    )


def load(hyper: Hyper, dtype: torch.dtype) -> Kernel:
    """Builds (or finds in the cache) and loads the kernel for ``hyper``'s variant and ``dtype``.

    Of the square roots on offer (MKL's, as ATen uses it, then IEEE), it keeps the first
    with which the kernel matches the eager step on a probe problem.
    """
    path = _build(hyper.variant, dtype)
    try:
        function = ctypes.CDLL(str(path)).rmsprop_step
    except OSError as error:
        raise KernelUnavailable(f"loading {path} failed: {error}") from error
    function.restype = None
    function.argtypes = [
        ctypes.c_int64,
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_int,
        ctypes.c_void_p,
        ctypes.c_int64,
    ]
    candidates = [
        Kernel(function, address, exact=True) for address in dict.fromkeys((_mkl_sqrt(dtype), None))
    ]
    for kernel in candidates:
        if _matches_eager(kernel, hyper, dtype):
            return kernel
    return Kernel(function, candidates[0].sqrt, exact=False)
