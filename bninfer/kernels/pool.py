"""Pooling and LRN kernels over flat float32 arrays. Arrays in, arrays out; nothing of ONNX.

Every windowed pooling runs in one generic 3-D form: x is (planes, D, H, W) and out is
(planes, OD, OH, OW), planes = N * C; 1-D and 2-D pooling use D = 1 (and H = 1) with a kernel, stride and
dilation of 1 there. All sizes are run-time ints, so each kernel compiles once.

For output index o along an axis, the window's taps sit at start + j * dilation (j < kernel), with
start = o * stride - pad_begin; taps outside [0, size) are padding. Max and sum are separable: each output
row first reduces its window's input rows (whole rows, contiguous), then reduces along W at every window
start, then picks every stride-th start.

Speed notes: hot loops index with uint64 (Numba then drops its negative-index wraparound, which would
stop LLVM from vectorizing; slices would do the same but cost reference counting per slice); the max
uses a select, not a branch, so that it vectorizes and NaN still propagates.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit, uint64

from ..activations import prologue_span

LOWEST = np.float32(np.finfo(np.float32).min)  # what a window with no input element gives (as ORT)
LANES = 128  # partial results kept by the whole-plane reductions


@njit(cache=True, inline="always")
def _max_into(dst, d0, src, s0, n):
    """dst[d0:d0+n] = max(dst[d0:d0+n], src[s0:s0+n]) elementwise; a NaN in either gives NaN."""
    d0, s0 = uint64(d0), uint64(s0)
    for i in range(uint64(max(n, 0))):
        v = src[s0 + i]
        a = dst[d0 + i]
        dst[d0 + i] = v if (v > a) | (v != v) else a


@njit(cache=True, inline="always")
def _max3_rows(dst, d0, src, s0, n):
    """dst[d0:d0+n] = the elementwise max of src's three rows of n from s0 (NaN propagates)."""
    d0, s0, un = uint64(d0), uint64(s0), uint64(max(n, 0))
    for i in range(un):
        a, b, c = src[s0 + i], src[s0 + un + i], src[s0 + un + un + i]
        a = b if (b > a) | (b != b) else a
        dst[d0 + i] = c if (c > a) | (c != c) else a


@njit(cache=True, inline="always")
def _copy(dst, d0, src, s0, n):
    d0, s0 = uint64(d0), uint64(s0)
    for i in range(uint64(max(n, 0))):
        dst[d0 + i] = src[s0 + i]


@njit(cache=True, inline="always")
def _add_into(dst, d0, src, s0, n):
    """dst[d0:d0+n] += src[s0:s0+n]."""
    d0, s0 = uint64(d0), uint64(s0)
    for i in range(uint64(max(n, 0))):
        dst[d0 + i] += src[s0 + i]


@njit(cache=True, inline="always")
def _tap_range(start, k, dil, size):
    """The taps j in [lo, hi) of a window starting at `start` that fall inside [0, size)."""
    lo = 0
    if start < 0:
        lo = (-start + dil - 1) // dil
    last = size - 1 - start  # the tap position must be <= size - 1
    hi = 0 if last < 0 else min(k, last // dil + 1)
    return lo, max(lo, hi)


@njit(cache=True, inline="always")
def _padded_count(start, k, dil, size, pad_end):
    """Taps inside the padded extent [-pad_begin, size + pad_end): count_include_pad's divisor (the
    windows that ceil_mode adds past the padded border do not count their overflow)."""
    end = min(start + k * dil, size + pad_end)
    return 0 if end <= start else 1 + (end - start - 1) // dil


@njit(cache=True, nogil=True)
def _w_factors(W, OW, kw, sw, pw, dw, pw_end, include_pad):
    """Per output column: 1 / its divisor along W (0 where the window holds no input element), and
    whether any column's window holds no input element."""
    factor = np.zeros(OW, np.float32)
    empty = False
    for ow in range(OW):
        lo, hi = _tap_range(ow * sw - pw, kw, dw, W)
        if hi == lo:
            empty = True
            continue
        n = _padded_count(ow * sw - pw, kw, dw, W, pw_end) if include_pad else hi - lo
        factor[ow] = np.float32(1.0 / n)
    return factor, empty


@njit(cache=True, inline="always")
def _pick(out, ob, row, n, stride, factor, scale, scaled):
    """out[ob + i] = row[i * stride] (times scale * factor[i] when scaled), for i < n."""
    ob, stride = uint64(ob), uint64(stride)
    if scaled:
        for i in range(uint64(n)):
            out[ob + i] = row[i * stride] * scale * factor[i]
    else:
        for i in range(uint64(n)):
            out[ob + i] = row[i * stride]


@njit(cache=True, nogil=True)
def pool(x, out, planes, D, H, W, OD, OH, OW, kd, kh, kw, sd, sh, sw, pd, ph, pw, pd_end, ph_end, pw_end,
         dd, dh, dw, is_max, include_pad):
    """MaxPool (is_max) or AveragePool over (planes, D, H, W) -> (planes, OD, OH, OW).

    Max ignores padding; a NaN in a window gives NaN; a window with no input element gives the lowest
    float32 (as onnxruntime). Mean divides by the number of input elements in the window, or with
    include_pad by the taps inside the padded extent; a window with no input element gives 0 (as
    onnxruntime). One entry point (one signature); its body is specialized twice, with is_max a
    constant in each (a run-time flag inside the loops cost MaxPool 25 % and AveragePool 60 %)."""
    if is_max:
        _pool_body(x, out, planes, D, H, W, OD, OH, OW, kd, kh, kw, sd, sh, sw, pd, ph, pw, pd_end, ph_end,
                   pw_end, dd, dh, dw, True, False)
    else:
        _pool_body(x, out, planes, D, H, W, OD, OH, OW, kd, kh, kw, sd, sh, sw, pd, ph, pw, pd_end, ph_end,
                   pw_end, dd, dh, dw, False, include_pad)


@njit(cache=True, nogil=True)
def _pool_body(x, out, planes, D, H, W, OD, OH, OW, kd, kh, kw, sd, sh, sw, pd, ph, pw, pd_end, ph_end,
               pw_end, dd, dh, dw, is_max, include_pad):
    span = (OW - 1) * sw + 1  # window starts, shifted by pw
    col = np.empty(W, np.float32)
    row = np.empty(span, np.float32)
    factor, empty_cols = _w_factors(W, OW, kw, sw, pw, dw, pw_end, include_pad)
    init = np.float32(-np.inf) if is_max else np.float32(0.0)
    for p in range(planes):
        for od in range(OD):
            d0 = od * sd - pd
            jd0, jd1 = _tap_range(d0, kd, dd, D)
            dpad = _padded_count(d0, kd, dd, D, pd_end)
            for oh in range(OH):
                h0 = oh * sh - ph
                jh0, jh1 = _tap_range(h0, kh, dh, H)
                hpad = _padded_count(h0, kh, dh, H, ph_end)
                ob = ((p * OD + od) * OH + oh) * OW
                rows = (jd1 - jd0) * (jh1 - jh0)
                if rows == 0:
                    for ow in range(OW):
                        out[ob + ow] = LOWEST if is_max else np.float32(0.0)
                    continue
                first = True
                for jd in range(jd0, jd1):
                    for jh in range(jh0, jh1):
                        ib = ((p * D + d0 + jd * dd) * H + h0 + jh * dh) * W
                        if first:
                            _copy(col, 0, x, ib, W)
                            first = False
                        elif is_max:
                            _max_into(col, 0, x, ib, W)
                        else:
                            _add_into(col, 0, x, ib, W)
                row[:] = init
                for k in range(kw):
                    off = k * dw - pw  # start j reads col[j + off]
                    j0 = max(0, -off)
                    j1 = min(span, W - off)
                    if is_max:
                        _max_into(row, j0, col, j0 + off, j1 - j0)
                    else:
                        _add_into(row, j0, col, j0 + off, j1 - j0)
                scale = np.float32(1.0 / (dpad * hpad if include_pad else rows))
                _pick(out, ob, row, OW, sw, factor, scale, not is_max)
                if is_max and empty_cols:
                    for ow in range(OW):
                        if factor[ow] == 0:
                            out[ob + ow] = LOWEST


@njit(cache=True, inline="always")
def _window_rows(x, planes, H, W, OH, kh, Wt, is_max):
    """For windows that tile the input: the max (is_max) or sum over each window's kh rows, a whole row
    at a time, as (planes, OH, Wt) flat."""
    v = np.empty(planes * OH * Wt, np.float32)
    for p in range(planes):
        for oh in range(OH):
            src = (p * H + oh * kh) * W
            dst = (p * OH + oh) * Wt
            _copy(v, dst, x, src, Wt)
            for j in range(1, kh):
                if is_max:
                    _max_into(v, dst, x, src + j * W, Wt)
                else:
                    _add_into(v, dst, x, src + j * W, Wt)
    return v


@njit(cache=True, nogil=True)
def max_pool_tiled(x, out, planes, H, W, OH, OW, kh, kw):
    """MaxPool (planes, H, W) -> (planes, OH, OW) whose windows tile the input: stride = kernel, no
    padding, no dilation (the 2x2/2 pool of LeNet, VGG and U-Net). First the max over each window's
    rows, a whole row at a time, then over each window's columns, one loop over every plane at once:
    the generic kernel's six short loops per output row ran scalar remainders on small images."""
    v = _window_rows(x, planes, H, W, OH, kh, OW * kw, True)
    n = uint64(planes * OH * OW)
    if kw == 2:  # a constant stride: LLVM vectorizes the pair loads
        for q in range(n):
            a, b = v[2 * q], v[2 * q + 1]
            out[q] = b if (b > a) | (b != b) else a
    else:
        k = uint64(kw)
        for q in range(n):
            a = v[q * k]
            for j in range(uint64(1), k):
                b = v[q * k + j]
                a = b if (b > a) | (b != b) else a
            out[q] = a


@njit(cache=True, nogil=True)
def avg_pool_tiled(x, out, planes, H, W, OH, OW, kh, kw):
    """AveragePool whose windows tile the input (DenseNet's 2x2/2 transitions), as max_pool_tiled: the
    sum over each window's rows, then over its columns, times 1 / (kh * kw). (The generic kernel took 6x
    onnxruntime's time on DenseNet's transitions.)"""
    v = _window_rows(x, planes, H, W, OH, kh, OW * kw, False)
    n = uint64(planes * OH * OW)
    scale = np.float32(1.0 / (kh * kw))
    if kw == 2:
        for q in range(n):
            out[q] = (v[2 * q] + v[2 * q + 1]) * scale
    else:
        k = uint64(kw)
        for q in range(n):
            a = v[q * k]
            for j in range(uint64(1), k):
                a += v[q * k + j]
            out[q] = a * scale


@njit(cache=True, inline="always")
def _max3(col, o):
    """max(col[o], col[o + 1], col[o + 2]); a NaN anywhere gives NaN."""
    a = col[o]
    b = col[o + uint64(1)]
    a = b if (b > a) | (b != b) else a
    b = col[o + uint64(2)]
    return b if (b > a) | (b != b) else a


@njit(cache=True, nogil=True)
def max_pool_k3(x, out, planes, H, W, OH, OW, kh, sh, ph, sw, pw):
    """2-D MaxPool (planes, H, W) -> (planes, OH, OW) with windows 3 wide at stride sw in (1, 2), pw < 3
    columns of padding at the start, any height kh, stride sh and padding ph, no dilation, every window
    holding at least one input element (ResNet's and DenseNet's 3x3/2 pad 1 pool, Inception's 3x3/1).
    Each output row first takes the max over its window's input rows (whole rows), into a column buffer
    whose padding is -inf, then every window's 3 columns at a constant stride: the generic kernel's
    pick of every second start stayed scalar (2.5x onnxruntime's time on ResNet's pool)."""
    span = sw * (OW - 1) + 3
    col = np.full(max(span + 1, pw + W), -np.inf, np.float32)
    ev = np.empty(OW + 1, np.float32)
    od = np.empty(OW + 1, np.float32)
    for p in range(planes):
        for oh in range(OH):
            h0 = oh * sh - ph
            r0, r1 = max(0, h0), min(H, h0 + kh)
            src = (p * H + r0) * W
            if r1 - r0 == 3:  # a whole window: its three rows in one pass (three passes cost 40 % more)
                _max3_rows(col, pw, x, src, W)
            else:
                _copy(col, pw, x, src, W)
                for r in range(r0 + 1, r1):
                    _max_into(col, pw, x, src + (r - r0) * W, W)
            ob = uint64((p * OH + oh) * OW)
            if sw == 2:
                # split even and odd columns first (a pair of loads at a constant stride: LLVM vectorizes
                # it with permutes; three loads at stride 2 made it gather), then contiguous maxima
                for i in range(uint64(OW + 1)):
                    ev[i] = col[uint64(2) * i]
                    od[i] = col[uint64(2) * i + uint64(1)]
                for i in range(uint64(OW)):
                    a, b, c = ev[i], od[i], ev[i + uint64(1)]
                    a = b if (b > a) | (b != b) else a
                    out[ob + i] = c if (c > a) | (c != c) else a
            else:
                for i in range(uint64(OW)):
                    out[ob + i] = _max3(col, i)


@njit(cache=True, inline="always")
def _add_into_f64(acc, src, s0):
    """acc[:] += src[s0:s0+acc.size] in float64."""
    s0 = uint64(s0)
    for i in range(uint64(acc.size)):
        acc[i] += src[s0 + i]


@njit(cache=True, nogil=True)
def global_avg(x, out, planes, inner):
    """out[p] = mean of x[p, :], summed in float64 partial sums."""
    acc = np.empty(LANES, np.float64)
    full = inner - inner % LANES
    for p in range(planes):
        b = p * inner
        s0 = s1 = s2 = s3 = 0.0
        if full:
            acc[:] = 0.0
            for i in range(b, b + full, LANES):
                _add_into_f64(acc, x, i)
            for j in range(0, LANES, 4):
                s0 += acc[j]
                s1 += acc[j + 1]
                s2 += acc[j + 2]
                s3 += acc[j + 3]
        rest = b + full + (inner - full) // 4 * 4
        for i in range(b + full, rest, 4):
            s0 += x[i]
            s1 += x[i + 1]
            s2 += x[i + 2]
            s3 += x[i + 3]
        for i in range(rest, b + inner):
            s0 += x[i]
        out[p] = ((s0 + s1) + (s2 + s3)) / inner if inner > 0 else 0.0


@njit(cache=True, inline="always")
def _nanmax(a, v):
    return v if (v > a) | (v != v) else a


@njit(cache=True, nogil=True)
def global_max(x, out, planes, inner):
    """out[p] = max of x[p, :]; NaN propagates."""
    acc = np.empty(LANES, np.float32)
    full = inner - inner % LANES
    ninf = np.float32(-np.inf)
    for p in range(planes):
        b = p * inner
        m0 = m1 = m2 = m3 = ninf
        if full:
            acc[:] = ninf
            for i in range(b, b + full, LANES):
                _max_into(acc, 0, x, i, LANES)
            for j in range(0, LANES, 4):
                m0 = _nanmax(m0, acc[j])
                m1 = _nanmax(m1, acc[j + 1])
                m2 = _nanmax(m2, acc[j + 2])
                m3 = _nanmax(m3, acc[j + 3])
        rest = b + full + (inner - full) // 4 * 4
        for i in range(b + full, rest, 4):
            m0 = _nanmax(m0, x[i])
            m1 = _nanmax(m1, x[i + 1])
            m2 = _nanmax(m2, x[i + 2])
            m3 = _nanmax(m3, x[i + 3])
        for i in range(rest, b + inner):
            m0 = _nanmax(m0, x[i])
        out[p] = _nanmax(_nanmax(m0, m1), _nanmax(m2, m3)) if inner > 0 else LOWEST


@njit(cache=True, inline="always")
def _square_into(dst, d0, src, s0, n):
    d0, s0 = uint64(d0), uint64(s0)
    for i in range(uint64(max(n, 0))):
        v = src[s0 + i]
        dst[d0 + i] += v * v


@njit(cache=True, inline="always")
def _lrn_divide(out, x, o0, n, bias, scale, beta):
    """out[i] = x[i] / (bias + scale * out[i]) ** beta over [o0, o0 + n); beta 0.75 and 0.5 (the usual
    ones) through square roots, which vectorize, instead of pow."""
    o0 = uint64(o0)
    if beta == 0.75:
        for i in range(uint64(n)):
            r = np.sqrt(bias + scale * out[o0 + i])
            out[o0 + i] = x[o0 + i] / (r * np.sqrt(r))
    elif beta == 0.5:
        for i in range(uint64(n)):
            out[o0 + i] = x[o0 + i] / np.sqrt(bias + scale * out[o0 + i])
    else:
        for i in range(uint64(n)):
            out[o0 + i] = x[o0 + i] / np.float32(math.pow(bias + scale * out[o0 + i], beta))


@njit(cache=True, nogil=True)
def lrn(x, out, batch, channels, inner, size, alpha, beta, bias):
    """Local response normalization across channels of an (N, C, inner) array:
    out = x / (bias + alpha / size * s)^beta, s the sum of x^2 over channels
    [c - (size-1)//2, c + ceil((size-1)/2)]."""
    before = (size - 1) // 2
    after = size - 1 - before
    scale32, bias32 = np.float32(alpha / size), np.float32(bias)
    for n in range(batch):
        for c in range(channels):
            ob = (n * channels + c) * inner
            out[ob:ob + inner] = 0.0
            for cc in range(max(0, c - before), min(channels, c + after + 1)):
                _square_into(out, ob, x, (n * channels + cc) * inner, inner)
            _lrn_divide(out, x, ob, inner, bias32, scale32, beta)


@njit(cache=True, nogil=True)
def global_pool_prologue(x, out, planes, channels, inner, scale, shift, code, alpha, beta, take_max):
    """Global average (or max) of pre_act(scale[c]*x + shift[c]) per plane: a BN (and its activation)
    standing before the pool, applied while reading, with no pass of its own."""
    row = np.empty(inner, np.float32)
    for p in range(planes):
        c = p % channels
        prologue_span(x, p * inner, 1, row, 0, 1, inner, scale[c], shift[c], alpha[c], code, beta)
        if take_max:
            m = np.float32(-np.inf)
            for i in range(inner):
                v = row[i]
                if v > m or v != v:
                    m = v
                if m != m:
                    break
            out[p] = m
        else:
            acc = 0.0
            for i in range(inner):
                acc += row[i]
            out[p] = acc / inner if inner > 0 else 0.0
