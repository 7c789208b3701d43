"""Winograd F(2x2, 3x3) convolution for dense (group 1) 3x3, stride-1, dilation-1 2-D convolutions.

Y = A^T [ (G g G^T) . (B^T d B) ] A per 2x2 output tile (d: the 4x4 input patch, g: the 3x3 kernel).
The weights are transformed once per node (float64, then float32) into
    U[16][NOB][CINP][COB]        (transform position, output-channel block, input channel, channel in block)
and the input is packed per call by conv_direct.pack_input into the channel-blocked, zero-padded
    xp[CINP/16][Hp][Wp][16]      (halo in place, prologue applied while packing: padding stays zero).
The image is processed a chunk of 2x2 tiles at a time (transforming the whole image first spills out of
cache), in three stages per chunk, all inside one call:
  * input transform -> V[CINP/16][KTP][16][16], vectorized over 16 channels (`wino_in`);
  * 16 matrix products M[xi] (tiles x COUTP) = V[xi] (tiles x CINP) . U[xi] (CINP x COUTP) with a register
    tile of RT tiles x COB output channels (V broadcast, U vector loads), as conv_direct's direct kernel;
  * output transform, bias and activation vectorized over 16 output channels (bias and Clip bounds copied
    into small padded local arrays first), then the residual, post affine and the NCHW stores per element,
    or channel-blocked stores (bninfer.kernels.blocked's layout: a pixel's 16 channels in a row), for a
    blocked chain (bninfer.passes.layout), which also hands the kernel its input in the packed layout.
The transforms are compiled with LLVM's loop vectorizer on (their 16-lane inner loops), the matrix product
with it off and the SLP vectorizer on (conv_direct.compile_settings); the driver links the compiled stages.
Measured facts behind the code (AMD Zen 5, AVX-512):
  * every index in the 16-lane loops is uint64 arithmetic only: int64 * uint64 is float64 in Numba, and one
    such term turned the output transform into gathers and kept the input transform scalar;
  * the loop vectorizer gives up when it would need too many run-time alias checks: the 16 stores of one
    lane must sit at constant offsets from each other (V's layout), else the input transform stays scalar;
  * the per-element stores are the output transform's cost (~17 % of a 64->64 @56 layer; the matrix
    products ~70 %, at ~200 GFLOP/s); a fast path for full 2x2 tiles halved it.
Accuracy: F(2x2) error against float64 measured 0.4-0.9e-6 relative to the output's scale on ResNet's
layers, below the direct kernel's 0.8-2.2e-6 (F(4x4) measured 4.6e-6: not used). A NaN or Inf in the
input can reach the whole 2x2 output tile whose 4x4 patch holds it (one pixel further than a direct
convolution spreads it): the transforms' cancellations do not cancel non-finite values.
"""
from __future__ import annotations

import contextlib
import types as types_

import numba
import numpy as np
from numba import njit, types

from ..kernel_cache import named
from ..memory import aligned_empty
from ..activations import CLIP, NONE, RELU, activate
from .conv_direct import _FASTMATH, _lock, stack_f32

COB = 32  # output channels per register tile (two zmm vectors)

_BT = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], np.float64)
_G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], np.float64)
_AT = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float64)


def transform_weights(w: np.ndarray) -> np.ndarray:
    """(COUT, CIN, 3, 3) -> flat U[16][NOB][CINP][COB] (G g G^T per channel pair, zero-padded channels)."""
    cout, cin = w.shape[:2]
    cinp = -(-cin // 16) * 16
    nob = -(-cout // COB)
    out = aligned_empty(16 * nob * cinp * COB)
    _transform_into(np.ascontiguousarray(w, np.float32), out, nob, cinp)
    return out


@njit(inline="always", cache=True)
def _g_rows(g0, g1, g2):
    """G (g0, g1, g2): G = [[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]]."""
    s, h = 0.5 * (g0 + g2), 0.5 * g1
    return g0, s + h, s - h, g2


@njit(cache=True, nogil=True)
def _transform_into(w, out, NOB, CINP):
    """In one pass over the weights: numpy took 0.4 s of ResNet-50's start-up in float64 temporaries
    (fresh pages each) and transposes. float64 inside, one rounding to float32 (no fastmath: exact).
    An output block's 16 transforms of one input channel go through a small scratch, then out as 16
    runs of COB floats: stored straight into their 16 planes, every store touched a line of its own
    (100 -> 51 ms for ResNet-50's 3x3 layers). Every word of `out` is written once, padding included."""
    cout, cin = w.shape[0], w.shape[1]
    wf = w.reshape(-1)
    tmp = np.empty((16, COB), np.float32)
    for b in range(NOB):
        n = min(COB, cout - b * COB)
        for c in range(CINP):
            for oc in range(n if c < cin else 0):
                q = ((b * COB + oc) * cin + c) * 9  # w[o, c] row by row: (g[0, k], g[1, k], g[2, k]) at q + k
                a = _g_rows(np.float64(wf[q]), np.float64(wf[q + 3]), np.float64(wf[q + 6]))
                e = _g_rows(np.float64(wf[q + 1]), np.float64(wf[q + 4]), np.float64(wf[q + 7]))
                f = _g_rows(np.float64(wf[q + 2]), np.float64(wf[q + 5]), np.float64(wf[q + 8]))
                for i in range(4):  # row i of G g, times G^T
                    r = _g_rows(a[i], e[i], f[i])
                    for j in range(4):
                        tmp[4 * i + j, oc] = np.float32(r[j])
            for x in range(16):
                base = ((x * NOB + b) * CINP + c) * COB
                for oc in range(COB):
                    out[base + oc] = tmp[x, oc] if c < cin and oc < n else np.float32(0.0)


@contextlib.contextmanager
def _settings(loop_vec: bool):
    with _lock:
        old = numba.config.SLP_VECTORIZE, numba.config.LOOP_VECTORIZE
        numba.config.SLP_VECTORIZE, numba.config.LOOP_VECTORIZE = 1, int(loop_vec)
        try:
            yield
        finally:
            numba.config.SLP_VECTORIZE, numba.config.LOOP_VECTORIZE = old


# -- input transform ---------------------------------------------------------------------------------------

@njit(cache=True, nogil=True, fastmath=_FASTMATH)
def wino_in(xp, V, CINB, Hp, Wp, k0, nk, TW, KTP, CINP):
    """Tiles k0 .. k0 + nk - 1 (tile th * TW + tw of the plane) -> V[CINP/16][KTP][16][16] (tile k - k0;
    block, tile, transform position, channel in block: the 16 stores of a lane sit at constant offsets,
    which keeps LLVM's run-time alias checks few enough to vectorize)."""
    u16 = np.uint64(16)
    uW = np.uint64(Wp * 16)
    u32, u48 = np.uint64(32), np.uint64(48)
    for cb in range(CINB):
        for k in range(nk):
            th = (k0 + k) // TW
            tw = k0 + k - th * TW
            b = np.uint64(((cb * Hp + 2 * th) * Wp + 2 * tw) * 16)
            vo = np.uint64((cb * KTP + k) * 256)
            for j in range(16):
                uj = np.uint64(j)
                p0 = b + uj
                p1 = p0 + uW
                p2 = p1 + uW
                p3 = p2 + uW
                d00, d01, d02, d03 = xp[p0], xp[p0 + u16], xp[p0 + u32], xp[p0 + u48]
                d10, d11, d12, d13 = xp[p1], xp[p1 + u16], xp[p1 + u32], xp[p1 + u48]
                d20, d21, d22, d23 = xp[p2], xp[p2 + u16], xp[p2 + u32], xp[p2 + u48]
                d30, d31, d32, d33 = xp[p3], xp[p3 + u16], xp[p3 + u32], xp[p3 + u48]
                # rows: B^T d
                a0, a1, a2, a3 = d00 - d20, d01 - d21, d02 - d22, d03 - d23
                b0, b1, b2, b3 = d10 + d20, d11 + d21, d12 + d22, d13 + d23
                c0, c1, c2, c3 = d20 - d10, d21 - d11, d22 - d12, d23 - d13
                e0, e1, e2, e3 = d10 - d30, d11 - d31, d12 - d32, d13 - d33
                # columns: (B^T d) B
                o = vo + uj
                V[o] = a0 - a2
                V[o + np.uint64(16)] = a1 + a2
                V[o + np.uint64(32)] = a2 - a1
                V[o + np.uint64(48)] = a1 - a3
                V[o + np.uint64(64)] = b0 - b2
                V[o + np.uint64(80)] = b1 + b2
                V[o + np.uint64(96)] = b2 - b1
                V[o + np.uint64(112)] = b1 - b3
                V[o + np.uint64(128)] = c0 - c2
                V[o + np.uint64(144)] = c1 + c2
                V[o + np.uint64(160)] = c2 - c1
                V[o + np.uint64(176)] = c1 - c3
                V[o + np.uint64(192)] = e0 - e2
                V[o + np.uint64(208)] = e1 + e2
                V[o + np.uint64(224)] = e2 - e1
                V[o + np.uint64(240)] = e1 - e3


# -- the 16 matrix products ------------------------------------------------------------------------------

_KERNELS: dict = {}


def gemm_kernel(RT, cache=True):
    """gemm(V, U, M, CINP, NOB, KTP): M[xi][k][co] = sum_c V[c/16][k][xi][c%16] U[xi][c][co] for k < KTP (a
    multiple of RT)."""
    key = ("gemm", RT)
    k = _KERNELS.get(key) if cache else None
    if k is not None:
        return k
    NACC = RT * COB

    @njit(cache=cache, nogil=True, fastmath=_FASTMATH)
    @named("gemm_kernel", key)
    def gemm(V, U, M, CINP, NOB, KTP):
        acc = stack_f32(NACC)
        COUTP = NOB * COB
        for xi in range(16):
            for ob in range(NOB):
                wb = (xi * NOB + ob) * CINP * COB
                for k0 in range(0, KTP, RT):
                    for i in range(NACC):
                        acc[i] = 0.0
                    for cb in range(CINP // 16):
                        vb = (cb * KTP + k0) * 256 + xi * 16
                        for ci in range(16):
                            wo = np.uint64(wb + (cb * 16 + ci) * COB)
                            vo = np.uint64(vb + ci)
                            for t in range(RT):
                                v = V[vo + np.uint64(t * 256)]
                                for j in range(COB):
                                    acc[t * COB + j] += v * U[wo + np.uint64(j)]
                    mo = (xi * KTP + k0) * COUTP + ob * COB
                    for t in range(RT):
                        mt = np.uint64(mo + t * COUTP)
                        for j in range(COB):
                            M[mt + np.uint64(j)] = acc[t * COB + j]
    if cache:
        _KERNELS[key] = gemm
    return gemm


# -- output transform and epilogue ----------------------------------------------------------------------

def out_kernel(ACT, YB=False, cache=True):
    """wout(M, out, k0, nk, TW, KTP, COUT, COUTP, OH, OW, bp, ap, beta, res, has_res, has_post, ps, pt,
    Y): output transform of the chunk's tiles k0 .. k0 + nk - 1, epilogue fused, into out (COUT, OH, OW)
    NCHW, or with YB channel-blocked (ceil(COUT / 16), OH, OW, 16) (bninfer.kernels.blocked's layout,
    every lane written: a pixel's 16 channels one vector store; no residual; ps and pt then padded to
    whole blocks). bp / ap are the bias and Clip lower bounds padded to COUTP; Y is a scratch of 64
    floats."""
    key = ("out", ACT, YB)
    k = _KERNELS.get(key) if cache else None
    if k is not None:
        return k

    @njit(cache=cache, nogil=True, fastmath=_FASTMATH)
    @named("out_kernel", key)
    def wout(M, out, k0, nk, TW, KTP, COUT, COUTP, OH, OW, bp, ap, beta, res, has_res, has_post, ps, pt,
             Y):
        hi = np.float32(beta)
        zero = np.float32(0.0)
        P = OH * OW
        smk = KTP * COUTP
        q1, q2, q3, q4, q5 = (np.uint64(smk), np.uint64(2 * smk), np.uint64(3 * smk), np.uint64(4 * smk),
                              np.uint64(5 * smk))
        q6, q7, q8, q9, q10 = (np.uint64(6 * smk), np.uint64(7 * smk), np.uint64(8 * smk), np.uint64(9 * smk),
                               np.uint64(10 * smk))
        q11, q12, q13, q14, q15 = (np.uint64(11 * smk), np.uint64(12 * smk), np.uint64(13 * smk),
                                   np.uint64(14 * smk), np.uint64(15 * smk))
        u16, u32, u48 = np.uint64(16), np.uint64(32), np.uint64(48)
        late = has_res  # the activation comes after the residual
        for k in range(nk):
            th = (k0 + k) // TW
            oh = 2 * th
            two_h = oh + 1 < OH
            ow = 2 * (k0 + k - th * TW)
            two_w = ow + 1 < OW
            for cb in range((COUT + 15) // 16):  # (the blocks past COUT, up to COUTP, store nothing)
                mo = np.uint64(k * COUTP + cb * 16)
                co0 = cb * 16
                for j in range(16):
                    uj = np.uint64(j)
                    o = mo + uj
                    m0, m1, m2, m3 = M[o], M[o + q1], M[o + q2], M[o + q3]
                    m4, m5, m6, m7 = M[o + q4], M[o + q5], M[o + q6], M[o + q7]
                    m8, m9, m10, m11 = M[o + q8], M[o + q9], M[o + q10], M[o + q11]
                    m12, m13, m14, m15 = (M[o + q12], M[o + q13], M[o + q14],
                                          M[o + q15])
                    # A^T m: rows
                    s0, s1, s2, s3 = m0 + m4 + m8, m1 + m5 + m9, m2 + m6 + m10, m3 + m7 + m11
                    t0, t1, t2, t3 = m4 - m8 - m12, m5 - m9 - m13, m6 - m10 - m14, m7 - m11 - m15
                    b = bp[np.uint64(co0) + uj]
                    y0 = s0 + s1 + s2 + b
                    y1 = s1 - s2 - s3 + b
                    y2 = t0 + t1 + t2 + b
                    y3 = t1 - t2 - t3 + b
                    if not late:
                        if ACT == RELU:
                            y0 = zero if y0 < zero else y0
                            y1 = zero if y1 < zero else y1
                            y2 = zero if y2 < zero else y2
                            y3 = zero if y3 < zero else y3
                        elif ACT == CLIP:
                            a = ap[np.uint64(co0) + uj]
                            y0 = a if y0 < a else y0
                            y0 = hi if y0 > hi else y0
                            y1 = a if y1 < a else y1
                            y1 = hi if y1 > hi else y1
                            y2 = a if y2 < a else y2
                            y2 = hi if y2 > hi else y2
                            y3 = a if y3 < a else y3
                            y3 = hi if y3 > hi else y3
                    Y[uj] = y0
                    Y[uj + u16] = y1
                    Y[uj + u32] = y2
                    Y[uj + u48] = y3
                if YB and two_h and two_w and not has_post and (ACT == NONE or ACT == RELU or ACT == CLIP):
                    # four pixels' 16 channels, each one contiguous run (lanes past COUT too: finite)
                    uo = np.uint64(((co0 // 16 * OH + oh) * OW + ow) * 16)
                    uOW = np.uint64(OW * 16)
                    for j in range(16):
                        uj = np.uint64(j)
                        out[uo + uj] = Y[uj]
                        out[uo + u16 + uj] = Y[uj + u16]
                        out[uo + uOW + uj] = Y[uj + u32]
                        out[uo + uOW + u16 + uj] = Y[uj + u48]
                    continue
                if not YB and two_h and two_w and not has_post and not late and (ACT == NONE or ACT == RELU
                                                                                  or ACT == CLIP):
                    nj = min(16, COUT - co0)
                    uo = np.uint64(co0 * P + oh * OW + ow)
                    uP, uOW = np.uint64(P), np.uint64(OW)
                    for j in range(nj):
                        uj = np.uint64(j)
                        base = uo + uj * uP
                        out[base] = Y[uj]
                        out[base + np.uint64(1)] = Y[uj + u16]
                        out[base + uOW] = Y[uj + u32]
                        out[base + uOW + np.uint64(1)] = Y[uj + u48]
                    continue
                if two_h and two_w and (ACT == NONE or ACT == RELU or ACT == CLIP):
                    # full tile, residual and/or post affine: straight-line per channel
                    nj = 16 if YB else min(16, COUT - co0)
                    uOW = np.uint64(OW * 16 if YB else OW)
                    for j in range(nj):
                        co = co0 + j
                        uj = np.uint64(j)
                        if YB:
                            base = np.uint64(((co0 // 16 * OH + oh) * OW + ow) * 16 + j)
                        else:
                            base = np.uint64(co * P + oh * OW + ow)
                        a, sc, sh = ap[co], ps[co], pt[co]
                        for q in range(4):
                            ob = base + np.uint64(q // 2) * uOW + np.uint64(q % 2) * (u16 if YB else np.uint64(1))
                            v = Y[uj + np.uint64(q * 16)]
                            if has_res:
                                v += res[ob]
                            if late:
                                if ACT == RELU:
                                    v = zero if v < zero else v
                                elif ACT == CLIP:
                                    v = a if v < a else v
                                    v = hi if v > hi else v
                            if has_post:
                                v = v * sc + sh
                            out[ob] = v
                    continue
                for j in range(16):
                    co = co0 + j
                    if co >= COUT and not YB:
                        break
                    base = ((co0 // 16 * OH + oh) * OW + ow) * 16 + j if YB else co * P + oh * OW + ow
                    for q in range(4):
                        dh = q // 2
                        dw = q % 2
                        if (dh == 1 and not two_h) or (dw == 1 and not two_w):
                            continue
                        v = Y[q * 16 + j]
                        ob = base + (dh * OW + dw) * 16 if YB else base + dh * OW + dw
                        if late or (ACT != NONE and ACT != RELU and ACT != CLIP):
                            if has_res:
                                v += res[ob]
                            if ACT == RELU:
                                v = zero if v < zero else v
                            elif ACT == CLIP:
                                a = ap[co]
                                v = a if v < a else v
                                v = hi if v > hi else v
                            elif ACT != NONE:
                                v = activate(ACT, v, ap[co], hi, beta)
                        if has_post:
                            v = v * ps[co] + pt[co]
                        out[ob] = v
    if cache:
        _KERNELS[key] = wout
    return wout


# -- driver ------------------------------------------------------------------------------------------------

def winograd_kernel(RT, ACT, YB=False, cache=True):
    """kern(xp, U, out, CINB, Hp, Wp, COUT, NOB, OH, OW, bias, res, has_res, alpha, beta, has_post, ps, pt,
    CK, K0, K1): out (COUT, OH, OW) flat = ps[c] * act(conv + bias[c] + res, alpha[c], beta) + pt[c] on the
    tiles [K0, K1) (tile th * ceil(OW / 2) + tw: 2x2 outputs at rows 2 th, columns 2 tw), CK tiles per
    chunk. Tiles, not tile rows, so that threads can share a plane evenly (7 tile rows of a 14x14 layer
    went 4 + 3). xp as made by conv_direct.pack_input with 16-channel blocks, Hp >= 2 * ceil(OH / 2) + 2,
    Wp >= 2 * ceil(OW / 2) + 2. With YB out is channel-blocked instead (out_kernel). Scratch is allocated
    per call (thread-safe)."""
    key = ("wino", RT, ACT, YB)
    k = _KERNELS.get(key) if cache else None
    if k is not None:
        return k
    gemm = gemm_kernel(RT, cache)
    wout = out_kernel(ACT, YB, cache)
    with _settings(True):
        wino_in.compile(IN_SIG)
        wout.compile(OUT_SIG)
    with _settings(False):
        gemm.compile(GEMM_SIG)

    # the stages are reached as globals (_gemm, _wout) of a per-variant namespace, not as closure cells:
    # Numba keys a closure's disk-cache entry on its cells, and a dispatcher pickles differently in every
    # process (the driver would never load from the cache); the cells hold only RT, ACT and YB.
    def kern(xp, U, out, CINB, Hp, Wp, COUT, NOB, OH, OW, bias, res, has_res, alpha, beta, has_post, ps, pt,
             CK, K0, K1):
        if ACT < 0 or YB < 0:  # never: keeps ACT and YB among the closure cells (a cache key per variant)
            return
        CINP = CINB * 16
        COUTP = NOB * COB
        TW = (OW + 1) // 2
        TT = min((OH + 1) // 2 * TW, K1)
        CK = min(CK, TT)
        KTPmax = ((CK + RT - 1) // RT) * RT
        V = np.zeros(16 * KTPmax * CINP, np.float32)
        M = np.empty(16 * KTPmax * COUTP, np.float32)
        Y = np.empty(64, np.float32)
        bp = np.zeros(COUTP, np.float32)
        ap = np.zeros(COUTP, np.float32)
        bp[:COUT] = bias[:COUT]
        ap[:COUT] = alpha[:COUT]
        for c0 in range(K0, TT, CK):
            nk = min(CK, TT - c0)
            KTP = ((nk + RT - 1) // RT) * RT
            wino_in(xp, V, CINB, Hp, Wp, c0, nk, TW, KTP, CINP)
            _gemm(V, U, M, CINP, NOB, KTP)
            _wout(M, out, c0, nk, TW, KTP, COUT, COUTP, OH, OW, bp, ap, beta, res, has_res, has_post, ps,
                 pt, Y)
    ns = dict(globals(), _gemm=gemm, _wout=wout)
    fn = types_.FunctionType(kern.__code__, ns, kern.__name__, kern.__defaults__, kern.__closure__)
    fn.__qualname__ = kern.__qualname__
    assert {c.cell_contents for c in fn.__closure__} == {RT, ACT, YB}
    kern = njit(cache=cache, nogil=True, fastmath=_FASTMATH)(named("winograd_kernel", key)(fn))
    if cache:
        _KERNELS[key] = kern
    return kern


_F = types.float32[::1]
_I = types.int64
IN_SIG = (_F, _F, _I, _I, _I, _I, _I, _I, _I, _I)
GEMM_SIG = (_F, _F, _F, _I, _I, _I)
OUT_SIG = (_F, _F, _I, _I, _I, _I, _I, _I, _I, _I, _F, _F, types.float64, _F, types.boolean, types.boolean,
           _F, _F, _F)
WINO_SIG = (_F, _F, _F, _I, _I, _I, _I, _I, _I, _I, _F, _F, types.boolean, _F, types.float64, types.boolean,
            _F, _F, _I, _I, _I)


def compile_now(kern):
    with _settings(False):
        kern.compile(WINO_SIG)
    return kern
