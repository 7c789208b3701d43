"""Depthwise (one input channel per group, multiplier 1) 2-D convolution on padded NCHW rows.

The input is packed per call into a zero-padded copy with its columns split by phase of the stride,
    xp[C][Hp][SW][Wq]   (padded column j at phase j % SW, position j // SW; halo in place, prologue applied)
so that for every tap the RW pixels of an output tile read RW consecutive floats: the kernel vectorizes
along the output row (RW pixels in a stack array promoted to vector registers), broadcasting one weight
per tap. Output rows are written contiguously in NCHW with the fused epilogue. Compile-time constants
per kernel: kernel size, stride, dilation, tile width and the activation code.
"""
from __future__ import annotations

import numpy as np
from numba import njit, types

from ..activations import INLINE_CODES, activate, activate_planes, compile_span, prologue_span
from .conv_direct import _FASTMATH, stack_f32

_KERNELS: dict = {}
ROW_MIN_WIDTH = 24  # output rows at least this wide vectorize along the row; shorter ones block channels


@njit(cache=True, nogil=True)
def pack_rows(x, xp, C, H, W, Hp, SW, Wq, PH, PW, has_pre, scale, shift, code, alpha, beta):
    """x (C, H, W) flat -> xp (C, Hp, SW, Wq) flat (see the module doc); xp zero where not written."""
    for c in range(C):
        s, t, a = scale[c], shift[c], alpha[c]
        for h in range(H):
            src = (c * H + h) * W
            row = (c * Hp + h + PH) * SW
            if SW == 1:
                dst = row * Wq + PW
                ud, us = np.uint64(dst), np.uint64(src)
                if has_pre:
                    prologue_span(x, us, 1, xp, ud, 1, W, s, t, a, code, beta)
                else:
                    for w_ in range(W):
                        uw = np.uint64(w_)
                        xp[ud + uw] = x[us + uw]
                continue
            if SW == 2 and has_pre:  # the deinterleave below, the prologue applied on the way
                r0 = row * Wq
                if PW % 2 == 0:
                    de, do = r0 + PW // 2, r0 + Wq + PW // 2
                else:
                    de, do = r0 + Wq + (PW - 1) // 2, r0 + (PW + 1) // 2
                prologue_span(x, src, 2, xp, de, 1, (W + 1) // 2, s, t, a, code, beta)
                prologue_span(x, src + 1, 2, xp, do, 1, W // 2, s, t, a, code, beta)
                continue
            if SW == 2:
                # deinterleave: even input columns to one phase row, odd ones to the other, 16 pairs at a
                # time (constant trip count: vectorizes), then a scalar tail
                us = np.uint64(src)
                r0 = row * Wq
                if PW % 2 == 0:
                    de, do = r0 + PW // 2, r0 + Wq + PW // 2
                else:
                    de, do = r0 + Wq + (PW - 1) // 2, r0 + (PW + 1) // 2
                ude, udo = np.uint64(de), np.uint64(do)
                npairs = W // 2
                nblk = npairs // 16
                for bk in range(nblk):
                    ub = np.uint64(bk * 16)
                    for k in range(16):
                        uk = ub + np.uint64(k)
                        xp[ude + uk] = x[us + uk * np.uint64(2)]
                        xp[udo + uk] = x[us + uk * np.uint64(2) + np.uint64(1)]
                for k in range(nblk * 16, npairs):
                    uk = np.uint64(k)
                    xp[ude + uk] = x[us + uk * np.uint64(2)]
                    xp[udo + uk] = x[us + uk * np.uint64(2) + np.uint64(1)]
                if W % 2:
                    xp[ude + np.uint64(npairs)] = x[us + np.uint64(W - 1)]
                continue
            for ph in range(SW):
                # padded columns q * SW + ph that hold input column w_ = q * SW + ph - PW in [0, W)
                q0 = max(0, (PW - ph + SW - 1) // SW)
                q1 = min(Wq, (W + PW - ph + SW - 1) // SW)
                ud = np.uint64((row + ph) * Wq)
                us = np.uint64(src + ph - PW)
                uS = np.uint64(SW)
                if has_pre:
                    if q1 > q0:
                        prologue_span(x, src + ph - PW + q0 * SW, SW, xp, (row + ph) * Wq + q0, 1, q1 - q0, s, t, a,
                                      code, beta)
                else:
                    for q in range(q0, q1):
                        uq = np.uint64(q)
                        xp[ud + uq] = x[us + uq * uS]


def dw_layout(W: int, PW: int, EW: int, SW: int, KW: int, DW: int, rw: int, ow: int) -> int:
    """Wq: the phase row length, long enough for the last tile's reads (rw pixels from every tap)."""
    wp = W + PW + EW
    need = -(-ow // rw) * rw + ((KW - 1) * DW) // SW + 1
    return max(-(-wp // SW), need)


def pick_rw(ow: int) -> int:
    """Tile width: fewest vector FMAs per tap over the row, then least waste."""
    return min((16, 8), key=lambda r: (-(-ow // r) * -(-r // 16), -(-ow // r) * r))


def depthwise_kernel(KH, KW, SH, SW, RW, ACT, DH=1, DW=1, cache=True, phases=True):
    """kern(xp, w, out, C, Hp, Wq, OH, OW, bias, res, has_res, alpha, beta, has_post, ps, pt): out (C, OH,
    OW) flat = ps * act(dwconv + bias + res) + pt; w is (C, KH, KW) flat."""
    key = (KH, KW, SH, SW, RW, ACT, DH, DW, phases)
    k = _KERNELS.get(key) if cache else None
    if k is not None:
        return k
    INLINE = ACT in INLINE_CODES
    compile_span(ACT)  # before this kernel, which links its loop-vectorized code
    PHASES = phases  # input split into stride phases (contiguous reads) or plain rows read with stride SW
    JS = 1 if phases else SW

    @njit(cache=cache, nogil=True, fastmath=_FASTMATH)
    def kern(xp, w, out, C, Hp, Wq, OH, OW, bias, res, has_res, alpha, beta, has_post, ps, pt):
        P = OH * OW
        hi = np.float32(beta)  # Clip's upper bound
        acc = stack_f32(RW)
        for c in range(C):
            b, a = bias[c], alpha[c]
            s, t = ps[c], pt[c]
            for oh in range(OH):
                for ow0 in range(0, OW, RW):
                    for j in range(RW):
                        acc[j] = 0.0
                    for kh in range(KH):
                        if PHASES:
                            rb = (c * Hp + oh * SH + kh * DH) * SW
                        else:
                            rb = (c * Hp + oh * SH + kh * DH) * Wq + ow0 * SW
                        for kw in range(KW):
                            col = kw * DW
                            if PHASES:
                                xo = (rb + col % SW) * Wq + col // SW + ow0
                            else:
                                xo = rb + col
                            wv = w[(c * KH + kh) * KW + kw]
                            # unsigned indices: no negative-index wraparound, so the loads vectorize
                            uo = np.uint64(xo)
                            for j in range(RW):
                                acc[j] += xp[uo + np.uint64(j * JS)] * wv
                    ob_ = c * P + oh * OW + ow0
                    npx = OW - ow0
                    if npx >= RW:
                        uo = np.uint64(ob_)
                        if has_res:
                            for j in range(RW):
                                acc[j] += res[uo + np.uint64(j)]
                        for j in range(RW):
                            v = acc[j] + b
                            if INLINE:
                                v = activate(ACT, v, a, hi, beta)
                                if has_post:
                                    v = v * s + t
                            out[uo + np.uint64(j)] = v
                    else:
                        for j in range(RW):
                            if j >= npx:
                                break
                            v = acc[j] + b
                            if has_res:
                                v += res[ob_ + j]
                            if INLINE:
                                v = activate(ACT, v, a, hi, beta)
                                if has_post:
                                    v = v * s + t
                            out[ob_ + j] = v
            if not INLINE:
                activate_planes(ACT, out, c, c + 1, P, alpha, hi, beta, has_post, ps,
                                pt)
    if cache:
        _KERNELS[key] = kern
    return kern


DW_SIG = (types.float32[::1], types.float32[::1], types.float32[::1], types.int64, types.int64, types.int64,
          types.int64, types.int64, types.float32[::1], types.float32[::1], types.boolean, types.float32[::1],
          types.float64, types.boolean, types.float32[::1], types.float32[::1])


# -- channel-blocked variant for small images (rows too short to fill vectors) -------------------------

CB = 16


def pack_weights_blocked(w: np.ndarray, cpad: int) -> np.ndarray:
    """(C, 1, KH, KW) -> flat (CB, KH, KW, 16) with zero channels up to cpad."""
    c, _, kh, kw = w.shape
    full = np.zeros((cpad, kh, kw), np.float32)
    full[:c] = w.reshape(c, kh, kw)
    return np.ascontiguousarray(full.reshape(cpad // CB, CB, kh, kw).transpose(0, 2, 3, 1)).reshape(-1)


def blocked_kernel(KH, KW, SH, SW, RW, ACT, DH=1, DW=1, cache=True):
    """Input packed by conv_direct.pack_input into xp[CB][Hp][Wp][16] (needs (RW * SW + KW * DW) * 16
    floats of slack), weights w[CB][KH][KW][16]; a tile of 16 channels x RW pixels. Same call as
    depthwise_kernel with Wp in place of Wq."""
    key = ("blocked", KH, KW, SH, SW, RW, ACT, DH, DW)
    k = _KERNELS.get(key) if cache else None
    if k is not None:
        return k
    NACC = RW * CB
    INLINE = ACT in INLINE_CODES
    compile_span(ACT)  # before this kernel, which links its loop-vectorized code
    PXS = SW * CB
    KWS = DW * CB

    @njit(cache=cache, nogil=True, fastmath=_FASTMATH)
    def kern(xp, w, out, C, Hp, Wp, OH, OW, bias, res, has_res, alpha, beta, has_post, ps, pt):
        ncb = (C + CB - 1) // CB
        P = OH * OW
        hi = np.float32(beta)  # Clip's upper bound
        acc = stack_f32(NACC)
        for cb in range(ncb):
            for oh in range(OH):
                for ow0 in range(0, OW, RW):
                    for i in range(NACC):
                        acc[i] = 0.0
                    for kh in range(KH):
                        xr = ((cb * Hp + oh * SH + kh * DH) * Wp + ow0 * SW) * CB
                        wr = (cb * KH + kh) * KW * CB
                        for kw in range(KW):
                            wo = np.uint64(wr + kw * CB)
                            xo = np.uint64(xr + kw * KWS)
                            for px in range(RW):
                                for c in range(CB):
                                    acc[px * CB + c] += xp[xo + np.uint64(px * PXS + c)] * w[wo + np.uint64(c)]
                    npx = min(RW, OW - ow0)
                    for c in range(CB):
                        co = cb * CB + c
                        if co < C:
                            b, a = bias[co], alpha[co]
                            s, t = ps[co], pt[co]
                            ob_ = co * P + oh * OW + ow0
                            for px in range(RW):
                                if px >= npx:
                                    break
                                v = acc[px * CB + c] + b
                                if has_res:
                                    v += res[ob_ + px]
                                if INLINE:
                                    v = activate(ACT, v, a, hi, beta)
                                    if has_post:
                                        v = v * s + t
                                out[ob_ + px] = v
            if not INLINE:
                activate_planes(ACT, out, cb * CB, min(cb * CB + CB, C), P, alpha, hi, beta, has_post, ps,
                                pt)
    if cache:
        _KERNELS[key] = kern
    return kern
