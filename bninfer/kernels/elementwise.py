"""Elementwise kernels over flat float32 arrays. Arrays in, arrays out; nothing of ONNX."""
from __future__ import annotations

import math

from numba import njit

from ..activations import apply


@njit(cache=True)
def activation(x, out, code, alpha, beta):
    """out[i] = act(x[i]) for flat x; alpha is the scalar parameter."""
    for i in range(x.size):
        out[i] = apply(code, x[i], alpha, beta)


@njit(cache=True)
def channel_epilogue(x, out, channels, inner, bias, residual, has_residual, code, alpha, beta,
                     has_post, post_scale, post_shift):
    """The fused epilogue of bninfer.ops.fusion over an (outer, channels, inner) flat array:
    out = post_scale[c] * act(x + bias[c] + residual, alpha[c], beta) + post_shift[c]."""
    outer = x.size // (channels * inner)
    for o in range(outer):
        for c in range(channels):
            b, a = bias[c], alpha[c]
            s, t = post_scale[c], post_shift[c]
            base = (o * channels + c) * inner
            for i in range(base, base + inner):
                v = x[i] + b
                if has_residual:
                    v += residual[i]
                v = apply(code, v, a, beta)
                if has_post:
                    v = v * s + t
                out[i] = v


@njit(cache=True)
def erf(x, out):
    for i in range(x.size):
        out[i] = math.erf(x[i])
