"""Kernels on the channel-blocked activation layout: a tensor of C channels and P = H * W pixels is
stored as
    x[NB][H][W][16]      (NB = ceil(C / 16); channel c at block c // 16, lane c % 16)
so one pixel's 16 channels of a block are one vector. Lanes past C hold finite values (the kernels
write act(0) there: zero weights and zero bias) and are never read into a real channel's sum.

In this layout a 1x1 convolution loads each weight vector once for a tile of pixels and broadcasts the
inputs; a depthwise convolution's every tap is an aligned vector load and an FMA; and both store whole
vectors. In NCHW the depthwise kernels read unaligned row vectors (every 64-byte load split across two
cache lines) and the blocked one scattered each pixel's 16 channels into 16 planes; converting to the
blocked layout and back at every depthwise layer cost more than the layer itself.
"""
from __future__ import annotations

import numpy as np
from numba import njit, types

from ..activations import INLINE_CODES, NONE, SPAN_ZERO_AT_ZERO, activate_inline, activate_span, compile_span
from ..kernel_cache import named
from ..memory import aligned_copy
from .conv_direct import _FASTMATH, stack_f32

CB = 16
_KERNELS: dict = {}
_A = types.float32[::1]
_I = types.int64


def blocks(c: int) -> int:
    return -(-c // CB)


def padded_vector(v: np.ndarray, c: int) -> np.ndarray:
    """A per-channel vector of c values -> NB * 16 float32, zeros past c."""
    out = np.zeros(blocks(c) * CB, np.float32)
    out[:c] = np.asarray(v, np.float32).reshape(-1)[:c]
    return out


# -- layout conversions -----------------------------------------------------------------------------

@njit(cache=True, nogil=True)
def to_blocked(x, out, C, P):
    """x (C, P) flat NCHW -> out (NB, P, 16) flat; lanes past C are zero."""
    nb = (C + CB - 1) // CB
    u16 = np.uint64(CB)
    for b in range(nb):
        c0 = b * CB
        n = min(CB, C - c0)
        ob = np.uint64(b * P * CB)
        if n == CB:
            for p in range(P):
                up = np.uint64(p)
                for c in range(CB):
                    out[ob + up * u16 + np.uint64(c)] = x[np.uint64((c0 + c) * P) + up]
        else:
            for p in range(P):
                up = np.uint64(p)
                for c in range(CB):
                    out[ob + up * u16 + np.uint64(c)] = x[np.uint64((c0 + c) * P) + up] if c < n else 0.0


@njit(cache=True, nogil=True)
def from_blocked(x, out, C, P):
    """x (NB, P, 16) flat -> out (C, P) flat NCHW."""
    nb = (C + CB - 1) // CB
    u16 = np.uint64(CB)
    for b in range(nb):
        c0 = b * CB
        n = min(CB, C - c0)
        xb = np.uint64(b * P * CB)
        for c in range(n):
            oc = np.uint64((c0 + c) * P)
            for p in range(P):
                up = np.uint64(p)
                out[oc + up] = x[xb + up * u16 + np.uint64(c)]


@njit(cache=True, nogil=True)
def subsample(x, y, NB, H, W, SH, SW, OH, OW):
    """y (NB, OH, OW, 16) flat = x (NB, H, W, 16) flat [:, :OH * SH:SH, :OW * SW:SW]: a strided 1x1
    conv's blocked input, taken into a buffer of the layer's (a pixel's 16 lanes a vector copy)."""
    u16 = np.uint64(CB)
    for b in range(NB):
        for oh in range(OH):
            src = np.uint64(((b * H + oh * SH) * W) * CB)
            dst = np.uint64(((b * OH + oh) * OW) * CB)
            for ow in range(OW):
                s = src + np.uint64(ow * SW) * u16
                d = dst + np.uint64(ow) * u16
                for c in range(CB):
                    y[d + np.uint64(c)] = x[s + np.uint64(c)]


# -- squeeze-excitation: the mean of each channel, and a product by one factor per channel --------------

_GAP_CHUNK = 64  # pixels summed in float32 registers before their sum joins the float64 one


@njit(cache=True, nogil=True)
def global_avg(x, out, C, P):
    """x (NB, P, 16) flat -> out (C,) the mean of each channel: float32 sums of up to 64 pixels, added up
    in float64. (Compile with compile_now: the SLP vectorizer keeps the partial sums in a register.)"""
    part = stack_f32(CB)
    acc = np.empty(CB, np.float64)
    for b in range((C + CB - 1) // CB):
        acc[:] = 0.0
        for p0 in range(0, P, _GAP_CHUNK):
            for c in range(CB):
                part[c] = 0.0
            for p in range(p0, min(p0 + _GAP_CHUNK, P)):
                u = np.uint64((b * P + p) * CB)
                for c in range(CB):
                    part[c] += x[u + np.uint64(c)]
            for c in range(CB):
                acc[c] += part[c]
        for c in range(min(CB, C - b * CB)):
            out[b * CB + c] = acc[c] / P


@njit(cache=True, nogil=True)
def scale_channels(x, s, out, NB, P):
    """out = x * s for x and out (NB, P, 16) flat, s the NB * 16 per-channel factors (padded_vector).
    (compile_now: one vector multiply a pixel; every load before any store, or SLP gives up.)"""
    v = stack_f32(CB)
    f = stack_f32(CB)
    for b in range(NB):
        for c in range(CB):
            f[c] = s[b * CB + c]
        for p in range(P):
            u = np.uint64((b * P + p) * CB)
            for c in range(CB):
                v[c] = x[u + np.uint64(c)] * f[c]
            for c in range(CB):
                out[u + np.uint64(c)] = v[c]


@njit(cache=True, nogil=True)
def scale_rows(w, s, out, CIN, COB, G):
    """out = w with row (g, ci) times s[ci], for w the G groups of 1x1 weights (CIN, COB) that
    pack_weights_pw lays out (COB a multiple of 16): the weights of a 1x1 conv whose input is first
    scaled per channel, W . (s * x) = (W * s) . x. (One vector multiply a row block, as scale_channels.)"""
    v = stack_f32(CB)
    for r in range(G * CIN):
        f = s[r % CIN]
        for k in range(COB // CB):
            u = np.uint64(r * COB + k * CB)
            for c in range(CB):
                v[c] = w[u + np.uint64(c)] * f
            for c in range(CB):
                out[u + np.uint64(c)] = v[c]


GAP_SIG = (_A, _A, _I, _I)
SCALE_SIG = (_A, _A, _A, _I, _I)
ROWS_SIG = (_A, _A, _A, _I, _I, _I)


# -- 1x1 convolution --------------------------------------------------------------------------------

def pack_weights_pw(w: np.ndarray, nb: int) -> np.ndarray:
    """(COUT, CIN) -> flat (NOB / nb, CIN, nb * 16): each group of nb output blocks, input channel by
    input channel, its nb * 16 output channels contiguous (zero past COUT)."""
    cout, cin = w.shape
    nob = blocks(cout)
    full = np.zeros((nob * CB, cin), np.float32)
    full[:cout] = w
    return aligned_copy(full.reshape(nob // nb, nb * CB, cin).transpose(0, 2, 1)).reshape(-1)


# a 1x1 layer takes these kernels from this many pixels on (bninfer.tiles picks their tiles)
PW_MIN_PIXELS = 14


# the 1x1 kernel's pixel chunk: at most this many bytes of input (and at least one tile)
PW_CHUNK_BYTES = 128 * 1024


# the lanes a half-block tile sums (one AVX2 vector)
HALF = CB // 2


# a span activation (SiLU...) runs over at least this many stored pixels (x 16 channels) a call
SPAN_PIXELS = 64

# 1x1 layers of at least PW_KC_MIN_CIN input channels sum them PW_KC at a time (a multiple of 16), the
# tiles' partial sums kept on the stack between the passes, in chunks of at most PW_KC_TILES tiles: a
# block's weights for PW_KC channels (6 KB) then stay in L1 while every tile of the chunk reads them, where
# all of a 2048-channel block's (128 KB) had come from L2 for every tile
PW_KC = 96
PW_KC_MIN_CIN = 512
PW_KC_TILES = 36


def pointwise_kernel(NB, RP, ACT, XB=True, cache=True, LANES=CB):
    """kern(x, w, out, CIN, NOB, P, Q0, Q1, yoff, yplane, bias, res, has_res, alpha, beta, has_post, ps, pt):
    the pixels [Q0, Q1) of P (Q1 - Q0 >= RP; threads split a layer over its pixels when it has too few
    output blocks to split), pixel p of output block b at out[b * yplane + yoff[p]:][:16] (out_offsets:
    unpadded, or inside the zero border a depthwise consumer needs); out (NOB, P, 16) =
    ps * act(W . x + bias + res) + pt for x (ceil(CIN / 16), P, 16) (XB) or NCHW (CIN, P) (not XB: the
    inputs are broadcast either way, so a chain's first 1x1 reads NCHW at no cost) and w from
    pack_weights_pw(w, NB);
    per-channel vectors padded to NOB * 16 (padded_vector), res blocked like out. A tile of NB * 16
    output channels (weight vectors) x RP pixels (inputs broadcast); P >= RP, the last tile of pixels
    moved back to end at Q1 (recomputing a few pixels with the same sums: out never shares memory with
    x or res). ACT: one of INLINE_CODES is applied in the store; any other code runs afterwards, a
    loop-vectorized span over the tile's stored pixels (then has_post must be False: the span's affine
    is not per channel); a code of SPAN_ZERO_AT_ZERO runs across the border between stored rows, which
    must hold zeros (zero_border) before the call. LANES = HALF: the tile's last block has padding in
    its upper 8 lanes (a layer of 24 or 40 channels on AVX2); the tile sums only the lanes before them
    (8 x more pixels for one block, 24 x fewer for two) and stores the padding lanes as the whole-block
    kernel does with their zero weights: act(bias + res) (* ps + pt). From PW_KC_MIN_CIN input channels on,
    the tiles sum them PW_KC at a time, their partial sums on the stack between the passes: each output
    still sums the same products in the same order, so the floats are those of one pass."""
    assert LANES == CB or LANES == HALF
    key = ("pw", NB, RP, ACT, XB) + ((LANES,) if LANES != CB else ())
    k = _KERNELS.get(key) if cache else None
    if k is not None:
        return k
    IACT = ACT if ACT in INLINE_CODES else NONE  # any other code: a span over the stored tile
    ACROSS = ACT in SPAN_ZERO_AT_ZERO  # the span may run over the zero border between stored rows
    compile_span(ACT)  # loop-vectorized, linked by this kernel
    COB = NB * CB
    NACC = COB * RP
    KC, KC_MIN_CIN, KC_TILES = PW_KC, PW_KC_MIN_CIN, PW_KC_TILES
    NPART = KC_TILES * NACC

    @njit(cache=cache, nogil=True, fastmath=_FASTMATH)
    @named("pointwise_kernel", key)
    def kern(x, w, out, CIN, NOB, P, Q0, Q1, yoff, yplane, bias, res, has_res, alpha, beta, has_post, ps, pt):
        hi, a0, one, zero = np.float32(beta), alpha[0], np.float32(1.0), np.float32(0.0)
        acc = stack_f32(NACC)
        v = stack_f32(CB)
        xstep = np.uint64(CB if XB else 1)
        # chunks of pixels, each through every output block: a chunk's inputs stay in L2 for the next
        # block (a whole 112x112 plane of 16 channels, 800 KB, came from L3 once per output block)
        kblock = CIN >= KC_MIN_CIN
        kstep = KC if kblock else CIN
        part = stack_f32(NPART)  # the partial sums of a chunk's tiles between passes
        if kblock:  # chunks of at most KC_TILES tiles, as even as they come
            nchunks = (Q1 - Q0 + KC_TILES * RP - 1) // (KC_TILES * RP)
        else:
            ch = max(1, PW_CHUNK_BYTES // ((CIN + CB - 1) // CB * CB * 4 if XB else CIN * 4) // RP) * RP
            nchunks = max(1, (Q1 - Q0) // ch)
        for k in range(nchunks):
            if kblock:
                c0 = Q0 + (Q1 - Q0) * k // nchunks
                c1 = Q0 + (Q1 - Q0) * (k + 1) // nchunks
            else:
                c0 = Q0 + k * ch
                c1 = Q1 if k == nchunks - 1 else c0 + ch
            ntiles = (c1 - c0 + RP - 1) // RP
            nk = (CIN + kstep - 1) // kstep
            for step in range(NOB // NB * nk):  # each group of NB blocks, its input channels kstep at a time
                og, k0 = step // nk, step % nk * kstep
                k1 = min(CIN, k0 + kstep)
                wb = og * CIN * COB
                pa = c0  # the first pixel a span activation has not run over yet
                for t in range(ntiles):
                    p0 = min(c0 + t * RP, c1 - RP)
                    so = np.uint64(t * NACC)
                    if k0 == 0:
                        for i in range(NACC):
                            acc[i] = 0.0
                    else:
                        for i in range(NACC):
                            acc[i] = part[so + np.uint64(i)]
                    # whole input blocks as a loop of 16 with the block's offsets hoisted: the inner loop
                    # is then the tile's loads and FMAs and one counter, 23 instructions for 12 FMAs where
                    # the offsets' arithmetic per channel had made 31 (960->320 and 320->1280 at 7x7 ran
                    # 6-7 % faster, MobileNetV2 and EfficientNet-B0 2 %); the rest of a part block below
                    # (one loop of min(16, CIN - cb * 16) for both made the 24-lane tile's loop 225
                    # instructions for its 9 FMAs)
                    c0i = k1 // CB * CB if XB else k0
                    if XB:
                        for cb in range(k0 // CB, k1 // CB):
                            xb = np.uint64((cb * P + p0) * CB)
                            wbb = np.uint64(wb + cb * CB * COB)
                            for cc in range(CB):
                                xo = xb + np.uint64(cc)
                                wo = wbb + np.uint64(cc * COB)
                                for j in range(RP):
                                    xv = x[xo + np.uint64(j) * xstep]
                                    for c in range((NB - 1) * CB + LANES):
                                        acc[j * COB + c] += xv * w[wo + np.uint64(c)]
                    for ci in range(c0i, k1):
                        if XB:
                            xo = np.uint64(((ci // CB) * P + p0) * CB + ci % CB)
                        else:
                            xo = np.uint64(ci * P + p0)
                        wo = np.uint64(wb + ci * COB)
                        for j in range(RP):
                            xv = x[xo + np.uint64(j) * xstep]
                            for c in range((NB - 1) * CB + LANES):  # a last half block's upper lanes stay 0
                                acc[j * COB + c] += xv * w[wo + np.uint64(c)]
                    if k1 < CIN:  # more input channels to come: keep the sums
                        for i in range(NACC):
                            part[so + np.uint64(i)] = acc[i]
                        continue
                    for b in range(NB):
                        ob = og * NB + b
                        vo = np.uint64(ob * CB)
                        for j in range(RP):
                            uo = np.uint64(ob * yplane + yoff[p0 + j])
                            ur = np.uint64((ob * P + p0 + j) * CB)
                            # one straight 16-lane expression into v, then the store: the SLP vectorizer
                            # makes each one vector (bias, residual and activation added into acc lane loop
                            # by lane loop came out as 8-, 4- and 1-lane pieces shuffled together; a store to
                            # out inside the expression kept it scalar, as out might alias the vectors read;
                            # an inline helper taking the arrays paid reference counts on every call)
                            i = j * COB + b * CB
                            if has_res:
                                for c in range(CB):
                                    u = np.uint64(c)
                                    v[c] = activate_inline(IACT, acc[i + c] + bias[vo + u] + res[ur + u], alpha[vo + u],
                                                           hi, beta)
                            else:
                                for c in range(CB):
                                    u = np.uint64(c)
                                    v[c] = activate_inline(IACT, acc[i + c] + bias[vo + u], alpha[vo + u], hi, beta)
                            if has_post:
                                for c in range(CB):
                                    u = np.uint64(c)
                                    v[c] = v[c] * ps[vo + u] + pt[vo + u]
                            for c in range(CB):
                                out[uo + np.uint64(c)] = v[c]
                    if IACT != ACT:
                        # the activation over runs of adjacent stored pixels, once SPAN_PIXELS have piled up
                        # (a tile's 96 floats a call cost SiLU a third more per element than long runs). A
                        # moved-back last tile rewrote pixels already done: the range starts at its first.
                        pa = min(pa, p0)
                        pe = p0 + RP
                        if pe - pa >= SPAN_PIXELS or t == ntiles - 1:
                            for b in range(NB):
                                ob = og * NB + b
                                r0 = ob * yplane + yoff[pa]
                                r1 = r0 + CB
                                if ACROSS:  # the border is zeroed before the layer's tiles are stored
                                    r1 = ob * yplane + yoff[pe - 1] + CB
                                else:
                                    for p in range(pa + 1, pe):
                                        u = ob * yplane + yoff[p]
                                        if u != r1:
                                            activate_span(ACT, out, r0, r1, a0, hi, beta, has_post, one, zero)
                                            r0 = u
                                        r1 = u + CB
                                activate_span(ACT, out, r0, r1, a0, hi, beta, has_post, one, zero)
                            pa = pe
    if cache:
        _KERNELS[key] = kern
    return kern


PW_SIG = (_A, _A, _A, _I, _I, _I, _I, _I, types.int64[::1], _I, _A, _A, types.boolean, _A, types.float64,
          types.boolean, _A, _A)


def out_offsets(H: int, W: int, pads: tuple[int, int, int, int]) -> tuple[np.ndarray, int]:
    """(offset of each of the H * W pixels inside one block, the block's size) for an output stored with
    zero border pads (top, left, bottom, right)."""
    ph, pw, eh, ew = pads
    wp = W + pw + ew
    h, w = np.divmod(np.arange(H * W, dtype=np.int64), W)
    return ((h + ph) * wp + w + pw) * CB, (H + ph + eh) * wp * CB


@njit(cache=True, nogil=True)
def zero_border(y, NB, Hp, Wp, PH, PW, EH, EW):
    """Zero the border of y (NB, Hp, Wp, 16) flat: rows [0, PH) and [Hp - EH, Hp), and in the rows
    between, columns [0, PW) and [Wp - EW, Wp). The arena hands a value's block to others between runs,
    so the producer of a padded value clears its border every run."""
    row = Wp * CB
    for b in range(NB):
        base = b * Hp * row
        for q in range(base // CB, (base + PH * row) // CB):  # whole rows: 16 lanes a vector store
            u = np.uint64(q * CB)
            for c in range(CB):
                y[u + np.uint64(c)] = 0.0
        for q in range((base + (Hp - EH) * row) // CB, (base + Hp * row) // CB):
            u = np.uint64(q * CB)
            for c in range(CB):
                y[u + np.uint64(c)] = 0.0
        for h in range(PH, Hp - EH):
            r = base + h * row
            for q in range(PW):  # one pixel's 16 lanes a vector store (a run-time span stayed scalar)
                u = np.uint64(r + q * CB)
                for c in range(CB):
                    y[u + np.uint64(c)] = 0.0
            for q in range(Wp - EW, Wp):
                u = np.uint64(r + q * CB)
                for c in range(CB):
                    y[u + np.uint64(c)] = 0.0


# -- depthwise convolution ----------------------------------------------------------------------------

def pack_weights_dw(w: np.ndarray) -> np.ndarray:
    """(C, 1, KH, KW) -> flat (NB, KH, KW, 16), zero channels past C."""
    c, _, kh, kw = w.shape
    nb = blocks(c)
    full = np.zeros((nb * CB, kh, kw), np.float32)
    full[:c] = w.reshape(c, kh, kw)
    return aligned_copy(full.reshape(nb, CB, kh, kw).transpose(0, 2, 3, 1)).reshape(-1)


# the depthwise kernel takes rows of at least this many pixels (bninfer.tiles picks their tiles)
DW_MIN_WIDTH = 6


def depthwise_kernel(KH, KW, SH, SW, DH, DW, RW, ACT, PADDED=True, cache=True):
    """kern(x, xp, w, out, NB, H, W, Hp, Wp, PH, PW, OH, OW, OHp, OWp, QH, QW, bias, res, has_res, alpha,
    beta, has_post, ps, pt): a depthwise convolution, blocked in and out, weights from pack_weights_dw.
    PADDED: x is (NB, Hp, Wp, 16) with the zero border the pads need (its producer wrote it so); else x
    is (NB, H, W, 16) and each block is first copied into xp (Hp, Wp, 16), a scratch whose border the
    caller keeps zero. ACT as for pointwise_kernel. out is (NB, OHp, OWp, 16) with the output at rows
    QH.., columns QW.. (a border for the next depthwise conv; the residual, if any, is unpadded
    (NB, OH, OW, 16)). A tile of RW pixels x
    16 channels (OW >= RW; the last tile of a row moved back to end at OW)."""
    key = ("dw", KH, KW, SH, SW, DH, DW, RW, ACT, PADDED)
    k = _KERNELS.get(key) if cache else None
    if k is not None:
        return k
    IACT = ACT if ACT in INLINE_CODES else NONE  # any other code: a span over the stored tile
    compile_span(ACT)
    NACC = RW * CB
    copy_span.compile(COPY_SIG)  # loop-vectorized, outside the kernels' vectorizer settings

    @njit(cache=cache, nogil=True, fastmath=_FASTMATH)
    @named("depthwise_kernel", key)
    def kern(x, xp, w, out, NB, H, W, Hp, Wp, PH, PW, OH, OW, OHp, OWp, QH, QW, bias, res, has_res, alpha,
             beta, has_post, ps, pt):
        hi, a0, one, zero = np.float32(beta), alpha[0], np.float32(1.0), np.float32(0.0)
        acc = stack_f32(NACC)
        v = stack_f32(CB)
        row = W * CB
        for b in range(NB):
            if PADDED:
                src = x
                x0 = b * Hp * Wp * CB
            else:
                xb = b * H * row
                for h in range(H):
                    copy_span(x, np.uint64(xb + h * row), xp, np.uint64(((h + PH) * Wp + PW) * CB), row)
                src = xp
                x0 = 0
            vo = np.uint64(b * CB)
            wb = b * KH * KW * CB
            ra = 0  # the first row a span activation has not run over yet
            for oh in range(OH):
                for ow00 in range(0, OW, RW):
                    ow0 = min(ow00, OW - RW)
                    for i in range(NACC):
                        acc[i] = 0.0
                    for kh in range(KH):
                        xr = x0 + ((oh * SH + kh * DH) * Wp + ow0 * SW) * CB
                        for kw in range(KW):
                            wo = np.uint64(wb + (kh * KW + kw) * CB)
                            xo = np.uint64(xr + kw * DW * CB)
                            for px in range(RW):
                                for c in range(CB):
                                    acc[px * CB + c] += src[xo + np.uint64(px * SW * CB + c)] * w[wo + np.uint64(c)]
                    if not has_res and not has_post:  # the common case, a loop small enough to unroll
                        for px in range(RW):
                            uo = np.uint64(((b * OHp + oh + QH) * OWp + QW + ow0 + px) * CB)
                            for c in range(CB):
                                u = np.uint64(c)
                                v[c] = activate_inline(IACT, acc[px * CB + c] + bias[vo + u], alpha[vo + u], hi,
                                                       beta)
                            for c in range(CB):
                                out[uo + np.uint64(c)] = v[c]
                    else:
                        for px in range(RW):
                            uo = np.uint64(((b * OHp + oh + QH) * OWp + QW + ow0 + px) * CB)
                            ur = np.uint64(((b * OH + oh) * OW + ow0 + px) * CB)
                            if has_res:
                                for c in range(CB):
                                    u = np.uint64(c)
                                    v[c] = activate_inline(IACT, acc[px * CB + c] + bias[vo + u] + res[ur + u],
                                                           alpha[vo + u], hi, beta)
                            else:
                                for c in range(CB):
                                    u = np.uint64(c)
                                    v[c] = activate_inline(IACT, acc[px * CB + c] + bias[vo + u], alpha[vo + u], hi,
                                                           beta)
                            if has_post:
                                for c in range(CB):
                                    u = np.uint64(c)
                                    v[c] = v[c] * ps[vo + u] + pt[vo + u]
                            for c in range(CB):
                                out[uo + np.uint64(c)] = v[c]
                if IACT != ACT:
                    # the activation over whole rows, once SPAN_PIXELS have piled up (rows without a side
                    # border are adjacent); a tile's 96 floats a call cost SiLU a third more per element
                    adjacent = QW == 0 and OWp == OW
                    if not adjacent or (oh - ra + 1) * OW >= SPAN_PIXELS or oh == OH - 1:
                        u0 = ((b * OHp + ra + QH) * OWp + QW) * CB  # ra == oh unless adjacent
                        activate_span(ACT, out, u0, u0 + (oh + 1 - ra) * OW * CB, a0, hi, beta, has_post, one,
                                      zero)
                        ra = oh + 1
    if cache:
        _KERNELS[key] = kern
    return kern


@njit(cache=True, nogil=True)
def copy_span(x, xs, out, os, n):
    for i in range(n):
        ui = np.uint64(i)
        out[os + ui] = x[xs + ui]


COPY_SIG = (_A, types.uint64, _A, types.uint64, _I)
DW_SIG = (_A, _A, _A, _A, _I, _I, _I, _I, _I, _I, _I, _I, _I, _I, _I, _I, _I, _A, _A, types.boolean, _A,
          types.float64, types.boolean, _A, _A)


# -- dense convolution with few input channels (a network's stem) -----------------------------------

def dense_kernel(KH, KW, SH, SW, DH, DW, NB, RP, ACT, cache=True):
    """kern(xp, w, out, CIN, NOB, Hp, Wp, OW, R0, R1, yoff, yplane, bias, res, has_res, alpha, beta,
    has_post, ps, pt): a dense convolution of few input channels (an RGB image) written blocked: output
    rows [R0, R1) of out (NOB, P, 16) at out[b * yplane + yoff[p]:][:16] as for pointwise_kernel, from
    xp (CIN, Hp, Wp) NCHW with the zero border the pads need (pad_planes), and w from
    pack_weights_pw(w.reshape(COUT, CIN * KH * KW), NB). The 1x1 kernel's tile over the taps: NB * 16
    output channels x RP pixels of one output row (OW >= RP; the row's last tile moved back to end at
    OW), each tap's input broadcast from the padded plane. A stem writing the blocked layout lets the
    depthwise conv after it run blocked too (in NCHW both took 1.3-1.5x onnxruntime's time)."""
    key = ("dense", KH, KW, SH, SW, DH, DW, NB, RP, ACT)
    k = _KERNELS.get(key) if cache else None
    if k is not None:
        return k
    IACT = ACT if ACT in INLINE_CODES else NONE  # any other code: a span over the stored tile
    compile_span(ACT)
    COB = NB * CB
    NACC = COB * RP
    TAPS = KH * KW

    @njit(cache=cache, nogil=True, fastmath=_FASTMATH)
    @named("dense_kernel", key)
    def kern(xp, w, out, CIN, NOB, Hp, Wp, OW, R0, R1, yoff, yplane, bias, res, has_res, alpha, beta, has_post,
             ps, pt):
        hi, a0, one, zero = np.float32(beta), alpha[0], np.float32(1.0), np.float32(0.0)
        acc = stack_f32(NACC)
        v = stack_f32(CB)
        P = yoff.size  # the residual's plane
        for og in range(NOB // NB):
            wb = og * CIN * TAPS * COB
            for oh in range(R0, R1):
                for ow00 in range(0, OW, RP):
                    ow0 = min(ow00, OW - RP)
                    p0 = oh * OW + ow0
                    for i in range(NACC):
                        acc[i] = 0.0
                    for ci in range(CIN):
                        for kh in range(KH):
                            xr = (ci * Hp + oh * SH + kh * DH) * Wp + ow0 * SW
                            for kw in range(KW):
                                wo = np.uint64(wb + ((ci * KH + kh) * KW + kw) * COB)
                                xo = np.uint64(xr + kw * DW)
                                for j in range(RP):
                                    xv = xp[xo + np.uint64(j * SW)]
                                    for c in range(COB):
                                        acc[j * COB + c] += xv * w[wo + np.uint64(c)]
                    for b in range(NB):
                        ob = og * NB + b
                        vo = np.uint64(ob * CB)
                        for j in range(RP):
                            uo = np.uint64(ob * yplane + yoff[p0 + j])
                            ur = np.uint64((ob * P + p0 + j) * CB)
                            i = j * COB + b * CB
                            if has_res:
                                for c in range(CB):
                                    u = np.uint64(c)
                                    v[c] = activate_inline(IACT, acc[i + c] + bias[vo + u] + res[ur + u],
                                                           alpha[vo + u], hi, beta)
                            else:
                                for c in range(CB):
                                    u = np.uint64(c)
                                    v[c] = activate_inline(IACT, acc[i + c] + bias[vo + u], alpha[vo + u], hi, beta)
                            if has_post:
                                for c in range(CB):
                                    u = np.uint64(c)
                                    v[c] = v[c] * ps[vo + u] + pt[vo + u]
                            for c in range(CB):
                                out[uo + np.uint64(c)] = v[c]
                if IACT != ACT:  # over the finished row, its pixels adjacent (a tile's run was too short)
                    for b in range(NB):
                        r0 = (og * NB + b) * yplane + yoff[oh * OW]
                        activate_span(ACT, out, r0, r0 + OW * CB, a0, hi, beta, has_post, one, zero)
    if cache:
        _KERNELS[key] = kern
    return kern


DENSE_SIG = (_A, _A, _A, _I, _I, _I, _I, _I, _I, _I, types.int64[::1], _I, _A, _A, types.boolean, _A, types.float64,
             types.boolean, _A, _A)


@njit(cache=True, inline="always")
def _copy_span(x, src, y, dst, n):
    """y[dst:dst + n] = x[src:src + n] (uint64 offsets), whole vectors of CB floats, then the rest. Each
    vector passes through registers (v): x and y may alias as far as LLVM knows, so a load after a store
    could not move before it, and an element-by-element copy stayed scalar."""
    v = stack_f32(CB)
    i = np.uint64(0)
    while i + np.uint64(CB) <= n:
        for c in range(CB):
            v[c] = x[src + i + np.uint64(c)]
        for c in range(CB):
            y[dst + i + np.uint64(c)] = v[c]
        i += np.uint64(CB)
    while i < n:
        y[dst + i] = x[src + i]
        i += np.uint64(1)


@njit(cache=True, nogil=True)
def pad_planes(x, xp, C, H, W, Hp, Wp, PH, PW):
    """x (C, H, W) flat into the interior of xp (C, Hp, Wp) at (PH, PW); the border is left as it is
    (zero: the caller keeps it so). Rows copied 16 floats a step, as vectors (compiled with the loop
    vectorizer off, a run-time span stayed scalar: MobileNetV2's 3x224x224 input took 76 us, 34 now)."""
    for c in range(C):
        for h in range(H):
            src = np.uint64((c * H + h) * W)
            dst = np.uint64((c * Hp + h + PH) * Wp + PW)
            _copy_span(x, src, xp, dst, np.uint64(W))


PAD_SIG = (_A, _A, _I, _I, _I, _I, _I, _I, _I)
SUB_SIG = (_A, _A, _I, _I, _I, _I, _I, _I, _I)
