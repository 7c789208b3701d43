"""Elementwise kernels over flat float32 arrays. Arrays in, arrays out; nothing of ONNX."""
from __future__ import annotations

import math

from numba import njit

from ..activations import apply


@njit(cache=True, nogil=True)
def activation(x, out, code, alpha, beta):
    """out[i] = act(x[i]) for flat x; alpha is the scalar parameter."""
    for i in range(x.size):
        out[i] = apply(code, x[i], alpha, beta)


@njit(cache=True, nogil=True)
def copy(x, out):
    """out[:] = x for flat float32 arrays (reshape-like steps of a recorded plan: bninfer.record)."""
    for i in range(x.size):
        out[i] = x[i]


@njit(cache=True, nogil=True)
def erf(x, out):
    for i in range(x.size):
        out[i] = math.erf(x[i])
