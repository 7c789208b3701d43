"""Direct convolution in a channel-blocked layout, specialised per kernel geometry.

The input is packed once per call into a zero-padded, channel-blocked copy
    xp[CINB][Hp][Wp][CIB]          (CIB input channels innermost, halo in place, prologue applied)
and the weights once per node into
    w[NOB][CINB][KH][CIB][KW][COB] (COB output channels innermost, zero-padded channels).
A register tile of COB output channels x RW output pixels lives in a stack array that LLVM promotes to
registers (`stack_f32`); the loop over the kernel width sits inside the loop over input channels so each
weight vector load feeds the whole pixel tile. Every index is flat 1-D with the inner strides known at
compile time. The fused epilogue is applied when the tile is stored (output in plain NCHW).

Two more kernels vectorize along the pixels instead (weights broadcast, contiguous NCHW stores), which
pays when each output sums few products: `pointwise_kernel` (1x1 convs, no packing at all) and
`rowvec_kernel` (few input channels, e.g. network stems; input laid out by depthwise.pack_rows).

Kernels come from the factories, one per set of compile-time constants (shared between nodes, cached on
disk), and are compiled with Numba's SLP vectorizer on and the loop vectorizer off (`compile_now`).
Measured facts behind the design (AMD Zen 5, AVX-512):
  * the register tile must be a stack array (`stack_f32`): a heap array stays in memory and nothing
    vectorizes; every access to it needs a constant index (loops with constant trip counts and a break,
    never a run-time trip count), else LLVM demotes the whole tile to memory;
  * indices are unsigned (np.uint64) in hot loops: Numba's negative-index wraparound otherwise blocks
    the SLP vectorizer;
  * FMA contraction needs fastmath={"contract"}; without it the FMAs stay separate multiply and add.
"""
from __future__ import annotations

import contextlib
import threading

import numba
import numpy as np
from llvmlite import ir as llir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic
from numba.np.numpy_support import carray

from ..kernel_cache import named
from ..memory import aligned_copy
from ..activations import (INLINE_CODES, NONE, activate_inline, activate_pixels, activate_planes,
                           compile_loop_vectorized, compile_span, prologue_span)

_FASTMATH = {"contract"}  # FMA contraction only: results stay within rounding of the plain sum
_lock = threading.RLock()


@intrinsic
def _stack_ptr(typingctx, n):
    """A pointer to a fresh stack buffer of n float32 (n a compile-time constant)."""
    if not isinstance(n, types.IntegerLiteral):
        return None
    size = n.literal_value

    def codegen(context, builder, sig, args):
        ptr = cgutils.alloca_once(builder, llir.ArrayType(llir.FloatType(), size))
        return builder.bitcast(ptr, llir.PointerType(llir.FloatType()))
    return types.CPointer(types.float32)(n), codegen


@njit(inline="always", cache=True)
def stack_f32(n):
    """A float32 array of n (compile-time constant) elements on the stack: LLVM promotes it to registers
    when every access has a constant index (register tiles). Uninitialised."""
    return carray(_stack_ptr(n), (n,))


@contextlib.contextmanager
def compile_settings():
    """SLP vectorizer on, loop vectorizer off while bninfer compiles its blocked kernels (the loop
    vectorizer picks the wrong loop and gathers the accumulator); restored afterwards so the user's own
    Numba code keeps its settings."""
    with _lock:
        old = numba.config.SLP_VECTORIZE, numba.config.LOOP_VECTORIZE
        numba.config.SLP_VECTORIZE, numba.config.LOOP_VECTORIZE = 1, 0
        try:
            yield
        finally:
            numba.config.SLP_VECTORIZE, numba.config.LOOP_VECTORIZE = old


def compile_now(dispatcher, sig):
    """Compile (or load from cache) one signature under `compile_settings`."""
    with compile_settings():
        dispatcher.compile(sig)
    return dispatcher


# -- packing ------------------------------------------------------------------------------------------

@njit(cache=True, nogil=True)
def subsample_planes(x, y, planes, H, W, SH, SW, OH, OW):
    """y (planes, OH, OW) flat = x (planes, H, W) flat [:, :OH * SH:SH, :OW * SW:SW]: a strided 1x1
    convolution's input, taken once into a buffer of the layer's (numpy's strided copy into a new array
    kept the layer out of native plans, and its parts with Python)."""
    for c in range(planes):
        for oh in range(OH):
            src = (c * H + oh * SH) * W
            dst = (c * OH + oh) * OW
            for ow in range(OW):
                y[dst + ow] = x[src + ow * SW]


@njit(cache=True, nogil=True)
def pack_input(x, xp, C, H, W, CIB, Hp, Wp, PH, PW, has_pre, scale, shift, code, alpha, beta):
    """x (C, H, W) flat -> xp (CINB, Hp, Wp, CIB) flat, placed at offset (PH, PW); with `has_pre` each
    element goes through act(scale[c] * x + shift[c]). xp must be zeroed where it is not written
    (halo, channel padding). Full blocks of 16 channels take a loop with a constant inner trip count and
    unsigned indices (vectorizes); the rest a plain loop."""
    HW = H * W
    CINB = (C + CIB - 1) // CIB
    u16 = np.uint64(16)
    for cb in range(CINB):
        c0 = cb * CIB
        nci = min(CIB, C - c0)
        for h in range(H):
            dst = np.uint64(((cb * Hp + h + PH) * Wp + PW) * CIB)
            src = np.uint64((c0 * H + h) * W)
            if CIB == 16 and nci == 16 and not has_pre:
                for w_ in range(W):
                    uw = np.uint64(w_)
                    for ci in range(16):
                        xp[dst + uw * u16 + np.uint64(ci)] = x[src + np.uint64(ci * HW) + uw]
            elif has_pre:
                for ci in range(nci):
                    c = c0 + ci
                    prologue_span(x, src + np.uint64(ci * HW), 1, xp, dst + np.uint64(ci), CIB, W, scale[c],
                                  shift[c], alpha[c], code, beta)
            else:
                for ci in range(nci):
                    for w_ in range(W):
                        xp[dst + np.uint64(w_ * CIB + ci)] = x[src + np.uint64(ci * HW + w_)]


def pack_weights(w: np.ndarray, cinb: int, cib: int, cob: int) -> np.ndarray:
    """(COUT, CIN, KH, KW) -> flat (NOB, CINB, KH, CIB, KW, COB), zero-padded channels."""
    cout, cin, kh, kw = w.shape
    nob = -(-cout // cob)
    full = np.zeros((nob * cob, cinb * cib, kh, kw), np.float32)
    full[:cout, :cin] = w
    full = full.reshape(nob, cob, cinb, cib, kh, kw).transpose(0, 2, 4, 3, 5, 1)
    return aligned_copy(full).reshape(-1)


# -- the dense direct kernel ---------------------------------------------------------------------------

_KERNELS: dict = {}


def direct_kernel(KH, KW, SH, SW, DH, DW, CIB, COB, RW, ACT, XB=False, cache=True):
    """The direct convolution kernel for these compile-time constants (cached per process and on disk).

    kern(xp, w, out, CINB, Hp, Wp, COUT, OH, OW, bias, res, has_res, alpha, beta, has_post, ps, pt, 0):
    out (COUT, OH, OW) flat = ps[c] * act(conv + bias[c] + res, alpha[c], beta) + pt[c], xp the padded
    input (CINB, CIB, Hp, Wp) flat, or with XB channel-blocked (CINB, Hp, Wp, CIB) (bninfer.kernels.blocked's
    layout, border included). The last tile of a row may read past its end: xp must hold RW * SW + KW * DW
    pixels of slack after it (their values only reach outputs past the row, never stored)."""
    key = (KH, KW, SH, SW, DH, DW, CIB, COB, RW, ACT, XB)
    k = _KERNELS.get(key) if cache else None
    if k is not None:
        return k
    NACC = RW * COB
    INLINE = ACT in INLINE_CODES
    compile_span(ACT)  # before this kernel, which links its loop-vectorized code

    @njit(cache=cache, nogil=True, fastmath=_FASTMATH)
    @named("direct_kernel", key)
    def kern(xp, w, out, CINB, Hp, Wp, COUT, OH, OW, bias, res, has_res, alpha, beta, has_post, ps, pt, ci0):
        nob = (COUT + COB - 1) // COB
        P = OH * OW
        plane = Hp * Wp
        hi = np.float32(beta)  # Clip's upper bound
        acc = stack_f32(NACC)
        wob = CINB * KH * CIB * KW * COB
        for ob in range(nob):
            for oh in range(OH):
                for ow0 in range(0, OW, RW):
                    for i in range(NACC):
                        acc[i] = 0.0
                    for cb in range(CINB):
                        for kh in range(KH):
                            if XB:
                                xr = ((cb * Hp + oh * SH + kh * DH) * Wp + ow0 * SW) * CIB
                            else:
                                xr = (cb * CIB * Hp + oh * SH + kh * DH) * Wp + ow0 * SW
                            wr = ob * wob + (cb * KH + kh) * (CIB * KW * COB)
                            # ci0 is 0 at run time: an unknown trip count keeps LLVM from unrolling
                            # a 1x1 kernel's channel loop into a block too big to vectorize
                            for ci in range(ci0 if KW == 1 else 0, CIB):
                                for kw in range(KW):
                                    # unsigned indices: no negative-index wraparound in the hot loop
                                    wo = np.uint64(wr + (ci * KW + kw) * COB)
                                    if XB:
                                        xo = np.uint64(xr + ci + kw * DW * CIB)
                                    else:
                                        xo = np.uint64(xr + ci * plane + kw * DW)
                                    for px in range(RW):
                                        xv = xp[xo + np.uint64(px * SW * (CIB if XB else 1))]
                                        for c in range(COB):
                                            acc[px * COB + c] += xv * w[wo + np.uint64(c)]
                    npx = min(RW, OW - ow0)
                    for c in range(COB):
                        co = ob * COB + c
                        if co < COUT:
                            b, a = bias[co], alpha[co]
                            s, t = ps[co], pt[co]
                            ob_ = co * P + oh * OW + ow0
                            for px in range(RW):
                                if px >= npx:
                                    break
                                v = acc[px * COB + c] + b
                                if has_res:
                                    v += res[ob_ + px]
                                if INLINE:
                                    v = activate_inline(ACT, v, a, hi, beta)
                                    if has_post:
                                        v = v * s + t
                                out[ob_ + px] = v
            if not INLINE:
                activate_planes(ACT, out, ob * COB, min(ob * COB + COB, COUT), P, alpha, hi, beta, has_post, ps,
                                pt)
    if cache:
        _KERNELS[key] = kern
    return kern


DIRECT_SIG = (types.float32[::1], types.float32[::1], types.float32[::1], types.int64, types.int64,
              types.int64, types.int64, types.int64, types.int64, types.float32[::1], types.float32[::1],
              types.boolean, types.float32[::1], types.float64, types.boolean, types.float32[::1],
              types.float32[::1], types.int64)


# -- pointwise (1x1, stride 1, unpadded) kernel vectorized along the pixels ------------------------------

def pack_weights_pw(w: np.ndarray, cot: int) -> np.ndarray:
    """(COUT, CIN) -> flat (NOB, CIN, COT), zero-padded output channels."""
    cout, cin = w.shape
    nob = -(-cout // cot)
    full = np.zeros((nob * cot, cin), np.float32)
    full[:cout] = w
    return aligned_copy(full.reshape(nob, cot, cin).transpose(0, 2, 1)).reshape(-1)


@njit(cache=True, nogil=True, fastmath=_FASTMATH)
def prologue_planes(x, P, q0, xs, nq, CIN, scale, shift, alpha, code, beta):
    """xs[ci * nq + i] = act(x[ci * P + q0 + i] * scale[ci] + shift[ci]) for i < nq, every input channel:
    the pointwise kernel's prologue over one chunk of pixels. Compiled with the loop vectorizer on
    (activations.compile_loop_vectorized) and called, not inlined, by the kernels (built with it off),
    once a chunk: inlined there its loops stayed scalar, ~0.37 ns an element, 10 % of a DenseNet 1x1
    layer's time."""
    for ci in range(CIN):
        prologue_span(x, ci * P + q0, 1, xs, ci * nq, 1, nq, scale[ci], shift[ci], alpha[ci], code, beta)


PROLOGUE_SIG = (types.float32[::1], types.int64, types.int64, types.float32[::1], types.int64, types.int64,
                types.float32[::1], types.float32[::1], types.float32[::1], types.int64, types.float64)


def pointwise_kernel(COT, PXT, ACT, PRE=-1, RES=False, POST=False, cache=True):
    """kern(x, w, out, CIN, COUT, P, Q0, Q1, bias, res, alpha, beta, ps, pt, tpc, pre_scale, pre_shift,
    pre_alpha, pre_beta, xs): the 1x1 convolution out (COUT, P) = ps * act(W (COUT, CIN) . x (CIN, P) +
    bias + res) + pt over the pixels [Q0, Q1) of P (threads split a layer whose output tiles do not share
    out evenly over its pixels), on NCHW data, the residual with RES, the affine ps, pt with POST
    (compile-time flags), a register tile of COT output channels (weights broadcast) x PXT consecutive
    pixels (vector loads and stores), epilogue fused. No packing of the input. Pixels go in chunks of tpc
    tiles (0: all at once).
    PRE >= 0 (an INLINE_CODES activation) fuses the prologue act(x * pre_scale + pre_shift): it is
    applied once per chunk of pixels, every input channel, into xs (CIN x the chunk's pixels, the
    caller's scratch: the running thread's own, or a packed part's, in L2), which every block of output
    channels then reads. (Applied in the loads, it was recomputed for every block: two vector operations
    per COT vector FMAs, a third more work on AVX2's 6-channel tiles, where DenseNet's pre-activation 1x1
    layers ran at 25 GFLOP/s against 30 for plain ones.) Q1 - Q0 >= PXT: when PXT does not divide it,
    the last tile is moved back to end at Q1, overlapping its neighbour, so every tile is a full vector
    tile; the pixels both compute get the same sums in the same order, so writing them twice is harmless
    (a scalar remainder loop made 28x28 and 14x14 layers run at half speed)."""
    key = ("pw", COT, PXT, ACT, PRE, RES, POST)
    k = _KERNELS.get(key) if cache else None
    if k is not None:
        return k
    if PRE >= 0 and PRE not in INLINE_CODES:
        raise ValueError(f"prologue activation code {PRE} is not one the pointwise kernel inlines")
    NACC = COT * PXT
    INLINE = ACT in INLINE_CODES
    IACT = ACT if INLINE else NONE  # any other code: activate_planes over the stored block
    compile_span(ACT)  # before this kernel, which links its loop-vectorized code
    if PRE >= 0:
        compile_loop_vectorized(prologue_planes, PROLOGUE_SIG)  # likewise

    @njit(cache=cache, nogil=True, fastmath=_FASTMATH)
    @named("pointwise_kernel", key)
    def kern(x, w, out, CIN, COUT, P, Q0, Q1, bias, res, alpha, beta, ps, pt, tpc, psc, psh, pal, pbeta, xs):
        nob = (COUT + COT - 1) // COT
        hi = np.float32(beta)  # Clip's upper bound
        post = np.bool_(POST)  # a plain bool for the spans: a literal one compiles a scalar specialisation
        acc = stack_f32(NACC)
        xv = stack_f32(PXT)
        v = stack_f32(PXT)
        uP = np.uint64(P)
        last = Q1 - PXT  # the last tile's first pixel
        ntiles = (Q1 - Q0 + PXT - 1) // PXT
        # pixel chunks of tpc tiles, every output block over one chunk before the next: the chunk's
        # input stays in L2 (a sweep over all pixels per block re-read the whole input from L3 every
        # time), and a span activation runs over the block's chunk while it is in L1/L2.
        if tpc <= 0:
            tpc = ntiles
        src = x
        for t0 in range(0, ntiles, tpc):
            t1 = min(t0 + tpc, ntiles)
            q0 = np.uint64(0)  # src holds pixel p of channel ci at ci * stride + p - q0
            stride = uP
            if PRE >= 0:
                q0 = np.uint64(min(Q0 + t0 * PXT, last))
                nq = min(Q0 + (t1 - 1) * PXT, last) + PXT - np.int64(q0)
                stride = np.uint64(nq)
                prologue_planes(x, P, np.int64(q0), xs, nq, CIN, psc, psh, pal, np.int64(PRE), pbeta)
                src = xs
            for ob in range(nob):
                wb = ob * CIN * COT
                for t in range(t0, t1):
                    p0 = min(Q0 + t * PXT, last)
                    for c in range(COT):  # the sums start from the bias (past COUT: never stored)
                        bc = bias[min(ob * COT + c, COUT - 1)]
                        for j in range(PXT):
                            acc[c * PXT + j] = bc
                    for ci in range(CIN):
                        xo = np.uint64(ci) * stride + np.uint64(p0) - q0
                        wo = np.uint64(wb + ci * COT)
                        for j in range(PXT):
                            xv[j] = src[xo + np.uint64(j)]
                        for c in range(COT):
                            wv = w[wo + np.uint64(c)]
                            for j in range(PXT):
                                acc[c * PXT + j] += wv * xv[j]
                    for c in range(min(COT, COUT - ob * COT)):
                        co = ob * COT + c
                        a = alpha[co]
                        o = np.uint64(co) * uP + np.uint64(p0)
                        i = c * PXT
                        # one straight PXT-lane expression into v, then the store: the SLP vectorizer
                        # makes it one vector op per step. Run-time residual and affine flags made
                        # branches whose joins it split into 8-, 4-, 2- and 1-lane pieces (40
                        # instructions a channel); a store to out inside the expression stays scalar
                        # (out might alias res).
                        for j in range(PXT):
                            y = acc[i + j]
                            if RES:
                                y += res[o + np.uint64(j)]
                            y = activate_inline(IACT, y, a, hi, beta)
                            if POST and INLINE:
                                y = y * ps[co] + pt[co]
                            v[j] = y
                        for j in range(PXT):
                            out[o + np.uint64(j)] = v[j]
                if not INLINE:  # the chunk's pixels; a tile moved back rewrote the ones it shares raw
                    activate_pixels(ACT, out, ob * COT, min(ob * COT + COT, COUT), P, min(Q0 + t0 * PXT, last),
                                    min(Q0 + (t1 - 1) * PXT, last) + PXT, alpha, hi, beta, post, ps, pt)
    if cache:
        _KERNELS[key] = kern
    return kern


PW_SIG = (types.float32[::1], types.float32[::1], types.float32[::1], types.int64, types.int64, types.int64,
          types.int64, types.int64, types.float32[::1], types.float32[::1], types.float32[::1], types.float64,
          types.float32[::1], types.float32[::1], types.int64, types.float32[::1], types.float32[::1],
          types.float32[::1], types.float64, types.float32[::1])


def pw_scratch_size(CIN: int, P: int, PXT: int, tpc: int) -> int:
    """The floats pointwise_kernel's xs needs with a prologue: CIN x the pixels of its largest chunk."""
    chunk = P if tpc <= 0 else min(P, tpc * PXT)
    return CIN * chunk


# -- direct kernel vectorized along the output row (few input channels: network stems) ------------------

def pack_weights_px(w: np.ndarray, cot: int) -> np.ndarray:
    """(COUT, CIN, KH, KW) -> flat (NOB, CIN, KH, KW, COT), zero-padded output channels."""
    cout, cin, kh, kw = w.shape
    nob = -(-cout // cot)
    full = np.zeros((nob * cot, cin, kh, kw), np.float32)
    full[:cout] = w
    return aligned_copy(full.reshape(nob, cot, cin, kh, kw).transpose(0, 2, 3, 4, 1)).reshape(-1)


def rowvec_kernel(KH, KW, SH, SW, DH, DW, COT, PXT, ACT, RES=False, POST=False, cache=True):
    """kern(xp, w, out, CIN, COUT, Hp, Wq, OH, OW, bias, res, alpha, beta, ps, pt): a dense convolution
    whose register tile is COT output channels (weights broadcast) x PXT consecutive output pixels of one
    row (vector loads and stores). xp is laid out as depthwise.pack_rows makes it (stride phases split,
    so every tap reads consecutive floats); out (COUT, OH, OW) in NCHW = ps * act(conv + bias + res) + pt,
    the residual with RES, the affine with POST (compile-time flags). Stores are contiguous, which pays
    when each output sums few products (few input channels)."""
    key = ("rowvec", KH, KW, SH, SW, DH, DW, COT, PXT, ACT, RES, POST)
    k = _KERNELS.get(key) if cache else None
    if k is not None:
        return k
    NACC = COT * PXT
    INLINE = ACT in INLINE_CODES
    IACT = ACT if INLINE else NONE  # any other code: activate_planes over the stored block
    AFFINE = POST and INLINE
    compile_span(ACT)  # before this kernel, which links its loop-vectorized code

    @njit(cache=cache, nogil=True, fastmath=_FASTMATH)
    @named("rowvec_kernel", key)
    def kern(xp, w, out, CIN, COUT, Hp, Wq, OH, OW, bias, res, alpha, beta, ps, pt):
        nob = (COUT + COT - 1) // COT
        P = OH * OW
        hi = np.float32(beta)  # Clip's upper bound
        post = np.bool_(POST)  # a plain bool for the spans: a literal one compiles a scalar specialisation
        acc = stack_f32(NACC)
        v = stack_f32(PXT)
        for ob in range(nob):
            for oh in range(OH):
                for ow0 in range(0, OW, PXT):
                    # The last tile of a row moves back to end at the row's end (recomputing a few
                    # pixels): every index into acc stays constant, so it lives in registers (a scalar
                    # remainder with a run-time count kept it in memory).
                    ow0 = max(0, min(ow0, OW - PXT))
                    npx = OW - ow0
                    for c in range(COT):  # the sums start from the bias (past COUT: never stored)
                        bc = bias[min(ob * COT + c, COUT - 1)]
                        for j in range(PXT):
                            acc[c * PXT + j] = bc
                    for ci in range(CIN):
                        for kh in range(KH):
                            rb = ((ci * Hp + oh * SH + kh * DH) * SW)
                            wr = ((ob * CIN + ci) * KH + kh) * KW * COT
                            for kw in range(KW):
                                col = kw * DW
                                xo = np.uint64((rb + col % SW) * Wq + col // SW + ow0)
                                wo = np.uint64(wr + kw * COT)
                                for c in range(COT):
                                    wv = w[wo + np.uint64(c)]
                                    for j in range(PXT):
                                        acc[c * PXT + j] += wv * xp[xo + np.uint64(j)]
                    # The epilogue: per channel one straight PXT-lane expression into v, then the store
                    # (run-time residual and affine flags made branches whose joins the SLP vectorizer
                    # split into 8-, 4-, 2- and 1-lane pieces). A row narrower than the tile (npx < PXT)
                    # reads its residual clamped to the row and stores npx pixels.
                    for c in range(min(COT, COUT - ob * COT)):
                        co = ob * COT + c
                        a = alpha[co]
                        o = np.uint64(co * P + oh * OW + ow0)
                        i = c * PXT
                        if npx >= PXT:
                            for j in range(PXT):
                                y = acc[i + j]
                                if RES:
                                    y += res[o + np.uint64(j)]
                                y = activate_inline(IACT, y, a, hi, beta)
                                if AFFINE:
                                    y = y * ps[co] + pt[co]
                                v[j] = y
                            for j in range(PXT):
                                out[o + np.uint64(j)] = v[j]
                        else:
                            for j in range(PXT):
                                y = acc[i + j]
                                if RES:
                                    y += res[o + np.uint64(min(j, npx - 1))]
                                y = activate_inline(IACT, y, a, hi, beta)
                                if AFFINE:
                                    y = y * ps[co] + pt[co]
                                v[j] = y
                            for j in range(npx):
                                out[o + np.uint64(j)] = v[j]
            if not INLINE:
                activate_planes(ACT, out, ob * COT, min(ob * COT + COT, COUT), P, alpha, hi, beta, post, ps, pt)
    if cache:
        _KERNELS[key] = kern
    return kern


ROWVEC_SIG = (types.float32[::1], types.float32[::1], types.float32[::1], types.int64, types.int64,
              types.int64, types.int64, types.int64, types.int64, types.float32[::1], types.float32[::1],
              types.float32[::1], types.float64, types.float32[::1], types.float32[::1])
