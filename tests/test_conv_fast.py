"""The specialised conv kernels (channel-blocked direct dense conv, depthwise row and blocked kernels)
against onnxruntime: tile remainders, odd widths, strides, dilations, groups, channel counts that are not
multiples of 16, batches, 1-D, and the fused epilogue and prologue."""
import numpy as np
import pytest
from onnx import helper

from bninfer import activations
from bninfer.kernels import conv_direct as CD
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
    ((1, 20, 9, 61), (20, 1, 3, 3), dict(group=20, strides=[2, 2], pads=[1, 1, 1, 1])),  # depthwise rows s2
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


@pytest.mark.parametrize("P", [32, 33, 63, 100])
def test_pointwise_kernel_last_tile_overlaps(P):
    """Every P >= the pixel tile: the last tile is moved back to end at P; its outputs (with residual
    and a per-channel affine) equal a float64 reference, and nothing past P is written."""
    cin, cout = 7, 15
    cot, pxt = 12, 32
    x, w = randn(cin, P, seed=P), randn(cout, cin, seed=P + 1)
    b, res, ps, pt = randn(cout, seed=2), randn(cout, P, seed=3), randn(cout, seed=4), randn(cout, seed=5)
    kern = CD.pointwise_kernel(cot, pxt, activations.RELU)  # applied inline in the tile store
    CD.compile_now(kern, CD.PW_SIG)
    out = np.full(cout * P + 40, 7.0, np.float32)
    kern(x.reshape(-1), CD.pack_weights_pw(w, cot), out, cin, cout, P, b, res.reshape(-1), True,
         np.zeros(cout, np.float32), 0.0, True, ps, pt, 0)
    ref = (np.maximum(w.astype(np.float64) @ x + b[:, None] + res, 0) * ps[:, None] + pt[:, None])
    np.testing.assert_allclose(out[:cout * P].reshape(cout, P), ref, rtol=1e-5, atol=1e-5)
    assert (out[cout * P:] == 7.0).all()


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
