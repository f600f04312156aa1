"""A hand-written C kernel for the RMSprop step on CPU: one pass over memory, ATen's rounding.

The kernel reads each element of the parameter, gradient and state once and writes
the parameter and state once (5 passes over memory for plain RMSprop, the minimum),
in one loop, so that the arithmetic hides behind the memory traffic. It repeats ATen's
arithmetic operation by operation: the same products and fused multiply-adds
(``addcmul``, ``lerp`` and ``add(alpha=)`` use FMA in ATen's CPU kernels), the same
scalars rounded to the tensor's dtype, the same order. The one difference is the square
root: the kernel's is IEEE (correctly rounded), while torch's MKL build computes
``torch.sqrt`` with MKL's vector square root, which is off by one ulp for about 0.6% of
inputs. Calling MKL's routine from the kernel keeps the bits but splits the loop around
the call and costs about 40% of the bandwidth, so the kernel does not. Its results
therefore equal the eager step's bit for bit where torch's square root is IEEE (builds
without MKL) and differ by rounding otherwise (see ``tests/test_optim_fast.py``).

It is compiled with the system C compiler once per option combination and dtype,
then cached on disk (:mod:`rmsprop_lightning.native`), so later processes only load it.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from rmsprop_lightning import native
from rmsprop_lightning.optim.functional import Coefficients, Variant

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

#define PARALLEL_MIN 32768

/* One tensor's elements [lo, hi): the operations of functional.update_piece, fused. */
static void span(int64_t lo, int64_t hi, T *restrict param, const T *restrict grad,
                 T *restrict square_avg, T *restrict grad_avg, T *restrict buffer,
                 const double *c, double correction) {
  const T grad_decay = (T)c[0], param_decay = (T)c[1], alpha = (T)c[2], one_minus_alpha = (T)c[3];
  const T eps = (T)c[4], momentum = (T)c[5], buffer_scale = (T)c[6], grad_step = (T)c[7];
  const T buffer_step = (T)c[8], scale = (T)correction, square_scale = (T)(-(correction * correction));
  const T weight = one_minus_alpha, weight_minus_one = weight - (T)1;
  const int small_weight = FABS(weight) < (T)0.5;
  for (int64_t i = lo; i < hi; i++) {
    T g = grad[i];
    T p = param[i];
#if MAXIMIZE
    g = -g;
#endif
#if GRAD_DECAY
    g = FMA(grad_decay, p, g);
#endif
    T v = FMA(one_minus_alpha * g, g, square_avg[i] * alpha);
    square_avg[i] = v;
#if BIAS_CORRECTION
    v = v * scale;
#endif
#if CENTERED
    T m = grad_avg[i];
    const T diff = g - m;
    m = small_weight ? FMA(weight, diff, m) : FMA(weight_minus_one, diff, g);
    grad_avg[i] = m;
    v = FMA(square_scale * m, m, v);
    v = v < (T)0 ? (T)0 : v;
#endif
#if EPS_IN_SQRT
    const T d = SQRT(v + eps);
#else
    const T d = SQRT(v) + eps;
#endif
#if PARAM_DECAY
    p = p * param_decay;
#endif
#if MOMENTUM
    T b = buffer[i] * momentum;
    b = b + (buffer_scale * g) / d;
    buffer[i] = b;
#if NESTEROV
    p = p + (grad_step * g) / d;
#endif
    p = FMA(buffer_step, b, p);
#else
    p = p + (grad_step * g) / d;
#endif
    param[i] = p;
  }
}

/* pointers: n params, n grads, n square_avgs, n grad_avgs, n buffers (NULL where unused) */
void rmsprop_step(int64_t n, T *const *pointers, const int64_t *sizes, const double *corrections,
                  const double *coefficients, int threads) {
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
             pointers[4 * n + k], coefficients, corrections[k]);
    }
  }
}
"""

_FLAGS = ("-O3", "-march=native", "-ffp-contract=off", "-fno-math-errno", "-fopenmp", "-shared", "-fPIC")


def _defines(variant: Variant, dtype: torch.dtype) -> list[str]:
    """Preprocessor switches selecting the operations of ``variant`` for ``dtype``."""
    switches = {name.upper(): int(on) for name, on in variant._asdict().items()}
    switches["IS_DOUBLE"] = int(dtype == torch.float64)
    return [f"-D{name}={value}" for name, value in sorted(switches.items())]


@dataclass(frozen=True)
class Kernel:
    """One loaded kernel (a ctypes function) for one option combination and dtype."""

    function: Any

    def __call__(
        self,
        rows_: Sequence[tuple],
        corrections: Sequence[float],
        coefficients: Coefficients,
        threads: int,
    ) -> None:
        """Runs one step on ``rows_`` of contiguous ``(param, grad, square_avg, grad_avg, buffer)``."""
        n = len(rows_)
        pointers = np.array(
            [0 if t is None else t.data_ptr() for column in zip(*rows_, strict=True) for t in column],
            dtype=np.uint64,
        )
        sizes = np.array([row[0].numel() for row in rows_], dtype=np.int64)
        scalars = np.array(corrections, dtype=np.float64)
        self.function(
            n,
            pointers.ctypes.data,
            sizes.ctypes.data,
            scalars.ctypes.data,
            (ctypes.c_double * len(coefficients))(*coefficients),
            threads,
        )


def load(variant: Variant, dtype: torch.dtype) -> Kernel:
    """Builds (or finds in the cache) and loads the kernel for ``variant`` and ``dtype``."""
    library = native.build("rmsprop", _SOURCE, [*_FLAGS, *_defines(variant, dtype)])
    argtypes = [ctypes.c_int64, *[ctypes.c_void_p] * 4, ctypes.c_int]
    return Kernel(native.load_function(library, "rmsprop_step", argtypes))
