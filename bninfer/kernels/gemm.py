"""The fused epilogue of a matrix product, row by row. Arrays in, arrays out; nothing of ONNX.

The product itself is BLAS (numpy's dot/matmul into the preallocated output); this kernel then applies,
in place, for each of `rows` rows of `n` columns (column c = output feature c):

    y[r, c] = post_scale[c] * act(y[r, c] + bias[c] + residual[r, c], alpha[c], beta) + post_shift[c]

A row is processed in a few short passes while it sits in L1, each pass a branch-free loop over the
columns that LLVM vectorizes (bias/residual add, ReLU/LeakyReLU/PReLU/Clip, scale/shift); other
activations go through `activations.apply` element by element. (A generic per-element epilogue that
branches on the activation code inside the loop ran 5-20x slower on an (M, N) output.)
"""
from __future__ import annotations

import numpy as np
from numba import njit

from ..activations import CLIP, LEAKY_RELU, NONE, PRELU, RELU, apply


@njit(cache=True, nogil=True)
def row_epilogue(y, rows, n, bias, has_bias, residual, has_residual, code, alpha, beta, has_post,
                 post_scale, post_shift):
    """y, residual: flat float32 of rows*n (residual ignored unless has_residual); bias, alpha,
    post_scale, post_shift: float32 of n. Comparisons keep NaN propagating as in activations.apply."""
    zero = np.float32(0.0)
    lo = alpha[0] if n > 0 else zero  # Clip: alpha holds the lower bound, beta the upper
    hi = np.float32(beta)
    for r in range(rows):
        base = r * n
        if has_bias and has_residual:
            for c in range(n):
                y[base + c] = (y[base + c] + bias[c]) + residual[base + c]
        elif has_bias:
            for c in range(n):
                y[base + c] = y[base + c] + bias[c]
        elif has_residual:
            for c in range(n):
                y[base + c] = y[base + c] + residual[base + c]
        if code == NONE:
            pass
        elif code == RELU:
            for c in range(n):
                v = y[base + c]
                y[base + c] = zero if v < zero else v
        elif code == LEAKY_RELU or code == PRELU:
            for c in range(n):
                v = y[base + c]
                y[base + c] = v * alpha[c] if v < zero else v
        elif code == CLIP:
            for c in range(n):
                v = y[base + c]
                y[base + c] = lo if v < lo else (hi if v > hi else v)
        else:
            for c in range(n):
                y[base + c] = apply(code, y[base + c], alpha[c], beta)
        if has_post:
            for c in range(n):
                y[base + c] = y[base + c] * post_scale[c] + post_shift[c]
