"""Normalization kernels over flat float32 arrays. Arrays in, arrays out; nothing of ONNX.

Statistics are taken in float64, in two passes (mean, then the mean squared deviation), so that a large
mean does not cancel the variance away. The elementwise pass runs in float32, subtracting the mean as a
float32 pair (hi, lo) so that it keeps the float64 mean's accuracy. NaN propagates: no fastmath.

Speed notes: hot loops index with uint64 offsets (Numba then drops its negative-index wraparound, which
would stop LLVM from vectorizing; slices would do the same but cost reference counting per slice), in
small helpers inlined into each kernel; reductions keep LANES partial sums so that they vectorize without
reordering any single sum; scalars mixed with float32 data are float32 (a float64 scalar would widen the
whole loop).
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit, uint64

from .. import activations
from ..activations import apply

LANES = 64

_NONE, _RELU = activations.NONE, activations.RELU
_LEAKY_RELU, _PRELU = activations.LEAKY_RELU, activations.PRELU


# -- reductions -------------------------------------------------------------------------------------------

@njit(cache=True, inline="always")
def _mean_var(x, base, n, acc):
    """Mean and (biased) variance of x[base:base+n], in float64; acc: LANES float64 of scratch."""
    if n <= 0:
        return 0.0, 0.0
    full = n - n % LANES
    b = uint64(base)
    s = 0.0
    if full:
        acc[:] = 0.0
        for blk in range(uint64(0), uint64(full), uint64(LANES)):
            for j in range(uint64(LANES)):
                acc[j] += x[b + blk + j]
        for j in range(LANES):
            s += acc[j]
    for i in range(base + full, base + n):
        s += x[i]
    mean = s / n
    s = 0.0
    if full:
        acc[:] = 0.0
        for blk in range(uint64(0), uint64(full), uint64(LANES)):
            for j in range(uint64(LANES)):
                d = x[b + blk + j] - mean
                acc[j] += d * d
        for j in range(LANES):
            s += acc[j]
    for i in range(base + full, base + n):
        d = x[i] - mean
        s += d * d
    return mean, s / n


# -- elementwise passes over one row: out[o0:o0+n] from x[x0:x0+n] -----------------------------------------

@njit(cache=True, inline="always")
def _affine(out, o0, x, x0, n, s, t):
    o0, x0 = uint64(o0), uint64(x0)
    for i in range(uint64(n)):
        out[o0 + i] = x[x0 + i] * s + t


@njit(cache=True, inline="always")
def _affine_vec(out, o0, x, x0, n, s, t):
    o0, x0 = uint64(o0), uint64(x0)
    for i in range(uint64(n)):
        out[o0 + i] = x[x0 + i] * s[i] + t[i]


@njit(cache=True, inline="always")
def _add(out, o0, r, n):
    o0 = uint64(o0)
    for i in range(uint64(n)):
        out[o0 + i] += r[o0 + i]


@njit(cache=True, nogil=True)
def _activate(out, o0, n, code, alpha, a0, a_step, beta):
    """act() over out[o0:o0+n]; element i takes alpha[a0 + i * a_step] (a_step 0: one alpha for the row;
    1: the (N, C) layout, one channel per element). ReLU and leaky ReLU get their own (vectorizable)
    loops. Not inlined: the activation table is compiled once."""
    if code == _NONE:
        return
    o0 = uint64(o0)
    zero = np.float32(0.0)
    if code == _RELU:
        for i in range(uint64(n)):
            v = out[o0 + i]
            out[o0 + i] = zero if v < zero else v
    elif (code == _LEAKY_RELU or code == _PRELU) and a_step == 0:
        a = alpha[a0]
        for i in range(uint64(n)):
            v = out[o0 + i]
            out[o0 + i] = v * a if v < zero else v
    elif code == _LEAKY_RELU or code == _PRELU:
        a0 = uint64(a0)
        for i in range(uint64(n)):
            v = out[o0 + i]
            out[o0 + i] = v * alpha[a0 + i] if v < zero else v
    else:
        a0, a_step = uint64(a0), uint64(a_step)
        for i in range(uint64(n)):
            out[o0 + i] = apply(code, out[o0 + i], alpha[a0 + i * a_step], beta)


@njit(cache=True, nogil=True)
def affine_epilogue(x, out, channels, inner, scale, shift, residual, has_residual, code, alpha, beta,
                    has_post, post_scale, post_shift):
    """Per-channel affine with the fused epilogue of bninfer.ops.fusion over an (outer, channels, inner)
    flat array: out = post_scale[c] * act(scale[c] * x + shift[c] + residual, alpha[c], beta) + post_shift[c].
    Each row takes a few passes while it sits in cache, each of them a simple (vectorizable) loop. A row
    is one channel's `inner` elements, or with inner == 1 (the (N, C) layout) one sample's channels."""
    if channels * inner == 0:
        return
    outer = x.size // (channels * inner)
    by_sample = inner == 1
    rows = outer if by_sample else outer * channels
    n = channels if by_sample else inner
    for r in range(rows):
        b = r * n
        if by_sample:
            _affine_vec(out, b, x, b, n, scale, shift)
            c, step = 0, 1
        else:
            c, step = r % channels, 0
            _affine(out, b, x, b, n, scale[c], shift[c])
        if has_residual:
            _add(out, b, residual, n)
        _activate(out, b, n, code, alpha, c, step, beta)  # one call site: one compiled activation table
        if has_post:
            if by_sample:
                _affine_vec(out, b, out, b, n, post_scale, post_shift)
            else:
                _affine(out, b, out, b, n, post_scale[c], post_shift[c])


@njit(cache=True, inline="always")
def _split(mean):
    """(hi, lo): hi the float32 nearest the float64 mean, lo the float32 remainder; (x - hi) - lo keeps
    the mean's accuracy in float32 arithmetic when the mean is large and the spread small."""
    hi = np.float32(mean)
    return hi, np.float32(mean - hi)


@njit(cache=True, nogil=True)
def layer_norm(x, out, rows, n, scale, bias, has_bias, epsilon, mean_out, inv_out, want_stats):
    """Normalize each row of an (rows, n) array: out = (x - mean) / sqrt(var + eps) * scale + bias;
    with want_stats, also write each row's mean and 1 / sqrt(var + eps)."""
    acc = np.empty(LANES, np.float64)
    for r in range(rows):
        b = r * n
        mean, var = _mean_var(x, b, n, acc)
        inv = 1.0 / math.sqrt(var + epsilon)
        m_hi, m_lo = _split(mean)
        inv32 = np.float32(inv)
        ub = uint64(b)
        if has_bias:
            for i in range(uint64(n)):
                out[ub + i] = ((x[ub + i] - m_hi) - m_lo) * inv32 * scale[i] + bias[i]
        else:
            for i in range(uint64(n)):
                out[ub + i] = ((x[ub + i] - m_hi) - m_lo) * inv32 * scale[i]
        if want_stats:
            mean_out[r] = mean
            inv_out[r] = inv


@njit(cache=True, nogil=True)
def group_norm(x, out, batch, channels, groups, inner, scale, bias, epsilon):
    """Normalize each (sample, group) block of an (N, C, inner) array over its C/groups channels and
    `inner` elements, then scale and shift per channel: InstanceNormalization is groups == channels."""
    acc = np.empty(LANES, np.float64)
    per_group = channels // groups
    for b in range(batch):
        for g in range(groups):
            base = (b * channels + g * per_group) * inner
            mean, var = _mean_var(x, base, per_group * inner, acc)
            inv = 1.0 / math.sqrt(var + epsilon)
            m_hi, m_lo = _split(mean)
            for k in range(per_group):
                c = g * per_group + k
                a, t = np.float32(inv * scale[c]), bias[c]
                cb = uint64(base + k * inner)
                for i in range(uint64(inner)):
                    out[cb + i] = ((x[cb + i] - m_hi) - m_lo) * a + t
