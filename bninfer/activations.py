"""The activation table: the one place where activations are defined.

Every kernel that fuses an activation calls `apply(code, x, alpha, beta)`: `code` picks the function,
`alpha` and `beta` are its two parameters (for PRelu, `alpha` is the slope of the current channel). The
table maps each ONNX activation op to its code and says how its attributes become (alpha, beta), so a
fusion pass can only fuse what this table really implements, with the same attributes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload

from .kernel_cache import named

NONE, RELU, LEAKY_RELU, PRELU, SIGMOID, TANH, HARD_SIGMOID, HARD_SWISH, SWISH, CLIP, ELU, SELU, CELU, \
    GELU, GELU_TANH, MISH, SOFTPLUS, SOFTSIGN = range(18)


@njit(inline="always", cache=True)
def _softplus(x):
    # log(1 + e^x) without overflow for large x
    if x > 0:
        return x + math.log1p(math.exp(-x))
    return math.log1p(math.exp(x))


@njit(inline="always", cache=True)
def _sigmoid(x):
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


@njit(inline="always", cache=True)
def apply(code, x, alpha, beta):
    """Activation `code` of scalar x. Comparisons are written so that NaN propagates."""
    if code == NONE:
        return x
    if code == RELU:
        return 0.0 if x < 0 else x
    if code == LEAKY_RELU or code == PRELU:
        return x * alpha if x < 0 else x
    if code == SIGMOID:
        return _sigmoid(x)
    if code == TANH:
        return math.tanh(x)
    if code == HARD_SIGMOID:
        return min(max(alpha * x + beta, 0.0), 1.0) if x == x else x
    if code == HARD_SWISH:
        return x * min(max(x / 6.0 + 0.5, 0.0), 1.0) if x == x else x
    if code == SWISH:
        return x * _sigmoid(alpha * x)
    if code == CLIP:  # min(max(x, lo), hi): when lo > hi everything becomes hi, as in ONNX
        v = alpha if x < alpha else x
        return beta if v > beta else v
    if code == ELU:
        return alpha * (math.exp(x) - 1.0) if x < 0 else x
    if code == SELU:
        return beta * (alpha * (math.exp(x) - 1.0) if x <= 0 else x)
    if code == CELU:
        return alpha * (math.exp(x / alpha) - 1.0) if x < 0 else x
    if code == GELU:
        return 0.5 * x * (1.0 + math.erf(x * 0.7071067811865476))
    if code == GELU_TANH:
        return 0.5 * x * (1.0 + math.tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)))
    if code == MISH:
        return x * math.tanh(_softplus(x))
    if code == SOFTPLUS:
        return _softplus(x)
    if code == SOFTSIGN:
        return x / (1.0 + abs(x))
    return x


# -- float32, branch-free forms: straight-line code that LLVM vectorizes -----------------------------
# libm's exp is a scalar call that keeps every store loop scalar (about 10 ns per element for SiLU).
# These forms use only float32 arithmetic, selects and bit casts, so a store loop or a register tile
# running them vectorizes. Accuracy: _exp32 is the Cephes expf polynomial (within 2 ulp over its range);
# the activations built on it stay within a few float32 ulp of the float64 reference.

@intrinsic
def _f32_from_bits(typingctx, bits):
    if not isinstance(bits, types.Integer):
        return None

    def codegen(context, builder, signature, args):  # the low 32 bits, as the bits of a float32
        return builder.bitcast(builder.trunc(args[0], ir.IntType(32)) if bits.bitwidth > 32 else args[0],
                               ir.FloatType())
    return types.float32(bits), codegen


@intrinsic
def _bits_of_f32(typingctx, x):
    if x != types.float32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))
    return types.int32(types.float32), codegen


@intrinsic
def _div32(typingctx, a, b):
    """a / b in float32 without Numba's ZeroDivisionError check (IEEE: inf or NaN), which would put a
    branch in every loop that divides."""
    if a != types.float32 or b != types.float32:
        return None

    def codegen(context, builder, signature, args):
        return builder.fdiv(args[0], args[1])
    return types.float32(types.float32, types.float32), codegen


@intrinsic
def _sel(typingctx, cond, a, b):
    """`a if cond else b` as one LLVM select: no branch, so straight-line code stays straight for the SLP
    vectorizer (Numba turns a conditional expression into branches)."""
    if cond != types.boolean or a != b:
        return None

    def codegen(context, builder, signature, args):
        return builder.select(args[0], args[1], args[2])
    return a(types.boolean, a, b), codegen


_F = np.float32
_ROUND = _F(12582912.0)  # 1.5 * 2**23: adding it rounds a float32 of magnitude < 2**22 to an integer


@njit(inline="always", cache=True)
def _expm1_poly(r):
    """e^r - 1 for |r| <= ln(2)/2 (Cephes expf's minimax polynomial)."""
    p = _F(1.9875691500e-4)
    p = p * r + _F(1.3981999507e-3)
    p = p * r + _F(8.3334519073e-3)
    p = p * r + _F(4.1665795894e-2)
    p = p * r + _F(1.6666665459e-1)
    p = p * r + _F(5.0000001201e-1)
    return p * r * r + r


@njit(inline="always", cache=True)
def _exp32_parts(x):
    """e^x in float32 as m * s1 * s2 (m in [0.7, 1.5], s1 and s2 powers of two): a caller can multiply a
    factor into m first, so that a product like x * e^x stays exact where e^x alone would be denormal."""
    x = _sel(x > _F(88.8), _F(88.8), x)  # written so that NaN passes both clamps
    x = _sel(x < _F(-104.0), _F(-104.0), x)
    t = x * _F(1.4426950408889634) + _ROUND
    n = t - _ROUND  # round(x / ln 2)
    r = x - n * _F(0.693359375)
    r = r + n * _F(2.12194440e-4)
    k = _bits_of_f32(t) - _bits_of_f32(_ROUND)  # the same integer, as int32
    # 2^k as two factors, so that k down to -150 (denormal results) and up to 128 (inf) stay exact
    k1 = k >> 1
    s1 = _f32_from_bits((k1 + 127) << 23)
    s2 = _f32_from_bits((k - k1 + 127) << 23)
    return _expm1_poly(r) + _F(1.0), s1, s2


@njit(inline="always", cache=True)
def _exp32(x):
    """e^x in float32: overflow gives inf, underflow gradual to 0, NaN stays NaN."""
    m, s1, s2 = _exp32_parts(x)
    return m * s1 * s2


@njit(inline="always", cache=True)
def _expm1_32(x):
    """e^x - 1 in float32, accurate near 0 (where exp(x) - 1 would cancel)."""
    near = abs(x) < _F(0.34)
    return _sel(near, _expm1_poly(x), _exp32(x) - _F(1.0))


_TWO_M64 = _F(2.0 ** -64)
_SWISH_FLOOR = _F(-132.5)  # round(-132.5 / ln 2) = -191: 2^(k + 64) has exponent bits 0, i.e. is 0
# e^r = 1 + r + r^2 (c2 + c3 r + c4 r^2 + c5 r^3 + c6 r^4) on |r| <= ln(2)/2, relative error 5e-9
# (0.08 of 2^-24): a weighted least-squares fit on Chebyshev nodes, one degree below Cephes expf.
_E2, _E3, _E4 = _F(0.49999988), _F(0.16666518), _F(0.041669533)
_E5, _E6 = _F(0.0083689215), _F(0.0013751409)


@njit(inline="always", cache=True)
def _swish32(x, alpha):
    """x * sigmoid(alpha * x), from e = e^-|alpha x| (nothing overflows). e^-|z| is p * 2^k with k
    down to -191; 2^k is taken as s * 2^-64 with s = 2^(k + 64), and x * s * p is a normal number
    before the last scaling: the tail keeps full precision where e alone is denormal. At the floor,
    s is exactly 0, so -inf * sigmoid(-inf) is NaN, as in ONNX.
    Written for Zen 1's two multiply pipes and for latency (the loop was bound by the chain's length,
    not only by its operations): the polynomial by Estrin's scheme (15 cycles, Horner's took 30), x * s
    and s * 2^-64 off the critical path, and the select on z's sign bit (no compare). 1.57 -> 1.42
    ns/element on Zen 1, and 1.28 with alpha = 1 (the span's SiLU loop: alpha * x folds away). That
    loop is now mostly bound by Zen 1's two multiply/FMA pipes, which take a 256-bit operation in two
    halves: sixteen multiplies and FMAs a vector of 8 are 2 cycles an element of the ~2.6 measured (at
    the nominal 2.0 GHz)."""
    z = alpha * x
    a = -abs(z)
    a = _sel(a < _SWISH_FLOOR, _SWISH_FLOOR, a)  # NaN passes
    t = a * _F(1.4426950408889634) + _ROUND
    n = t - _ROUND  # round(a / ln 2)
    r = (a - n * _F(0.693359375)) + n * _F(2.12194440e-4)
    k = _bits_of_f32(t) - _bits_of_f32(_ROUND)  # the same integer, as int32: -191 <= k <= 0
    s = _f32_from_bits((k + (64 + 127)) << 23)
    r2 = r * r
    q = (_E6 * r2 + (_E5 * r + _E4)) * r2 + (_E3 * r + _E2)
    p = (q * r2 + r) + _F(1.0)  # e^r
    den = p * (s * _TWO_M64) + _F(1.0)  # 1 + e
    return _div32(_sel(_bits_of_f32(z) < 0, p * (x * s) * _TWO_M64, x), den)


@njit(inline="always", cache=True)
def _sigmoid32(x):
    return _swish32(_F(1.0), x)


@njit(inline="always", cache=True)
def _tanh32(x):
    ax = abs(x)
    # small |x|: Cephes tanhf's odd polynomial (keeps the sign of -0 and full relative accuracy)
    z = x * x
    p = _F(-5.70498872745e-3)
    p = p * z + _F(2.06390887954e-2)
    p = p * z - _F(5.37397155531e-2)
    p = p * z + _F(1.33314422036e-1)
    p = p * z - _F(3.33332819422e-1)
    small = x * (_F(1.0) + z * p)  # not x + x*z*p: that turns -0 into +0
    big = _F(1.0) - _div32(_F(2.0), _exp32(ax + ax) + _F(1.0))
    big = _sel(x < _F(0.0), -big, big)
    return _sel(ax >= _F(0.625), big, small)


# -- one float32 form per code, all with activate()'s arguments (x, alpha, hi as float32) -------------

@njit(inline="always", cache=True)
def _identity_form(code, x, alpha, hi, beta):
    return x


@njit(inline="always", cache=True)
def _relu_form(code, x, alpha, hi, beta):
    return _sel(x < _F(0.0), _F(0.0), x)


@njit(inline="always", cache=True)
def _leaky_form(code, x, alpha, hi, beta):  # LeakyRelu, and PRelu with the channel's slope
    return _sel(x < _F(0.0), x * alpha, x)


@njit(inline="always", cache=True)
def _clip_form(code, x, alpha, hi, beta):
    x = _sel(x < alpha, alpha, x)
    return _sel(x > hi, hi, x)


@njit(inline="always", cache=True)
def _sigmoid_form(code, x, alpha, hi, beta):
    return _sigmoid32(x)


@njit(inline="always", cache=True)
def _swish_form(code, x, alpha, hi, beta):
    return _swish32(x, alpha)


@njit(inline="always", cache=True)
def _tanh_form(code, x, alpha, hi, beta):
    return _tanh32(x)


@njit(inline="always", cache=True)
def _hard_sigmoid_form(code, x, alpha, hi, beta):
    v = alpha * x + _F(beta)
    v = _sel(v < _F(0.0), _F(0.0), v)  # NaN stays NaN
    return _sel(v > _F(1.0), _F(1.0), v)


@njit(inline="always", cache=True)
def _hard_swish_form(code, x, alpha, hi, beta):
    v = x * _F(1.0 / 6.0) + _F(0.5)
    v = _sel(v < _F(0.0), _F(0.0), v)
    return x * _sel(v > _F(1.0), _F(1.0), v)


@njit(inline="always", cache=True)
def _elu_form(code, x, alpha, hi, beta):
    return _sel(x < _F(0.0), alpha * _expm1_32(x), x)


@njit(inline="always", cache=True)
def _selu_form(code, x, alpha, hi, beta):
    return _F(beta) * _sel(x <= _F(0.0), alpha * _expm1_32(x), x)


@njit(inline="always", cache=True)
def _celu_form(code, x, alpha, hi, beta):
    return _sel(x < _F(0.0), alpha * _expm1_32(_div32(x, alpha)), x)


@njit(inline="always", cache=True)
def _softsign_form(code, x, alpha, hi, beta):
    return _div32(x, _F(1.0) + abs(x))


@njit(inline="always", cache=True)
def _libm_form(code, x, alpha, hi, beta):  # Gelu, Mish, Softplus: float64 libm through apply()
    return _F(apply(code, x, alpha, beta))


FORMS = {NONE: _identity_form, RELU: _relu_form, LEAKY_RELU: _leaky_form, PRELU: _leaky_form,
         CLIP: _clip_form, SIGMOID: _sigmoid_form, SWISH: _swish_form, TANH: _tanh_form,
         HARD_SIGMOID: _hard_sigmoid_form, HARD_SWISH: _hard_swish_form, ELU: _elu_form, SELU: _selu_form,
         CELU: _celu_form, SOFTSIGN: _softsign_form, GELU: _libm_form, GELU_TANH: _libm_form,
         MISH: _libm_form, SOFTPLUS: _libm_form}


@njit(inline="always", cache=True)
def _activate_any(code, x, alpha, hi, beta):
    """activate() for a code known only at run time: FORMS as a chain of tests."""
    if code == RELU:
        return _relu_form(code, x, alpha, hi, beta)
    if code == LEAKY_RELU or code == PRELU:
        return _leaky_form(code, x, alpha, hi, beta)
    if code == CLIP:
        return _clip_form(code, x, alpha, hi, beta)
    if code == SIGMOID:
        return _sigmoid_form(code, x, alpha, hi, beta)
    if code == SWISH:
        return _swish_form(code, x, alpha, hi, beta)
    if code == TANH:
        return _tanh_form(code, x, alpha, hi, beta)
    if code == HARD_SIGMOID:
        return _hard_sigmoid_form(code, x, alpha, hi, beta)
    if code == HARD_SWISH:
        return _hard_swish_form(code, x, alpha, hi, beta)
    if code == ELU:
        return _elu_form(code, x, alpha, hi, beta)
    if code == SELU:
        return _selu_form(code, x, alpha, hi, beta)
    if code == CELU:
        return _celu_form(code, x, alpha, hi, beta)
    if code == SOFTSIGN:
        return _softsign_form(code, x, alpha, hi, beta)
    if code == NONE:
        return x
    return _libm_form(code, x, alpha, hi, beta)


def activate(code, x, alpha, hi, beta):
    """The activation `code` of a float32 x, in float32, for compiled code (see the overload below).
    The common activations are branch-free, so a loop or register tile that calls this vectorizes; the
    rest go through apply(). `alpha` is float32 (the channel's slope or Clip's lower bound), `hi` Clip's
    upper bound as float32, `beta` the float64 second parameter."""
    raise TypeError("activate() runs in compiled code only")


@overload(activate, inline="always", prefer_literal=True)
def _activate_overload(code, x, alpha, hi, beta):
    """A constant code (the kernels' and spans' case) inlines its own form only: inlining a chain over
    every code, as an inline function did, had Numba copy and type all 18 forms at each call site
    before LLVM dropped 17 (a span compiled for ~17 s on Zen 1, most of it in Numba's inliner)."""
    form = FORMS[code.literal_value] if isinstance(code, types.IntegerLiteral) else _activate_any

    def impl(code, x, alpha, hi, beta):
        return form(code, _F(x), _F(alpha), _F(hi), beta)
    return impl


@njit(cache=True)
def _activate_call(code, x, alpha, hi, beta):
    return activate(code, x, alpha, hi, beta)


def activate_inline(code, x, alpha, hi, beta):
    """activate() for the register tiles' stores, which run only INLINE_CODES in place: those inlined,
    any other code through a call (inlining a long form at every store site of a tile was most of a
    kernel's compile time)."""
    raise TypeError("activate_inline() runs in compiled code only")


@overload(activate_inline, inline="always", prefer_literal=True)
def _activate_inline_overload(code, x, alpha, hi, beta):
    if isinstance(code, types.IntegerLiteral) and code.literal_value in INLINE_CODES:
        form = FORMS[code.literal_value]

        def impl(code, x, alpha, hi, beta):
            return form(code, _F(x), _F(alpha), _F(hi), beta)
        return impl

    def call(code, x, alpha, hi, beta):
        return _F(_activate_call(np.int64(code), _F(x), _F(alpha), _F(hi), np.float64(beta)))
    return call


# Codes whose inline form is a select or a multiply: a register tile's store loop runs them in place.
# The rest are worth a pass of their own over each finished channel plane (activate_planes), a loop
# that vectorizes.
INLINE_CODES = frozenset((NONE, RELU, LEAKY_RELU, PRELU, CLIP))

SPAN_SIG = (types.float32[::1], types.int64, types.int64, types.float32, types.float32, types.float64,
            types.boolean, types.float32, types.float32)


@njit(inline="always", cache=True)
def _span_loops(code, buf, start, stop, alpha, hi, beta, has_post, s, t):
    # whole vectors of 16 first, a loop of 16 the vectorizer turns into one vector each: the plain
    # loop, vectorized four vectors at a time, left up to 63 elements to a scalar tail, most of a
    # blocked tile's run of 160. Unsigned indices: no negative-index wraparound select.
    whole = start + (stop - start) // 16 * 16
    if has_post:
        for i0 in range(start, whole, 16):
            for k in range(16):
                u = np.uint64(i0 + k)
                buf[u] = activate(code, buf[u], alpha, hi, beta) * s + t
        for i in range(whole, stop):
            u = np.uint64(i)
            buf[u] = activate(code, buf[u], alpha, hi, beta) * s + t
    else:
        for i0 in range(start, whole, 16):
            for k in range(16):
                u = np.uint64(i0 + k)
                buf[u] = activate(code, buf[u], alpha, hi, beta)
        for i in range(whole, stop):
            u = np.uint64(i)
            buf[u] = activate(code, buf[u], alpha, hi, beta)


def _make_span(code: int):
    """span(buf, start, stop, alpha, hi, beta, has_post, s, t): buf[start:stop] = act(buf[start:stop])
    (then * s + t with has_post) for one code: a loop the loop vectorizer turns into vector code, with
    FMA contraction (the polynomials' multiply-adds). Swish gets a second copy of the loops for
    alpha = 1 (SiLU), where the constant folds away one of the form's thirteen multiplies (-6 %)."""
    CODE = code
    UNIT = code == SWISH

    @njit(cache=True, fastmath={"contract"})
    @named("span", code)
    def span(buf, start, stop, alpha, hi, beta, has_post, s, t):
        if UNIT and alpha == np.float32(1.0):
            _span_loops(CODE, buf, start, stop, np.float32(1.0), hi, beta, has_post, s, t)
        else:
            _span_loops(CODE, buf, start, stop, alpha, hi, beta, has_post, s, t)
    return span


# One small function per code, as module globals: a kernel that captured one in its closure would get a
# new cache key in every process (a dispatcher never pickles the same twice), and one function
# dispatching on a run-time code over all of them took LLVM minutes to compile.
_span_sigmoid, _span_swish, _span_tanh = _make_span(SIGMOID), _make_span(SWISH), _make_span(TANH)
_span_hard_sigmoid, _span_hard_swish = _make_span(HARD_SIGMOID), _make_span(HARD_SWISH)
_span_elu, _span_selu, _span_celu = _make_span(ELU), _make_span(SELU), _make_span(CELU)
_span_softsign = _make_span(SOFTSIGN)
SPANS = {SIGMOID: _span_sigmoid, SWISH: _span_swish, TANH: _span_tanh, HARD_SIGMOID: _span_hard_sigmoid,
         HARD_SWISH: _span_hard_swish, ELU: _span_elu, SELU: _span_selu, CELU: _span_celu,
         SOFTSIGN: _span_softsign}

# The span codes whose form maps 0 to 0 exactly (with any alpha): a span over a padded output may run
# across the zero border between rows and leave it zero (one long run instead of one a row: a row of a
# 7x7 image's 16-channel block is 112 floats, on which SiLU cost 10 % more per element than on long runs).
SPAN_ZERO_AT_ZERO = frozenset((SWISH, TANH, HARD_SWISH, ELU, SELU, CELU, SOFTSIGN))


def compile_loop_vectorized(dispatcher, sig) -> None:
    """Compile (or load from the cache) `sig` of a function a kernel calls, with the loop vectorizer on,
    unless it is compiled already. A kernel built with the loop vectorizer off
    (bninfer.kernels.conv_direct.compile_settings) has this called first: it then links the vectorized
    version instead of compiling a scalar one of its own."""
    import numba
    if dispatcher.signatures:
        return
    old = numba.config.LOOP_VECTORIZE
    numba.config.LOOP_VECTORIZE = 1
    try:
        dispatcher.compile(sig)
    finally:
        numba.config.LOOP_VECTORIZE = old


def compile_span(code: int) -> None:
    """compile_loop_vectorized for the span of `code`, if it has one. (A kernel's activate_planes call has
    a constant code, so activate_span's overload calls that span only and never compiles the others.)"""
    span = SPANS.get(code)
    if span is not None:
        compile_loop_vectorized(span, SPAN_SIG)


@njit(inline="always", cache=True)
def activate_planes(code, out, c0, c1, P, alpha, hi, beta, has_post, ps, pt):
    """The activation of channel planes c0..c1-1 of an output (C, P) flat, for a code not in
    INLINE_CODES (a compile-time constant in the kernels: only its own span is called): what a
    register-tiled kernel runs after finishing a block of channels. Whole planes, not a tile's short
    rows: a span of a vector or two leaves the activation's long dependency chain nothing to overlap
    with. Gelu, Mish and Softplus (libm) take a scalar loop."""
    activate_pixels(code, out, c0, c1, P, 0, P, alpha, hi, beta, has_post, ps, pt)


@njit(inline="always", cache=True)
def activate_pixels(code, out, c0, c1, P, q0, q1, alpha, hi, beta, has_post, ps, pt):
    """activate_planes() over pixels q0..q1-1 of each plane only (a chunk of pixels still in cache)."""
    for c in range(c0, c1):
        activate_span(code, out, c * P + q0, c * P + q1, alpha[c], hi, beta, has_post, ps[c], pt[c])


@njit(inline="always", cache=True)
def has_span(code):
    """Whether `code` has a loop-vectorized span in SPANS (activate_span runs the others in a scalar loop)."""
    return (code == SIGMOID or code == SWISH or code == TANH or code == HARD_SIGMOID or code == HARD_SWISH
            or code == ELU or code == SELU or code == CELU or code == SOFTSIGN)


def activate_span(code, out, b, e, a, hi, beta, has_post, s, t):
    """out[b:e] = act(out[b:e]) (then * s + t with has_post) through the loop-vectorized span of `code`
    (compile_span(code) first). Gelu, Mish and Softplus (libm) take a scalar loop. For compiled code."""
    raise TypeError("activate_span() runs in compiled code only")


# The two below are calls, not inlined: an overload that inlined functions with loops and branches set
# off Numba's pedantic SSA check (NumbaIRAssumptionWarning) at every kernel that took them; a call per
# span costs nothing next to the span.

@njit(cache=True, nogil=True)
def _apply_span(code, out, b, e, a, hi, beta, has_post, s, t):
    for i in range(b, e):
        v = np.float32(apply(code, out[i], a, beta))
        out[i] = v * s + t if has_post else v


@njit(cache=True, nogil=True)
def _activate_span_any(code, out, b, e, a, hi, beta, has_post, s, t):
    """activate_span() for a code known only at run time."""
    if code == SIGMOID:
        _span_sigmoid(out, b, e, a, hi, beta, has_post, s, t)
    elif code == SWISH:
        _span_swish(out, b, e, a, hi, beta, has_post, s, t)
    elif code == TANH:
        _span_tanh(out, b, e, a, hi, beta, has_post, s, t)
    elif code == HARD_SIGMOID:
        _span_hard_sigmoid(out, b, e, a, hi, beta, has_post, s, t)
    elif code == HARD_SWISH:
        _span_hard_swish(out, b, e, a, hi, beta, has_post, s, t)
    elif code == ELU:
        _span_elu(out, b, e, a, hi, beta, has_post, s, t)
    elif code == SELU:
        _span_selu(out, b, e, a, hi, beta, has_post, s, t)
    elif code == CELU:
        _span_celu(out, b, e, a, hi, beta, has_post, s, t)
    elif code == SOFTSIGN:
        _span_softsign(out, b, e, a, hi, beta, has_post, s, t)
    else:
        _apply_span(code, out, b, e, a, hi, beta, has_post, s, t)


@overload(activate_span, inline="always", prefer_literal=True)
def _activate_span_overload(code, out, b, e, a, hi, beta, has_post, s, t):
    """A constant code (the kernels' case) inlines a call of its own span only."""
    if not isinstance(code, types.IntegerLiteral):
        return lambda code, out, b, e, a, hi, beta, has_post, s, t: _activate_span_any(
            code, out, b, e, a, hi, beta, has_post, s, t)
    span = SPANS.get(code.literal_value)
    if span is None:
        return lambda code, out, b, e, a, hi, beta, has_post, s, t: _apply_span(
            code, out, b, e, a, hi, beta, has_post, s, t)
    return lambda code, out, b, e, a, hi, beta, has_post, s, t: span(out, b, e, a, hi, beta, has_post, s, t)


@njit(inline="always", cache=True)
def prologue_span(x, xs, xstep, out, os, ostep, n, s, t, a, code, beta):
    """out[os + i * ostep] = act(x[xs + i * xstep] * s + t) for i < n: a fused prologue (one channel's
    affine and activation) applied while packing an input. `code` is a run-time value here, so it is
    tested once per span, outside the loops: each INLINE_CODES activation gets a loop of its own that
    vectorizes (the per-element apply() took ~2 ns an element, as long as a 1x1 conv's arithmetic on a
    wide 7x7 input); the rest go through apply()."""
    xs, xstep, os, ostep = np.uint64(xs), np.uint64(xstep), np.uint64(os), np.uint64(ostep)
    s, t, a, hi = _F(s), _F(t), _F(a), _F(beta)
    if code == NONE:
        for i in range(n):
            ui = np.uint64(i)
            out[os + ui * ostep] = x[xs + ui * xstep] * s + t
    # the expressions of activate(), written out: inlining activate() (every activation's code, typed by
    # Numba before LLVM drops the other branches) at each of the packers' sites made pack_channel
    # compile for 34 s
    elif code == RELU:
        zero = _F(0.0)
        for i in range(n):
            ui = np.uint64(i)
            v = x[xs + ui * xstep] * s + t
            out[os + ui * ostep] = _sel(v < zero, zero, v)
    elif code == LEAKY_RELU or code == PRELU:
        zero = _F(0.0)
        for i in range(n):
            ui = np.uint64(i)
            v = x[xs + ui * xstep] * s + t
            out[os + ui * ostep] = _sel(v < zero, v * a, v)
    elif code == CLIP:
        for i in range(n):
            ui = np.uint64(i)
            v = x[xs + ui * xstep] * s + t
            v = _sel(v < a, a, v)
            out[os + ui * ostep] = _sel(v > hi, hi, v)
    else:
        _generic_span(x, xs, xstep, out, os, ostep, np.int64(n), s, t, a, np.int64(code), np.float64(beta))


@njit(cache=True, nogil=True)
def _generic_span(x, xs, xstep, out, os, ostep, n, s, t, a, code, beta):
    """prologue_span for the activations without a vector loop of their own: a call, not inlined. apply()
    holds every activation; inlined into each packer's prologue sites it made ResNet-50's first run
    compile for 90 s (pack_rows alone 70 s) against 2.6 s for a kernel."""
    for i in range(n):
        ui = np.uint64(i)
        out[os + ui * ostep] = apply(code, x[xs + ui * xstep] * s + t, a, beta)


@dataclass(frozen=True)
class Activation:
    """How one ONNX activation op maps to a code and its (alpha, beta) parameters."""

    code: int
    params: Callable[[dict], tuple[float, float]]


def _no_params(attrs: dict) -> tuple[float, float]:
    return 0.0, 0.0


def _gelu_code(attrs: dict) -> int:
    return GELU_TANH if attrs.get("approximate", "none") == "tanh" else GELU


# ONNX op name -> Activation. Clip takes its bounds from constant inputs: the caller puts them in attrs
# as "min"/"max" (see bninfer.ops.elementwise). PRelu's slope is per channel: the kernel gets an array.
TABLE: dict[str, Activation] = {
    "Relu": Activation(RELU, _no_params),
    "LeakyRelu": Activation(LEAKY_RELU, lambda a: (a.get("alpha", 0.01), 0.0)),
    "PRelu": Activation(PRELU, _no_params),
    "Sigmoid": Activation(SIGMOID, _no_params),
    "Tanh": Activation(TANH, _no_params),
    "HardSigmoid": Activation(HARD_SIGMOID, lambda a: (a.get("alpha", 0.2), a.get("beta", 0.5))),
    "HardSwish": Activation(HARD_SWISH, _no_params),
    "Swish": Activation(SWISH, lambda a: (a.get("alpha", 1.0), 0.0)),
    "Clip": Activation(CLIP, lambda a: (a.get("min", -np.inf), a.get("max", np.inf))),
    "Elu": Activation(ELU, lambda a: (a.get("alpha", 1.0), 0.0)),
    "Selu": Activation(SELU, lambda a: (a.get("alpha", 1.6732632423543772),
                                        a.get("gamma", 1.0507009873554805))),
    "Celu": Activation(CELU, lambda a: (a.get("alpha", 1.0), 0.0)),
    "Gelu": Activation(GELU, _no_params),  # code chosen by code_of() from "approximate"
    "Mish": Activation(MISH, _no_params),
    "Softplus": Activation(SOFTPLUS, _no_params),
    "Softsign": Activation(SOFTSIGN, _no_params),
}


def code_of(op: str, attrs: dict) -> int:
    return _gelu_code(attrs) if op == "Gelu" else TABLE[op].code


def params_of(op: str, attrs: dict) -> tuple[float, float]:
    alpha, beta = TABLE[op].params(attrs)
    return float(alpha), float(beta)
