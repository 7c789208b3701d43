"""Depthwise (one input channel per group, multiplier 1) 2-D convolution on padded NCHW rows.

Inside the kernel each channel in turn is packed into a zero-padded scratch (kept in cache) with its
columns split by phase of the stride,
    xp[Hp][SW][Wq]   (padded column j at phase j % SW, position j // SW; halo in place, prologue applied)
so that for every tap the RW pixels of an output tile read RW consecutive floats: the kernel vectorizes
along the output row (RW pixels in a stack array promoted to vector registers), broadcasting one weight
per tap. Output rows are written contiguously in NCHW with the fused epilogue. Compile-time constants
per kernel: kernel size, stride, dilation, tile width and the activation code.
"""
from __future__ import annotations

import sys

import numpy as np
from numba import njit, types

from ..kernel_cache import named
from ..memory import aligned_copy
from ..activations import INLINE_CODES, NONE, activate_inline, activate_planes, compile_span, prologue_span
from .conv_direct import _FASTMATH, stack_f32

_KERNELS: dict = {}
ROW_MIN_WIDTH = 24  # output rows at least this wide vectorize along the row; shorter ones block channels


@njit(cache=True, nogil=True)
def pack_rows(x, xp, C, H, W, Hp, SW, Wq, PH, PW, has_pre, scale, shift, code, alpha, beta):
    """x (C, H, W) flat -> xp (C, Hp, SW, Wq) flat (see the module doc); xp zero where not written."""
    for c in range(C):
        pack_channel(x, c * H * W, xp, c * Hp * SW * Wq, H, W, SW, Wq, PH, PW, has_pre, scale[c], shift[c],
                     code, alpha[c], beta)


@njit(cache=True, nogil=True)
def pack_channel(x, src0, xp, dst0, H, W, SW, Wq, PH, PW, has_pre, s, t, code, a, beta):
    """One channel of pack_rows: the plane at x[src0:] -> the (Hp, SW, Wq) block at xp[dst0:]; with
    `has_pre` each element goes through act(x * s + t). Writes only the interior."""
    # stride 2 with rows of whole pairs: even input columns to one phase row, odd ones to the other
    pairs = SW == 2 and W % 2 == 0 and src0 % 2 == 0
    if pairs:
        e0 = PW // 2 if PW % 2 == 0 else Wq + (PW - 1) // 2
        o0 = Wq + PW // 2 if PW % 2 == 0 else (PW + 1) // 2
        if not _LITTLE_ENDIAN:
            e0, o0 = o0, e0
        first = dst0 + PH * 2 * Wq
        deinterleave(x.view(np.uint64), src0 // 2, xp.view(np.uint32), first + e0, first + o0, H, W // 2,
                     2 * Wq)
    for h in range(H):
        src = src0 + h * W
        r0 = dst0 + (h + PH) * SW * Wq  # the row's first phase
        if SW == 1:
            ud, us = np.uint64(r0 + PW), np.uint64(src)
            if has_pre:
                prologue_span(x, us, 1, xp, ud, 1, W, s, t, a, code, beta)
            else:
                for w_ in range(W):
                    uw = np.uint64(w_)
                    xp[ud + uw] = x[us + uw]
            continue
        if pairs:
            if has_pre:  # in place, on the two contiguous phase rows
                prologue_span(xp, r0 + e0, 1, xp, r0 + e0, 1, W // 2, s, t, a, code, beta)
                prologue_span(xp, r0 + o0, 1, xp, r0 + o0, 1, W // 2, s, t, a, code, beta)
            continue
        for ph in range(SW):
            # padded columns q * SW + ph that hold input column w_ = q * SW + ph - PW in [0, W)
            q0 = max(0, (PW - ph + SW - 1) // SW)
            q1 = min(Wq, (W + PW - ph + SW - 1) // SW)
            if has_pre:
                if q1 > q0:
                    prologue_span(x, src + ph - PW + q0 * SW, SW, xp, r0 + ph * Wq + q0, 1, q1 - q0, s, t, a,
                                  code, beta)
            else:
                ud = np.uint64(r0 + ph * Wq)
                us = np.uint64(src + ph - PW)
                uS = np.uint64(SW)
                for q in range(q0, q1):
                    uq = np.uint64(q)
                    xp[ud + uq] = x[us + uq * uS]


_LITTLE_ENDIAN = sys.byteorder == "little"


@njit(cache=True, nogil=True)
def deinterleave(xu, src, xpu, lo, hi, H, n, step):
    """For each of H rows of n float pairs, read as uint64 at xu[src + h * n:]: the low halves to
    xpu[lo + h * step:], the high halves to xpu[hi + h * step:] (xpu: the float32 buffer as uint32).
    Splitting 64-bit words vectorizes into truncations and shifts, a plain copy's speed; strided float
    loads ran at a third of it (masked loads and permutes, or gathers), half of MobileNet's stride-2
    112x112 layer."""
    m = np.uint64(0xFFFFFFFF)
    u32 = np.uint64(32)
    for h in range(H):
        us, ul, uh = np.uint64(src + h * n), np.uint64(lo + h * step), np.uint64(hi + h * step)
        # two loops, one store stream each: with both in one loop, the vectorizer's overlap check between
        # the two streams, hoisted over all rows once inlined, failed and sent every row down the scalar loop
        for k in range(n):
            uk = np.uint64(k)
            xpu[ul + uk] = np.uint32(xu[us + uk] & m)
        for k in range(n):
            uk = np.uint64(k)
            xpu[uh + uk] = np.uint32(xu[us + uk] >> u32)


PACK_CHANNEL_SIG = (types.float32[::1], types.int64, types.float32[::1], types.int64, types.int64, types.int64,
                    types.int64, types.int64, types.int64, types.int64, types.boolean, types.float32,
                    types.float32, types.int64, types.float32, types.float64)


def dw_layout(W: int, PW: int, EW: int, SW: int, KW: int, DW: int, rw: int, ow: int) -> int:
    """Wq: the phase row length, long enough for the last tile's reads (rw pixels from every tap)."""
    wp = W + PW + EW
    need = -(-ow // rw) * rw + ((KW - 1) * DW) // SW + 1
    return max(-(-wp // SW), need)


def pick_rw(ow: int) -> int:
    """Tile width: fewest vector FMAs per tap over the row, then least waste."""
    return min((16, 8), key=lambda r: (-(-ow // r) * -(-r // 16), -(-ow // r) * r))


def depthwise_kernel(KH, KW, SH, SW, RW, ACT, DH=1, DW=1, cache=True, RH=4, RES=False, POST=False):
    """kern(x, xp, w, out, C, H, W, Hp, Wq, PH, PW, OH, OW, bias, res, alpha, beta, ps, pt, has_pre, qs, qt,
    qcode, qa, qbeta): out (C, OH, OW) flat = ps * act(dwconv + bias + res) + pt (the residual with RES,
    the affine with POST: compile-time flags) for x
    (C, H, W) flat and w (C, KH, KW) flat. Each channel is packed (pack_channel, prologue
    act(x * qs + qt) applied when has_pre) into xp, one channel's scratch of Hp * SW * Wq floats whose
    border the caller keeps zero, and convolved while it is hot in cache: packing the whole input first
    sent every 112x112 MobileNet layer's input through memory twice more.
    The register tile is RH output rows x RW pixels (OH >= RH, OW >= RW): RH independent FMA chains per
    tap, each weight loaded once for them. The last tile of a row (and the last block of rows) is moved
    back to end at OW (OH), overlapping its neighbour, which it writes again with the same values (the
    plan never lets a step's output overlap one of its inputs, so the residual is intact): every
    accumulator index is then a constant and the tile lives in registers (a scalar remainder path made
    LLVM keep it in memory, a store and reload around every FMA: 4x slower)."""
    key = (KH, KW, SH, SW, RW, ACT, DH, DW, RH, RES, POST)
    k = _KERNELS.get(key) if cache else None
    if k is not None:
        return k
    INLINE = ACT in INLINE_CODES
    IACT = ACT if INLINE else NONE  # any other code: activate_planes over the stored plane
    AFFINE = POST and INLINE
    compile_span(ACT)  # before this kernel, which links its loop-vectorized code
    pack_channel.compile(PACK_CHANNEL_SIG)  # likewise: compiled outside the kernels' vectorizer settings
    NACC = RH * RW

    @njit(cache=cache, nogil=True, fastmath=_FASTMATH)
    @named("depthwise_kernel", key)
    def kern(x, xp, w, out, C, H, W, Hp, Wq, PH, PW, OH, OW, bias, res, alpha, beta, ps, pt, has_pre, qs, qt,
             qcode, qa, qbeta):
        P = OH * OW
        hi = np.float32(beta)  # Clip's upper bound
        post = np.bool_(POST)  # a plain bool for the spans: a literal one compiles a scalar specialisation
        acc = stack_f32(NACC)
        v = stack_f32(RW)
        for c in range(C):
            # np.int64(): plain int64 arguments, so the call links pack_channel's precompiled (loop-vectorized)
            # code; literal constants would make Numba compile a specialisation under this kernel's settings
            pack_channel(x, c * H * W, xp, np.int64(0), H, W, np.int64(SW), Wq, PH, PW, has_pre, qs[c], qt[c],
                         qcode, qa[c], qbeta)
            b, a = bias[c], alpha[c]
            s, t = ps[c], pt[c]
            for oh0 in range(0, OH, RH):
                ohb = min(oh0, OH - RH)
                for ow00 in range(0, OW, RW):
                    ow0 = min(ow00, OW - RW)
                    for i in range(NACC):  # the sums start from the bias
                        acc[i] = b
                    for kh in range(KH):
                        for kw in range(KW):
                            wv = w[(c * KH + kh) * KW + kw]
                            col = kw * DW
                            for r in range(RH):
                                xo = (((ohb + r) * SH + kh * DH) * SW + col % SW) * Wq + col // SW + ow0
                                # unsigned indices: no negative-index wraparound, so the loads vectorize
                                uo = np.uint64(xo)
                                for j in range(RW):
                                    acc[r * RW + j] += xp[uo + np.uint64(j)] * wv
                    # per row of the tile one straight RW-lane expression into v, then the store
                    # (run-time residual and affine flags made branches whose joins the SLP
                    # vectorizer split into 8-, 4-, 2- and 1-lane pieces)
                    for r in range(RH):
                        uo = np.uint64(c * P + (ohb + r) * OW + ow0)
                        for j in range(RW):
                            y = acc[r * RW + j]
                            if RES:
                                y += res[uo + np.uint64(j)]
                            y = activate_inline(IACT, y, a, hi, beta)
                            if AFFINE:
                                y = y * s + t
                            v[j] = y
                        for j in range(RW):
                            out[uo + np.uint64(j)] = v[j]
            if not INLINE:
                activate_planes(ACT, out, c, c + 1, P, alpha, hi, beta, post, ps, pt)
    if cache:
        _KERNELS[key] = kern
    return kern


_A = types.float32[::1]
_I = types.int64
DW_SIG = (_A, _A, _A, _A, _I, _I, _I, _I, _I, _I, _I, _I, _I, _A, _A, _A, types.float64, _A, _A, types.boolean, _A,
          _A, _I, _A, types.float64)
BLOCKED_SIG = (_A, _A, _A, _I, _I, _I, _I, _I, _A, _A, types.boolean, _A, types.float64, types.boolean, _A, _A)


# -- channel-blocked variant for small images (rows too short to fill vectors) -------------------------

CB = 16


def pack_weights_blocked(w: np.ndarray, cpad: int) -> np.ndarray:
    """(C, 1, KH, KW) -> flat (CB, KH, KW, 16) with zero channels up to cpad."""
    c, _, kh, kw = w.shape
    full = np.zeros((cpad, kh, kw), np.float32)
    full[:c] = w.reshape(c, kh, kw)
    return aligned_copy(full.reshape(cpad // CB, CB, kh, kw).transpose(0, 2, 3, 1)).reshape(-1)


def blocked_kernel(KH, KW, SH, SW, RW, ACT, DH=1, DW=1, cache=True):
    """Input packed by conv_direct.pack_input into xp[CB][Hp][Wp][16] (needs (RW * SW + KW * DW) * 16
    floats of slack), weights w[CB][KH][KW][16]; a tile of 16 channels x RW pixels (OW >= RW; the last
    tile of a row moved back to end at OW, as in depthwise_kernel). kern(xp, w, out, C, Hp, Wp, OH, OW,
    bias, res, has_res, alpha, beta, has_post, ps, pt) (BLOCKED_SIG)."""
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
    @named("blocked_kernel", key)
    def kern(xp, w, out, C, Hp, Wp, OH, OW, bias, res, has_res, alpha, beta, has_post, ps, pt):
        ncb = (C + CB - 1) // CB
        P = OH * OW
        hi = np.float32(beta)  # Clip's upper bound
        acc = stack_f32(NACC)
        for cb in range(ncb):
            for oh in range(OH):
                for ow00 in range(0, OW, RW):
                    ow0 = min(ow00, OW - RW)  # the last tile moved back: every accumulator index constant
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
                    c0 = cb * CB
                    if c0 + CB <= C and not has_res:
                        # a whole block and no residual (MobileNet's and EfficientNet's depthwise layers):
                        # the epilogue as vectors across the 16 channels, then 16 stores per pixel into
                        # the channels' planes (element by element it was most of the layer's time)
                        u0 = np.uint64(c0)
                        for px in range(RW):
                            for c in range(CB):
                                acc[px * CB + c] += bias[u0 + np.uint64(c)]
                            if INLINE:
                                for c in range(CB):
                                    acc[px * CB + c] = activate_inline(ACT, acc[px * CB + c], alpha[u0 + np.uint64(c)],
                                                                hi, beta)
                                if has_post:
                                    for c in range(CB):
                                        acc[px * CB + c] = (acc[px * CB + c] * ps[u0 + np.uint64(c)]
                                                            + pt[u0 + np.uint64(c)])
                            uo = np.uint64(c0 * P + oh * OW + ow0 + px)
                            for c in range(CB):
                                out[uo + np.uint64(c * P)] = acc[px * CB + c]
                    else:
                        for c in range(CB):
                            co = c0 + c
                            if co < C:
                                b, a = bias[co], alpha[co]
                                s, t = ps[co], pt[co]
                                uo = np.uint64(co * P + oh * OW + ow0)
                                for px in range(RW):
                                    v = acc[px * CB + c] + b
                                    if has_res:
                                        v += res[uo + np.uint64(px)]
                                    if INLINE:
                                        v = activate_inline(ACT, v, a, hi, beta)
                                        if has_post:
                                            v = v * s + t
                                    out[uo + np.uint64(px)] = v
            if not INLINE:
                activate_planes(ACT, out, cb * CB, min(cb * CB + CB, C), P, alpha, hi, beta, has_post, ps,
                                pt)
    if cache:
        _KERNELS[key] = kern
    return kern

