"""Convolution kernels over flat float32 arrays. Arrays in, arrays out; nothing of ONNX.

Every kernel works on three spatial axes (D, H, W): 1-D and 2-D convolutions come in with the leading
spatial sizes set to 1 (kernel 1, stride 1, dilation 1, pad 0), so one compiled kernel serves them all.
Shapes, strides, dilations and pads arrive at run time in one int64 array `geom`:

    geom = [N, C, D, H, W, KD, KH, KW, SD, SH, SW, DD, DH, DW, PD, PH, PW, OD, OH, OW]

(C: the channels of the tensor the kernel reads; D/H/W: its spatial sizes; O*: the other side's sizes.)
The activations of the fused prologue/epilogue come from bninfer.activations (`apply`); alpha is per
channel, beta a scalar. No kernel keeps state between calls: scratch is allocated per call.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from ..activations import CLIP, NONE, RELU, activate_span, apply, has_span, prologue_span

GEOM_LEN = 20


@njit(inline="always", cache=True)
def _valid_range(off, stride, size, count):
    """The range [lo, hi) of o in [0, count) for which o * stride + off lies in [0, size)."""
    lo = 0 if off >= 0 else (-off + stride - 1) // stride
    last = size - 1 - off
    hi = 0 if last < 0 else last // stride + 1
    if hi > count:
        hi = count
    if lo > hi:
        lo = hi
    return lo, hi


@njit(inline="always", cache=True)
def _kernel_range(base, dil, size, k):
    """The range [lo, hi) of kernel taps t in [0, k) for which base + t * dil lies in [0, size)."""
    return _valid_range(base, dil, size, k)


@njit(inline="always", cache=True)
def _epilogue_row(acc, out, b, res, has_res, code, a, beta, has_post, ps, pt):
    """out = ps * act(acc + b + res, a, beta) + pt over one row (acc may be out itself). No activation
    and ReLU get plain loops that vectorize; the others go through the activation table."""
    n = acc.size
    if code == NONE or code == RELU:
        zero = np.float32(0.0)
        for j in range(n):
            v = acc[j] + b
            if has_res:
                v += res[j]
            if code == RELU:
                v = zero if v < zero else v  # NaN stays NaN
            if has_post:
                v = v * ps + pt
            out[j] = v
    elif code == CLIP:
        lo, hi = np.float32(a), np.float32(beta)
        for j in range(n):
            v = acc[j] + b
            if has_res:
                v += res[j]
            v = lo if v < lo else v  # NaN stays NaN
            v = hi if v > hi else v
            if has_post:
                v = v * ps + pt
            out[j] = v
    else:
        for j in range(n):
            v = acc[j] + b
            if has_res:
                v += res[j]
            v = apply(code, v, a, beta)
            if has_post:
                v = v * ps + pt
            out[j] = v


@njit(cache=True, nogil=True)
def epilogue(x, out, channels, inner, bias, residual, has_residual, code, alpha, beta, has_post,
             post_scale, post_shift):
    """The fused epilogue over an (outer, channels, inner) flat array (x may be out):
    out = post_scale[c] * act(x + bias[c] + residual, alpha[c], beta) + post_shift[c]. The activations
    with a vectorized span (activations.SPANS) run it: per channel row, or once over all channels when
    rows are shorter than a vector (a squeeze-excitation conv's 1x1 output; alpha is the same for every
    channel of these codes)."""
    outer = x.size // (channels * inner)
    if has_span(code) and inner < 16:
        n = channels * inner
        one, zero, hi = np.float32(1.0), np.float32(0.0), np.float32(beta)
        for o in range(outer):
            base = o * n
            for i in range(n):
                v = x[base + i] + bias[i // inner]
                out[base + i] = v + residual[base + i] if has_residual else v
            activate_span(code, out, base, base + n, np.float32(alpha[0]), hi, np.float64(beta), has_post, one,
                          zero)
            if has_post:
                for i in range(n):
                    out[base + i] = out[base + i] * post_scale[i // inner] + post_shift[i // inner]
        return
    for o in range(outer):
        for c in range(channels):
            p = (o * channels + c) * inner
            if has_span(code):
                for j in range(p, p + inner):
                    v = x[j] + bias[c]
                    out[j] = v + residual[j] if has_residual else v
                activate_span(code, out, p, p + inner, np.float32(alpha[c]), np.float32(beta), np.float64(beta),
                              has_post, np.float32(post_scale[c]), np.float32(post_shift[c]))
                continue
            r = residual[p:p + inner] if has_residual else residual
            _epilogue_row(x[p:p + inner], out[p:p + inner], bias[c], r, has_residual, code, alpha[c], beta,
                          has_post, post_scale[c], post_shift[c])


@njit(cache=True, nogil=True)
def prologue(x, out, n_outer, channels, inner, scale, shift, code, alpha, beta):
    """out = act(scale[c] * x + shift[c]) over an (outer, channels, inner) flat array."""
    for o in range(n_outer):
        for c in range(channels):
            s, t, a = scale[c], shift[c], alpha[c]
            base = (o * channels + c) * inner
            prologue_span(x, base, 1, out, base, 1, inner, s, t, a, code, beta)


@njit(cache=True, nogil=True)
def im2col(x, cols, geom, has_pre, scale, shift, code, alpha, beta):
    """Gather x (N, C, D, H, W) into cols (N, C, KD, KH, KW, OD, OH, OW): the columns of a convolution,
    zero where a tap falls in the padding. With `has_pre`, in-bounds elements go through the prologue
    act(scale[c] * x + shift[c]) first (once per element, not once per tap); padding stays zero."""
    N, C, D, H, W = geom[0], geom[1], geom[2], geom[3], geom[4]
    KD, KH, KW = geom[5], geom[6], geom[7]
    SD, SH, SW = geom[8], geom[9], geom[10]
    DD, DH, DW = geom[11], geom[12], geom[13]
    PD, PH, PW = geom[14], geom[15], geom[16]
    OD, OH, OW = geom[17], geom[18], geom[19]
    S = D * H * W
    P = OD * OH * OW
    K = KD * KH * KW
    src = x
    if has_pre:
        src = np.empty_like(x)
        prologue(x, src, N, C, S, scale, shift, code, alpha, beta)
    for n in range(N):
        for c in range(C):
            xb = (n * C + c) * S
            for kd in range(KD):
                for kh in range(KH):
                    for kw in range(KW):
                        row = ((n * C + c) * K + (kd * KH + kh) * KW + kw) * P
                        off_w = kw * DW - PW
                        lo, hi = _valid_range(off_w, SW, W, OW)
                        for od in range(OD):
                            i_d = od * SD - PD + kd * DD
                            for oh in range(OH):
                                i_h = oh * SH - PH + kh * DH
                                r = row + (od * OH + oh) * OW
                                if i_d < 0 or i_d >= D or i_h < 0 or i_h >= H:
                                    for ow in range(OW):
                                        cols[r + ow] = 0.0
                                    continue
                                xr = xb + (i_d * H + i_h) * W + off_w
                                for ow in range(lo):
                                    cols[r + ow] = 0.0
                                if SW == 1:
                                    cols[r + lo:r + hi] = src[xr + lo:xr + hi]
                                else:
                                    for ow in range(lo, hi):
                                        cols[r + ow] = src[xr + ow * SW]
                                for ow in range(hi, OW):
                                    cols[r + ow] = 0.0


@njit(cache=True, nogil=True)
def depthwise(x, w, out, geom, mult, bias, has_pre, pre_scale, pre_shift, pre_code, pre_alpha, pre_beta,
              residual, has_residual, code, alpha, beta, has_post, post_scale, post_shift):
    """Direct grouped convolution with one input channel per group: input channel c feeds output
    channels c*mult .. c*mult+mult-1. w is (C*mult, KD, KH, KW); out (N, C*mult, OD, OH, OW) gets
    post_scale * act(conv + bias + residual) + post_shift, the prologue applied to in-bounds inputs.

    Each output row is accumulated tap by tap in a row buffer (a strided axpy over the row's valid
    range), then goes through the epilogue once."""
    N, C, D, H, W = geom[0], geom[1], geom[2], geom[3], geom[4]
    KD, KH, KW = geom[5], geom[6], geom[7]
    SD, SH, SW = geom[8], geom[9], geom[10]
    DD, DH, DW = geom[11], geom[12], geom[13]
    PD, PH, PW = geom[14], geom[15], geom[16]
    OD, OH, OW = geom[17], geom[18], geom[19]
    S = D * H * W
    P = OD * OH * OW
    K = KD * KH * KW
    CO = C * mult
    plane = np.empty(S if has_pre else 0, np.float32)
    acc = np.empty(OW, np.float32)
    # the valid output columns of each kernel column: the same for every row
    lo_w = np.empty(KW, np.int64)
    hi_w = np.empty(KW, np.int64)
    for kw in range(KW):
        lo_w[kw], hi_w[kw] = _valid_range(kw * DW - PW, SW, W, OW)
    for n in range(N):
        for c in range(C):
            xb = (n * C + c) * S
            src = x
            sb = xb
            if has_pre:
                prologue_span(x, xb, 1, plane, 0, 1, S, pre_scale[c], pre_shift[c], pre_alpha[c], pre_code, pre_beta)
                src = plane
                sb = 0
            for m in range(mult):
                co = c * mult + m
                wb = co * K
                ob = (n * CO + co) * P
                b, a = bias[co], alpha[co]
                ps, pt = post_scale[co], post_shift[co]
                for od in range(OD):
                    bd = od * SD - PD
                    kd0, kd1 = _kernel_range(bd, DD, D, KD)
                    for oh in range(OH):
                        bh = oh * SH - PH
                        kh0, kh1 = _kernel_range(bh, DH, H, KH)
                        for ow in range(OW):
                            acc[ow] = 0.0
                        for kd in range(kd0, kd1):
                            for kh in range(kh0, kh1):
                                xr = sb + ((bd + kd * DD) * H + bh + kh * DH) * W - PW
                                wr = wb + (kd * KH + kh) * KW
                                for kw in range(KW):
                                    wv = w[wr + kw]
                                    xk = xr + kw * DW
                                    if SW == 1:
                                        # slices indexed from 0: no negative-index wraparound, so the
                                        # loop vectorizes
                                        lo, hi = lo_w[kw], hi_w[kw]
                                        ar = acc[lo:hi]
                                        sr = src[xk + lo:xk + hi]
                                        for j in range(hi - lo):
                                            ar[j] += wv * sr[j]
                                    else:
                                        for ow in range(lo_w[kw], hi_w[kw]):
                                            acc[ow] += wv * src[xk + ow * SW]
                        orow = ob + (od * OH + oh) * OW
                        r = residual[orow:orow + OW] if has_residual else residual
                        _epilogue_row(acc, out[orow:orow + OW], b, r, has_residual, code, a, beta, has_post,
                                      ps, pt)


@njit(cache=True, nogil=True)
def col2im_epilogue(cols, out, geom, bias, residual, has_residual, code, alpha, beta, has_post,
                    post_scale, post_shift):
    """The output of a transposed convolution from its columns, with the fused epilogue.

    cols is (N, C, KD, KH, KW, D, H, W): for output channel c and tap k, the contribution of input
    position i to output position i * stride + k * dilation - pad. geom's C is the output channels,
    D/H/W the input's spatial sizes and O* the output's. Each output plane is summed from its taps
    (scatter-add of input rows), then gets post_scale * act(sum + bias + residual) + post_shift."""
    N, C, D, H, W = geom[0], geom[1], geom[2], geom[3], geom[4]
    KD, KH, KW = geom[5], geom[6], geom[7]
    SD, SH, SW = geom[8], geom[9], geom[10]
    DD, DH, DW = geom[11], geom[12], geom[13]
    PD, PH, PW = geom[14], geom[15], geom[16]
    OD, OH, OW = geom[17], geom[18], geom[19]
    S = D * H * W
    P = OD * OH * OW
    K = KD * KH * KW
    # input columns iw whose output column iw * SW + kw * DW - PW lies in [0, OW), per kernel column
    lo_w = np.empty(KW, np.int64)
    hi_w = np.empty(KW, np.int64)
    for kw in range(KW):
        lo_w[kw], hi_w[kw] = _valid_range(kw * DW - PW, SW, OW, W)
    for n in range(N):
        for c in range(C):
            cb = (n * C + c) * K * S
            ob = (n * C + c) * P
            for p in range(ob, ob + P):
                out[p] = 0.0
            for kd in range(KD):
                i_d0, i_d1 = _valid_range(kd * DD - PD, SD, OD, D)
                for kh in range(KH):
                    i_h0, i_h1 = _valid_range(kh * DH - PH, SH, OH, H)
                    for kw in range(KW):
                        crow = cb + ((kd * KH + kh) * KW + kw) * S
                        off = kw * DW - PW
                        for i_d in range(i_d0, i_d1):
                            o_d = i_d * SD + kd * DD - PD
                            for i_h in range(i_h0, i_h1):
                                o_h = i_h * SH + kh * DH - PH
                                orow = ob + (o_d * OH + o_h) * OW + off
                                irow = crow + (i_d * H + i_h) * W
                                lo, hi = lo_w[kw], hi_w[kw]
                                if SW == 1:
                                    dst = out[orow + lo:orow + hi]
                                    sr = cols[irow + lo:irow + hi]
                                    for j in range(hi - lo):
                                        dst[j] += sr[j]
                                else:
                                    for i_w in range(lo, hi):
                                        out[orow + i_w * SW] += cols[irow + i_w]
            plane = out[ob:ob + P]
            r = residual[ob:ob + P] if has_residual else residual
            _epilogue_row(plane, plane, bias[c], r, has_residual, code, alpha[c], beta, has_post,
                          post_scale[c], post_shift[c])
