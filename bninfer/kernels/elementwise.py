"""Elementwise kernels over flat float32 arrays. Arrays in, arrays out; nothing of ONNX."""
from __future__ import annotations

import math

import numpy as np
from numba import njit

from ..activations import activate_span


@njit(cache=True)
def activation(x, out, code, alpha, beta):
    """out[i] = act(x[i]) for flat x; alpha is the scalar parameter."""
    out[:] = x
    activate_span(code, out, 0, out.size, np.float32(alpha), np.float32(beta), beta, False, np.float32(1.0),
                  np.float32(0.0))


@njit(cache=True)
def erf(x, out):
    for i in range(x.size):
        out[i] = math.erf(x[i])
