"""Winograd F(2x2, 3x3) kernel (bninfer.kernels.winograd) against onnxruntime: the ResNet layer shapes, odd
output sizes (not multiples of 2), channel counts that are not multiples of 16 or 32, uneven pads, batches,
every epilogue branch (None / Relu / Clip fast paths, the activation table, residual, post affine), the
prologue, thread safety and the disk cache in a second process. The selection thresholds are lowered so
that every case here takes the Winograd path whatever conv.py selects for real models."""
import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest
from onnx import helper

from bninfer import activations as A
from bninfer.kernels import winograd as WG
from bninfer.ops import conv as C
from tests.test_conv import _channel, _np_act, _ort_plain, _run_fused
from tests.util import assert_matches_ort, make_model, randn


@pytest.fixture(autouse=True)
def force_winograd(monkeypatch):
    """Take the Winograd path for every eligible shape, and record that it was taken."""
    monkeypatch.setattr(C, "_WINO_MIN_CIN", 1)
    monkeypatch.setattr(C, "_WINO_MIN_SIZE", 1)
    calls = []
    real = C._winograd_conv

    def spy(*a, **k):
        calls.append(a[0])
        return real(*a, **k)
    monkeypatch.setattr(C, "_winograd_conv", spy)
    return calls


P1 = dict(pads=[1, 1, 1, 1])
SHAPES = [
    ((1, 64, 56, 56), (64, 64, 3, 3), P1),                     # the ResNet layers
    ((1, 128, 28, 28), (128, 128, 3, 3), P1),
    ((1, 256, 14, 14), (256, 256, 3, 3), P1),
    ((1, 512, 7, 7), (512, 512, 3, 3), P1),                    # odd output: half tiles at the edges
    ((1, 20, 9, 13), (40, 20, 3, 3), P1),                      # channels not multiples of 16 / 32
    ((1, 33, 11, 10), (17, 33, 3, 3), dict(pads=[0, 1, 2, 0])),  # uneven pads, odd output height
    ((2, 16, 8, 9), (48, 16, 3, 3), dict()),                   # batch 2, no pads: 6 x 7 output
    ((1, 5, 5, 7), (70, 5, 3, 3), dict(pads=[2, 2, 2, 2])),    # pads wider than the kernel's reach
    ((1, 24, 6, 15), (24, 24, 3, 3), dict(auto_pad="SAME_UPPER")),
    ((1, 16, 3, 3), (5, 16, 3, 3), dict()),                    # a single output pixel
]


def _scaled_model(x_shape, w_shape, bias, attrs):
    """Random input, weights scaled as a trained layer's (variance 1 / fan-in: outputs of order 1; with
    unscaled weights outputs reach ~100 and even onnxruntime's direct convolution differs from float64 by
    more than atol 1e-5)."""
    x = randn(*x_shape, seed=0)
    w = (randn(*w_shape, seed=1) / np.sqrt(w_shape[1] * 9)).astype(np.float32)
    consts = {"w": w, "b": randn(w_shape[0], seed=2)} if bias else {"w": w}
    model = make_model([helper.make_node("Conv", ["x", *consts], ["y"], **attrs)],
                       {"x": list(x_shape)}, ["y"], consts)
    return model, {"x": x}


@pytest.mark.parametrize("x_shape,w_shape,attrs", SHAPES, ids=str)
def test_matches_ort(x_shape, w_shape, attrs, force_winograd):
    model, feeds = _scaled_model(x_shape, w_shape, True, attrs)
    assert_matches_ort(model, feeds)
    assert force_winograd, "Winograd path not taken"


def test_no_bias(force_winograd):
    model, feeds = _scaled_model((1, 16, 10, 10), (32, 16, 3, 3), False, P1)
    assert_matches_ort(model, feeds)
    assert force_winograd


ACTS = [None, ("Relu", {}), ("Clip", {"min": -0.5, "max": 1.5}), ("HardSwish", {})]
FUSED_SHAPE = ((1, 20, 9, 11), (40, 20, 3, 3), P1)


def _np(activation, v):
    if activation is not None and activation[0] == "HardSwish":
        return v * np.clip(v / 6 + 0.5, 0, 1)
    return _np_act(activation, v)


@pytest.mark.parametrize("activation", ACTS, ids=str)
def test_fused(activation, force_winograd):
    """Activation alone (applied in the vectorized output transform) and with residual, post affine and
    a prologue (activation after the residual, prologue applied while packing: the halo stays zero)."""
    x_shape, w_shape, attrs = FUSED_SHAPE
    x, w, b = randn(*x_shape, seed=3) * 2, randn(*w_shape, seed=4), randn(w_shape[0], seed=5)
    cout, cin = w_shape[:2]
    plain = _ort_plain("Conv", x, w, b, attrs)
    ours = _run_fused("Conv", x, w, b, attrs, activation=activation)
    np.testing.assert_allclose(ours, _np(activation, plain), rtol=1e-4, atol=1e-5)

    scale, shift = randn(cin, seed=13), randn(cin, seed=14)
    xin = np.maximum(x * _channel(scale, 4) + _channel(shift, 4), 0).astype(np.float32)
    plain = _ort_plain("Conv", xin, w, b, attrs)
    res = randn(*plain.shape, seed=6)
    ps, pt = randn(cout, seed=8), randn(cout, seed=9)
    expect = _np(activation, plain + res) * _channel(ps, 4) + _channel(pt, 4)
    extras = {"residual": res, "post_scale": ps, "post_shift": pt, "pre_scale": scale, "pre_shift": shift}
    ours = _run_fused("Conv", x, w, b, attrs, activation=activation, pre_activation=("Relu", {}),
                      extras=extras)
    np.testing.assert_allclose(ours, expect, rtol=1e-4, atol=1e-5)
    assert len(force_winograd) == 2


def test_broadcast_residual_and_post_only(force_winograd):
    x, w, b = randn(1, 16, 7, 12, seed=1), randn(24, 16, 3, 3, seed=2), randn(24, seed=3)
    plain = _ort_plain("Conv", x, w, b, P1)
    res = randn(1, 24, 1, 12, seed=4)  # broadcast over rows
    ours = _run_fused("Conv", x, w, b, P1, activation=("Relu", {}), extras={"residual": res})
    np.testing.assert_allclose(ours, np.maximum(plain + res, 0), rtol=1e-4, atol=1e-5)
    ps, pt = randn(24, seed=5), randn(24, seed=6)
    ours = _run_fused("Conv", x, w, b, P1, activation=("Clip", {"min": 0.0, "max": 6.0}),
                      extras={"post_scale": ps, "post_shift": pt})
    np.testing.assert_allclose(ours, np.clip(plain, 0, 6) * _channel(ps, 4) + _channel(pt, 4),
                               rtol=1e-4, atol=1e-5)


def test_not_selected_for_other_geometries():
    from bninfer import ir
    x = ir.Value("x", (1, 16, 9, 9), np.dtype(np.float32))
    for w_shape, attrs, want in [((16, 16, 3, 3), dict(pads=[1, 1, 1, 1]), True),
                                 ((16, 16, 3, 3), dict(strides=[2, 2], pads=[1, 1, 1, 1]), False),
                                 ((16, 16, 3, 3), dict(dilations=[2, 2], pads=[2, 2, 2, 2]), False),
                                 ((16, 8, 3, 3), dict(group=2, pads=[1, 1, 1, 1]), False),
                                 ((16, 16, 5, 5), dict(pads=[2, 2, 2, 2]), False),
                                 ((16, 16, 3, 1), dict(pads=[1, 0, 1, 0]), False)]:
        node = ir.Node("Conv", "c", ["x", "w"], ["y"], {"auto_pad": "NOTSET", **attrs})
        g = C.conv_geometry(node, [x, ir.Value("w", w_shape, np.dtype(np.float32))])
        assert C._use_winograd(g) == want, (w_shape, attrs)
    x1 = ir.Value("x", (1, 16, 9), np.dtype(np.float32))
    node = ir.Node("Conv", "c", ["x", "w"], ["y"], {"auto_pad": "NOTSET", "pads": [1, 1]})
    assert not C._use_winograd(C.conv_geometry(node, [x1, ir.Value("w", (16, 16, 3), np.dtype(np.float32))]))


@pytest.mark.parametrize("cout,cin", [(1, 1), (33, 17), (64, 48)])
def test_weight_transform_is_g_g_gt_rounded_once(cout, cin):
    """U[16][NOB][CINP][COB] holds G g G^T computed in float64 and rounded once, zero elsewhere; weights
    spanning 20 binary orders of magnitude make a float32 intermediate rounding show."""
    from bninfer.kernels import winograd as WG
    rng = np.random.default_rng(cout)
    w = (rng.standard_normal((cout, cin, 3, 3)) * np.exp(rng.uniform(-7, 7, (cout, cin, 3, 3)))).astype(np.float32)
    G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]])
    u = np.einsum("ik,ockl,jl->ijoc", G, w.astype(np.float64), G).reshape(16, cout, cin)
    nob, cinp = -(-cout // WG.COB), -(-cin // 16) * 16
    want = np.zeros((16, nob * WG.COB, cinp))
    want[:, :cout, :cin] = u
    want = want.reshape(16, nob, WG.COB, cinp).transpose(0, 1, 3, 2).astype(np.float32).reshape(-1)
    got = WG.transform_weights(w)
    assert got.dtype == np.float32 and got.ctypes.data % 64 == 0
    np.testing.assert_array_equal(got, want)
    poisoned = np.full(got.size, np.nan, np.float32)  # every word is written, the zero padding included
    WG._transform_into(w, poisoned, nob, cinp)
    np.testing.assert_array_equal(poisoned, want)


def test_float64_reference():
    """Kernel output against a float64 direct convolution: F(2x2) error stays at float32 rounding level."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 32, 12, 12)).astype(np.float32)
    w = (rng.standard_normal((32, 32, 3, 3)) / 17).astype(np.float32)
    b = np.zeros(32, np.float32)
    ours = _run_fused("Conv", x, w, b, P1)
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
    ref = np.zeros((1, 32, 12, 12))
    for i in range(3):
        for j in range(3):
            ref += np.einsum("oc,nchw->nohw", w[:, :, i, j].astype(np.float64), xp[:, :, i:i + 12, j:j + 12])
    err = np.abs(ours - ref).max() / np.abs(ref).max()
    assert err < 2e-6, err


def test_threads_share_a_node():
    from bninfer import ir, ops
    x = [randn(1, 32, 14, 14, seed=s) for s in range(4)]
    w, b = randn(48, 32, 3, 3, seed=9), randn(48, seed=10)
    node = ir.Node("Conv", "c", ["x", "w", "b"], ["y"], {"auto_pad": "NOTSET", "pads": [1, 1, 1, 1],
                                                          "activation": ("Relu", {}), "pre_activation": None})
    ins = [ir.Value("x", x[0].shape, np.dtype(np.float32)), ir.Value("w", w.shape, np.dtype(np.float32), w),
           ir.Value("b", b.shape, np.dtype(np.float32), b)]
    opdef = ops.get("Conv")
    (shape, _), = opdef.infer(node, ins)
    run = opdef.build(node, ins, [ir.Value("y", shape, np.dtype(np.float32))])
    expect = []
    for xi in x:
        y = np.empty(shape, np.float32)
        run([xi, w, b], [y])
        expect.append(y)
    errors = []

    def worker(k):
        for _ in range(20):
            y = np.empty(shape, np.float32)
            run([x[k], w, b], [y])
            if not np.array_equal(y, expect[k]):
                errors.append(k)
    ts = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors


CACHE_SCRIPT = textwrap.dedent("""
    from bninfer.kernels import winograd as WG
    k = WG.compile_now(WG.winograd_kernel(8, 1))
    ds = [d for key, d in WG._KERNELS.items()] + [WG.wino_in]
    hits = sum(sum(d.stats.cache_hits.values()) for d in ds)
    misses = sum(sum(d.stats.cache_misses.values()) for d in ds)
    print(hits, misses)
""")


def test_closures_load_from_cache_in_a_second_process(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, BNINFER_CACHE_DIR=str(tmp_path / "cache"))
    runs = []
    for _ in range(2):
        out = subprocess.run([sys.executable, "-c", CACHE_SCRIPT], env=env, capture_output=True, text=True,
                             timeout=300, cwd=root)
        assert out.returncode == 0, out.stderr[-2000:]
        runs.append(tuple(int(v) for v in out.stdout.split()[-2:]))
    (hits1, misses1), (hits2, misses2) = runs
    assert misses1 == 4 and hits1 == 0  # driver, matrix product, output transform, input transform
    assert misses2 == 0 and hits2 == 4


@pytest.mark.parametrize("nth", [1, 2, 3, 4])
@pytest.mark.parametrize("size", [8, 14, 28, 56, 19])
def test_threads_share_a_planes_tiles_evenly(size, nth):
    """Chunks of tiles, as many per thread: each thread's share of the plane within one chunk's tiles of
    every other's, the plane covered (7 tile rows of a 14x14 layer went 4 + 3 when chunks were rows)."""
    from bninfer.ops.conv import _wino_chunks, _wino_plan
    TH = TW = -(-size // 2)
    tiles_ = TH * TW
    ch = _wino_plan(size, size)[1]
    chunks, ck = _wino_chunks(tiles_, ch * TW, nth)
    assert chunks % nth == 0 and (chunks - 1) * ck < tiles_ <= chunks * ck
    if nth == 1:
        assert ck <= ch * TW
    per = chunks // nth
    shares = [min(tiles_, (t + 1) * per * ck) - min(tiles_, t * per * ck) for t in range(nth)]
    assert sum(shares) == tiles_ and max(shares) - min(shares) <= ck
    if size == 14 and nth == 2:
        assert shares == [25, 24]


@pytest.mark.parametrize("cout,oh,ow", [(40, 9, 7), (32, 8, 10), (16, 7, 7)])
@pytest.mark.parametrize("act,post", [(A.RELU, False), (A.CLIP, True), (A.NONE, True), (A.SIGMOID, False)])
def test_a_blocked_output_holds_what_the_nchw_one_does(cout, oh, ow, act, post):
    """The output transform's channel-blocked stores (16 lanes a pixel, the last block's lanes past cout
    written too, finite) give the NCHW stores' values bit for bit, and write nothing past the blocks."""
    from bninfer.kernels import blocked as BK
    from bninfer.kernels import conv_direct as CD
    cin = 33
    rng = np.random.default_rng(3)
    x = rng.standard_normal((cin, oh, ow)).astype(np.float32)
    w = (rng.standard_normal((cout, cin, 3, 3)) / 10).astype(np.float32)
    bias, alpha = rng.standard_normal(cout).astype(np.float32), rng.uniform(-1, 0, cout).astype(np.float32)
    ps, pt = rng.uniform(-2, 2, cout).astype(np.float32), rng.standard_normal(cout).astype(np.float32)
    th, tw = -(-oh // 2), -(-ow // 2)
    hp, wp, cinb = 2 * th + 2, 2 * tw + 2, -(-cin // 16)
    xp = np.zeros(cinb * 16 * hp * wp, np.float32)
    none = np.zeros(cin, np.float32)
    CD.pack_input(x.reshape(-1), xp, cin, oh, ow, 16, hp, wp, 1, 1, False, none, none, 0, none, 0.0)
    U = WG.transform_weights(w)
    nob, nb = -(-cout // WG.COB), -(-cout // 16)
    pad = lambda v: np.concatenate([v, np.zeros(-cout % 16, np.float32)])  # noqa: E731
    outs = []
    for yb in (False, True):
        kern = WG.compile_now(WG.winograd_kernel(2, act, yb))
        size = (nb * 16 if yb else cout) * oh * ow
        out = np.full(size + 64, 7.0, np.float32)  # 7: never a result here; the tail must keep it
        kern(xp, U, out[:size], cinb, hp, wp, cout, nob, oh, ow, bias, np.zeros(1, np.float32), False, alpha, 6.0,
             post, pad(ps) if yb else ps, pad(pt) if yb else pt, 5, 0, th * tw)
        assert (out[size:] == 7.0).all()
        outs.append(out[:size])
    assert np.isfinite(outs[1]).all()
    back = np.empty(cout * oh * ow, np.float32)
    BK.from_blocked(outs[1], back, cout, oh * ow)
    np.testing.assert_array_equal(back, outs[0])
