"""Normalization ops against onnxruntime (or the spec's formula in numpy where onnxruntime cannot run the
model), BatchNormalization's fused epilogue, and the errors."""
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from bninfer import ops
from bninfer.errors import ModelError, TrainingModeError, UnsupportedOperatorError
from bninfer.ir import Node, Value
from bninfer.ops import fusion
from converters.onnx.ops import Context, to_ir
from tests.util import assert_matches_ort, make_model, randn, run_bn, run_ort

RNG = np.random.default_rng(7)


def bn_params(c, shape=None, zero_var=True, dtype=np.float32):
    """Non-trivial statistics: random mean, positive random variance (one zero), gammas of both signs."""
    shape = shape or (c,)
    scale = RNG.standard_normal(shape) * 1.5
    scale.reshape(-1)[::3] *= -1
    bias = RNG.standard_normal(shape)
    mean = RNG.standard_normal(shape) * 2
    var = RNG.uniform(0.05, 4.0, shape)
    if zero_var:
        var.reshape(-1)[1 % var.size] = 0.0
    return {k: v.astype(dtype) for k, v in zip(("scale", "B", "mean", "var"), (scale, bias, mean, var))}


def bn_numpy(x, p, eps=1e-5, spatial=True):
    s = {k: np.asarray(v, np.float64) for k, v in p.items()}
    shape = (1, -1) + (1,) * (x.ndim - 2) if spatial else (1,) + x.shape[1:]
    r = {k: v.reshape(shape) for k, v in s.items()}
    return ((x - r["mean"]) / np.sqrt(r["var"] + eps) * r["scale"] + r["B"]).astype(np.float32)


def assert_bn_close(ours, x, p, eps=1e-5, spatial=True):
    """ours against bn_numpy within float32's rounding of the folded form y = x * s + t (s = scale /
    sqrt(var + eps), t = B - mean * s): a few ulps of |x * s| + |t|. A zero-variance channel has s and t
    in the hundreds, where y (their difference) is off by 1e-5 absolute in any float32 engine; a fixed
    atol of 1e-5 passed or failed with the random draw."""
    expected = bn_numpy(x, p, eps, spatial).astype(np.float64)
    q = {k: np.asarray(v, np.float64) for k, v in p.items()}
    shape = (1, -1) + (1,) * (x.ndim - 2) if spatial else (1,) + x.shape[1:]
    s = (q["scale"] / np.sqrt(q["var"] + eps)).reshape(shape)
    t = q["B"].reshape(shape) - q["mean"].reshape(shape) * s
    tol = 4 * np.finfo(np.float32).eps * (np.abs(x * s) + np.abs(t)) + 1e-6
    err = np.abs(ours.astype(np.float64) - expected)
    assert ours.shape == expected.shape
    assert (err <= tol).all(), f"max error {err.max():.3g}, over the bound at {np.argwhere(err > tol)[:5]}"


def bn_model(shape, params, opset, runtime=False, name="bn", **attrs):
    node = helper.make_node("BatchNormalization", ["x", "scale", "B", "mean", "var"], ["y"], name=name,
                            **attrs)
    inputs = {"x": list(shape)}
    if runtime:
        inputs.update({k: list(v.shape) for k, v in params.items()})
        return make_model([node], inputs, ["y"], opset=opset)
    return make_model([node], inputs, ["y"], params, opset=opset)


# -- BatchNormalization against onnxruntime ----------------------------------------------------------------

@pytest.mark.parametrize("shape", [(2, 17, 5, 7), (3, 5), (2, 6, 11), (1, 33, 2, 3, 4), (1, 1, 1, 1)])
@pytest.mark.parametrize("opset", [7, 9, 15])
def test_batchnorm(shape, opset):
    x = randn(*shape) * 2 + 0.5
    params = bn_params(shape[1])
    # Where the variance is zero, s ~ 300 * gamma: float32 rounding of s*x and t is ~1e-5 absolute
    # whatever the output's own size, in onnxruntime and here alike.
    ours = assert_matches_ort(bn_model(shape, params, opset), {"x": x}, atol=1e-4)[0]
    assert_bn_close(ours, x, params)


@pytest.mark.parametrize("epsilon", [1e-3, 1e-5, 0.5])
def test_batchnorm_epsilon_and_zero_variance(epsilon):
    shape = (2, 19, 4, 3)
    x = randn(*shape)
    params = bn_params(19)
    params["var"][:4] = 0.0  # zero variance keeps epsilon
    params["var"][4] = 1e-12
    assert_matches_ort(bn_model(shape, params, 15, epsilon=epsilon), {"x": x})


@pytest.mark.parametrize("shape", [(2, 7, 5, 4), (4, 9)])
def test_batchnorm_runtime_parameters(shape):
    params = bn_params(shape[1])
    feeds = {"x": randn(*shape), **params}
    assert_matches_ort(bn_model(shape, params, 15, runtime=True), feeds)


@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (3, 7), (2, 4, 9)])
def test_batchnorm_spatial0_opset7(shape):
    x = randn(*shape)
    params = bn_params(shape[1], shape=shape[1:])
    model = bn_model(shape, params, 7, spatial=0)
    assert_matches_ort(model, {"x": x})
    assert_bn_close(run_bn(model, {"x": x})[0], x, params, spatial=False)


def test_batchnorm_opset6_is_test():
    """onnxruntime has no BatchNormalization-6 kernel: compare with the formula."""
    shape = (2, 5, 3, 4)
    x = randn(*shape)
    params = bn_params(5)
    model = bn_model(shape, params, 6, is_test=1, epsilon=1e-4, momentum=0.9)
    assert_bn_close(run_bn(model, {"x": x})[0], x, params, eps=1e-4)


def test_batchnorm_float16_parameters():
    shape = (2, 12, 5, 5)
    x = randn(*shape)
    params = bn_params(12, dtype=np.float16)
    params["var"][2] = np.float16(60000.0)
    ours = run_bn(bn_model(shape, params, 15), {"x": x})[0]
    assert ours.dtype == np.float32
    assert_bn_close(ours, x, params)


# -- training forms are refused -------------------------------------------------------------------------

def test_batchnorm_training_outputs_are_refused():
    """With running-statistics outputs onnxruntime computes batch statistics: not an inference graph."""
    params = bn_params(4)
    node = helper.make_node("BatchNormalization", ["x", "scale", "B", "mean", "var"],
                            ["y", "rm", "rv", "sm", "sv"], name="bn_train")
    model = make_model([node], {"x": [2, 4, 3, 3]}, ["y"], params, opset=9)
    with pytest.raises(TrainingModeError, match="bn_train"):
        run_bn(model, {"x": randn(2, 4, 3, 3)})


@pytest.mark.parametrize("opset,attrs", [(15, dict(training_mode=1)), (6, dict(is_test=0))])
def test_batchnorm_training_mode_attributes_are_refused(opset, attrs):
    model = bn_model((2, 4, 3, 3), bn_params(4), opset, name="bn_train", **attrs)
    with pytest.raises(TrainingModeError, match="bn_train"):
        run_bn(model, {"x": randn(2, 4, 3, 3)})


# -- the fused epilogue ---------------------------------------------------------------------------------

def _const(name, a):
    a = np.ascontiguousarray(a)
    return Value(name, tuple(a.shape), a.dtype, a)


def _act_numpy(v, op, attrs, slope):
    if op is None:
        return v
    if op == "Relu":
        return np.maximum(v, 0)
    if op == "LeakyRelu":
        return np.where(v < 0, v * attrs["alpha"], v)
    if op == "PRelu":
        return np.where(v < 0, v * slope, v)
    if op == "Clip":
        return np.clip(v, attrs["min"], attrs["max"])
    if op == "Sigmoid":
        return 1 / (1 + np.exp(-v))
    if op == "HardSwish":
        return v * np.clip(v / 6 + 0.5, 0, 1)
    raise AssertionError(op)


EPILOGUES = [
    (None, {}, False, False),
    ("Relu", {}, False, False),
    ("Relu", {}, True, False),
    ("LeakyRelu", {"alpha": 0.1}, True, True),
    ("PRelu", {}, False, True),
    ("PRelu", {}, True, False),
    ("Clip", {"min": -0.5, "max": 1.5}, False, True),
    ("Sigmoid", {}, True, True),
    ("HardSwish", {}, False, False),
    (None, {}, True, True),
]


@pytest.mark.parametrize("act,attrs,residual,post", EPILOGUES, ids=[str(e) for e in EPILOGUES])
@pytest.mark.parametrize("shape,spatial", [((2, 19, 5, 3), 1), ((5, 21), 1), ((2, 3, 7), 1),
                                           ((2, 3, 2, 5), 0)])
def test_batchnorm_fused_epilogue(act, attrs, residual, post, shape, spatial):
    """y = post(act(s * x + t + residual)): a fused ir.Node built by hand, run on constant ir.Values."""
    c = shape[1]
    x = randn(*shape) * 2
    params = bn_params(c, shape=shape[1:] if not spatial else None)
    node = Node("BatchNormalization", "bn_fused", ["x", "scale", "B", "mean", "var"], ["y"],
                {"epsilon": 1e-3, "spatial": spatial})
    values = {"x": _const("x", x), **{k: _const(k, v) for k, v in params.items()}}
    slope = None
    if act is not None:
        node.attrs["activation"] = (act, attrs)
    if act == "PRelu":
        slope = (RNG.standard_normal(c) * 0.3).astype(np.float32)
        values["slope"] = _const("slope", slope)
        fusion.add_extra(node, "slope", "slope", 5)
    expected = bn_numpy(x, params, eps=1e-3, spatial=bool(spatial)).astype(np.float64)
    bshape = (1, c) + (1,) * (len(shape) - 2)
    if residual:
        r = randn(*shape)
        values["r"] = _const("r", r)
        fusion.add_extra(node, "residual", "r", 5)
        expected = expected + r
    expected = _act_numpy(expected, act, attrs, None if slope is None else slope.reshape(bshape))
    if post:
        ps, pt = (RNG.standard_normal(c) * 2).astype(np.float32), RNG.standard_normal(c).astype(np.float32)
        values["ps"], values["pt"] = _const("ps", ps), _const("pt", pt)
        fusion.add_extra(node, "post_scale", "ps", 5)
        fusion.add_extra(node, "post_shift", "pt", 5)
        expected = expected * ps.reshape(bshape) + pt.reshape(bshape)
    ins = [values[n] for n in node.inputs]
    opdef = ops.get("BatchNormalization")
    assert opdef.infer(node, ins) == [(shape, np.dtype(np.float32))]
    run = opdef.build(node, ins, [Value("y", shape, np.dtype(np.float32))])
    y = np.full(shape, np.nan, np.float32)
    run([v.data for v in ins], [y])
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


def test_batchnorm_fused_residual_shape_mismatch():
    node = Node("BatchNormalization", "bn_fused", ["x", "scale", "B", "mean", "var"], ["y"],
                {"epsilon": 1e-5})
    fusion.add_extra(node, "residual", "r", 5)
    ins = [_const("x", randn(2, 3, 4)), *(_const(k, v) for k, v in bn_params(3).items()),
           _const("r", randn(2, 3, 1))]
    with pytest.raises(ModelError, match="bn_fused"):
        ops.get("BatchNormalization").build(node, ins, [Value("y", (2, 3, 4), np.dtype(np.float32))])


def test_batchnorm_runs_from_threads():
    shape = (2, 16, 9, 9)
    params = bn_params(16)
    node = Node("BatchNormalization", "bn", ["x", "scale", "B", "mean", "var"], ["y"], {"epsilon": 1e-5})
    ins = [Value("x", shape, np.dtype(np.float32)), *(_const(k, v) for k, v in params.items())]
    run = ops.get("BatchNormalization").build(node, ins, [Value("y", shape, np.dtype(np.float32))])
    xs = [randn(*shape, seed=k) for k in range(8)]

    def one(a):
        y = np.empty(shape, np.float32)
        run([a] + [v.data for v in ins[1:]], [y])
        return y
    with ThreadPoolExecutor(4) as pool:
        for a, y in zip(xs, pool.map(one, xs * 3)):
            assert_bn_close(y, a, params)


# -- LayerNormalization ---------------------------------------------------------------------------------

def ln_numpy(x, scale, bias, axis, eps):
    axes = tuple(range(axis % x.ndim, x.ndim))
    x64 = x.astype(np.float64)
    mean = x64.mean(axes, keepdims=True)
    inv = 1 / np.sqrt(x64.var(axes, keepdims=True) + eps)
    y = (x64 - mean) * inv * scale
    if bias is not None:
        y = y + bias
    return y.astype(np.float32), mean.astype(np.float32), inv.astype(np.float32)


@pytest.mark.parametrize("shape,axis", [((2, 5, 17), -1), ((3, 4, 6, 5), -2), ((2, 7, 3), 1), ((4, 3), 0),
                                       ((1, 8, 33), 2), ((2, 3, 768), -1)])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("stats", [False, True])
def test_layernorm(shape, axis, bias, stats):
    norm = shape[axis % len(shape):]
    x = randn(*shape) * 3 + 1
    inits = {"s": randn(*norm)}
    inputs = ["x", "s"]
    if bias:
        inits["b"] = randn(*norm)
        inputs.append("b")
    outputs = ["y", "mean", "inv"] if stats else ["y"]
    node = helper.make_node("LayerNormalization", inputs, outputs, axis=axis, epsilon=1e-4)
    model = make_model([node], {"x": list(shape)}, outputs, inits, opset=17)
    ours = assert_matches_ort(model, {"x": x})
    expected = ln_numpy(x, inits["s"], inits.get("b"), axis, 1e-4)
    for a, b in zip(ours, expected):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_layernorm_runtime_scale_and_broadcast_bias():
    shape = (2, 3, 10)
    s, b = randn(10), randn(1)
    node = helper.make_node("LayerNormalization", ["x", "s", "b"], ["y"])
    model = make_model([node], {"x": list(shape), "s": [10]}, ["y"], {"b": b}, opset=17)
    x = randn(*shape)
    np.testing.assert_allclose(run_bn(model, {"x": x, "s": s})[0], ln_numpy(x, s, b, -1, 1e-5)[0],
                               rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("wanted", [(True, True), (False, True), (True, False), (False, False)])
def test_layernorm_omitted_statistics_outputs(wanted):
    """The op itself copes with an omitted Mean or InvStdDev (None among the outputs)."""
    x, s = randn(3, 4, 6), randn(1, 6)
    outputs = ["y", "mean" if wanted[0] else "", "inv" if wanted[1] else ""]
    node = Node("LayerNormalization", "ln", ["x", "s"], outputs, {"axis": -1, "epsilon": 1e-5})
    ins = [_const("x", x), _const("s", s)]
    opdef = ops.get("LayerNormalization")
    shapes = opdef.infer(node, ins)
    assert [sh for sh, _ in shapes] == [(3, 4, 6), (3, 4, 1), (3, 4, 1)]
    outs = [np.empty(sh, np.float32) if k == 0 or wanted[k - 1] else None for k, (sh, _) in enumerate(shapes)]
    values = [Value(n, sh, dt) if o is not None else None
              for n, (sh, dt), o in zip(node.outputs, shapes, outs)]
    opdef.build(node, ins, values)([x, s], outs)
    expected = ln_numpy(x, s, None, -1, 1e-5)
    for k, o in enumerate(outs):
        if o is not None:
            np.testing.assert_allclose(o, expected[k], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("op", ["LayerNormalization", "InstanceNormalization"])
def test_large_mean_small_spread(op):
    """A large common offset must not cancel the variance away (two-pass float64 statistics) nor lose the
    spread when the mean is subtracted in float32."""
    x = (randn(4, 64, seed=3) * 0.01 + 1000.0).astype(np.float32)
    if op == "LayerNormalization":
        node = helper.make_node(op, ["x", "s"], ["y"])
        inits = {"s": np.ones(64, np.float32)}
        expected = ln_numpy(x, 1.0, None, -1, 1e-5)[0]
    else:
        x = x.reshape(1, 4, 64)
        node = helper.make_node(op, ["x", "s", "b"], ["y"])
        inits = {"s": np.ones(4, np.float32), "b": np.zeros(4, np.float32)}
        expected = gn_numpy(x, 4, inits["s"], inits["b"], 1e-5)
    model = make_model([node], {"x": list(x.shape)}, ["y"], inits, opset=17)
    np.testing.assert_allclose(run_bn(model, {"x": x})[0], expected, rtol=1e-4, atol=1e-4)


# -- GroupNormalization and InstanceNormalization ---------------------------------------------------------

def gn_numpy(x, groups, scale, bias, eps):
    n, c = x.shape[:2]
    g = x.astype(np.float64).reshape(n, groups, -1)
    y = ((g - g.mean(-1, keepdims=True)) / np.sqrt(g.var(-1, keepdims=True) + eps)).reshape(x.shape)
    shape = (1, c) + (1,) * (x.ndim - 2)
    return (y * scale.reshape(shape) + bias.reshape(shape)).astype(np.float32)


@pytest.mark.parametrize("shape,groups", [((2, 6, 5, 7), 3), ((1, 17, 9), 1), ((2, 12, 3, 4), 12),
                                          ((1, 8, 2, 3, 4), 4), ((3, 8), 2)])
@pytest.mark.parametrize("opset", [18, 21])
def test_groupnorm(shape, groups, opset):
    c = shape[1]
    count = groups if opset == 18 else c
    s, b = randn(count) * 2, randn(count)
    x = randn(*shape) * 2 + 0.3
    node = helper.make_node("GroupNormalization", ["x", "s", "b"], ["y"], num_groups=groups, epsilon=1e-3)
    model = make_model([node], {"x": list(shape)}, ["y"], {"s": s, "b": b}, opset=opset)
    if opset == 21:
        # onnxruntime takes the variance in one pass (E[x^2] - E[x]^2): off by ~1e-4 on small groups
        ours = assert_matches_ort(model, {"x": x}, atol=1e-4)[0]
    else:
        # onnx's checker calls GroupNormalization-18 deprecated, so bninfer refuses the whole model at
        # load: run the node the converter makes of it, and compare with onnxruntime (which runs it).
        ir_node = to_ir(node, opset, Context(lambda base, data: base), "gn")
        assert ir_node.attrs["per_group_params"] is True
        ins = [_const("x", x), _const("s", s), _const("b", b)]
        ours = np.empty(shape, np.float32)
        ops.get("GroupNormalization").build(ir_node, ins, [Value("y", shape, np.dtype(np.float32))])(
            [x, s, b], [ours])
        np.testing.assert_allclose(ours, run_ort(model, {"x": x})[0], rtol=1e-4, atol=1e-4)
    rep = c // count
    np.testing.assert_allclose(ours, gn_numpy(x, groups, np.repeat(s, rep), np.repeat(b, rep), 1e-3),
                               rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("shape", [(2, 6, 5, 7), (1, 17, 9), (3, 3, 2, 3, 4), (1, 5, 1, 1)])
@pytest.mark.parametrize("opset", [6, 22])
def test_instancenorm(shape, opset):
    """Against float64 within float32's rounding of the folded form x * s + t per (image, channel), and
    onnxruntime as well: on 1x1 planes every variance is 0, s = scale / sqrt(eps) is in the hundreds and
    y = t + x * s (= B exactly) is off by 1e-5 in onnxruntime (a fixed atol passed or failed with the draw)."""
    c = shape[1]
    inits = {"s": randn(c) * 2, "b": randn(c)}
    node = helper.make_node("InstanceNormalization", ["x", "s", "b"], ["y"], epsilon=1e-4)
    model = make_model([node], {"x": list(shape)}, ["y"], inits, opset=opset)
    x = randn(*shape) + 1
    axes = tuple(range(2, x.ndim))
    x64, plane = x.astype(np.float64), (1, -1) + (1,) * (x.ndim - 2)
    mean, var = x64.mean(axis=axes, keepdims=True), x64.var(axis=axes, keepdims=True)
    scale = inits["s"].astype(np.float64).reshape(plane) / np.sqrt(var + 1e-4)
    shift = inits["b"].astype(np.float64).reshape(plane) - mean * scale
    expected = x64 * scale + shift
    tol = 4 * np.finfo(np.float32).eps * (np.abs(x64 * scale) + np.abs(shift)) + 1e-6
    for out in (run_bn(model, {"x": x})[0], run_ort(model, {"x": x})[0]):
        assert out.shape == x.shape and out.dtype == np.float32
        err = np.abs(out - expected)
        assert (err <= tol).all(), f"max error {err.max():.3g}"


def test_instancenorm_runtime_parameters():
    shape = (2, 5, 4, 3)
    node = helper.make_node("InstanceNormalization", ["x", "s", "b"], ["y"])
    model = make_model([node], {"x": list(shape), "s": [5], "b": [5]}, ["y"], opset=6)
    assert_matches_ort(model, {"x": randn(*shape), "s": randn(5), "b": randn(5)})


def test_norms_propagate_nan():
    x = randn(2, 4, 3, 3)
    x[0, 1, 1, 1] = np.nan
    node = helper.make_node("InstanceNormalization", ["x", "s", "b"], ["y"])
    inits = {"s": np.ones(4, np.float32), "b": np.zeros(4, np.float32)}
    model = make_model([node], {"x": [2, 4, 3, 3]}, ["y"], inits)
    y = run_bn(model, {"x": x})[0]
    assert np.isnan(y[0, 1]).all() and not np.isnan(y[0, [0, 2, 3]]).any() and not np.isnan(y[1]).any()


# -- errors ---------------------------------------------------------------------------------------------

def _model(op, inputs, inits, opset=21, name="bad_norm", **attrs):
    node = helper.make_node(op, ["x"] + list(inits), ["y"], name=name, **attrs)
    return make_model([node], {"x": list(inputs)}, ["y"], inits, opset=opset)


@pytest.mark.parametrize("op,shape,inits,attrs", [
    ("BatchNormalization", (2, 4, 3), {k: np.ones(5, np.float32) for k in "sbmv"}, {}),
    ("BatchNormalization", (2, 4, 3), {"s": np.ones(4, np.float32), "b": np.ones(4, np.float32),
                                       "m": np.ones(3, np.float32), "v": np.ones(4, np.float32)}, {}),
    ("GroupNormalization", (2, 6, 3), {"s": np.ones(6, np.float32), "b": np.ones(6, np.float32)},
     dict(num_groups=4)),
    ("GroupNormalization", (2, 6, 3), {"s": np.ones(3, np.float32), "b": np.ones(3, np.float32)},
     dict(num_groups=3)),
    ("InstanceNormalization", (2, 6, 3), {"s": np.ones(5, np.float32), "b": np.ones(6, np.float32)}, {}),
    ("LayerNormalization", (2, 6, 3), {"s": np.ones(6, np.float32)}, dict(axis=-1)),
    ("LayerNormalization", (2, 6, 3), {"s": np.ones(3, np.float32)}, dict(axis=3)),
])
def test_parameter_mismatch_is_a_model_error(op, shape, inits, attrs):
    with pytest.raises(ModelError, match="bad_norm"):
        run_bn(_model(op, shape, inits, **attrs), {"x": randn(*shape)})


def test_batchnorm_spatial0_parameter_shape_mismatch():
    params = bn_params(4)  # per channel, but spatial=0 wants (C, D1, ...)
    with pytest.raises(ModelError, match="'bn'"):
        run_bn(bn_model((2, 4, 3), params, 7, spatial=0), {"x": randn(2, 4, 3)})


def _build(op, ins, attrs=None, name="bad_norm"):
    node = Node(op, name, [v.name for v in ins], ["y"], dict(attrs or {}))
    opdef = ops.get(op)
    (shape, dtype), = opdef.infer(node, ins)
    return opdef.build(node, ins, [Value("y", shape, dtype)])


@pytest.mark.parametrize("op,attrs,nparams", [("BatchNormalization", {}, 4), ("LayerNormalization", {}, 2),
                                              ("GroupNormalization", {"num_groups": 2}, 2),
                                              ("InstanceNormalization", {}, 2)])
def test_non_float32_input_is_unsupported(op, attrs, nparams):
    x = Value("x", (2, 4, 3), np.dtype(np.float64))
    size = 3 if op == "LayerNormalization" else 4
    params = [_const(f"p{k}", np.ones(size, np.float32)) for k in range(nparams)]
    with pytest.raises(UnsupportedOperatorError, match="bad_norm"):
        _build(op, [x] + params, attrs)


def test_batchnorm_integer_parameters_are_unsupported():
    x = Value("x", (2, 4, 3), np.dtype(np.float32))
    params = [_const(f"p{k}", np.ones(4, np.int64)) for k in range(4)]
    with pytest.raises(UnsupportedOperatorError, match="bad_norm"):
        _build("BatchNormalization", [x] + params)


def test_batchnorm_runtime_float64_parameter_is_unsupported():
    x = Value("x", (2, 4, 3), np.dtype(np.float32))
    params = [_const(f"p{k}", np.ones(4, np.float32)) for k in range(3)]
    params.append(Value("v", (4,), np.dtype(np.float64)))
    with pytest.raises(UnsupportedOperatorError, match="bad_norm"):
        _build("BatchNormalization", [x] + params)
