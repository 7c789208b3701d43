"""Conv and ConvTranspose against onnxruntime: geometry, groups, ranks, fused epilogue/prologue, errors."""
import threading

import numpy as np
import pytest
from onnx import helper

from bninfer import ir, ops
from bninfer.errors import ModelError, UnsupportedOperatorError
from bninfer.ops import fusion
from tests.util import assert_matches_ort, make_model, run_bn, run_ort, randn


def _model(op, x_shape, w_shape, bias, attrs, weights_as_inputs=False, seed=0):
    x = randn(*x_shape, seed=seed)
    w = randn(*w_shape, seed=seed + 1) * 0.5
    cout = w_shape[0] if op == "Conv" else w_shape[1] * attrs.get("group", 1)
    b = randn(cout, seed=seed + 2)
    inputs = ["x", "w", "b"] if bias else ["x", "w"]
    consts = {"w": w, "b": b} if bias else {"w": w}
    feeds = {"x": x}
    shapes = {"x": list(x_shape)}
    if weights_as_inputs:
        feeds.update(consts)
        shapes.update({k: list(v.shape) for k, v in consts.items()})
        consts = {}
    model = make_model([helper.make_node(op, inputs, ["y"], name="the_conv", **attrs)], shapes, ["y"], consts)
    return model, feeds


# (x shape, w shape, attrs, bias)
CONV_CASES = [
    # 2-D
    ((1, 3, 7, 9), (5, 3, 3, 3), dict(pads=[1, 1, 1, 1]), True),
    ((1, 17, 11, 10), (19, 17, 3, 3), dict(strides=[2, 2], pads=[0, 1, 2, 0]), True),
    ((2, 5, 13, 12), (7, 5, 3, 2), dict(strides=[3, 2], dilations=[2, 1], pads=[1, 0, 0, 2]), True),
    ((1, 4, 15, 14), (6, 4, 3, 3), dict(dilations=[2, 3], pads=[2, 3, 2, 3]), False),
    ((1, 17, 6, 7), (19, 17, 1, 1), dict(), True),  # pointwise: no im2col
    ((2, 9, 6, 7), (11, 9, 1, 1), dict(), False),
    ((1, 9, 7, 8), (5, 9, 1, 1), dict(strides=[2, 3]), True),
    ((1, 9, 7, 8), (5, 9, 1, 1), dict(pads=[1, 0, 0, 1]), True),
    ((1, 3, 8, 11), (4, 3, 2, 5), dict(kernel_shape=[2, 5], strides=[1, 2]), True),
    ((1, 6, 9, 11), (4, 3, 3, 3), dict(group=2, pads=[1, 0, 2, 1], strides=[2, 1]), True),
    ((1, 6, 8, 8), (9, 2, 3, 3), dict(group=3, pads=[1, 1, 1, 1]), False),
    ((1, 12, 7, 7), (8, 3, 3, 1), dict(group=4, strides=[1, 2], pads=[1, 0, 1, 0]), True),
    ((1, 5, 10, 9), (5, 1, 3, 3), dict(group=5, pads=[1, 1, 1, 1]), True),  # depthwise
    ((2, 4, 11, 13), (8, 1, 3, 3), dict(group=4, strides=[2, 2], dilations=[2, 2], pads=[2, 1, 0, 2]), True),
    ((1, 3, 12, 12), (3, 1, 5, 5), dict(group=3, strides=[3, 3], pads=[0, 2, 1, 2]), False),
    ((1, 33, 15, 15), (20, 33, 3, 3), dict(pads=[1, 1, 1, 1]), True),
    ((1, 4, 5, 6), (3, 4, 5, 6), dict(), True),  # kernel the size of the input
    ((1, 1, 12, 12), (8, 1, 3, 3), dict(), True),  # one input channel, one group
    ((1, 1, 12, 12), (1, 1, 3, 3), dict(pads=[1, 1, 1, 1]), False),
    # 1-D
    ((1, 3, 17), (4, 3, 3), dict(strides=[2], pads=[1, 2]), True),
    ((2, 4, 20), (6, 2, 4), dict(group=2, dilations=[3], pads=[0, 1]), False),
    ((1, 6, 19), (6, 1, 5), dict(group=6, strides=[3], pads=[2, 2]), True),
    ((1, 5, 9), (7, 5, 1), dict(), True),
    # 3-D
    ((1, 4, 5, 6, 7), (3, 4, 3, 2, 3), dict(strides=[1, 2, 2], pads=[1, 0, 1, 0, 1, 1]), True),
    ((1, 4, 6, 5, 7), (6, 2, 2, 3, 2), dict(group=2, dilations=[2, 1, 2], pads=[0, 1, 0, 1, 1, 0]), False),
    ((1, 3, 5, 5, 5), (3, 1, 3, 3, 3), dict(group=3, pads=[1, 1, 1, 1, 1, 1], strides=[2, 1, 2]), True),
    ((1, 5, 4, 3, 6), (2, 5, 1, 1, 1), dict(), True),
]


@pytest.mark.parametrize("x_shape,w_shape,attrs,bias", CONV_CASES, ids=lambda v: str(v).replace(" ", ""))
def test_conv(x_shape, w_shape, attrs, bias):
    model, feeds = _model("Conv", x_shape, w_shape, bias, attrs)
    assert_matches_ort(model, feeds)


@pytest.mark.parametrize("auto_pad", ["SAME_UPPER", "SAME_LOWER", "VALID"])
@pytest.mark.parametrize("x_shape,w_shape,strides,group", [
    ((1, 4, 9, 10), (6, 4, 2, 4), [1, 1], 1),
    ((1, 4, 9, 10), (6, 4, 3, 3), [2, 3], 1),
    ((1, 4, 7, 8), (4, 1, 4, 3), [3, 2], 4),
    ((1, 3, 11), (5, 3, 4), [2], 1),
    ((1, 2, 5, 6, 7), (4, 1, 2, 3, 4), [1, 2, 3], 2),
], ids=str)
def test_conv_auto_pad(auto_pad, x_shape, w_shape, strides, group):
    model, feeds = _model("Conv", x_shape, w_shape, True, dict(auto_pad=auto_pad, strides=strides,
                                                              group=group))
    assert_matches_ort(model, feeds)


def test_conv_same_with_dilation_follows_onnx_spec():
    """onnxruntime refuses SAME padding with dilation; bninfer pads for the dilated kernel (ONNX spec)."""
    x = randn(1, 2, 9, 8)
    w = randn(3, 2, 3, 3)
    node = helper.make_node("Conv", ["x", "w"], ["y"], auto_pad="SAME_LOWER", dilations=[2, 3])
    ours = run_bn(make_model([node], {"x": [1, 2, 9, 8]}, ["y"], {"w": w}), {"x": x})[0]
    # spans 5 and 7: total pads 4 and 6, begin 2 and 3
    ref = run_ort(make_model([helper.make_node("Conv", ["x", "w"], ["y"], dilations=[2, 3],
                                               pads=[2, 3, 2, 3])], {"x": [1, 2, 9, 8]}, ["y"], {"w": w}),
                  {"x": x})[0]
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("op,x_shape,w_shape,attrs", [
    ("Conv", (1, 6, 9, 8), (4, 3, 3, 3), dict(group=2, pads=[1, 1, 1, 1])),
    ("Conv", (1, 4, 9, 8), (4, 1, 3, 3), dict(group=4, strides=[2, 2])),
    ("Conv", (1, 4, 9, 8), (5, 4, 1, 1), dict()),
    ("ConvTranspose", (1, 4, 5, 6), (4, 3, 3, 3), dict(group=2, strides=[2, 2])),
], ids=str)
def test_weights_at_run_time(op, x_shape, w_shape, attrs):
    model, feeds = _model(op, x_shape, w_shape, True, attrs, weights_as_inputs=True)
    assert_matches_ort(model, feeds)


def test_nan_propagates():
    model, feeds = _model("Conv", (1, 3, 6, 6), (4, 3, 3, 3), True, dict(pads=[1, 1, 1, 1]))
    feeds["x"][0, 1, 2, 2] = np.nan
    out = assert_matches_ort(model, feeds)[0]
    assert np.isnan(out[0, :, 1:4, 1:4]).all() and not np.isnan(out[0, :, 5, 5]).any()
    model, feeds = _model("Conv", (1, 3, 6, 6), (3, 1, 3, 3), True, dict(group=3))
    feeds["x"][0, 1, 2, 2] = np.nan
    assert_matches_ort(model, feeds)


# -- ConvTranspose ---------------------------------------------------------------------------------------

CONV_TRANSPOSE_CASES = [
    ((1, 4, 5, 6), (4, 3, 3, 3), dict(), True),
    ((1, 4, 5, 6), (4, 5, 3, 3), dict(strides=[2, 2], pads=[1, 1, 1, 1], output_padding=[1, 1]), True),
    ((2, 3, 4, 5), (3, 2, 3, 2), dict(strides=[3, 2], dilations=[2, 1], output_padding=[2, 1]), False),
    ((1, 3, 4, 4), (3, 2, 3, 3), dict(strides=[2, 1], dilations=[3, 2], output_padding=[1, 0]), True),
    ((1, 4, 5, 6), (4, 3, 3, 3), dict(group=2, strides=[2, 2], pads=[0, 1, 2, 0]), True),
    ((1, 6, 4, 5), (6, 1, 4, 4), dict(group=6, strides=[2, 2], pads=[1, 1, 1, 1]), True),  # depthwise
    ((1, 6, 5, 5), (6, 2, 3, 3), dict(group=3, strides=[2, 1], dilations=[1, 2]), False),
    ((1, 17, 5, 6), (17, 19, 1, 1), dict(), True),  # 1x1 stride 1: the matmul is the output
    ((1, 5, 5, 6), (5, 3, 1, 1), dict(strides=[2, 2]), True),
    ((1, 4, 5, 6), (4, 3, 3, 3), dict(strides=[2, 2], output_shape=[10, 12]), True),
    ((1, 4, 5, 6), (4, 3, 3, 3), dict(strides=[2, 2], output_shape=[9, 11]), True),
    ((1, 4, 5, 6), (4, 3, 3, 3), dict(strides=[2, 2], output_shape=[12, 13]), True),  # negative total pad
    ((1, 4, 5, 6), (4, 3, 3, 3), dict(strides=[2, 2], output_shape=[10, 12], auto_pad="SAME_UPPER"), True),
    ((1, 4, 5, 6), (4, 3, 3, 3), dict(strides=[2, 2], output_shape=[10, 11], output_padding=[1, 0]), False),
    ((1, 4, 5, 6), (4, 3, 4, 3), dict(strides=[2, 3], pads=[3, 2, 2, 1]), True),
    # 1-D and 3-D
    ((1, 3, 7), (3, 4, 3), dict(strides=[2], pads=[1, 0], output_padding=[1]), True),
    ((1, 4, 6), (4, 2, 5), dict(group=2, dilations=[2], strides=[3]), False),
    ((1, 2, 3, 4, 3), (2, 3, 2, 3, 2), dict(strides=[2, 1, 2], pads=[0, 1, 1, 1, 0, 0]), True),
    ((1, 4, 3, 3, 4), (4, 1, 3, 2, 3), dict(group=2, strides=[1, 2, 2], output_padding=[0, 1, 1]), True),
]


@pytest.mark.parametrize("x_shape,w_shape,attrs,bias", CONV_TRANSPOSE_CASES,
                         ids=lambda v: str(v).replace(" ", ""))
def test_conv_transpose(x_shape, w_shape, attrs, bias):
    model, feeds = _model("ConvTranspose", x_shape, w_shape, bias, attrs)
    assert_matches_ort(model, feeds)


@pytest.mark.parametrize("auto_pad", ["SAME_UPPER", "SAME_LOWER", "VALID"])
@pytest.mark.parametrize("x_shape,w_shape,strides", [
    ((1, 3, 5, 6), (3, 4, 3, 3), [2, 2]),
    ((1, 3, 5, 6), (3, 4, 4, 3), [3, 2]),
    ((1, 3, 5, 6), (3, 4, 1, 1), [2, 2]),  # the padding would be negative: none (as onnxruntime)
    ((1, 3, 7), (3, 2, 2), [2]),
], ids=str)
def test_conv_transpose_auto_pad(auto_pad, x_shape, w_shape, strides):
    model, feeds = _model("ConvTranspose", x_shape, w_shape, True, dict(auto_pad=auto_pad, strides=strides))
    assert_matches_ort(model, feeds)


# -- fused epilogue and prologue --------------------------------------------------------------------------

def _np_act(spec, v, slope=None):
    if spec is None:
        return v
    op, attrs = spec
    if op == "Relu":
        return np.maximum(v, 0)
    if op == "Clip":
        return np.clip(v, attrs["min"], attrs["max"])
    if op == "LeakyRelu":
        return np.where(v < 0, v * attrs["alpha"], v)
    if op == "PRelu":
        s = np.asarray(slope, np.float32).reshape((1, -1) + (1,) * (v.ndim - 2))
        return np.where(v < 0, v * s, v)
    if op == "Sigmoid":
        return 1 / (1 + np.exp(-v))
    if op == "HardSwish":
        return v * np.clip(v / 6 + 0.5, 0, 1)
    raise AssertionError(op)


def _channel(v, ndim):
    return np.asarray(v, np.float32).reshape((1, -1) + (1,) * (ndim - 2))


def _run_fused(op, x, w, b, attrs, activation=None, pre_activation=None, extras=None, const_extras=True):
    """Build a fused ir.Node by hand and run it through the op registry, as the plan would."""
    full = {"auto_pad": "NOTSET", "group": 1, **attrs}
    node = ir.Node(op, "fused_conv", ["x", "w", "b" if b is not None else ""], ["y"], full)
    node.attrs["activation"] = activation
    node.attrs["pre_activation"] = pre_activation
    values = {"x": ir.Value("x", x.shape, np.dtype(np.float32)),
              "w": ir.Value("w", w.shape, np.dtype(np.float32), w)}
    arrays = {"x": x, "w": w}
    if b is not None:
        values["b"] = ir.Value("b", b.shape, np.dtype(np.float32), b)
        arrays["b"] = b
    for key, arr in (extras or {}).items():
        arr = np.asarray(arr, np.float32)
        const = arr if (key != "residual" and const_extras) else None
        values[key] = ir.Value(key, arr.shape, np.dtype(np.float32), const)
        arrays[key] = arr
        fusion.add_extra(node, key, key, 3)
    assert fusion.base_inputs(node) == 3
    opdef = ops.get(op)
    ins = [values[n] if n else None for n in node.inputs]
    (shape, dtype), = opdef.infer(node, ins)
    run = opdef.build(node, ins, [ir.Value("y", shape, dtype)])
    y = np.full(shape, np.nan, np.float32)
    run([arrays[n] if n else None for n in node.inputs], [y])
    return y


def _ort_plain(op, x, w, b, attrs):
    inputs = ["x", "w", "b"] if b is not None else ["x", "w"]
    consts = {"w": w, "b": b} if b is not None else {"w": w}
    model = make_model([helper.make_node(op, inputs, ["y"], **attrs)], {"x": list(x.shape)}, ["y"], consts)
    return run_ort(model, {"x": x})[0]


EPILOGUES = [
    ("relu", ("Relu", {}), None, False, False),
    ("clip", ("Clip", {"min": -0.5, "max": 1.5}), None, False, False),
    ("leaky", ("LeakyRelu", {"alpha": 0.1}), None, False, False),
    ("prelu", ("PRelu", {}), "per_channel", False, False),
    ("prelu_scalar", ("PRelu", {}), "scalar", False, False),
    ("sigmoid", ("Sigmoid", {}), None, False, False),
    ("residual_relu", ("Relu", {}), None, True, False),
    ("residual_only", None, None, True, False),
    ("post_affine", None, None, False, True),
    ("all", ("LeakyRelu", {"alpha": 0.2}), None, True, True),
]

FUSED_SHAPES = [
    ("Conv", (1, 6, 7, 8), (5, 6, 3, 3), dict(pads=[1, 0, 1, 2], strides=[1, 2])),
    ("Conv", (1, 6, 7, 8), (12, 1, 3, 3), dict(group=6, pads=[1, 1, 1, 1])),  # depthwise
    ("Conv", (2, 6, 5, 4), (7, 6, 1, 1), dict()),  # pointwise
    ("Conv", (1, 4, 9), (6, 2, 3), dict(group=2, pads=[1, 1])),
    ("ConvTranspose", (1, 6, 4, 5), (6, 2, 3, 3), dict(group=3, strides=[2, 2], pads=[1, 0, 0, 1])),
    ("ConvTranspose", (1, 6, 4, 5), (6, 5, 1, 1), dict()),
]


@pytest.mark.parametrize("name,activation,slope,residual,post", EPILOGUES, ids=lambda v: v if isinstance(v, str) else "")
@pytest.mark.parametrize("op,x_shape,w_shape,attrs", FUSED_SHAPES, ids=str)
def test_fused_epilogue(op, x_shape, w_shape, attrs, name, activation, slope, residual, post):
    x = randn(*x_shape, seed=3) * 2
    w = randn(*w_shape, seed=4)
    cout = w_shape[0] if op == "Conv" else w_shape[1] * attrs.get("group", 1)
    b = randn(cout, seed=5)
    plain = _ort_plain(op, x, w, b, attrs)
    extras = {}
    expect = plain
    if residual:
        extras["residual"] = randn(*plain.shape, seed=6)
        expect = expect + extras["residual"]
    s = None
    if slope == "per_channel":
        s = extras["slope"] = randn(cout, seed=7) * 0.3
    elif slope == "scalar":
        s = extras["slope"] = np.array([0.25], np.float32)
    expect = _np_act(activation, expect, s)
    if post:
        scale = randn(cout, seed=8)
        scale[::2] *= -1  # negative scales too
        shift = randn(cout, seed=9)
        extras["post_scale"], extras["post_shift"] = scale, shift
        expect = expect * _channel(scale, plain.ndim) + _channel(shift, plain.ndim)
    ours = _run_fused(op, x, w, b, attrs, activation=activation, extras=extras)
    np.testing.assert_allclose(ours, expect, rtol=1e-4, atol=1e-5)


PROLOGUES = [
    ("affine", None, True, None),
    ("relu", ("Relu", {}), False, None),
    ("affine_relu", ("Relu", {}), True, None),
    ("affine_clip", ("Clip", {"min": 0.0, "max": 6.0}), True, None),
    ("affine_sigmoid", ("Sigmoid", {}), True, None),
    ("prelu", ("PRelu", {}), True, "pre_slope"),
    ("affine_relu_epilogue", ("Relu", {}), True, "epilogue"),
]

PROLOGUE_SHAPES = [
    ("Conv", (1, 5, 7, 8), (4, 5, 3, 3), dict(pads=[1, 2, 0, 1])),  # padding must stay zero
    ("Conv", (1, 5, 7, 8), (4, 5, 3, 3), dict(auto_pad="SAME_UPPER", strides=[2, 2])),
    ("Conv", (1, 6, 7, 8), (6, 1, 3, 3), dict(group=6, pads=[1, 1, 2, 0])),  # depthwise
    ("Conv", (1, 6, 5, 4), (7, 6, 1, 1), dict()),  # pointwise (needs the prologue: no shortcut)
    ("Conv", (1, 4, 3, 5, 4), (2, 4, 2, 3, 3), dict(pads=[1, 1, 1, 0, 1, 1])),
    ("ConvTranspose", (1, 4, 4, 5), (4, 3, 3, 3), dict(strides=[2, 2], pads=[1, 1, 0, 0])),
]


@pytest.mark.parametrize("name,pre_activation,affine,extra", PROLOGUES, ids=lambda v: v if isinstance(v, str) else "")
@pytest.mark.parametrize("op,x_shape,w_shape,attrs", PROLOGUE_SHAPES, ids=str)
def test_fused_prologue(op, x_shape, w_shape, attrs, name, pre_activation, affine, extra):
    x = randn(*x_shape, seed=10) * 2
    w = randn(*w_shape, seed=11)
    cin = x_shape[1]
    cout = w_shape[0] if op == "Conv" else w_shape[1] * attrs.get("group", 1)
    b = randn(cout, seed=12)
    extras = {}
    xin = x
    if affine:
        scale = randn(cin, seed=13)
        scale[1::2] *= -1
        shift = randn(cin, seed=14)
        extras["pre_scale"], extras["pre_shift"] = scale, shift
        xin = x * _channel(scale, x.ndim) + _channel(shift, x.ndim)
    slope = None
    if extra == "pre_slope":
        slope = extras["pre_slope"] = randn(cin, seed=15) * 0.3
    xin = _np_act(pre_activation, xin, slope).astype(np.float32)
    expect = _ort_plain(op, xin, w, b, attrs)
    activation = None
    if extra == "epilogue":
        activation = ("Clip", {"min": -1.0, "max": 2.0})
        extras["residual"] = randn(*expect.shape, seed=16)
        expect = np.clip(expect + extras["residual"], -1.0, 2.0)
    ours = _run_fused(op, x, w, b, attrs, activation=activation, pre_activation=pre_activation, extras=extras)
    np.testing.assert_allclose(ours, expect, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("op,w_shape,attrs", [
    ("Conv", (4, 3, 3, 3), dict(pads=[1, 1, 1, 1])),
    ("Conv", (3, 1, 3, 3), dict(group=3, pads=[1, 1, 1, 1])),
    ("ConvTranspose", (3, 2, 3, 3), dict(strides=[2, 2])),
], ids=str)
def test_fused_nan_propagates(op, w_shape, attrs):
    x, w = randn(1, 3, 6, 6), randn(*w_shape)
    x[0, 1, 2, 3] = np.nan
    cout = w_shape[0] if op == "Conv" else w_shape[1]
    b = randn(cout)
    pre = ("Relu", {})
    expect = np.maximum(_ort_plain(op, np.where(x < 0, 0, x).astype(np.float32), w, b, attrs), 0)
    assert np.isnan(expect).any()
    for act in (("Relu", {}), ("Sigmoid", {})):
        ours = _run_fused(op, x, w, b, attrs, activation=act, pre_activation=pre if op == "Conv" else None)
        if op == "Conv":
            np.testing.assert_array_equal(np.isnan(ours), np.isnan(expect))
        else:
            assert np.isnan(ours).sum() == np.isnan(_ort_plain(op, x, w, b, attrs)).sum()


def test_fused_residual_broadcast_and_no_bias():
    x, w = randn(1, 3, 6, 6), randn(4, 3, 3, 3)
    res = randn(1, 4, 1, 4)
    attrs = dict(strides=[1, 1], pads=[0, 0, 0, 0])
    expect = np.maximum(_ort_plain("Conv", x, w, None, attrs) + res, 0)
    ours = _run_fused("Conv", x, w, None, attrs, activation=("Relu", {}), extras={"residual": res})
    np.testing.assert_allclose(ours, expect, rtol=1e-4, atol=1e-5)


def test_run_is_thread_safe():
    x_shape, w_shape = (1, 8, 20, 20), (16, 8, 3, 3)
    attrs = dict(pads=[1, 1, 1, 1])
    w, b = randn(*w_shape, seed=20), randn(16, seed=21)
    scale, shift = randn(8, seed=22), randn(8, seed=23)
    node = ir.Node("Conv", "mt_conv", ["x", "w", "b"], ["y"], {"auto_pad": "NOTSET", "group": 1, **attrs,
                                                              "pre_activation": ("Relu", {}),
                                                              "activation": ("Relu", {})})
    values = {"x": ir.Value("x", x_shape, np.dtype(np.float32)), "w": ir.Value("w", w_shape, np.dtype(np.float32), w),
              "b": ir.Value("b", (16,), np.dtype(np.float32), b),
              "s": ir.Value("s", (8,), np.dtype(np.float32), scale),
              "t": ir.Value("t", (8,), np.dtype(np.float32), shift)}
    fusion.add_extra(node, "pre_scale", "s", 3)
    fusion.add_extra(node, "pre_shift", "t", 3)
    ins = [values[n] for n in node.inputs]
    (shape, _), = ops.get("Conv").infer(node, ins)
    run = ops.get("Conv").build(node, ins, [ir.Value("y", shape, np.dtype(np.float32))])
    xs = [randn(*x_shape, seed=30 + k) for k in range(4)]
    expected = []
    for x in xs:
        y = np.empty(shape, np.float32)
        run([x, w, b, scale, shift], [y])
        expected.append(y)
    errors = []

    def worker(k):
        y = np.empty(shape, np.float32)
        for _ in range(20):
            run([xs[k], w, b, scale, shift], [y])
            if not np.array_equal(y, expected[k]):
                errors.append(k)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    xin = np.maximum(xs[0] * _channel(scale, 4) + _channel(shift, 4), 0).astype(np.float32)
    np.testing.assert_allclose(expected[0], np.maximum(_ort_plain("Conv", xin, w, b, attrs), 0),
                               rtol=1e-4, atol=1e-5)


# -- errors ------------------------------------------------------------------------------------------------

def _node(op, x_shape, w_shape, dtype=np.float32, bias_shape=None, **attrs):
    full = {"auto_pad": "NOTSET", "group": 1, **attrs}
    node = ir.Node(op, "bad_conv", ["x", "w"] + (["b"] if bias_shape else []), ["y"], full)
    ins = [ir.Value("x", x_shape, np.dtype(dtype)),
           ir.Value("w", w_shape, np.dtype(dtype), np.zeros(w_shape, dtype))]
    if bias_shape:
        ins.append(ir.Value("b", bias_shape, np.dtype(dtype), np.zeros(bias_shape, dtype)))
    return node, ins


@pytest.mark.parametrize("op,x_shape,w_shape,attrs,what", [
    ("Conv", (1, 6, 8, 8), (4, 3, 3, 3), dict(group=4), "group"),
    ("Conv", (1, 6, 8, 8), (4, 2, 3, 3), dict(group=2), "channels per group"),
    ("Conv", (1, 6, 8, 8), (3, 3, 3, 3), dict(group=2), "output channels"),
    ("Conv", (1, 6, 8, 8), (4, 4, 3, 3), dict(), "channels per group"),
    ("Conv", (1, 3, 4, 4), (2, 3, 5, 3), dict(), "larger than the padded input"),
    ("Conv", (1, 3, 4, 4), (2, 3, 3, 3), dict(dilations=[2, 2]), "larger than the padded input"),
    ("Conv", (1, 3, 8, 8), (2, 3, 3, 3), dict(strides=[0, 1]), "strides"),
    ("Conv", (1, 3, 8, 8), (2, 3, 3, 3), dict(dilations=[1, 0]), "dilations"),
    ("Conv", (1, 3, 8, 8), (2, 3, 3, 3), dict(pads=[1, -1, 0, 0]), "pads"),
    ("Conv", (1, 3, 8, 8), (2, 3, 3, 3), dict(strides=[1]), "strides"),
    ("Conv", (1, 3, 8, 8), (2, 3, 3, 3), dict(kernel_shape=[3, 2]), "kernel_shape"),
    ("Conv", (1, 3, 8, 8), (2, 3, 3), dict(), "rank"),
    ("Conv", (1, 3), (2, 3), dict(), "spatial"),
    ("Conv", (1, 3, 8, 8), (2, 3, 3, 3), dict(group=0), "group"),
    ("Conv", (1, 3, 8, 8), (2, 3, 3, 3), dict(auto_pad="SAME"), "auto_pad"),
    ("ConvTranspose", (1, 4, 5, 5), (3, 2, 3, 3), dict(), "input channels"),
    ("ConvTranspose", (1, 4, 5, 5), (4, 2, 3, 3), dict(group=3), "group"),
    ("ConvTranspose", (1, 4, 5, 5), (4, 2, 3, 3), dict(strides=[2, 2], output_padding=[2, 0]),
     "output_padding"),
    ("ConvTranspose", (1, 4, 2, 2), (4, 2, 3, 3), dict(pads=[3, 0, 2, 0]), "not positive"),
    ("ConvTranspose", (1, 4, 5, 5), (4, 2, 3, 3), dict(output_shape=[9]), "output_shape"),
    ("ConvTranspose", (1, 4, 5, 5), (4, 2, 3, 3), dict(strides=[0, 1]), "strides"),
])
def test_model_errors(op, x_shape, w_shape, attrs, what):
    node, ins = _node(op, x_shape, w_shape, **attrs)
    with pytest.raises(ModelError, match="bad_conv") as info:
        ops.get(op).infer(node, ins)
    assert what in str(info.value)


def test_bias_shape_error():
    node, ins = _node("Conv", (1, 3, 8, 8), (2, 3, 3, 3), bias_shape=(3,))
    with pytest.raises(ModelError, match="bad_conv.*bias"):
        ops.get("Conv").infer(node, ins)


@pytest.mark.parametrize("op", ["Conv", "ConvTranspose"])
def test_unsupported_dtype_and_rank(op):
    node, ins = _node(op, (1, 3, 8, 8), (3, 3, 3, 3), dtype=np.float64)
    with pytest.raises(UnsupportedOperatorError, match="bad_conv") as info:
        ops.get(op).infer(node, ins)
    assert info.value.nodes == ["bad_conv"]
    node, ins = _node(op, (1, 3, 2, 2, 2, 2), (3, 3, 1, 1, 1, 1))
    with pytest.raises(UnsupportedOperatorError, match="bad_conv"):
        ops.get(op).infer(node, ins)


def test_errors_surface_through_session():
    import bninfer
    w = randn(2, 3, 5, 5)
    model = make_model([helper.make_node("Conv", ["x", "w"], ["y"], name="too_big")], {"x": [1, 3, 4, 4]},
                       ["y"], {"w": w})
    with pytest.raises(ModelError, match="too_big"):
        bninfer.InferenceSession(model.SerializeToString())



@pytest.mark.parametrize("cin,cout,kernel", [(48, 6, "matrix_vector"), (12, 6, "matrix_vector"),
                                             (6, 48, "vector_matrix"), (7, 4, "vector_matrix")])
@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("act,attrs", [("Sigmoid", {}), ("Elu", {"alpha": 0.7}), ("Relu", {})])
def test_one_pixel_convs_take_the_one_row_kernel_of_the_longer_streams(cin, cout, kernel, batch, act, attrs,
                                                                        monkeypatch):
    """Squeeze-excitation's 1x1 convs of a one-pixel input: dot products over (cout, cin) weights when
    cin >= 2 cout, else row sweeps; bias and an activation fused, against onnxruntime (a session), and the
    kernel the op calls (the op built alone, the other kernel patched out). An activation with a span of
    its own (Sigmoid, Elu) runs as that span after the product, over each image's outputs; Relu in the
    kernel's epilogue."""
    from onnx import helper

    from bninfer import activations, ir, ops, record
    from bninfer.kernels import gemm
    w, b, x = randn(cout, cin, 1, 1, seed=1), randn(cout, seed=2), randn(batch, cin, 1, 1, seed=3) * 3
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"]), helper.make_node(act, ["c"], ["y"], **attrs)]
    model = make_model(nodes, {"x": [batch, cin, 1, 1]}, ["y"], {"w": w, "b": b})
    assert_matches_ort(model, {"x": x})
    other = {"matrix_vector": "vector_matrix", "vector_matrix": "matrix_vector"}[kernel]
    monkeypatch.setattr(gemm, other, None)
    node = ir.Node("Conv", "conv", ["x", "w", "b"], ["y"], {"activation": (act, attrs), "pre_activation": None})
    f32 = np.dtype(np.float32)
    ins = [ir.Value("x", x.shape, f32), ir.Value("w", w.shape, f32, w), ir.Value("b", b.shape, f32, b)]
    y = np.empty((batch, cout, 1, 1), np.float32)
    run = ops.get("Conv").build(node, ins, [ir.Value("y", y.shape, f32)])
    run([x, w, b], [y])
    np.testing.assert_allclose(y, run_ort(model, {"x": x})[0], rtol=1e-5, atol=1e-6)
    with record.recording() as rec:
        run([x, w, b], [y])
    span = activations.SPANS.get(activations.code_of(act, attrs))
    assert [k for k, _ in rec.calls] == [getattr(gemm, kernel), *([span] if span else [])] * batch
