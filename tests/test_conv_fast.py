"""The specialised conv kernels (channel-blocked direct dense conv, depthwise row and blocked kernels)
against onnxruntime: tile remainders, odd widths, strides, dilations, groups, channel counts that are not
multiples of 16, batches, 1-D, and the fused epilogue and prologue."""
import numpy as np
import pytest
from numba import types
from onnx import helper

from bninfer import activations, tiles
from bninfer.kernels import conv_direct as CD
from bninfer.ops import conv as conv_ops
from bninfer.kernels import depthwise as DWK
from tests.test_conv import _model, _ort_plain, _run_fused
from tests.util import assert_matches_ort, randn

# (x shape, w shape, attrs)
DENSE = [
    ((1, 16, 9, 13), (32, 16, 3, 3), dict(pads=[1, 1, 1, 1])),              # remainder tile (13 = 8 + 5)
    ((1, 20, 11, 11), (40, 20, 3, 3), dict(pads=[1, 1, 1, 1])),            # channels not multiples of 16
    ((1, 24, 10, 15), (48, 24, 3, 3), dict(strides=[2, 2], pads=[1, 1, 1, 1])),  # cib 8, stride 2
    ((2, 17, 8, 9), (33, 17, 3, 3), dict(pads=[0, 1, 2, 1])),              # batch 2, uneven pads, cout 33
    ((1, 3, 23, 21), (16, 3, 7, 7), dict(strides=[2, 2], pads=[3, 3, 3, 3])),  # stem: few input channels
    ((1, 8, 12, 12), (12, 8, 3, 3), dict(dilations=[2, 2], pads=[2, 2, 2, 2])),  # dilation
    ((1, 32, 7, 7), (64, 32, 3, 3), dict(pads=[1, 1, 1, 1])),              # width below one tile
    ((1, 16, 15, 17), (8, 16, 5, 3), dict(strides=[1, 2], pads=[2, 1, 2, 1])),
    ((1, 16, 29), (32, 16, 3), dict(pads=[1, 1])),                          # 1-D
    ((1, 1, 12, 12), (5, 1, 3, 3), dict()),
    ((1, 4, 20, 70), (9, 4, 5, 3), dict(strides=[1, 3], dilations=[2, 1], pads=[4, 1, 3, 2])),  # row tile
    ((1, 2, 6, 47), (6, 2, 3, 3), dict(pads=[1, 1, 1, 1])),  # row tiles, the last one moved back
    ((1, 1, 28, 28), (32, 1, 3, 3), dict()),  # MNIST's first layer: rows of 26 in tiles of 16
]


@pytest.mark.parametrize("x_shape,w_shape,attrs", DENSE, ids=str)
def test_direct_dense(x_shape, w_shape, attrs):
    model, feeds = _model("Conv", x_shape, w_shape, True, attrs)
    assert_matches_ort(model, feeds)


DEPTHWISE = [
    ((1, 32, 30, 30), (32, 1, 3, 3), dict(group=32, pads=[1, 1, 1, 1])),            # rows, remainder
    ((1, 20, 33, 35), (20, 1, 3, 3), dict(group=20, strides=[2, 2], pads=[1, 1, 1, 1])),  # rows, stride 2
    ((1, 18, 27, 53), (18, 1, 5, 5), dict(group=18, pads=[2, 2, 2, 2])),            # 5x5 rows
    ((1, 24, 52, 50), (24, 1, 5, 5), dict(group=24, strides=[2, 2], pads=[2, 2, 2, 2])),
    ((1, 40, 14, 14), (40, 1, 3, 3), dict(group=40, pads=[1, 1, 1, 1])),            # blocked
    ((1, 33, 9, 11), (33, 1, 3, 3), dict(group=33, strides=[2, 2], pads=[1, 0, 1, 2])),  # blocked s2
    ((1, 16, 13, 7), (16, 1, 5, 5), dict(group=16, pads=[2, 2, 2, 2])),
    ((1, 20, 5, 5), (20, 1, 3, 3), dict(group=20, pads=[1, 1, 1, 1])),              # blocked, tile = row
    ((1, 24, 9, 9), (24, 1, 3, 3), dict(group=24, pads=[1, 1, 1, 1])),              # blocked, tiles overlap
    ((2, 16, 30, 28), (16, 1, 3, 3), dict(group=16, dilations=[2, 2], pads=[2, 2, 2, 2])),  # dilation, batch
    ((1, 8, 40), (8, 1, 3), dict(group=8, strides=[2], pads=[1, 1])),               # 1-D
    ((1, 8, 50, 61), (8, 1, 3, 3), dict(group=8, strides=[2, 2], pads=[1, 1, 1, 1])),  # rows s2, odd pad/width
    ((1, 8, 20, 98), (8, 1, 3, 3), dict(group=8, strides=[2, 2], pads=[0, 2, 1, 3])),  # rows s2, 16-pair blocks
]


@pytest.mark.parametrize("x_shape,w_shape,attrs", DEPTHWISE, ids=str)
def test_depthwise(x_shape, w_shape, attrs):
    model, feeds = _model("Conv", x_shape, w_shape, True, attrs)
    assert_matches_ort(model, feeds)


FUSED_SHAPES = [
    ((1, 16, 9, 13), (24, 16, 3, 3), dict(pads=[1, 1, 1, 1])),               # dense direct
    ((1, 20, 9, 30), (20, 1, 3, 3), dict(group=20, pads=[1, 1, 1, 1])),      # depthwise rows
    ((1, 20, 9, 10), (20, 1, 3, 3), dict(group=20, strides=[2, 2], pads=[1, 1, 1, 1])),  # depthwise blocked
    ((1, 3, 19, 37), (10, 3, 3, 3), dict(strides=[2, 2], pads=[1, 1, 1, 1])),  # few input channels: row tile
    ((1, 2, 7, 12), (10, 2, 3, 3), dict(pads=[1, 1, 1, 1])),  # row tile wider than the row
    ((1, 20, 9, 61), (20, 1, 3, 3), dict(group=20, strides=[2, 2], pads=[1, 1, 1, 1])),  # depthwise rows s2
    ((1, 20, 10, 64), (20, 1, 3, 3), dict(group=20, strides=[2, 2], pads=[1, 1, 1, 1])),  # s2, whole pairs
    ((1, 20, 3, 40), (20, 1, 3, 3), dict(group=20, pads=[1, 1, 1, 1])),      # depthwise rows, one-row tile
]
ACTS = [None, ("Relu", {}), ("Clip", {"min": 0.0, "max": 6.0})]  # the kernels' special-cased codes
GENERIC = ("HardSwish", {})  # one through the activation table (each code is a separate compile)


# every fused kernel with ReLU; every activation branch on the dense and the depthwise row kernels
# (each (kernel, activation) pair is one more compile: this keeps a cold run short)
FUSED_CASES = ([(shape, ACTS[1]) for shape in FUSED_SHAPES]
               + [(FUSED_SHAPES[i], act) for i in (0, 1) for act in (ACTS[0], ACTS[2], GENERIC)])


@pytest.mark.parametrize("shape,activation", FUSED_CASES, ids=str)
def test_fused(shape, activation):
    x_shape, w_shape, attrs = shape
    from tests.test_conv import _channel, _np_act
    x = randn(*x_shape, seed=3) * 2
    w = randn(*w_shape, seed=4)
    cout = w_shape[0]
    b = randn(cout, seed=5)
    cin = x_shape[1]
    scale, shift = randn(cin, seed=13), randn(cin, seed=14)
    xin = np.maximum(x * _channel(scale, 4) + _channel(shift, 4), 0).astype(np.float32)
    plain = _ort_plain("Conv", xin, w, b, attrs)
    res = randn(*plain.shape, seed=6)
    ps, pt = randn(cout, seed=8), randn(cout, seed=9)
    expect = _np_act(activation, plain + res) * _channel(ps, 4) + _channel(pt, 4) \
        if activation is None or activation[0] != "HardSwish" else None
    if expect is None:
        v = plain + res
        expect = (v * np.clip(v / 6 + 0.5, 0, 1)) * _channel(ps, 4) + _channel(pt, 4)
    extras = {"residual": res, "post_scale": ps, "post_shift": pt, "pre_scale": scale, "pre_shift": shift}
    ours = _run_fused("Conv", x, w, b, attrs, activation=activation, pre_activation=("Relu", {}),
                      extras=extras)
    np.testing.assert_allclose(ours, expect, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("activation", [ACTS[2], GENERIC], ids=str)
@pytest.mark.parametrize("post", [False, True])
def test_blocked_depthwise_without_residual(activation, post):
    """The blocked depthwise kernel's vector epilogue (whole blocks of 16 channels, no residual) beside
    its element-wise one (the last, partial block): 40 channels, stride 1 and 2."""
    from tests.test_conv import _channel, _np_act
    for x_shape, attrs in [((1, 40, 9, 10), dict(group=40, pads=[1, 1, 1, 1])),
                           ((1, 40, 14, 13), dict(group=40, strides=[2, 2], pads=[1, 1, 1, 1]))]:
        x, w, b = randn(*x_shape, seed=3) * 2, randn(40, 1, 3, 3, seed=4), randn(40, seed=5)
        plain = _ort_plain("Conv", x, w, b, attrs)
        ps, pt = randn(40, seed=8), randn(40, seed=9)
        if activation[0] == "HardSwish":
            expect = plain * np.clip(plain / 6 + 0.5, 0, 1)
        else:
            expect = _np_act(activation, plain)
        extras = {}
        if post:
            expect = expect * _channel(ps, 4) + _channel(pt, 4)
            extras = {"post_scale": ps, "post_shift": pt}
        ours = _run_fused("Conv", x, w, b, attrs, activation=activation, extras=extras)
        np.testing.assert_allclose(ours, expect, rtol=1e-4, atol=1e-5)


def test_nan_in_remainder_does_not_leak():
    """The last tile of a row reads past the row (slack): NaN there must not reach valid outputs."""
    model, feeds = _model("Conv", (1, 16, 5, 11), (32, 16, 3, 3), True, dict(pads=[1, 1, 1, 1]))
    feeds["x"][0, 3, 4, 10] = np.nan
    out = assert_matches_ort(model, feeds)[0]
    assert np.isnan(out[0, :, 3:5, 9:11]).all() and not np.isnan(out[0, :, :3]).any()


def test_compile_settings_restored():
    import numba
    before = numba.config.SLP_VECTORIZE, numba.config.LOOP_VECTORIZE
    CD.compile_now(CD.direct_kernel(3, 3, 1, 1, 1, 1, 16, 32, 8, 1), CD.DIRECT_SIG)
    assert (numba.config.SLP_VECTORIZE, numba.config.LOOP_VECTORIZE) == before


def test_kernels_shared_between_nodes():
    assert CD.direct_kernel(3, 3, 1, 1, 1, 1, 16, 32, 8, 1) is CD.direct_kernel(3, 3, 1, 1, 1, 1, 16, 32, 8, 1)
    assert DWK.depthwise_kernel(3, 3, 1, 1, 16, 1) is DWK.depthwise_kernel(3, 3, 1, 1, 16, 1)


POINTWISE = [
    ((1, 24, 12, 12), (40, 24, 1, 1), dict()),                       # 144 px: full tiles + remainder
    ((2, 5, 8, 16), (13, 5, 1, 1), dict()),                          # 128 px, cout below one tile, batch 2
    ((1, 64, 7, 7), (30, 64, 1, 1), dict()),                         # 49 px: direct kernel instead
    ((1, 16, 17, 19), (20, 16, 1, 1), dict(strides=[2, 2])),         # strided: subsampled first
    ((1, 16, 160), (12, 16, 1), dict()),                             # 1-D
    ((2, 70, 14, 14), (26, 70, 1, 1), dict()),                       # 196 px: overlapping last tile, batch 2
    ((1, 8, 29, 29), (12, 8, 1, 1), dict(strides=[2, 2])),           # 225 px after subsampling
]


@pytest.mark.parametrize("x_shape,w_shape,attrs", POINTWISE, ids=str)
def test_pointwise(x_shape, w_shape, attrs):
    model, feeds = _model("Conv", x_shape, w_shape, True, attrs)
    assert_matches_ort(model, feeds)


@pytest.mark.parametrize("P,tile", [(P, t) for t in tiles.WIDE.pointwise + tiles.NARROW.pointwise
                                    for P in (16, 17, 24, 25, 32, 33, 63, 100)
                                    if P >= t[1]], ids=str)
@pytest.mark.parametrize("tpc", [0, 1, 2])  # pixels in one chunk, or in chunks of one or two tiles
def test_pointwise_kernel_last_tile_overlaps(P, tile, tpc):
    """Every P >= the pixel tile, for every tile a layer may choose: the last tile is moved back to end
    at P; its outputs (with residual and a per-channel affine) equal a float64 reference, and nothing
    past P is written."""
    cin, cout = 7, 15
    cot, pxt = tile
    x, w = randn(cin, P, seed=P), randn(cout, cin, seed=P + 1)
    b, res, ps, pt = randn(cout, seed=2), randn(cout, P, seed=3), randn(cout, seed=4), randn(cout, seed=5)
    kern = CD.pointwise_kernel(cot, pxt, activations.RELU, -1, True, True)  # applied inline in the tile store
    CD.compile_now(kern, CD.PW_SIG)
    out = np.full(cout * P + 40, 7.0, np.float32)
    kern(x.reshape(-1), CD.pack_weights_pw(w, cot), out, cin, cout, P, 0, P, b, res.reshape(-1),
         np.zeros(cout, np.float32), 0.0, ps, pt, tpc, *_NO_PROLOGUE(cin))
    ref = (np.maximum(w.astype(np.float64) @ x + b[:, None] + res, 0) * ps[:, None] + pt[:, None])
    np.testing.assert_allclose(out[:cout * P].reshape(cout, P), ref, rtol=1e-5, atol=1e-5)
    assert (out[cout * P:] == 7.0).all()


@pytest.mark.parametrize("P", [16, 33, 70])
@pytest.mark.parametrize("tpc", [0, 1, 2])
def test_pointwise_kernel_span_activation_per_chunk(P, tpc):
    """A span activation (SiLU; then Swish with alpha 1.5) runs over each chunk of pixels after each
    block of output channels, residual and affine included: every output activated exactly once, the
    pixels a moved-back last tile shares with its neighbour too, and nothing past P written."""
    cin, cout = 7, 15
    cot, pxt = tiles.HOST.pointwise[0]
    if P < pxt:
        pytest.skip("P below the host's pixel tile")
    x, w = randn(cin, P, seed=P), randn(cout, cin, seed=P + 1)
    b, res, ps, pt = randn(cout, seed=2), randn(cout, P, seed=3), randn(cout, seed=4), randn(cout, seed=5)
    kern = CD.pointwise_kernel(cot, pxt, activations.SWISH, -1, True, True)
    CD.compile_now(kern, CD.PW_SIG)
    for a in (1.0, 1.5):
        alpha = np.full(cout, a, np.float32)
        out = np.full(cout * P + 40, 7.0, np.float32)
        kern(x.reshape(-1), CD.pack_weights_pw(w, cot), out, cin, cout, P, 0, P, b, res.reshape(-1), alpha, 0.0,
             ps, pt, tpc, *_NO_PROLOGUE(cin))
        y = w.astype(np.float64) @ x + b[:, None] + res
        ref = y / (1 + np.exp(-a * y)) * ps[:, None] + pt[:, None]
        np.testing.assert_allclose(out[:cout * P].reshape(cout, P), ref, rtol=1e-5, atol=1e-5)
        assert (out[cout * P:] == 7.0).all()


@pytest.mark.parametrize("act,pre", [(activations.RELU, -1), (activations.SWISH, -1),
                                     (activations.NONE, activations.RELU)])
@pytest.mark.parametrize("cuts", [(0, 16, 48, 70), (0, 35, 70), (0, 19, 51, 70)])
@pytest.mark.parametrize("tpc", [0, 1])
def test_pointwise_kernel_over_pixel_ranges_gives_the_whole_layer(act, pre, cuts, tpc):
    """Calls over pixel ranges that cover P (threads' shares; a range need not be a multiple of the tile:
    its last tile moves back to end at the range's end) give the whole layer's output, residual, affine,
    span activation and prologue included, and each call writes only its own pixels."""
    cin, cout, P = 9, 15, 70
    cot, pxt = tiles.HOST.pointwise[0]
    if min(b - a for a, b in zip(cuts, cuts[1:])) < pxt:
        pytest.skip("a range below the host's pixel tile")
    x, w = randn(cin, P, seed=1) * 2, randn(cout, cin, seed=2)
    b, res, ps, pt = randn(cout, seed=3), randn(cout, P, seed=4), randn(cout, seed=5), randn(cout, seed=6)
    scale, shift = randn(cin, seed=7), randn(cin, seed=8)
    kern = CD.pointwise_kernel(cot, pxt, act, pre, True, act != activations.SWISH)
    CD.compile_now(kern, CD.PW_SIG)
    xs = np.zeros(CD.pw_scratch_size(cin, P, pxt, tpc), np.float32)
    pro = (scale, shift, np.zeros(cin, np.float32), 0.0, xs) if pre >= 0 else _NO_PROLOGUE(cin)
    alpha = np.ones(cout, np.float32)
    post = (ps, pt) if act != activations.SWISH else (np.ones(cout, np.float32), np.zeros(cout, np.float32))
    out = np.full(cout * P, 7.0, np.float32)
    for q0, q1 in zip(cuts, cuts[1:]):
        before = out.reshape(cout, P).copy()
        kern(x.reshape(-1), CD.pack_weights_pw(w, cot), out, cin, cout, P, q0, q1, b, res.reshape(-1), alpha, 0.0,
             *post, tpc, *pro)
        outside = np.ones(P, bool)
        outside[q0:q1] = False
        np.testing.assert_array_equal(out.reshape(cout, P)[:, outside], before[:, outside])
    xin = np.maximum(x * scale[:, None] + shift[:, None], 0) if pre >= 0 else x
    y = w.astype(np.float64) @ xin + b[:, None] + res
    y = np.maximum(y, 0) if act == activations.RELU else y / (1 + np.exp(-y)) if act == activations.SWISH else y
    ref = y * post[0][:, None] + post[1][:, None]
    np.testing.assert_allclose(out.reshape(cout, P), ref, rtol=1e-5, atol=1e-5)


def _NO_PROLOGUE(cin):
    return (np.ones(cin, np.float32), np.zeros(cin, np.float32), np.zeros(cin, np.float32), 0.0,
            np.zeros(0, np.float32))


PW_PROLOGUES = [  # (activation code, alpha per channel?, beta)
    (activations.NONE, False, 0.0),
    (activations.RELU, False, 0.0),
    (activations.PRELU, True, 0.0),
    (activations.CLIP, False, 6.0),  # alpha is the lower bound, beta the upper
]


@pytest.mark.parametrize("tpc", [0, 1, 3])  # one chunk of all pixels, chunks of one or three tiles
@pytest.mark.parametrize("code,per_channel,beta", PW_PROLOGUES, ids=str)
def test_pointwise_kernel_prologue(code, per_channel, beta, tpc):
    """The fused prologue act(x * scale + shift) of the pointwise kernel, negative scales included,
    against a float64 reference; P = 70 also covers the overlapping last tile. The prologue goes
    through a scratch of pw_scratch_size floats, which it never overruns."""
    cin, cout, P = 37, 26, 70
    _check_pointwise_prologue(cin, cout, P, code, per_channel, beta, tpc, activations.NONE)


@pytest.mark.parametrize("tpc", [0, 1])
def test_pointwise_kernel_prologue_with_a_span_activation(tpc):
    """A span activation (here Sigmoid) after the prologue, in one chunk or in chunks of one tile (the
    second moved back over the first)."""
    _check_pointwise_prologue(19, 20, 45, activations.RELU, False, 0.0, tpc, activations.SIGMOID)


def _check_pointwise_prologue(cin, cout, P, code, per_channel, beta, tpc, act):
    x, w = randn(cin, P, seed=1) * 3, randn(cout, cin, seed=2)
    b = randn(cout, seed=3)
    scale, shift = randn(cin, seed=4), randn(cin, seed=5)
    scale[::3] *= -1
    alpha = randn(cin, seed=6) * 0.3 if per_channel else np.full(cin, -1.0 if code == activations.CLIP else 0.0,
                                                                  np.float32)
    kern = CD.pointwise_kernel(12, 32, act, code)
    CD.compile_now(kern, CD.PW_SIG)
    out = np.full(cout * P, np.nan, np.float32)
    size = CD.pw_scratch_size(cin, P, 32, tpc)
    xs = np.full(size + 64, np.nan, np.float32)
    kern(x.reshape(-1), CD.pack_weights_pw(w, 12), out, cin, cout, P, 0, P, b, np.zeros(0, np.float32),
         np.zeros(cout, np.float32), 0.0, b, b, tpc, scale, shift, alpha, beta, xs)
    assert np.isnan(xs[size:]).all(), "the prologue wrote past its scratch"
    v = x.astype(np.float64) * scale[:, None] + shift[:, None]
    if code == activations.RELU:
        v = np.maximum(v, 0)
    elif code == activations.PRELU:
        v = np.where(v < 0, v * alpha[:, None], v)
    elif code == activations.CLIP:
        v = np.clip(v, -1.0, beta)
    want = w.astype(np.float64) @ v + b[:, None]
    if act == activations.SIGMOID:
        want = 1 / (1 + np.exp(-want))
    np.testing.assert_allclose(out.reshape(cout, P), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("code,per_channel,beta", PW_PROLOGUES + [(activations.SIGMOID, False, 0.0)], ids=str)
def test_prologue_planes_writes_each_channels_chunk_and_nothing_past_it(code, per_channel, beta):
    """The pointwise kernel's prologue over one chunk (21 pixels from pixel 5 of each 40-pixel plane, not
    a multiple of a vector) against float64, and the kernels call the one loop-vectorized build of it
    rather than compiling a scalar one of their own (a second signature)."""
    cin, P, q0, nq = 7, 40, 5, 21
    x = randn(cin, P, seed=7) * 3
    scale, shift = randn(cin, seed=8), randn(cin, seed=9)
    scale[::2] *= -1
    alpha = randn(cin, seed=10) * 0.3 if per_channel else np.full(cin, -1.0 if code == activations.CLIP else 0.0,
                                                                  np.float32)
    CD.compile_now(CD.pointwise_kernel(12, 32, activations.NONE, activations.RELU), CD.PW_SIG)
    assert CD.prologue_planes.signatures == [CD.PROLOGUE_SIG]
    xs = np.full(cin * nq + 16, np.nan, np.float32)
    CD.prologue_planes(x.reshape(-1), P, q0, xs, nq, cin, scale, shift, alpha, code, beta)
    assert np.isnan(xs[cin * nq:]).all()
    v = x[:, q0:q0 + nq].astype(np.float64) * scale[:, None] + shift[:, None]
    want = {activations.NONE: v, activations.RELU: np.maximum(v, 0),
            activations.PRELU: np.where(v < 0, v * alpha[:, None], v), activations.CLIP: np.clip(v, -1.0, beta),
            activations.SIGMOID: 1 / (1 + np.exp(-v))}[code]
    np.testing.assert_allclose(xs[:cin * nq].reshape(cin, nq), want, rtol=1e-6, atol=1e-6)


def test_pointwise_kernel_refuses_a_prologue_it_cannot_inline():
    with pytest.raises(ValueError, match="prologue activation"):
        CD.pointwise_kernel(12, 32, activations.NONE, activations.SIGMOID, cache=False)


@pytest.mark.parametrize("x_shape,w_shape,attrs", [
    ((1, 24, 12, 12), (40, 24, 1, 1), dict()),                # 144 px
    ((1, 16, 29, 29), (20, 16, 1, 1), dict(strides=[2, 2])),  # strided: subsampled, then the prologue
], ids=str)
@pytest.mark.parametrize("pre", [("Relu", {}), ("Sigmoid", {})], ids=str)  # Sigmoid: not inlined, packed
def test_pointwise_with_prologue_routed(x_shape, w_shape, attrs, pre, monkeypatch):
    """A 1x1 conv behind a BN->ReLU (pre-activation nets) runs on the pointwise kernel, the prologue
    fused into its loads; a prologue it cannot inline takes the packing path."""
    from tests.test_conv import _channel, _np_act
    x, w, b = randn(*x_shape, seed=3) * 2, randn(*w_shape, seed=4), randn(w_shape[0], seed=5)
    cin = x_shape[1]
    scale, shift = randn(cin, seed=13), randn(cin, seed=14)
    scale[1::2] *= -1
    xin = _np_act(pre, x * _channel(scale, 4) + _channel(shift, 4)).astype(np.float32)
    expect = np.maximum(_ort_plain("Conv", xin, w, b, attrs), 0)
    made = []
    factory = CD.pointwise_kernel
    monkeypatch.setattr(CD, "pointwise_kernel", lambda *a, **k: made.append(a) or factory(*a, **k))
    ours = _run_fused("Conv", x, w, b, attrs, activation=("Relu", {}), pre_activation=pre,
                      extras={"pre_scale": scale, "pre_shift": shift})
    np.testing.assert_allclose(ours, expect, rtol=1e-4, atol=1e-5)
    assert [a[2:4] for a in made] == ([(activations.RELU, activations.RELU)] if pre[0] == "Relu" else [])
    assert all(a[:2] in tiles.HOST.pointwise for a in made)


@pytest.mark.parametrize("activation", ACTS[:3], ids=str)
def test_pointwise_fused(activation):
    from tests.test_conv import _channel, _np_act
    x, w, b = randn(1, 24, 12, 12, seed=3), randn(40, 24, 1, 1, seed=4), randn(40, seed=5)
    plain = _ort_plain("Conv", x, w, b, {})
    res = randn(*plain.shape, seed=6)
    ps, pt = randn(40, seed=8), randn(40, seed=9)
    expect = _np_act(activation, plain + res) * _channel(ps, 4) + _channel(pt, 4)
    ours = _run_fused("Conv", x, w, b, {}, activation=activation,
                      extras={"residual": res, "post_scale": ps, "post_shift": pt})
    np.testing.assert_allclose(ours, expect, rtol=1e-4, atol=1e-5)
    ours = _run_fused("Conv", x, w, b, {}, activation=activation)
    np.testing.assert_allclose(ours, _np_act(activation, plain), rtol=1e-4, atol=1e-5)


def _prologue_reference(x, scale, shift, alpha, code, beta):
    v = x * scale[:, None, None] + shift[:, None, None]
    if code == activations.RELU:
        return np.maximum(v, 0)
    if code == activations.PRELU:
        return np.where(v < 0, v * alpha[:, None, None], v)
    if code == activations.CLIP:
        return np.clip(v, alpha[:, None, None], beta)
    if code == activations.SIGMOID:
        return 1 / (1 + np.exp(-v))
    return v


PACK_PROLOGUES = [(activations.NONE, 0.0), (activations.RELU, 0.0), (activations.PRELU, 0.0),
                  (activations.CLIP, 0.5), (activations.SIGMOID, 0.0)]  # Sigmoid: the apply() fallback


@pytest.mark.parametrize("code,beta", PACK_PROLOGUES, ids=str)
def test_packers_apply_the_prologue(code, beta):
    """Every packing path with a fused prologue (contiguous rows, the stride-2 deinterleave with even
    and odd left pads, stride 3, the 16-channel blocked layout and its channel remainder) equals the
    plain packing of act(x * scale + shift), with negative scales and NaN kept."""
    C, H, W = 20, 3, 11
    x = randn(C, H, W, seed=1) * 3
    x[2, 1, 4] = np.nan
    scale, shift, alpha = randn(C, seed=2), randn(C, seed=3), randn(C, seed=4) * 0.3
    scale[::2] *= -1
    if code == activations.CLIP:
        alpha = np.full(C, -0.5, np.float32)
    pre = _prologue_reference(x, scale, shift, alpha, code, beta).astype(np.float32)
    one, zero = np.ones(C, np.float32), np.zeros(C, np.float32)
    for SW, PW in ((1, 2), (2, 0), (2, 1), (3, 1), (3, 2)):
        Hp, Wq = H + 2, -(-(W + 2 * PW) // SW) + 2
        ours, ref = np.zeros(C * Hp * SW * Wq, np.float32), np.zeros(C * Hp * SW * Wq, np.float32)
        DWK.pack_rows(x.reshape(-1), ours, C, H, W, Hp, SW, Wq, 1, PW, True, scale, shift, code, alpha, beta)
        DWK.pack_rows(pre.reshape(-1), ref, C, H, W, Hp, SW, Wq, 1, PW, False, one, zero, 0, zero, 0.0)
        np.testing.assert_allclose(ours, ref, rtol=2e-6, atol=1e-6, err_msg=f"SW {SW} PW {PW}")
    Hp, Wp = H + 2, W + 3
    ours, ref = np.zeros(32 * Hp * Wp, np.float32), np.zeros(32 * Hp * Wp, np.float32)
    CD.pack_input(x.reshape(-1), ours, C, H, W, 16, Hp, Wp, 1, 2, True, scale, shift, code, alpha, beta)
    CD.pack_input(pre.reshape(-1), ref, C, H, W, 16, Hp, Wp, 1, 2, False, one, zero, 0, zero, 0.0)
    np.testing.assert_allclose(ours, ref, rtol=2e-6, atol=1e-6)


@pytest.mark.parametrize("PW,pre", [(0, False), (1, False), (1, True), (2, True)], ids=str)
def test_pack_rows_stride2_pairs(PW, pre):
    """Even rows at stride 2 are split as 64-bit pairs (deinterleave): against the layout built in
    numpy from a padded plane, with the prologue applied in place after the split."""
    C, H, W, PH = 5, 4, 38, 1
    Hp = H + 2 * PH
    Wpad = W + 2 * PW
    Wq = -(-Wpad // 2) + 1
    x = randn(C, H, W, seed=1) * 3
    scale, shift = randn(C, seed=2), randn(C, seed=3)
    scale[::2] *= -1
    zero, one = np.zeros(C, np.float32), np.ones(C, np.float32)
    v = np.maximum(x * scale[:, None, None] + shift[:, None, None], 0) if pre else x
    plane = np.zeros((C, Hp, 2 * Wq), np.float32)
    plane[:, PH:PH + H, PW:PW + W] = v
    ref = np.stack([plane[:, :, 0::2], plane[:, :, 1::2]], axis=2)  # (C, Hp, phase, Wq)
    ours = np.zeros(C * Hp * 2 * Wq, np.float32)
    DWK.pack_rows(x.reshape(-1), ours, C, H, W, Hp, 2, Wq, PH, PW, pre, scale if pre else one,
                  shift if pre else zero, activations.RELU if pre else 0, zero, 0.0)
    np.testing.assert_allclose(ours.reshape(C, Hp, 2, Wq), ref, rtol=2e-6, atol=1e-6)


def test_nchw_kernels_call_the_spans_with_a_plain_bool():
    """The NCHW kernels' affine flag is a compile-time constant; handed to an activation span as it is,
    Numba compiles a Literal[bool] specialisation of the span (a scalar loop, 13x slower). Fresh
    compiles of the pointwise, row-vectorized and depthwise kernels with a span activation leave only
    the span's plain signature."""
    code = activations.HARD_SIGMOID
    CD.compile_now(CD.pointwise_kernel(16, 16, code, -1, True, False, cache=False), CD.PW_SIG)
    CD.compile_now(CD.rowvec_kernel(3, 3, 2, 2, 1, 1, 16, 16, code, cache=False), CD.ROWVEC_SIG)
    CD.compile_now(DWK.depthwise_kernel(3, 3, 1, 1, 16, code, cache=False), DWK.DW_SIG)
    sigs = activations.SPANS[code].signatures
    assert sigs and not any(isinstance(t, types.Literal) for sig in sigs for t in sig), sigs
