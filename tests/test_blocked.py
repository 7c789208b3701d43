"""The channel-blocked layout: its kernels against numpy, and the layout pass on small
depthwise-separable graphs against onnxruntime (including the chains it must leave alone)."""
from __future__ import annotations

import numpy as np
import pytest

import bninfer
from bninfer import activations as A
from bninfer import record
from bninfer import tiles
from bninfer.kernels import blocked as BK
from bninfer.kernels import conv_direct as CD
from bninfer.ops import conv_blocked, fusion
from bninfer.passes import scale_into_weights
from bninfer.ops.conv_blocked import STEM_MAX_CHANNELS, STEM_MIN_WIDTH
from tests.graphs import Builder
from tests.test_threads import _split_run
from tests.util import on_native_hand_overs, run_ort, run_twice

ACTS = {A.NONE: lambda v, a: v, A.CLIP: lambda v, a: np.minimum(np.maximum(v, a[:, None]), 6.0),  # alpha: Clip's lower bound
        A.LEAKY_RELU: lambda v, a: np.where(v < 0, v * a[:, None], v),
        # the codes the kernels run as a span over the stored tile: one alpha for all channels
        A.SWISH: lambda v, a: v / (1 + np.exp(-np.float32(a[0]) * v)),
        A.HARD_SWISH: lambda v, a: v * np.clip(v / 6 + 0.5, 0, 1)}


def _to_blocked(x: np.ndarray, pads=(0, 0, 0, 0)) -> np.ndarray:
    """(C, H, W) -> flat (NB, H + pads, W + pads, 16), zero border and lanes."""
    c, h, w = x.shape
    ph, pw, eh, ew = pads
    out = np.zeros((BK.blocks(c) * 16, h + ph + eh, w + pw + ew), np.float32)
    out[:c, ph:ph + h, pw:pw + w] = x
    return np.ascontiguousarray(out.reshape(-1, 16, h + ph + eh, w + pw + ew).transpose(0, 2, 3, 1)).reshape(-1)


def _from_blocked(y: np.ndarray, c: int, h: int, w: int, pads=(0, 0, 0, 0)) -> np.ndarray:
    ph, pw, eh, ew = pads
    full = y.reshape(-1, h + ph + eh, w + pw + ew, 16).transpose(0, 3, 1, 2).reshape(-1, h + ph + eh, w + pw + ew)
    return full[:c, ph:ph + h, pw:pw + w]


def _epilogue_operands(rng, cout):
    bias, alpha = rng.standard_normal(cout), rng.uniform(0.05, 0.3, cout)
    ps, pt = rng.uniform(-2, 2, cout), rng.standard_normal(cout)
    return [BK.padded_vector(v, cout) for v in (bias, alpha, ps, pt)]


@pytest.mark.parametrize("cin,cout,h,w", [(16, 96, 7, 9), (5, 24, 3, 5), (33, 40, 10, 13), (48, 16, 12, 12)])
@pytest.mark.parametrize("x_blocked", [True, False])
@pytest.mark.parametrize("act,res,post,pads", [(A.CLIP, False, False, (1, 1, 1, 1)), (A.NONE, True, False, (0, 0, 0, 0)),
                                               (A.LEAKY_RELU, True, True, (2, 1, 0, 2)),
                                               (A.SWISH, True, False, (1, 2, 1, 0)), (A.HARD_SWISH, False, False, (0, 0, 0, 0))])
def test_pointwise_kernel_matches_numpy(cin, cout, h, w, x_blocked, act, res, post, pads):
    rng = np.random.default_rng(cin * cout + h)
    P = h * w
    x = rng.standard_normal((cin, h, w)).astype(np.float32)
    wt = rng.standard_normal((cout, cin)).astype(np.float32)
    r = rng.standard_normal((cout, h, w)).astype(np.float32)
    nob = BK.blocks(cout)
    nb, rp = (2, 8) if nob % 2 == 0 else (1, 7)
    kern = CD.compile_now(BK.pointwise_kernel(nb, rp, act, x_blocked), BK.PW_SIG)
    bias, alpha, ps, pt = _epilogue_operands(rng, cout)
    yoff, yplane = BK.out_offsets(h, w, pads)
    out = np.full(nob * yplane, np.nan, np.float32)  # the border must be left alone
    xin = _to_blocked(x) if x_blocked else x.reshape(-1)
    kern(xin, BK.pack_weights_pw(wt, nb), out, cin, nob, P, 0, P, yoff, yplane, bias, _to_blocked(r), res, alpha, 6.0,
         post, ps, pt)
    want = np.einsum("oc,chw->ohw", wt.astype(np.float64), x) + bias[:cout, None, None] + (r if res else 0)
    want = ACTS[act](want.reshape(cout, -1), alpha[:cout]).reshape(cout, h, w)
    if post:
        want = want * ps[:cout, None, None] + pt[:cout, None, None]
    got = _from_blocked(out, cout, h, w, pads)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.sqrt(cin))
    assert np.isfinite(_from_blocked(out, nob * 16, h, w, pads)).all()  # padding lanes written, finite


@pytest.mark.parametrize("cout,cin,h,w", [(24, 144, 9, 10), (40, 17, 5, 7), (8, 16, 4, 4), (72, 40, 7, 7)])
@pytest.mark.parametrize("x_blocked", [True, False])
@pytest.mark.parametrize("act,res,post", [(A.CLIP, True, False), (A.LEAKY_RELU, False, True), (A.SWISH, True, False)])
@pytest.mark.parametrize("nb,rp", [(1, 8), (2, 3)])
def test_a_half_block_tile_writes_what_the_whole_block_tile_writes(cout, cin, h, w, x_blocked, act, res, post, nb, rp):
    """LANES=HALF sums only the tile's last block's lower 8 lanes (alone over 8 pixels a tile, or with the
    block before it over 3); each output's sum runs over the same inputs in the same order, and the
    padding lanes get act(bias + res) as zero weights give: every float, padding and border included,
    equals the whole-block kernel's."""
    rng = np.random.default_rng(cout + cin)
    P, nob = h * w, BK.blocks(cout)
    if nob < nb:
        pytest.skip("one block only")
    x = rng.standard_normal((cin, h, w)).astype(np.float32)
    wfull = rng.standard_normal((cout, cin)).astype(np.float32)
    wt = BK.pack_weights_pw(wfull, 1)
    r = _to_blocked(rng.standard_normal((cout, h, w)).astype(np.float32))
    bias, alpha, ps, pt = _epilogue_operands(rng, cout)
    if act == A.SWISH:
        alpha[:] = 1.0
    yoff, yplane = BK.out_offsets(h, w, (1, 0, 2, 1))
    xin = _to_blocked(x) if x_blocked else x.reshape(-1)
    whole = CD.compile_now(BK.pointwise_kernel(1, 6, act, x_blocked), BK.PW_SIG)
    half = CD.compile_now(BK.pointwise_kernel(nb, rp, act, x_blocked, LANES=BK.HALF), BK.PW_SIG)
    want, got = (np.full(nob * yplane, np.nan, np.float32) for _ in range(2))
    whole(xin, wt, want, cin, nob, P, 0, P, yoff, yplane, bias, r, res, alpha, 6.0, post, ps, pt)
    first = nob - nb  # the half kernel's blocks: the last nb
    last = slice(first * 16, nob * 16)
    if first:
        whole(xin, wt, got, cin, first, P, 0, P, yoff, yplane, bias, r, res, alpha, 6.0, post, ps, pt)
    half(xin, BK.pack_weights_pw(wfull[first * 16:], nb), got[first * yplane:], cin, nb, P, 0, P, yoff, yplane,
         bias[last], r[first * 16 * P:] if res else r, res, alpha[last], 6.0, post, ps[last], pt[last])
    np.testing.assert_array_equal(got, want)
    assert np.isfinite(_from_blocked(got, nob * 16, h, w, (1, 0, 2, 1))).all()


@pytest.mark.parametrize("cin,cout,h,w,x_blocked,nb,rp,lanes,act,res,post,q", [
    (531, 40, 15, 17, True, 1, 6, BK.CB, A.SWISH, True, False, (0, 255)),  # 2 chunks, 3 channels past a block
    (531, 40, 15, 17, True, 1, 6, BK.CB, A.SWISH, True, False, (5, 252)),  # a thread's range of pixels
    (512, 32, 14, 14, False, 1, 6, BK.CB, A.CLIP, False, True, (0, 196)),  # exactly the threshold, 1 chunk
    (600, 64, 20, 17, True, 2, 8, BK.CB, A.LEAKY_RELU, True, True, (0, 340)),  # pairs of blocks, 2 chunks
    (520, 24, 9, 10, False, 2, 3, BK.HALF, A.NONE, True, False, (0, 90)),  # a last half block
])
def test_pointwise_kernel_sums_many_input_channels_in_passes(cin, cout, h, w, x_blocked, nb, rp, lanes, act, res,
                                                              post, q, monkeypatch):
    """From PW_KC_MIN_CIN input channels on, the 1x1 kernel sums them PW_KC at a time over chunks of at
    most PW_KC_TILES tiles, the partial sums kept between the passes: each output's sum still runs over the
    same inputs in the same order, so every float, padding lanes and border included, equals what the
    kernel writes summing all channels in one pass, and both match numpy."""
    rng = np.random.default_rng(cin + cout)
    P, nob = h * w, BK.blocks(cout)
    assert cin >= BK.PW_KC_MIN_CIN and cin > BK.PW_KC
    x = rng.standard_normal((cin, h, w)).astype(np.float32)
    wfull = (rng.standard_normal((cout, cin)) / np.sqrt(cin)).astype(np.float32)
    wt = BK.pack_weights_pw(wfull, nb)
    r = rng.standard_normal((cout, h, w)).astype(np.float32)
    bias, alpha, ps, pt = _epilogue_operands(rng, cout)
    if act == A.SWISH:
        alpha[:] = 1.0
    pads = (1, 1, 1, 1)
    yoff, yplane = BK.out_offsets(h, w, pads)
    xin = _to_blocked(x) if x_blocked else x.reshape(-1)
    passes = CD.compile_now(BK.pointwise_kernel(nb, rp, act, x_blocked, LANES=lanes), BK.PW_SIG)
    monkeypatch.setattr(BK, "PW_KC_MIN_CIN", cin + 1)
    one_pass = CD.compile_now(BK.pointwise_kernel(nb, rp, act, x_blocked, cache=False, LANES=lanes), BK.PW_SIG)
    got, want = (np.full(nob * yplane, np.nan, np.float32) for _ in range(2))
    for kern, out in ((passes, got), (one_pass, want)):
        kern(xin, wt, out, cin, nob, P, q[0], q[1], yoff, yplane, bias, _to_blocked(r), res, alpha, 6.0, post, ps,
             pt)
    np.testing.assert_array_equal(got, want)
    ref = np.einsum("oc,chw->ohw", wfull.astype(np.float64), x) + bias[:cout, None, None] + (r if res else 0)
    ref = ACTS[act](ref.reshape(cout, -1), alpha[:cout])
    if post:
        ref = ref * ps[:cout, None] + pt[:cout, None]
    blocks = _from_blocked(got, cout, h, w, pads).reshape(cout, -1)
    np.testing.assert_allclose(blocks[:, q[0]:q[1]], ref[:, q[0]:q[1]], rtol=1e-4, atol=1e-4)
    assert np.isnan(blocks[:, :q[0]]).all() and np.isnan(blocks[:, q[1]:]).all()  # only its range


def _cut_after_a_flush(rp: int, span: int) -> int:
    """A pixel count whose last tile is moved back over pixels that the tile before it had the kernel
    activate (a span run ended there), as pointwise_kernel's rule runs them."""
    for q1 in range(span + 1, 20 * span):
        n = -(-q1 // rp)
        pa, flushed = 0, 0
        for t in range(n):
            p0 = min(t * rp, q1 - rp)
            pa = min(pa, p0)
            if p0 + rp - pa >= span or t == n - 1:
                pa = flushed = p0 + rp
            if t == n - 2:
                before = flushed
        if q1 % rp and min((n - 1) * rp, q1 - rp) < before:
            return q1
    raise AssertionError("no such count")


@pytest.mark.parametrize("pads", [(0, 0, 0, 0), (1, 2, 1, 1)])
@pytest.mark.parametrize("h,w", [(13, 12), (16, 16)])
def test_pointwise_span_activation_over_pixel_ranges(h, w, pads):
    """A span activation (SiLU) runs over SPAN_PIXELS stored pixels at a time, in two calls over pixel
    ranges (as two threads make them), the last tile of each moved back over pixels already activated:
    every output activated exactly once, the border left alone."""
    rng = np.random.default_rng(h * w)
    cin, cout, P = 24, 40, h * w
    x = rng.standard_normal((cin, h, w)).astype(np.float32)
    wt = rng.standard_normal((cout, cin)).astype(np.float32) * 0.3
    nob = BK.blocks(cout)
    kern = CD.compile_now(BK.pointwise_kernel(1, 7, A.SWISH, True), BK.PW_SIG)
    bias, _, ps, pt = _epilogue_operands(rng, cout)
    alpha = BK.padded_vector(np.full(cout, 1.0), cout)
    yoff, yplane = BK.out_offsets(h, w, pads)
    out = np.full(nob * yplane, np.nan, np.float32)
    cut = _cut_after_a_flush(7, BK.SPAN_PIXELS)
    assert cut + 7 <= P
    for q0, q1 in ((0, cut), (cut, P)):
        kern(_to_blocked(x), BK.pack_weights_pw(wt, 1), out, cin, nob, P, q0, q1, yoff, yplane, bias,
             np.zeros(1, np.float32), False, alpha, 0.0, False, ps, pt)
    z = np.einsum("oc,chw->ohw", wt.astype(np.float64), x) + bias[:cout, None, None]
    np.testing.assert_allclose(_from_blocked(out, cout, h, w, pads), z / (1 + np.exp(-z)), rtol=1e-5, atol=1e-5)
    assert np.isnan(np.delete(out.reshape(nob, yplane // 16, 16), yoff // 16, axis=1)).all()


@pytest.mark.parametrize("act", [A.SWISH, A.HARD_SWISH, A.SIGMOID])
def test_a_span_over_a_padded_output_leaves_its_zero_border_zero(act):
    """SiLU's span runs across the zero border between stored rows (one run instead of one a row); a
    code whose form does not map 0 to 0 (Sigmoid) still runs row by row: the border stays zero either way."""
    rng = np.random.default_rng(act)
    cin, cout, h, w, pads = 20, 24, 7, 7, (1, 1, 1, 1)
    x = rng.standard_normal((cin, h, w)).astype(np.float32)
    wt = rng.standard_normal((cout, cin)).astype(np.float32) * 0.3
    nob = BK.blocks(cout)
    kern = CD.compile_now(BK.pointwise_kernel(1, 5, act, True), BK.PW_SIG)
    bias, _, ps, pt = _epilogue_operands(rng, cout)
    alpha = BK.padded_vector(np.full(cout, 1.0), cout)
    yoff, yplane = BK.out_offsets(h, w, pads)
    out = np.zeros(nob * yplane, np.float32)
    kern(_to_blocked(x), BK.pack_weights_pw(wt, 1), out, cin, nob, h * w, 0, h * w, yoff, yplane, bias,
         np.zeros(1, np.float32), False, alpha, 0.0, False, ps, pt)
    z = np.einsum("oc,chw->ohw", wt.astype(np.float64), x) + bias[:cout, None, None]
    np.testing.assert_allclose(_from_blocked(out, cout, h, w, pads), ACTS.get(act, lambda v, a: 1 / (1 + np.exp(-v)))(
        z.reshape(cout, -1), alpha[:cout]).reshape(cout, h, w), rtol=1e-5, atol=1e-5)
    border = np.delete(out.reshape(nob, yplane // 16, 16), yoff // 16, axis=1)
    assert not border.any() and not np.signbit(border).any()


@pytest.mark.parametrize("code", sorted(A.SPAN_ZERO_AT_ZERO))
def test_the_span_codes_said_to_map_zero_to_zero_do(code):
    A.compile_span(code)
    for alpha in (1.0, 0.5, 1.7):
        buf = np.zeros(48, np.float32)
        A.SPANS[code](buf, 0, 48, np.float32(alpha), np.float32(0.0), 0.0, False, np.float32(1), np.float32(0))
        assert not buf.any() and not np.signbit(buf).any(), (code, alpha)


@pytest.mark.parametrize("nb,rp,cout", [(2, 8, 32), (1, 14, 16)])
@pytest.mark.parametrize("cuts", [(16,), (16, 48), (30, 50, 64)])
def test_pointwise_kernel_over_pixel_ranges_gives_the_whole_layer(nb, rp, cout, cuts):
    """Threads split a layer of few output blocks over its pixels: ranges that are not multiples of the
    tile (their last tile moved back inside the range) together write what one call over all writes."""
    rng = np.random.default_rng(len(cuts) + nb)
    cin, h, w = 24, 9, 9
    P = h * w
    x = _to_blocked(rng.standard_normal((cin, h, w)).astype(np.float32))
    wt = BK.pack_weights_pw(rng.standard_normal((cout, cin)).astype(np.float32), nb)
    r = _to_blocked(rng.standard_normal((cout, h, w)).astype(np.float32))
    bias, alpha, ps, pt = _epilogue_operands(rng, cout)
    yoff, yplane = BK.out_offsets(h, w, (1, 1, 1, 1))
    kern = CD.compile_now(BK.pointwise_kernel(nb, rp, A.CLIP, True), BK.PW_SIG)
    whole, parts = (np.full(BK.blocks(cout) * yplane, np.nan, np.float32) for _ in range(2))
    kern(x, wt, whole, cin, BK.blocks(cout), P, 0, P, yoff, yplane, bias, r, True, alpha, 6.0, False, ps, pt)
    bounds = (0,) + cuts + (P,)
    for q0, q1 in zip(bounds, bounds[1:]):
        kern(x, wt, parts, cin, BK.blocks(cout), P, q0, q1, yoff, yplane, bias, r, True, alpha, 6.0, False, ps, pt)
    np.testing.assert_array_equal(parts, whole)


@pytest.mark.parametrize("units,threads_,even", [(5, 2, False), (6, 2, True), (3, 2, False), (4, 2, True),
                                                 (9, 2, False), (11, 2, True), (21, 2, True), (6, 3, True),
                                                 (7, 3, False), (5, 3, False), (36, 4, True)])
def test_a_1x1_layer_splits_over_output_blocks_only_when_they_share_out_evenly(units, threads_, even):
    from bninfer.ops.conv_blocked import _even_units
    assert _even_units(units, threads_) == even


@pytest.mark.parametrize("nob", [1, 2, 3, 9])
@pytest.mark.parametrize("pixels,rp", [(49, 7), (196, 7), (784, 8), (3136, 8), (12544, 8), (15, 8), (14, 7)])
def test_pw_tiles_cover_every_block_with_the_tile_that_recomputes_least(nob, pixels, rp):
    """The AVX-512 rule (pairs of blocks, 8 or 7 pixels); the AVX2 one covers every block one at a time."""
    pw = tiles.blocked_pw_tiles(nob, pixels, tiles.WIDE)
    assert {t[1] for t in pw} == {rp}
    covered = [b for nb, _, first, count in pw for b in range(first, first + count)]
    assert covered == list(range(nob)) and all(count % nb == 0 for nb, _, _, count in pw)
    assert tiles.blocked_pw_tiles(nob, pixels, tiles.NARROW) == [
        (1, tiles.least_waste(tiles.NARROW.blocked_rp, pixels, tiles.BLOCKED_RP_SLACK), 0, nob)]


@pytest.mark.parametrize("pixels,rp", [(49, 5), (196, 6), (784, 6), (3136, 6), (12544, 6), (14, 5), (15, 5)])
def test_avx2_1x1_tiles_take_6_pixels_unless_5_recompute_much_less(pixels, rp):
    assert tiles.blocked_pw_tiles(3, pixels, tiles.NARROW) == [(1, rp, 0, 3)]


def _taps(x, k, stride, pads, dil):
    """Per kernel tap (i, j), the float64 input it multiplies: (C, OH, OW)."""
    _, h, w = x.shape
    ph, pw, eh, ew = pads
    xp = np.pad(x.astype(np.float64), ((0, 0), (ph, eh), (pw, ew)))
    oh = (h + ph + eh - (k - 1) * dil - 1) // stride + 1
    ow = (w + pw + ew - (k - 1) * dil - 1) // stride + 1
    return [(i, j, xp[:, i * dil:i * dil + stride * (oh - 1) + 1:stride,
                      j * dil:j * dil + stride * (ow - 1) + 1:stride]) for i in range(k) for j in range(k)]


def _dense_reference(x, wt, stride, pads, dil):
    taps = _taps(x, wt.shape[-1], stride, pads, dil)
    return sum(np.einsum("oc,chw->ohw", wt[:, :, i, j].astype(np.float64), tap) for i, j, tap in taps)


@pytest.mark.parametrize("cin,cout,h,w,k,stride,pads,dil", [
    (3, 32, 20, 30, 3, 2, (1, 1, 1, 1), 1), (1, 24, 17, 16, 3, 1, (1, 1, 1, 1), 1), (4, 40, 15, 33, 5, 2, (2, 1, 2, 2), 1),
    (3, 16, 16, 20, 3, 1, (2, 2, 2, 2), 2), (2, 48, 29, 31, 7, 2, (3, 3, 3, 3), 1), (3, 8, 14, 16, 3, 1, (0, 0, 0, 0), 1)])
@pytest.mark.parametrize("act,res,post,out_pads", [(A.CLIP, False, False, (1, 1, 1, 1)), (A.SWISH, False, False, (0, 0, 0, 0)),
                                                   (A.LEAKY_RELU, True, True, (2, 1, 1, 2))])
def test_dense_kernel_matches_numpy_over_row_ranges(cin, cout, h, w, k, stride, pads, dil, act, res, post, out_pads):
    """The stem kernel (few input channels, blocked output) against numpy, its rows in two calls."""
    rng = np.random.default_rng(cin * cout + h * w + k)
    x = rng.standard_normal((cin, h, w)).astype(np.float32)
    wt = rng.standard_normal((cout, cin, k, k)).astype(np.float32)
    want = _dense_reference(x, wt, stride, pads, dil)
    oh, ow = want.shape[1:]
    r = rng.standard_normal((cout, oh, ow)).astype(np.float32)
    bias, alpha, ps, pt = _epilogue_operands(rng, cout)
    if act not in A.INLINE_CODES:  # the span takes one alpha (the op's, the same for every channel)
        alpha = BK.padded_vector(np.full(cout, 1.3), cout)
    ph, pw, eh, ew = pads
    hp, wp = h + ph + eh, w + pw + ew
    xp = np.zeros(cin * hp * wp, np.float32)
    CD.compile_now(BK.pad_planes, BK.PAD_SIG)
    BK.pad_planes(x.reshape(-1), xp, cin, h, w, hp, wp, ph, pw)
    nob = BK.blocks(cout)
    yoff, yplane = BK.out_offsets(oh, ow, out_pads)
    out = np.full(nob * yplane, np.nan, np.float32)
    wfull = np.zeros((nob * 16, cin * k * k), np.float32)
    wfull[:cout] = wt.reshape(cout, -1)
    rb = _to_blocked(r)
    for nb, rp, first, count in tiles.stem_tiles(nob, ow, tiles.WIDE):  # pairs of blocks where there are
        kern = CD.compile_now(BK.dense_kernel(k, k, stride, stride, dil, dil, nb, rp, act), BK.DENSE_SIG)
        wk = BK.pack_weights_pw(wfull[first * 16:(first + count) * 16], nb)
        c0, c1 = first * 16, (first + count) * 16
        for r0, r1 in ((0, oh // 3), (oh // 3, oh)):
            kern(xp, wk, out[first * yplane:(first + count) * yplane], cin, count, hp, wp, ow, r0, r1, yoff, yplane,
                 bias[c0:c1], rb[c0 * oh * ow:c1 * oh * ow], res, alpha[c0:c1], 6.0, post, ps[c0:c1], pt[c0:c1])
    want = want + bias[:cout, None, None] + (r if res else 0)
    want = ACTS[act](want.reshape(cout, -1), alpha[:cout]).reshape(cout, oh, ow)
    if post:
        want = want * ps[:cout, None, None] + pt[:cout, None, None]
    np.testing.assert_allclose(_from_blocked(out, cout, oh, ow, out_pads), want, rtol=1e-4, atol=1e-4 * np.sqrt(cin * k * k))
    assert np.isfinite(_from_blocked(out, nob * 16, oh, ow, out_pads)).all()  # padding lanes written, finite
    border = out.reshape(nob, oh + out_pads[0] + out_pads[2], ow + out_pads[1] + out_pads[3], 16)
    assert np.isnan(border[:, :out_pads[0]]).all() and np.isnan(border[:, :, :out_pads[1]]).all()  # left alone


def _dw_reference(x, wt, stride, pads, dil):
    taps = _taps(x, wt.shape[-1], stride, pads, dil)
    return sum(wt[:, 0, i, j, None, None] * tap for i, j, tap in taps)


@pytest.mark.parametrize("c,h,w,k,stride,pads,dil", [
    (48, 9, 11, 3, 1, (1, 1, 1, 1), 1), (40, 14, 14, 3, 2, (1, 1, 1, 1), 1), (16, 7, 7, 5, 1, (2, 2, 2, 2), 1),
    (20, 12, 13, 5, 2, (2, 1, 2, 2), 1), (32, 8, 9, 3, 1, (2, 2, 2, 2), 2), (16, 6, 8, 3, 1, (0, 0, 0, 0), 1)])
@pytest.mark.parametrize("padded_in,out_pads,res,act", [(True, (0, 0, 0, 0), False, A.LEAKY_RELU),
                                                        (False, (1, 1, 1, 1), True, A.SWISH),
                                                        (True, (2, 2, 1, 1), True, A.LEAKY_RELU),
                                                        (True, (1, 2, 2, 1), False, A.SWISH),
                                                        (True, (0, 0, 0, 0), True, A.SWISH)])  # rows run on
def test_depthwise_kernel_matches_numpy(c, h, w, k, stride, pads, dil, padded_in, out_pads, res, act):
    rng = np.random.default_rng(c + h * w + k)
    x = rng.standard_normal((c, h, w)).astype(np.float32)
    wt = rng.standard_normal((c, 1, k, k)).astype(np.float32)
    want = _dw_reference(x, wt, stride, pads, dil)
    oh, ow = want.shape[1:]
    r = rng.standard_normal((c, oh, ow)).astype(np.float32)
    bias, alpha, ps, pt = _epilogue_operands(rng, c)
    rw = tiles.blocked_dw_rw(ow, tiles.WIDE)
    kern = CD.compile_now(BK.depthwise_kernel(k, k, stride, stride, dil, dil, rw, act, padded_in), BK.DW_SIG)
    post = act == A.LEAKY_RELU  # the span activations take no per-channel affine after them
    ph, pw, eh, ew = pads
    hp, wp = h + ph + eh, w + pw + ew
    xin = _to_blocked(x, pads) if padded_in else _to_blocked(x)
    scratch = np.zeros(hp * wp * 16, np.float32)
    qh, qw, qe, qf = out_pads
    ohp, owp = oh + qh + qe, ow + qw + qf
    nb = BK.blocks(c)
    out = np.full(nb * ohp * owp * 16, np.nan, np.float32)
    kern(xin, scratch, BK.pack_weights_dw(wt), out, nb, h, w, hp, wp, ph, pw, oh, ow, ohp, owp, qh, qw, bias,
         _to_blocked(r), res, alpha, 0.0, post, ps, pt)
    want = ACTS[act]((want + bias[:c, None, None] + (r if res else 0)).reshape(c, -1), alpha[:c]).reshape(c, oh, ow)
    if post:
        want = want * ps[:c, None, None] + pt[:c, None, None]
    np.testing.assert_allclose(_from_blocked(out, c, oh, ow, out_pads), want, rtol=1e-4, atol=1e-4)
    y = out.reshape(nb, ohp, owp, 16)  # the border untouched (the activation spans run inside the rows)
    assert np.isnan(y[:, :qh]).all() and np.isnan(y[:, ohp - qe:]).all()
    assert np.isnan(y[:, :, :qw]).all() and np.isnan(y[:, :, owp - qf:]).all()


def test_zero_border_and_layout_conversions():
    rng = np.random.default_rng(3)
    y = rng.standard_normal(2 * 6 * 7 * 16).astype(np.float32)
    BK.zero_border(y, 2, 6, 7, 2, 1, 1, 3)
    v = y.reshape(2, 6, 7, 16)
    assert not v[:, :2].any() and not v[:, 5:].any() and not v[:, :, :1].any() and not v[:, :, 4:].any()
    assert (v[:, 2:5, 1:4] != 0).all()  # the interior untouched
    x = rng.standard_normal((21, 5, 3)).astype(np.float32)
    b = np.full(BK.blocks(21) * 16 * 15, np.nan, np.float32)
    BK.to_blocked(x.reshape(-1), b, 21, 15)
    np.testing.assert_array_equal(b, _to_blocked(x))  # lanes past 21 zero
    back = np.empty(21 * 15, np.float32)
    BK.from_blocked(b, back, 21, 15)
    np.testing.assert_array_equal(back.reshape(x.shape), x)


# -- the layout pass, on graphs --------------------------------------------------------------------

def _inverted_residual(b: Builder, x: str, c: int, expand: int, k: int = 3, stride: int = 1, act="Clip",
                       out_c: int | None = None) -> str:
    """MobileNetV2's block: 1x1 expand + BN + act, depthwise k x k + BN + act, 1x1 project + BN (+ x)."""
    def activation(v):
        if act == "Clip":
            return b.node("Clip", [v, b.const("lo", np.float32(0)), b.const("hi", np.float32(6))])
        if act == "Swish":
            return b.node("Mul", [v, b.node("Sigmoid", [v])])
        return b.node(act, [v])
    e = c * expand
    h = activation(b.bn(b.conv(x, c, e, k=1), e))
    h = activation(b.bn(b.conv(h, e, e, k=k, group=e, stride=stride), e))
    out_c = out_c or c
    y = b.bn(b.conv(h, e, out_c, k=1), out_c)
    return b.node("Add", [x, y]) if stride == 1 and out_c == c else y


def _marks(sess, op: str = "Conv") -> list:
    plan = next(iter(sess._plans.values()))
    return [st.node.attrs["_blocked"] for st in plan.steps if st.node.attrs.get("_blocked") and st.node.op == op]


def _check(model, feeds, **kw):
    so = bninfer.SessionOptions()
    so.intra_op_num_threads = 1
    sess = bninfer.InferenceSession(model.SerializeToString(), so)
    ours = run_twice(sess, feeds)
    for a, t in zip(ours, run_ort(model, feeds)):
        np.testing.assert_allclose(a, t, rtol=1e-4, atol=1e-4 * max(1.0, float(np.abs(t).max())))
    return sess, ours


def _mobile_net(c=16, size=(9, 11), batch=1, seed=0, tail="GlobalAveragePool"):
    b = Builder(seed)
    x = b.conv("x", 3, c, k=3, stride=1)
    x = _inverted_residual(b, x, c, 3)
    x = _inverted_residual(b, x, c, 3, k=5, stride=2, out_c=24)
    x = _inverted_residual(b, x, 24, 6, act="Relu")
    x = b.conv(x, 24, 192, k=1)
    out = b.node(tail, [x]) if tail else x
    rng = np.random.default_rng(seed)
    return b.model({"x": [batch, 3, *size]}, [out]), {"x": rng.standard_normal((batch, 3, *size)).astype(np.float32)}


@pytest.mark.parametrize("size,batch", [((9, 11), 1), ((16, 16), 2), ((7, 13), 1)])
def test_depthwise_separable_blocks_run_blocked_and_match_onnxruntime(size, batch):
    model, feeds = _mobile_net(size=size, batch=batch)
    sess, _ = _check(model, feeds)
    marks = _marks(sess)
    stem = size[1] >= STEM_MIN_WIDTH  # the 3x3 stem joins where its rows hold a tile
    assert len(marks) == 10 + stem  # and every 1x1 and depthwise conv after it
    assert sum(m.y_pads is not None for m in marks) == 3  # the expands write the depthwise border
    assert marks[-1].y and marks[0].y and not marks[0].x  # enters from NCHW; the last one feeds the pool
    assert len(_marks(sess, "GlobalAveragePool")) == 1  # which reads it blocked


@pytest.mark.parametrize("size,n_threads", [((12, 12), 2), ((9, 11), 3), ((20, 20), 2)])
def test_blocked_result_equals_the_nchw_plan_and_splits_over_threads(size, n_threads, monkeypatch):
    """(The last 1x1, to 192 channels, splits over output blocks; the others, 144 channels included,
    over pixels.)"""
    from bninfer.plan import Plan
    model, feeds = _mobile_net(size=size)
    sess, ours = _check(model, feeds)
    nchw = Plan(sess.optimized_graph(), blocked=False).run(feeds)
    np.testing.assert_allclose(ours[0], nchw[0], rtol=1e-5, atol=1e-6 * np.abs(nchw[0]).max())
    out, parts, native = _split_run(model, feeds, n_threads, monkeypatch)
    assert parts and max(parts) == n_threads
    assert native and max(native) == n_threads  # from the second run on, from packed tables
    np.testing.assert_array_equal(out, ours[0])  # same sums, only on other threads


def _stem_net(cin=3, size=(30, 28), stride=2, batch=1, act="Clip", tail=True, seed=1):
    """An image's stem (a dense conv of cin channels) -> BN -> act -> depthwise -> BN -> act -> 1x1."""
    b = Builder(seed)
    x = b.bn(b.conv("x", cin, 24, k=3, stride=stride), 24)
    x = b.node(act, [x]) if act != "Clip" else b.node("Clip", [x, b.const("lo", np.float32(0)), b.const("hi", np.float32(6))])
    x = b.node("Relu", [b.bn(b.conv(x, 24, 24, k=3, group=24), 24)])
    x = b.conv(x, 24, 20, k=1)
    out = b.node("GlobalAveragePool", [x]) if tail else x
    rng = np.random.default_rng(seed)
    return b.model({"x": [batch, cin, *size]}, [out]), {"x": rng.standard_normal((batch, cin, *size)).astype(np.float32)}


@pytest.mark.parametrize("cin,size,stride,batch,act", [(3, (30, 28), 2, 1, "Clip"), (1, (16, 14), 1, 2, "Relu"),
                                                       (4, (21, 40), 2, 1, "Sigmoid"), (3, (29, 29), 2, 2, "Clip")])
def test_a_stem_writes_the_depthwise_chain_blocked(cin, size, stride, batch, act):
    model, feeds = _stem_net(cin, size, stride, batch, act)
    sess, ours = _check(model, feeds)
    marks = _marks(sess)
    assert len(marks) == 3 and not marks[0].x and marks[0].y and marks[0].y_pads == (1, 1, 1, 1)
    from bninfer.plan import Plan
    nchw = Plan(sess.optimized_graph(), blocked=False).run(feeds)
    np.testing.assert_allclose(ours[0], nchw[0], rtol=1e-5, atol=1e-5 * np.abs(nchw[0]).max())


def test_a_stem_splits_its_rows_over_threads(monkeypatch):
    model, feeds = _stem_net(size=(40, 36))
    _, ours = _check(model, feeds)
    for n_threads in (2, 3):
        out, parts, native = _split_run(model, feeds, n_threads, monkeypatch)
        assert parts and max(parts) == n_threads
        assert native and max(native) == n_threads
        np.testing.assert_array_equal(out, ours[0])  # same sums, only on other threads


def test_split_layers_are_packed_though_every_run_feeds_a_new_array(monkeypatch):
    """The stem reads the caller's array only while padding it (a split of its own, before the stem's):
    the parts of both are packed as every other layer's, whether or not the feed is the same array each
    run."""
    from bninfer import threads
    model, feeds = _stem_net(size=(40, 36))
    monkeypatch.setattr(threads, "MIN_NATIVE_PART_MACS", 1)
    monkeypatch.setattr(threads, "MIN_WAKE_MACS", 1)
    packed_runs = []
    real_tables = threads.Workers.run_tables
    monkeypatch.setattr(threads.Workers, "run_tables", lambda self, t: (packed_runs.append(1), real_tables(self, t)))
    on_native_hand_overs(monkeypatch, lambda parts: packed_runs.append(1))  # the native plan's way
    counts = []
    for fresh in (False, True):
        sess = _session(model, 2)
        want = sess.run(None, feeds)[0]
        for _ in range(2):
            packed_runs.clear()
            out = sess.run(None, {"x": feeds["x"].copy()} if fresh else feeds)[0]
            np.testing.assert_array_equal(out, want)
        counts.append(len(packed_runs))
    assert counts[0] == counts[1] == 6  # the stem's padding, its border's clearing, stem, depthwise, 1x1, pool


def _session(model, n):
    so = bninfer.SessionOptions()
    so.intra_op_num_threads = n
    return bninfer.InferenceSession(model.SerializeToString(), so)


def test_stems_too_narrow_or_with_many_channels_stay_nchw():
    """(Then the depthwise conv, whose input is NCHW, stays out too, and with it the 1x1.)"""
    narrow, feeds = _stem_net(size=(20, STEM_MIN_WIDTH * 2 - 2))  # a 3x3/2 gives rows of 13
    sess, _ = _check(narrow, feeds)
    assert _marks(sess) == []
    wide, feeds = _stem_net(cin=STEM_MAX_CHANNELS + 1)
    sess, _ = _check(wide, feeds)
    assert _marks(sess) == []
    ok, feeds = _stem_net(size=(20, STEM_MIN_WIDTH * 2))
    sess, _ = _check(ok, feeds)
    assert len(_marks(sess)) == 3


def test_a_graph_output_inside_the_chain_stays_nchw():
    model, feeds = _mobile_net(tail=None)  # the last 1x1 is the graph output
    sess, _ = _check(model, feeds)
    assert not _marks(sess)[-1].y


def test_chains_without_a_depthwise_conv_stay_nchw():
    b = Builder(1)
    x = b.conv("x", 3, 32, k=1)
    x = b.node("Relu", [b.conv(x, 32, 64, k=1)])
    x = b.conv(x, 64, 32, k=1)
    model = b.model({"x": [1, 3, 8, 8]}, [x])
    sess, _ = _check(model, {"x": np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)})
    assert not _marks(sess)  # 1x1 only: no depthwise conv to pay for the layout


@pytest.mark.parametrize("act", ["Swish", "HardSwish", "Sigmoid"])
def test_span_activations_run_blocked_but_not_with_an_affine_after_them(act):
    b = Builder(2)
    x = _inverted_residual(b, b.conv("x", 3, 16, k=1), 16, 2, act=act)
    model = b.model({"x": [1, 3, 8, 8]}, [b.node("GlobalAveragePool", [x])])
    feeds = {"x": np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)}
    sess, _ = _check(model, feeds)
    assert len(_marks(sess)) == 4  # the first 1x1 (its output is the residual), expand, depthwise, project
    # Conv -> BN -> Swish -> BN: the second BN becomes an affine after the activation, which the
    # kernels' span activations do not take: the depthwise conv stays NCHW, and with it the chain
    b = Builder(2)
    h = b.node("HardSwish", [b.bn(b.conv(b.conv("x", 3, 16, k=1), 16, 32, k=1), 32)])
    h = b.node("HardSwish", [b.bn(b.conv(h, 32, 32, k=3, group=32), 32)])
    y = b.conv(b.bn(h, 32), 32, 16, k=1)
    model = b.model({"x": [1, 3, 8, 8]}, [b.node("GlobalAveragePool", [y])])
    sess, _ = _check(model, feeds)
    assert not _marks(sess)


def test_images_too_small_for_the_tiles_stay_nchw():
    model, feeds = _mobile_net(size=(8, 6))  # 4x3 after the stride-2 block: rows shorter than a tile
    sess, _ = _check(model, feeds)
    marks = _marks(sess)
    assert len(marks) == 4 and not marks[-1].y  # the first block, and the second's expand leaving to NCHW
    model, feeds = _mobile_net(size=(6, 5))
    sess, _ = _check(model, feeds)
    assert not _marks(sess)  # 5-wide rows: no depthwise conv in the chain


def test_a_depthwise_conv_on_an_nchw_value_or_shared_with_another_reader_stays_nchw():
    b = Builder(3)
    h = b.node("Clip", [b.conv("x", 16, 16, k=3, group=16), b.const("lo", np.float32(0)), b.const("hi", np.float32(6))])
    y = b.conv(h, 16, 24, k=1)
    model = b.model({"x": [1, 16, 8, 8]}, [y, h])  # the depthwise output is also a graph output
    sess, _ = _check(model, {"x": np.random.default_rng(0).standard_normal((1, 16, 8, 8)).astype(np.float32)})
    assert not _marks(sess)


def test_a_depthwise_conv_adding_its_own_input_reads_it_unpadded():
    b = Builder(4)
    x = _inverted_residual(b, b.conv("x", 3, 16, k=1), 16, 2)
    y = b.node("Add", [x, b.conv(x, 16, 16, k=3, group=16)])  # x + dw(x): x is X and residual of one conv
    y = b.conv(y, 16, 24, k=1)
    model = b.model({"x": [1, 3, 9, 10]}, [b.node("GlobalAveragePool", [y])])
    sess, _ = _check(model, {"x": np.random.default_rng(0).standard_normal((1, 3, 9, 10)).astype(np.float32)})
    marks = _marks(sess)
    assert any(m.x and m.res for m in marks) and all(m.x_pads is None for m in marks if m.res)


# -- squeeze-excitation on blocked values ---------------------------------------------------------------

@pytest.mark.parametrize("c,p", [(16, 1), (21, 64), (40, 130), (96, 49)])
def test_global_average_and_channel_scale_kernels_match_numpy(c, p):
    rng = np.random.default_rng(c + p)
    x = (rng.standard_normal((c, p)) * 3 + 1).astype(np.float32)
    xb = _to_blocked(x.reshape(c, 1, p))
    mean = np.full(c, np.nan, np.float32)
    CD.compile_now(BK.global_avg, BK.GAP_SIG)(xb, mean, c, p)
    np.testing.assert_allclose(mean, x.astype(np.float64).mean(1), rtol=1e-6, atol=1e-6)
    s = rng.standard_normal(c).astype(np.float32)
    out = np.full_like(xb, np.nan)
    CD.compile_now(BK.scale_channels, BK.SCALE_SIG)(xb, BK.padded_vector(s, c), out, BK.blocks(c), p)
    np.testing.assert_array_equal(_from_blocked(out, c, 1, p), x.reshape(c, 1, p) * s[:, None, None])
    assert np.isfinite(out).all()  # padding lanes: zero factors times finite values


def _mb_conv(b: Builder, x: str, c: int, expand: int, k: int = 3, stride: int = 1, out_c: int | None = None,
             swap: bool = False) -> str:
    """EfficientNet's block: 1x1 expand + BN + SiLU, depthwise + BN + SiLU, squeeze-excitation (mean,
    1x1 reduce + SiLU, 1x1 expand + Sigmoid, Mul), 1x1 project + BN (+ x)."""
    def silu(v):
        return b.node("Mul", [v, b.node("Sigmoid", [v])])
    e = c * expand
    h = silu(b.bn(b.conv(x, c, e, k=1), e))
    h = silu(b.bn(b.conv(h, e, e, k=k, group=e, stride=stride), e))
    s = b.node("GlobalAveragePool", [h])
    s = b.node("Sigmoid", [b.conv(silu(b.conv(s, e, max(1, c // 4), k=1)), max(1, c // 4), e, k=1)])
    h = b.node("Mul", [s, h] if swap else [h, s])
    out_c = out_c or c
    y = b.bn(b.conv(h, e, out_c, k=1), out_c)
    return b.node("Add", [x, y]) if stride == 1 and out_c == c else y


@pytest.mark.parametrize("batch,size,scaled", [(1, (9, 11), 1), (2, (16, 14), 3)])
def test_squeeze_excitation_blocks_run_blocked_and_match_onnxruntime(batch, size, scaled):
    """(A block's Mul whose 1x1 conv has at most half as many weights as the Mul has inputs is taken into
    that conv's weights: at 9x11 the first block's, 16 x 64 weights for 64 x 99 inputs, at 16x14 all.)"""
    b = Builder(5)
    x = b.conv("x", 3, 16, k=3, stride=1)
    x = _mb_conv(b, x, 16, 4)
    x = _mb_conv(b, x, 16, 6, k=5, stride=2, out_c=24, swap=True)
    x = _mb_conv(b, x, 24, 6)
    model = b.model({"x": [batch, 3, *size]}, [b.node("GlobalAveragePool", [b.conv(x, 24, 40, k=1)])])
    feeds = {"x": np.random.default_rng(1).standard_normal((batch, 3, *size)).astype(np.float32)}
    sess, ours = _check(model, feeds)
    plan = next(iter(sess._plans.values()))
    marked = [st.node.op for st in plan.steps if st.node.attrs.get("_blocked")]
    assert marked.count("Mul") == 3 - scaled and marked.count("GlobalAveragePool") == 4  # the head's pool too
    assert sum(fusion.extra(st.node, "channel_scale") is not None for st in plan.steps) == scaled
    # every 1x1 and depthwise conv, SE convs excepted, and the stem where its rows hold a tile
    assert marked.count("Conv") == 10 + (size[1] >= STEM_MIN_WIDTH)
    from bninfer.plan import Plan
    nchw = Plan(sess.optimized_graph(), blocked=False).run(feeds)
    np.testing.assert_allclose(ours[0], nchw[0], rtol=1e-5, atol=1e-6 * np.abs(nchw[0]).max())


@pytest.mark.parametrize("batch,n_threads", [(1, 2), (2, 3)])
def test_squeeze_excitation_pools_and_scales_split_over_threads(batch, n_threads, monkeypatch):
    """The blocked GlobalAveragePool and channel-scaling Mul (kept: not taken into the 1x1 conv's
    weights) split their blocks over the threads (native from the second run); every run gives the
    one-thread result, bit for bit."""
    from bninfer import threads
    monkeypatch.setattr(scale_into_weights, "WEIGHTS_PER_INPUT", 0.0)
    b = Builder(7)
    x = _mb_conv(b, b.conv("x", 3, 40, k=3, stride=1), 40, 4)  # 160 channels: 10 blocks to share out
    model = b.model({"x": [batch, 3, 12, 13]}, [b.node("GlobalAveragePool", [b.conv(x, 40, 24, k=1)])])
    feeds = {"x": np.random.default_rng(2).standard_normal((batch, 3, 12, 13)).astype(np.float32)}
    split_kernels = []
    real = threads.split_calls

    def spy(calls, n, *a, **k):
        split_kernels.append(calls(0, n)[0][0])
        return real(calls, n, *a, **k)
    monkeypatch.setattr(threads, "split_calls", spy)
    ours, parts, native = _split_run(model, feeds, n_threads, monkeypatch)
    assert BK.global_avg in split_kernels and BK.scale_channels in split_kernels
    assert native and max(native) == n_threads
    from tests.test_threads import _session
    np.testing.assert_array_equal(ours, _session(model, 1).run(None, feeds)[0])


@pytest.mark.parametrize("g,cin,cob", [(1, 5, 16), (3, 21, 32), (2, 40, 16)])
def test_scale_rows_scales_each_input_channels_weights(g, cin, cob):
    rng = np.random.default_rng(g + cin)
    w = rng.standard_normal((g, cin, cob)).astype(np.float32)
    s = (rng.standard_normal(cin) * 2).astype(np.float32)
    out = np.full(w.size, np.nan, np.float32)
    CD.compile_now(BK.scale_rows, BK.ROWS_SIG)(w.reshape(-1), s, out, cin, cob, g)
    np.testing.assert_array_equal(out.reshape(w.shape), w * s[None, :, None])


def _excited_projection(b: Builder, x: str, c: int, e: int, out_c: int, act=None, residual=False,
                        gate="se", swap=False) -> str:
    """1x1 expand + HardSwish, depthwise + HardSwish, the Mul by per-channel factors (gate "se": mean ->
    1x1 -> SiLU -> 1x1 -> Sigmoid, one factor per image and channel; "const": a (1, e, 1, 1) constant),
    then the 1x1 projection + BN (+ act) (+ x)."""
    h = b.node("HardSwish", [b.conv(x, c, e, k=1)])  # (no BN before the factors: theirs would saturate them)
    h = b.node("HardSwish", [b.conv(h, e, e, k=3, group=e)])
    if gate == "se":
        s = b.conv(b.node("HardSwish", [b.conv(b.node("GlobalAveragePool", [h]), e, 8, k=1)]), 8, e, k=1)
        s = b.node("Sigmoid", [s])
    else:
        s = b.const("s", b.rng.uniform(-2, 2, (1, e, 1, 1)).astype(np.float32))
    y = b.bn(b.conv(b.node("Mul", [s, h] if swap else [h, s]), e, out_c, k=1), out_c)
    y = b.node(act, [y]) if act else y
    return b.node("Add", [x, y]) if residual else y


def _close_per_channel(ours: np.ndarray, want: np.ndarray, rtol: float) -> None:
    """Within rtol of each output channel's largest value (the BNs' statistics make some channels
    thousands of times larger than others: one tolerance for all would hide a wrong small channel)."""
    scale = np.abs(want).max(axis=(0, 2, 3), keepdims=True)
    np.testing.assert_allclose(ours / scale, want / scale, rtol=rtol, atol=rtol)


def _scaled_convs(sess) -> int:
    plan = next(iter(sess._plans.values()))
    return sum(fusion.extra(st.node, "channel_scale") is not None for st in plan.steps)


@pytest.mark.parametrize("batch,gate,act,residual,swap", [
    (1, "se", None, False, False), (2, "se", "Relu", True, True), (2, "const", None, True, False),
    (1, "se", "Sigmoid", False, True)])
def test_a_squeeze_excitation_mul_scales_the_next_1x1_convs_weights(batch, gate, act, residual, swap, monkeypatch):
    """W . (s * x) = (W * s) . x: the conv scales its weights by the factors (each image's own, or one
    constant set) and reads the Mul's input; the Mul is gone from the plan. Against onnxruntime, and
    against the plan that keeps the Mul (float32 sums of other products: close, not equal)."""
    b = Builder(11)
    x = b.conv("x", 3, 24, k=3)
    y = _excited_projection(b, x, 24, 96, 24, act, residual, gate, swap)
    model = b.model({"x": [batch, 3, 10, 12]}, [b.conv(y, 24, 16, k=1)])
    feeds = {"x": np.random.default_rng(3).standard_normal((batch, 3, 10, 12)).astype(np.float32)}
    sess, ours = _check(model, feeds)
    plan = next(iter(sess._plans.values()))
    assert _scaled_convs(sess) == 1 and not any(st.node.op == "Mul" for st in plan.steps)
    _close_per_channel(ours[0], run_ort(model, feeds)[0], 1e-4)
    monkeypatch.setattr(scale_into_weights, "WEIGHTS_PER_INPUT", 0.0)
    kept, theirs = _check(model, feeds)
    assert _scaled_convs(kept) == 0 and len(_marks(kept, "Mul")) == 1
    _close_per_channel(ours[0], theirs[0], 1e-5)


def test_a_mul_stays_where_its_conv_has_more_weights_or_it_has_other_readers():
    b = Builder(12)  # 96 -> 64 weights at 10x12: more than half the 120 pixels
    model = b.model({"x": [1, 3, 10, 12]}, [_excited_projection(b, b.conv("x", 3, 24, k=3), 24, 96, 64)])
    feeds = {"x": np.random.default_rng(4).standard_normal((1, 3, 10, 12)).astype(np.float32)}
    sess, _ = _check(model, feeds)
    assert _scaled_convs(sess) == 0 and len(_marks(sess, "Mul")) == 1
    b = Builder(13)  # the Mul's output read by two 1x1 convs
    h = b.conv(b.conv("x", 3, 32, k=1), 32, 32, k=3, group=32)
    g = b.node("Mul", [h, b.node("Sigmoid", [b.conv(b.node("GlobalAveragePool", [h]), 32, 32, k=1)])])
    model = b.model({"x": [1, 3, 10, 12]}, [b.node("Add", [b.conv(g, 32, 16, k=1), b.conv(g, 32, 16, k=1)])])
    sess, _ = _check(model, feeds)
    assert _scaled_convs(sess) == 0 and len(_marks(sess, "Mul")) == 1
    b = Builder(14)  # the Mul's output is the residual a 1x1 conv adds, not its input
    h = b.conv(b.conv("x", 3, 32, k=1), 32, 32, k=3, group=32)
    g = b.node("Mul", [h, b.node("Sigmoid", [b.conv(b.node("GlobalAveragePool", [h]), 32, 32, k=1)])])
    model = b.model({"x": [1, 3, 10, 12]}, [b.conv(b.node("Add", [b.conv(h, 32, 32, k=1), g]), 32, 16, k=1)])
    sess, _ = _check(model, feeds)
    assert _scaled_convs(sess) == 0 and len(_marks(sess, "Mul")) == 1


@pytest.mark.parametrize("which", [0, -1])
def test_input_channel_factors_on_a_conv_outside_a_blocked_chain_are_refused(which):
    """Only the blocked 1x1 kernel in a chain applies them: any other conv build (the 3x3 stem's, the
    last 1x1's on the blocked kernel with NCHW in and out) names the node instead of ignoring them."""
    from bninfer.errors import ModelError
    from bninfer.plan import Plan
    b = Builder(16)
    model = b.model({"x": [1, 3, 10, 12]}, [_excited_projection(b, b.conv("x", 3, 24, k=3), 24, 96, 24)])
    sess = _session(model, 1)
    graph = sess.optimized_graph().copy()
    conv = [n for n in graph.nodes if n.op == "Conv"][which]
    fusion.add_extra(conv, "channel_scale", graph.nodes[0].outputs[0])
    with pytest.raises(ModelError, match=conv.name):
        Plan(graph, blocked=False)


@pytest.mark.parametrize("out_c,batch,n_threads", [(64, 1, 2), (24, 2, 2), (64, 2, 3)])
def test_weights_scaled_per_run_split_over_threads(out_c, batch, n_threads, monkeypatch):
    """The conv scales its weights once per image, before its parts run (over its output blocks, 64
    channels, or its pixels, 24), natively from the second run: every run gives the one-thread result,
    bit for bit, each image with its own factors."""
    b = Builder(15)
    y = _excited_projection(b, b.conv("x", 3, 24, k=3), 24, 96, out_c)
    model = b.model({"x": [batch, 3, 14, 16]}, [y])
    rng = np.random.default_rng(5)
    feeds = {"x": rng.standard_normal((batch, 3, 14, 16)).astype(np.float32)}
    scaled = []
    real = record.call
    monkeypatch.setattr(record, "call", lambda kern, *a: (scaled.append(kern is BK.scale_rows), real(kern, *a)))
    ours, parts, native = _split_run(model, feeds, n_threads, monkeypatch)
    assert native and max(native) == n_threads and sum(scaled) >= batch
    one = _session(model, 1)
    np.testing.assert_array_equal(ours, one.run(None, feeds)[0])
    assert _scaled_convs(one) == 1
    if batch > 1:  # each image its own factors: image 1 alone gives its rows of the batch's result
        single = _session(b.model({"x": [1, 3, 14, 16]}, [y]), 1).run(None, {"x": feeds["x"][1:]})[0]
        _close_per_channel(ours[1:], single, 1e-6)


def _memory(a: np.ndarray) -> tuple[int, int]:
    start = a.__array_interface__["data"][0]
    return start, start + a.nbytes


@pytest.mark.parametrize("net,n_threads", [("se", 2), ("se", 3), ("stem", 2), ("stem", 3)])
def test_no_part_clears_a_border_another_part_writes(net, n_threads, monkeypatch):
    """A part that zeroes a padded output's border (blocks of its own) is the only one to touch those
    bytes. Parts over a 1x1's pixels (its blocks too few to share out, as the 160-channel expand's here)
    or the stem's rows write every block, and an activation span runs across the border between their
    rows; had they cleared the border too, one part could clear a cell after another's span read it and
    before that span wrote it back (stop 28's race: garbage from a fresh arena in about one run in 200 at
    3 threads on 2 cores, under load). Their border is zeroed by a split of its own before them."""
    from bninfer import threads
    monkeypatch.setattr(threads, "MIN_PART_MACS", 1)
    monkeypatch.setattr(threads, "MIN_NATIVE_PART_MACS", 1)
    monkeypatch.setattr(threads, "MIN_WAKE_MACS", 1)
    if net == "se":
        b = Builder(7)
        x = _mb_conv(b, b.conv("x", 3, 40, k=3, stride=1), 40, 4)
        model = b.model({"x": [1, 3, 12, 13]}, [b.node("GlobalAveragePool", [b.conv(x, 40, 24, k=1)])])
        feeds = {"x": np.random.default_rng(2).standard_normal((1, 3, 12, 13)).astype(np.float32)}
    else:
        model, feeds = _stem_net(size=(40, 36))
    splits = []
    real = threads.split_calls

    def spy(calls, n, *a, **k):
        splits.append([calls(u, u + 1) for u in range(n)])
        return real(calls, n, *a, **k)
    monkeypatch.setattr(threads, "split_calls", spy)
    _session(model, n_threads).run(None, feeds)
    clearing = 0
    for parts in splits:
        for u, part in enumerate(parts):
            for kern, args in part:
                if kern is not BK.zero_border:
                    continue
                lo, hi = _memory(args[0])
                clearing += 1
                others = [a for v, p in enumerate(parts) if v != u for _, a2 in p for a in a2
                          if isinstance(a, np.ndarray) and a.size]
                assert all(_memory(a)[1] <= lo or _memory(a)[0] >= hi for a in others), \
                    f"a border part {u} clears is touched by another part of its split ({kern.__name__})"
    assert clearing  # the check saw borders cleared


def test_a_mul_that_is_not_per_channel_or_shared_keeps_its_value_nchw():
    b = Builder(6)
    x = b.conv("x", 3, 16, k=1)
    h = b.conv(b.conv(x, 16, 32, k=1), 32, 32, k=3, group=32)
    g = b.node("Mul", [h, b.conv(x, 16, 32, k=1)])  # a full tensor, not one factor per channel
    y = b.conv(g, 32, 16, k=1)
    model = b.model({"x": [1, 3, 8, 8]}, [y])
    feeds = {"x": np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)}
    sess, _ = _check(model, feeds)
    assert not _marks(sess, "Mul") and not _marks(sess)[-1].y  # the depthwise conv writes NCHW for the Mul
    b = Builder(7)
    x = b.conv("x", 3, 16, k=1)
    h = b.conv(b.conv(x, 16, 32, k=1), 32, 32, k=3, group=32)
    s = b.node("Sigmoid", [b.conv(b.node("GlobalAveragePool", [h]), 32, 32, k=1)])
    g = b.node("Mul", [h, s])
    model = b.model({"x": [1, 3, 8, 8]}, [b.conv(g, 32, 16, k=1), g])  # the Mul's output is a graph output
    sess, _ = _check(model, feeds)
    assert not _marks(sess, "Mul") and not _marks(sess, "GlobalAveragePool")


def _resnet_tail(cin, cout, size, batch, act="Relu", seed=0):
    """1x1 conv + act + BN (an affine after the activation), then 1x1 conv + residual Add: what ResNet's
    last stages hold, outside any depthwise-separable chain."""
    b = Builder(seed)
    a = b.bn(b.node(act, [b.conv("x", cin, cout, k=1)]), cout)
    y = b.node("Add", [b.conv(a, cout, cout, k=1), a])
    rng = np.random.default_rng(seed)
    return b.model({"x": [batch, cin, size, size]}, [y]), {"x": rng.standard_normal((batch, cin, size, size)).astype(np.float32)}


def _builds_with_marks(monkeypatch) -> list:
    """The marks every conv_blocked.build call is given from now on (None: the node's own)."""
    built = []
    real = conv_blocked.build
    monkeypatch.setattr(conv_blocked, "build",
                        lambda node, ins, outs, marks=None: built.append(marks) or real(node, ins, outs, marks))
    return built


@pytest.mark.parametrize("cin,cout,size,batch,act", [(40, 72, 7, 1, "Relu"), (64, 256, 14, 2, "Relu"),
                                                     (17, 24, 4, 1, "LeakyRelu"), (32, 48, 9, 1, "HardSwish")])
def test_1x1_convs_over_small_images_take_the_blocked_kernel_nchw_in_and_out(cin, cout, size, batch, act, monkeypatch):
    built = _builds_with_marks(monkeypatch)
    model, feeds = _resnet_tail(cin, cout, size, batch, act)
    sess, ours = _check(model, feeds)
    # HardSwish runs as a span, which takes no affine after it: that conv stays NCHW
    assert built == [conv_blocked.NCHW] * (1 if act == "HardSwish" else 2)
    assert not _marks(sess)  # no value of the graph is stored blocked
    out, parts, native = _split_run(model, feeds, 2, monkeypatch)
    np.testing.assert_allclose(out, ours[0], rtol=1e-5, atol=1e-5 * float(np.abs(ours[0]).max()))
    if size * size >= 2 * conv_blocked.PIXEL_GRAIN:  # enough pixels to share: split, then from packed tables
        assert parts and native


def _strided_downsample(cin, cout, size, stride, batch, seed=0):
    """ResNet's projection shortcut: a strided 1x1 conv + BN added to a strided 3x3 conv + BN, then ReLU."""
    b = Builder(seed)
    short = b.bn(b.conv("x", cin, cout, k=1, stride=stride, pad=0), cout)
    main = b.bn(b.conv("x", cin, cout, k=3, stride=stride), cout)
    y = b.node("Relu", [b.node("Add", [main, short])])
    rng = np.random.default_rng(seed)
    feeds = {"x": rng.standard_normal((batch, cin, *size)).astype(np.float32)}
    return b.model({"x": [batch, cin, *size]}, [y]), feeds


@pytest.mark.parametrize("cin,cout,size,stride,batch", [(64, 128, (14, 14), 2, 1), (40, 72, (13, 15), 2, 2),
                                                        (48, 64, (28, 27), 2, 1), (24, 40, (12, 10), 3, 1)])
def test_strided_1x1_convs_take_the_blocked_kernel_from_their_subsampled_input(cin, cout, size, stride, batch,
                                                                               monkeypatch):
    """A strided 1x1 conv with few output pixels (ResNet-50's 1024 -> 2048 at 7x7 ran 27 GFLOP/s on the
    direct kernel, the blocked 1x1 kernel 33-35) takes its input subsampled into a buffer of its own (a
    split of its own over the planes), then the blocked kernel, NCHW in and out; over more pixels it
    stays on the NCHW kernels (28x27 / 2: 196 pixels, blocked; the others fewer)."""
    from bninfer import threads
    built = _builds_with_marks(monkeypatch)
    model, feeds = _strided_downsample(cin, cout, size, stride, batch)
    sess, ours = _check(model, feeds)
    assert built == [conv_blocked.NCHW]  # the 1x1 (with the Add as its residual, or the 3x3 with it)
    subsampled = []
    real = threads.split_calls

    def spy(calls, n, *a, **k):
        made = calls(0, n)
        subsampled.append(bool(made) and made[0][0] is CD.subsample_planes)
        return real(calls, n, *a, **k)
    monkeypatch.setattr(threads, "split_calls", spy)
    out, parts, native = _split_run(model, feeds, 2, monkeypatch)
    assert any(subsampled) and parts and native
    np.testing.assert_array_equal(out, ours[0])  # same sums on two threads


def test_a_strided_1x1_conv_over_many_pixels_stays_on_the_nchw_kernels(monkeypatch):
    built = _builds_with_marks(monkeypatch)
    _check(*_strided_downsample(32, 64, (30, 30), 2, 1))  # 225 output pixels
    assert built == []


def test_1x1_convs_over_larger_images_stay_on_the_nchw_kernels(monkeypatch):
    built = _builds_with_marks(monkeypatch)
    _check(*_resnet_tail(32, 64, 15, 1))  # 225 pixels
    assert built == []


def _dw_chain_net(size=(20, 22), seed=3):
    """stem -> depthwise -> depthwise -> 1x1: a depthwise conv writes the next one's zero border."""
    b = Builder(seed)
    x = b.node("Relu", [b.conv("x", 3, 24, k=3, stride=1)])
    x = b.node("Relu", [b.conv(x, 24, 24, k=3, group=24)])
    x = b.node("Relu", [b.conv(x, 24, 24, k=3, group=24)])
    rng = np.random.default_rng(seed)
    feeds = {"x": rng.standard_normal((1, 3, *size)).astype(np.float32)}
    return b.model({"x": [1, 3, *size]}, [b.conv(x, 24, 40, k=1)]), feeds


@pytest.mark.parametrize("net", ["mobile", "dw_chain"])
@pytest.mark.parametrize("n_threads", [1, 2, 3])
def test_every_padded_border_is_cleared_each_run_however_the_layers_split(net, n_threads, monkeypatch):
    """The arena hands a padded value's block to other values between runs: whatever they leave there,
    its producer clears the border again each run, each part of a split layer its share (a 1x1 split
    over pixels, a stem over rows, a depthwise conv over blocks). With every arena buffer poisoned with
    NaN before each run, the result stays the one-thread result."""
    from bninfer import threads
    from tests.test_threads import _session
    model, feeds = _mobile_net(size=(20, 20)) if net == "mobile" else _dw_chain_net()
    sess, ours = _check(model, feeds)
    assert sum(m.y_pads is not None for m in _marks(sess)) == (3 if net == "mobile" else 2)
    monkeypatch.setattr(threads, "MIN_PART_MACS", 1)
    monkeypatch.setattr(threads, "MIN_NATIVE_PART_MACS", 1)
    monkeypatch.setattr(threads, "MIN_WAKE_MACS", 1)
    sess = _session(model, n_threads)
    plan = next(iter(sess._plans.values()))
    for _ in range(4):  # from Python, recorded, native
        for arena in plan._arenas:
            for buf in arena.bufs:
                if buf is not None:
                    buf.fill(np.nan)
        np.testing.assert_array_equal(sess.run(None, feeds)[0], ours[0])


# -- Winograd convs reading a blocked input ------------------------------------------------------------

def _bottlenecks(cin, mid, size, batch=1, blocks=2, pad=1, seed=0):
    """ResNet-50's bottleneck blocks: 1x1 + BN + ReLU, 3x3 + BN + ReLU, 1x1 + BN, + the block's input,
    ReLU (a 3x3 with pad 0 shrinks the image: then no residual)."""
    b = Builder(seed)
    x = "x"
    for _ in range(blocks):
        h = b.node("Relu", [b.bn(b.conv(x, cin, mid, k=1), mid)])
        h = b.node("Relu", [b.bn(b.conv(h, mid, mid, k=3, pad=pad), mid)])
        y = b.bn(b.conv(h, mid, cin, k=1), cin)
        x = b.node("Relu", [b.node("Add", [y, x])]) if pad == 1 else y
    rng = np.random.default_rng(seed)
    return b.model({"x": [batch, cin, *size]}, [x]), {"x": rng.standard_normal((batch, cin, *size)).astype(np.float32)}


def _winograd_marks(sess) -> list:
    plan = next(iter(sess._plans.values()))
    return [st.node.attrs["_blocked"] for st in plan.steps if st.node.attrs.get("_blocked")
            and st.node.op == "Conv" and plan.graph.values[st.node.inputs[1]].shape[2:] == (3, 3)]


@pytest.mark.parametrize("cin,mid,size,batch,pad,border", [
    (64, 32, (8, 8), 1, 1, (1, 1, 1, 1)), (48, 40, (9, 10), 2, 1, (1, 1, 2, 1)),
    (64, 48, (14, 12), 1, 0, None), (40, 33, (13, 15), 1, 0, (0, 0, 1, 1))])
def test_a_winograd_conv_reads_the_1x1_convs_blocked_output_with_its_border(cin, mid, size, batch, pad, border,
                                                                           monkeypatch):
    """The 1x1 conv before it writes the blocked value with the border the Winograd kernel reads (its
    pads, and what rounds the output up to whole 2x2 tiles: bottom and right of odd sizes); the
    Winograd conv reads it as it is (no packing) and writes the 1x1 conv after it a blocked value."""
    from bninfer.plan import Plan
    model, feeds = _bottlenecks(cin, mid, size, batch, pad=pad)
    sess, ours = _check(model, feeds)
    marks = _winograd_marks(sess)
    assert len(marks) == 2 and all(m.x and m.y and m.x_pads == border and m.y_pads is None for m in marks)
    pads = [m.y_pads for m in _marks(sess) if m.y_pads is not None]
    assert pads == ([border] * 2 if border else [])  # the 1x1 convs before them write that border
    nchw = Plan(sess.optimized_graph(), blocked=False).run(feeds)
    np.testing.assert_allclose(ours[0], nchw[0], rtol=1e-5, atol=1e-5 * np.abs(nchw[0]).max())
    out, parts, native = _split_run(model, feeds, 2, monkeypatch)
    assert parts and native
    np.testing.assert_array_equal(out, ours[0])  # same sums, only on other threads


def test_a_winograd_conv_adding_a_residual_writes_nchw():
    b = Builder(6)
    h = b.node("Relu", [b.bn(b.conv("x", 32, 40, k=1), 40)])
    y = b.node("Relu", [b.node("Add", [b.bn(b.conv(h, 40, 32, k=3), 32), "x"])])
    model = b.model({"x": [2, 32, 9, 10]}, [b.conv(y, 32, 48, k=1)])
    sess, _ = _check(model, {"x": np.random.default_rng(0).standard_normal((2, 32, 9, 10)).astype(np.float32)})
    marks = _winograd_marks(sess)
    assert len(marks) == 1 and marks[0].x and not marks[0].res and not marks[0].y


def test_a_value_a_winograd_conv_shares_with_another_reader_stays_nchw():
    b = Builder(5)
    h = b.node("Relu", [b.conv("x", 32, 32, k=1)])
    y1 = b.conv(h, 32, 32, k=3)  # a Winograd conv and a 1x1 conv read h
    y2 = b.conv(h, 32, 32, k=1)
    h2 = b.node("Relu", [b.conv("x", 32, 32, k=1)])
    y3 = b.conv(h2, 32, 32, k=3)  # two Winograd convs with other borders read h2
    y4 = b.conv(h2, 32, 32, k=3, pad=0)
    model = b.model({"x": [1, 32, 10, 10]}, [y1, y2, y3, y4])
    sess, _ = _check(model, {"x": np.random.default_rng(0).standard_normal((1, 32, 10, 10)).astype(np.float32)})
    assert not _marks(sess)
    alone, feeds = _bottlenecks(32, 32, (10, 10))  # the same convs, each value read by one: blocked
    assert len(_winograd_marks(_check(alone, feeds)[0])) == 2


@pytest.mark.parametrize("cin,cout,h,w,k,stride,dil,pads,rw", [
    (32, 32, 10, 12, 3, 2, 1, (1, 1, 1, 1), 5), (40, 20, 9, 7, 3, 1, 2, (2, 2, 2, 2), 4),
    (16, 48, 11, 13, 5, 2, 1, (2, 1, 2, 1), 4), (33, 16, 6, 9, 3, 3, 1, (0, 1, 1, 0), 5)])
@pytest.mark.parametrize("act,res,post", [(A.RELU, True, False), (A.SWISH, False, False), (A.LEAKY_RELU, False, True)])
def test_the_direct_kernel_reads_a_blocked_input_as_the_planar_one(cin, cout, h, w, k, stride, dil, pads, rw, act,
                                                                   res, post):
    """The same sums in the same order from the blocked layout (border and slack rows included) as from
    the planar one it packs NCHW into: bit for bit, against numpy too."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((cin, h, w)).astype(np.float32)
    wt = (rng.standard_normal((cout, cin, k, k)) / np.sqrt(cin * k * k)).astype(np.float32)
    ph, pw, eh, ew = pads
    hp, wp = h + ph + eh, w + pw + ew
    oh, ow = (hp - dil * (k - 1) - 1) // stride + 1, (wp - dil * (k - 1) - 1) // stride + 1
    cinb, cob = BK.blocks(cin), 16
    extra = -(-(rw * stride + k * dil) // wp)  # rows of slack, as conv.direct_pads gives them
    slack = (rw * stride + k * dil) * 16
    planar = np.zeros((cinb * 16, hp, wp), np.float32)
    planar[:cin, ph:ph + h, pw:pw + w] = x
    planar = np.concatenate([planar.reshape(-1), np.full(slack, np.nan, np.float32)])
    blocked = _to_blocked(x, (ph, pw, eh + extra, ew))  # no slack past its end: the extra rows hold it
    packed = CD.pack_weights(wt, cinb, 16, cob)
    bias, alpha, ps, pt = _epilogue_operands(rng, cout)
    alpha[:] = alpha[0]  # (one for every channel, as the span activations take it)
    r = rng.standard_normal(cout * oh * ow).astype(np.float32) if res else np.zeros(1, np.float32)
    outs = []
    for xb, xp, rows in ((False, planar, hp), (True, blocked, hp + extra)):
        kern = CD.compile_now(CD.direct_kernel(k, k, stride, stride, dil, dil, 16, cob, rw, act, XB=xb), CD.DIRECT_SIG)
        y = np.full(cout * oh * ow, np.nan, np.float32)
        kern(xp, packed, y, cinb, rows, wp, cout, oh, ow, bias, r, res, alpha, 0.0, post, ps, pt, 0)
        outs.append(y)
    np.testing.assert_array_equal(outs[1], outs[0])
    xpad = planar[:cinb * 16 * hp * wp].reshape(-1, hp, wp)[:cin].astype(np.float64)
    want = np.zeros((cout, oh, ow))
    for i in range(k):
        for j in range(k):
            tap = xpad[:, i * dil:i * dil + stride * (oh - 1) + 1:stride, j * dil:j * dil + stride * (ow - 1) + 1:stride]
            want += np.einsum("oc,chw->ohw", wt[:, :, i, j].astype(np.float64), tap)
    want = want.reshape(cout, -1) + bias[:cout, None] + (r.reshape(cout, -1) if res else 0)
    want = ACTS[act](want, alpha[:cout].astype(np.float64)) if act != A.RELU else np.maximum(want, 0)
    if post:
        want = want * ps[:cout, None] + pt[:cout, None]
    np.testing.assert_allclose(outs[1].reshape(cout, -1), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("c,h,w,sh,sw", [(16, 8, 8, 2, 2), (40, 9, 7, 2, 3), (5, 4, 6, 1, 2)])
def test_subsample_takes_every_strided_pixel_of_each_block(c, h, w, sh, sw):
    x = np.random.default_rng(0).standard_normal((c, h, w)).astype(np.float32)
    oh, ow = -(-h // sh), -(-w // sw)
    y = np.full(BK.blocks(c) * oh * ow * 16, np.nan, np.float32)
    CD.compile_now(BK.subsample, BK.SUB_SIG)
    BK.subsample(_to_blocked(x), y, BK.blocks(c), h, w, sh, sw, oh, ow)
    np.testing.assert_array_equal(y, _to_blocked(x[:, ::sh, ::sw]))


def _stage_change(cin, mid, cout, size, batch=1, seed=0):
    """Two bottlenecks, the second ResNet-50's first of a stage: its 3x3 conv strided (the direct
    kernel's), its shortcut a strided 1x1 conv + BN (both read the first block's blocked output)."""
    b = Builder(seed)
    h = b.node("Relu", [b.bn(b.conv("x", cin, mid, k=1), mid)])
    h = b.node("Relu", [b.bn(b.conv(h, mid, mid, k=3), mid)])
    x = b.node("Relu", [b.node("Add", [b.bn(b.conv(h, mid, cin, k=1), cin), "x"])])
    h = b.node("Relu", [b.bn(b.conv(x, cin, mid, k=1), mid)])
    h = b.node("Relu", [b.bn(b.conv(h, mid, mid, k=3, stride=2), mid)])
    y = b.bn(b.conv(h, mid, cout, k=1), cout)
    short = b.bn(b.conv(x, cin, cout, k=1, stride=2, pad=0), cout)
    out = b.node("GlobalAveragePool", [b.node("Relu", [b.node("Add", [y, short])])])
    rng = np.random.default_rng(seed)
    return b.model({"x": [batch, cin, *size]}, [out]), {"x": rng.standard_normal((batch, cin, *size)).astype(np.float32)}


@pytest.mark.parametrize("cin,mid,cout,size,batch", [(64, 32, 96, (16, 16), 1), (48, 40, 80, (15, 17), 2)])
def test_a_strided_stage_change_runs_blocked_through(cin, mid, cout, size, batch, monkeypatch):
    """The strided 3x3 conv (the direct kernel) reads the 1x1 conv's blocked output with its border and
    slack rows; the strided 1x1 shortcut takes its blocked input's strided pixels (kernels.blocked.subsample)."""
    from bninfer.ops import conv as C
    from bninfer.plan import Plan
    model, feeds = _stage_change(cin, mid, cout, size, batch)
    sess, ours = _check(model, feeds)
    plan = next(iter(sess._plans.values()))
    marks = {st.node.name: st.node.attrs["_blocked"] for st in plan.steps if st.node.attrs.get("_blocked")}
    convs = [st.node for st in plan.steps if st.node.op == "Conv"]
    assert len(marks) == len(convs) + 1 == 8  # every conv, and the pool (the strided 3x3 writes NCHW)
    strided3 = [n for n in convs if plan.graph.values[n.inputs[1]].shape[2] == 3 and n.attrs["strides"] == [2, 2]]
    g = C.conv_geometry(strided3[0], [plan.graph.values[v] for v in strided3[0].inputs[:2]])
    m = marks[strided3[0].name]
    assert m.x and not m.y and m.x_pads == C.direct_pads(g) and m.x_pads[2] > g.pads_end[0]
    shortcut = [n for n in convs if plan.graph.values[n.inputs[1]].shape[2] == 1 and n.attrs["strides"] == [2, 2]]
    assert marks[shortcut[0].name].x and marks[shortcut[0].name].y
    nchw = Plan(sess.optimized_graph(), blocked=False).run(feeds)
    np.testing.assert_allclose(ours[0], nchw[0], rtol=1e-5, atol=1e-5 * np.abs(nchw[0]).max())
    out, parts, native = _split_run(model, feeds, 2, monkeypatch)
    assert parts and native
    np.testing.assert_array_equal(out, ours[0])


@pytest.mark.parametrize("k,dil,size", [(3, 1, (6, 6)), (5, 2, (11, 9))])
def test_a_stride_1_conv_on_the_direct_kernel_reads_a_blocked_input(k, dil, size, monkeypatch):
    """Convs the Winograd kernel does not take (an image too small for it, a dilated 5x5) read the 1x1
    conv's blocked output on the direct kernel, with their pads and rows of slack below them."""
    from bninfer.ops import conv as C
    from bninfer.plan import Plan
    b = Builder(8)
    h = b.node("Relu", [b.bn(b.conv("x", 24, 40, k=1), 40)])
    w = b.const("W", (b.rng.standard_normal((48, 40, k, k)) / np.sqrt(40 * k * k)).astype(np.float32))
    y = b.node("Conv", [h, w], pads=[dil * (k // 2)] * 4, dilations=[dil, dil])
    model = b.model({"x": [2, 24, *size]}, [b.conv(b.node("Relu", [y]), 48, 32, k=1)])
    feeds = {"x": np.random.default_rng(0).standard_normal((2, 24, *size)).astype(np.float32)}
    sess, ours = _check(model, feeds)
    plan = next(iter(sess._plans.values()))
    conv = next(st.node for st in plan.steps if plan.graph.values[st.node.inputs[1]].shape[2] == k)
    m = conv.attrs["_blocked"]
    g = C.conv_geometry(conv, [plan.graph.values[v] for v in conv.inputs[:2]])
    assert not C._use_winograd(g) and m.x and not m.y and m.x_pads == C.direct_pads(g)
    nchw = Plan(sess.optimized_graph(), blocked=False).run(feeds)
    np.testing.assert_allclose(ours[0], nchw[0], rtol=1e-5, atol=1e-5 * np.abs(nchw[0]).max())
    out, parts, native = _split_run(model, feeds, 2, monkeypatch)
    np.testing.assert_array_equal(out, ours[0])
