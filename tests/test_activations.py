"""The float32 activation forms of bninfer.activations (activate / SPANS) against float64
references, over the whole float32 range: a few ulp where the result is a normal number, IEEE special
values propagated, and the span loop really compiled to vector code."""
from __future__ import annotations

import platform

import numpy as np
import pytest

from bninfer import activations as A


def _inputs() -> np.ndarray:
    rng = np.random.default_rng(0)
    special = [0.0, -0.0, np.inf, -np.inf, np.nan, 88.7, 88.73, 89.0, -87.3, -88.7, -103.0, -104.5, -200.0,
               1e-30, -1e-30, 1e-3, -1e-3, 0.34, -0.34, 0.625, -0.625, 9.0, -9.0]
    return np.concatenate([rng.standard_normal(20000) * 4, rng.uniform(-110, 100, 20000),
                           np.linspace(-0.7, 0.7, 4001), np.array(special)]).astype(np.float32)


def _sigmoid(x):
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e))


# code -> (alpha, beta, float64 reference, ulp bound)
CASES = {
    "sigmoid": (A.SIGMOID, 0.0, 0.0, _sigmoid, 3),
    "swish": (A.SWISH, 1.0, 0.0, lambda x: x * _sigmoid(x), 4),
    # alpha * x is rounded to float32 first (as in onnxruntime): the reference takes the same product
    "swish_alpha": (A.SWISH, 1.702, 0.0, lambda x: x * _sigmoid((np.float32(1.702) * x.astype(np.float32))
                                                                 .astype(np.float64)), 4),
    "tanh": (A.TANH, 0.0, 0.0, np.tanh, 3),
    "elu": (A.ELU, 0.7, 0.0, lambda x: np.where(x < 0, 0.7 * np.expm1(x), x), 3),
    "selu": (A.SELU, 1.6732632423543772, 1.0507009873554805,
             lambda x: 1.0507009873554805 * np.where(x <= 0, 1.6732632423543772 * np.expm1(x), x), 4),
    "celu": (A.CELU, 2.0, 0.0, lambda x: np.where(x < 0, 2.0 * np.expm1(x / 2.0), x), 4),
    "softsign": (A.SOFTSIGN, 0.0, 0.0, lambda x: x / (1 + np.abs(x)), 2),
    "leaky": (A.LEAKY_RELU, 0.1, 0.0, lambda x: np.where(x < 0, np.float32(0.1) * x, x), 1),
    "relu": (A.RELU, 0.0, 0.0, lambda x: np.maximum(x, 0), 0),
}


_RUNNERS: dict = {}


def _runner(code):
    """The vectorized span of `code`; for the codes kernels apply inline, the same loop over activate()."""
    A.compile_span(code)
    if code in A.SPANS:
        return A.SPANS[code]
    if code not in _RUNNERS:
        _RUNNERS[code] = A._make_span(code)
    return _RUNNERS[code]


def _span(code, x, alpha, beta, post=None):
    buf = x.copy()
    s, t = post if post is not None else (1.0, 0.0)
    _runner(code)(buf, 0, buf.size, np.float32(alpha), np.float32(beta), float(beta), post is not None,
                     np.float32(s), np.float32(t))
    return buf


@pytest.mark.parametrize("name", sorted(CASES))
def test_within_a_few_ulp_of_float64(name):
    code, alpha, beta, ref_fn, bound = CASES[name]
    x = _inputs()
    got = _span(code, x, alpha, beta)
    with np.errstate(all="ignore"):
        ref = ref_fn(x.astype(np.float64))
    assert np.array_equal(np.isnan(got), np.isnan(ref)), "NaN where the reference has none, or lost"
    finite = np.isfinite(ref)
    assert np.array_equal(got[~finite & ~np.isnan(ref)], ref[~finite & ~np.isnan(ref)].astype(np.float32))
    normal = finite & (np.abs(ref) >= np.finfo(np.float32).tiny)
    ulp = np.spacing(np.abs(ref[normal]).astype(np.float32)).astype(np.float64)
    err = np.abs(got[normal] - ref[normal]) / ulp
    assert err.max() <= bound, f"{name}: {err.max():.1f} ulp at x={x[normal][err.argmax()]!r}"
    # below the normal range: within a few of the smallest steps
    tiny = finite & ~normal
    assert np.all(np.abs(got[tiny] - ref[tiny]) <= 4 * np.finfo(np.float32).smallest_subnormal * 2 ** 20)


def test_signed_zero_and_nan_keep_their_meaning():
    x = np.array([-0.0, 0.0, np.nan], np.float32)
    t = _span(A.TANH, x, 0.0, 0.0)
    assert np.signbit(t[0]) and not np.signbit(t[1]) and np.isnan(t[2])
    for code in (A.SIGMOID, A.SWISH, A.ELU, A.HARD_SWISH, A.HARD_SIGMOID, A.CLIP):
        assert np.isnan(_span(code, x, 0.2, 0.5)[2]), code


def test_hard_activations_match_the_float32_formula():
    x = _inputs()
    x = x[np.isfinite(x)]
    hs = _span(A.HARD_SIGMOID, x, 0.2, 0.5)
    ref = np.clip(np.float32(0.2) * x + np.float32(0.5), 0, 1)
    np.testing.assert_allclose(hs, ref, rtol=2e-7, atol=1e-7)
    hw = _span(A.HARD_SWISH, x, 0.0, 0.0)
    ref = x * np.clip(x * np.float32(1 / 6) + np.float32(0.5), 0, 1)
    np.testing.assert_allclose(hw, ref, rtol=2e-7, atol=1e-6)


def test_clip_and_the_affine_after_it():
    x = _inputs()
    got = _span(A.CLIP, x, -1.5, 6.0, post=(2.0, -0.5))
    with np.errstate(invalid="ignore"):
        ref = np.clip(x, np.float32(-1.5), np.float32(6.0)) * np.float32(2.0) - np.float32(0.5)
    np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("start,stop", [(0, 0), (3, 4), (5, 21), (0, 47), (17, 100)])
def test_span_touches_only_its_range(start, stop):
    x = np.linspace(-5, 5, 120).astype(np.float32)
    got = _span_range(A.SWISH, x, start, stop)
    np.testing.assert_array_equal(got[:start], x[:start])
    np.testing.assert_array_equal(got[stop:], x[stop:])
    ref = x[start:stop] * _sigmoid(x[start:stop].astype(np.float64))
    np.testing.assert_allclose(got[start:stop], ref, rtol=1e-6, atol=1e-7)


def _span_range(code, x, start, stop):
    buf = x.copy()
    _runner(code)(buf, start, stop, np.float32(1), np.float32(0), 0.0, start > stop, np.float32(1),
                     np.float32(0))
    return buf


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="reads x86 assembly")
def test_the_span_loop_is_vector_code():
    """The point of the float32 forms: the SiLU loop compiles to packed instructions."""
    from numba import njit

    CODE = A.SWISH  # a closure constant, as in the spans: activate() inlines this code's form only

    @njit(cache=False)
    def swish_loop(buf):  # the same inlined form the SPANS use, compiled fresh (no cached asm)
        for i in range(buf.size):
            buf[i] = A.activate(CODE, buf[i], np.float32(1), np.float32(0), 0.0)

    buf = np.ones(64, np.float32)
    swish_loop(buf)
    asm = swish_loop.inspect_asm(swish_loop.signatures[0])
    packed = [line for line in asm.splitlines() if "ps\t%ymm" in line or "ps\t%zmm" in line]
    assert len(packed) > 10, "the SiLU loop stayed scalar"
    assert "call" not in "".join(line for line in asm.splitlines() if "exp" in line)


def test_has_span_names_the_codes_with_a_span():
    assert [c for c in range(32) if A.has_span(c)] == sorted(A.SPANS)


def test_every_code_has_a_form_and_the_run_time_chain_picks_the_same():
    """activate() with a constant code inlines FORMS[code] (the spans and the tiles' stores); with a
    run-time code (activate_inline's call for the codes a tile does not run in place) it goes through a
    chain of tests: the two must agree on every code, to rounding (the spans contract multiply-adds into
    FMAs, the call does not; hard sigmoid cancels near 0). The libm codes' form is apply() itself."""
    assert sorted(A.FORMS) == list(range(18))
    x = np.concatenate([np.linspace(-12, 12, 97), [0.0, -0.0, np.inf, -np.inf, np.nan]]).astype(np.float32)
    for code, form in A.FORMS.items():
        alpha, beta = (0.3, 0.8) if code != A.CLIP else (-1.5, 2.0)
        if code in A.SPANS or code in A.INLINE_CODES:
            want = _span(code, x, alpha, beta)
        else:
            want = np.array([A.apply(code, v, np.float32(alpha), beta) for v in x], np.float32)
        got = np.array([A._activate_call(code, v, np.float32(alpha), np.float32(beta), beta) for v in x],
                       np.float32)
        np.testing.assert_allclose(got, want, rtol=3e-7, atol=6e-8, err_msg=f"code {code} "
                                   f"({form.py_func.__name__})")
