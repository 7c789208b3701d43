"""Pooling ops and LRN against onnxruntime (and onnx.reference or a numpy oracle where onnxruntime departs
from the spec: NaN in MaxPool, SAME padding with dilations)."""
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from onnx import helper
from onnx.reference import ReferenceEvaluator

from bninfer import ops
from bninfer.errors import ModelError, UnsupportedOperatorError
from bninfer.ir import Node, Value
from tests.util import assert_matches_ort, make_model, randn, run_bn, run_ort


def pool_model(op, shape, opset=19, **attrs):
    return make_model([helper.make_node(op, ["x"], ["y"], name="pool", **attrs)], {"x": list(shape)}, ["y"],
                      opset=opset)


def numpy_pool(x, op, kernel, strides, dilations, begin, end, include_pad=False):
    """Brute-force oracle over explicit pads (begin/end per axis) and a given output size rule (floor)."""
    k = len(kernel)
    spatial = x.shape[2:]
    out = [(spatial[a] + begin[a] + end[a] - ((kernel[a] - 1) * dilations[a] + 1)) // strides[a] + 1
           for a in range(k)]
    y = np.zeros(x.shape[:2] + tuple(out), np.float64)
    for o in np.ndindex(*out):
        vals, padded = [], 0
        for j in np.ndindex(*kernel):
            pos = [o[a] * strides[a] - begin[a] + j[a] * dilations[a] for a in range(k)]
            if all(-begin[a] <= pos[a] < spatial[a] + end[a] for a in range(k)):
                padded += 1
            if all(0 <= pos[a] < spatial[a] for a in range(k)):
                vals.append(x[(slice(None), slice(None)) + tuple(pos)].astype(np.float64))
        v = np.stack(vals)
        y[(slice(None), slice(None)) + o] = v.max(0) if op == "MaxPool" else \
            v.sum(0) / (padded if include_pad else len(vals))
    return y.astype(np.float32)


# (input shape, attributes): odd sizes, channels not multiples of 16, every attribute.
CASES = [
    ((2, 3, 9, 11), dict(kernel_shape=[3, 3])),
    ((1, 17, 8, 7), dict(kernel_shape=[2, 2], strides=[2, 2])),
    ((2, 5, 10, 9), dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])),
    ((1, 3, 7, 12), dict(kernel_shape=[3, 2], strides=[2, 3], pads=[1, 0, 2, 1])),
    ((1, 4, 9, 10), dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1)),
    ((1, 4, 8, 11), dict(kernel_shape=[2, 3], strides=[3, 2], pads=[0, 1, 1, 0], ceil_mode=1)),
    # ceil_mode's last window would start in the end padding: dropped
    ((1, 2, 5, 5), dict(kernel_shape=[2, 2], strides=[3, 3], pads=[0, 0, 1, 1], ceil_mode=1)),
    ((1, 3, 11, 13), dict(kernel_shape=[3, 2], dilations=[2, 3])),
    ((2, 3, 12, 10), dict(kernel_shape=[2, 3], strides=[2, 1], pads=[1, 1, 1, 2], dilations=[2, 2],
                          ceil_mode=1)),
    ((1, 3, 9, 8), dict(kernel_shape=[3, 3], strides=[2, 2], auto_pad="VALID")),
    ((1, 3, 9, 8), dict(kernel_shape=[2, 2], strides=[2, 2], auto_pad="VALID", ceil_mode=1)),
    ((1, 3, 9, 8), dict(kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER")),
    ((1, 3, 9, 8), dict(kernel_shape=[4, 2], strides=[2, 3], auto_pad="SAME_LOWER")),
    ((1, 3, 10, 7), dict(kernel_shape=[2, 3], auto_pad="SAME_UPPER")),
    ((1, 3, 10, 7), dict(kernel_shape=[2, 3], auto_pad="SAME_LOWER", ceil_mode=1)),
    ((1, 3, 5, 6), dict(kernel_shape=[5, 6])),  # the window is the whole image
    ((2, 17, 1, 1), dict(kernel_shape=[1, 1])),
    # the window is larger than the input along W: one output over what it covers, as onnxruntime
    ((1, 4, 5, 4), dict(kernel_shape=[3, 3], strides=[1, 3], auto_pad="VALID", dilations=[1, 2])),
    ((1, 2, 5, 5), dict(kernel_shape=[6, 2])),  # an empty output, as onnxruntime
    # 1-D
    ((2, 3, 13), dict(kernel_shape=[3])),
    ((1, 5, 10), dict(kernel_shape=[4], strides=[3], pads=[2, 1], ceil_mode=1)),
    ((1, 5, 11), dict(kernel_shape=[2], strides=[2], dilations=[3], pads=[1, 1])),
    ((1, 5, 11), dict(kernel_shape=[3], strides=[2], auto_pad="SAME_UPPER")),
    # 3-D
    ((1, 3, 5, 6, 7), dict(kernel_shape=[2, 2, 2])),
    ((2, 2, 6, 5, 7), dict(kernel_shape=[3, 2, 3], strides=[2, 2, 1], pads=[1, 0, 1, 1, 1, 1], ceil_mode=1)),
    ((1, 3, 7, 6, 5), dict(kernel_shape=[2, 2, 2], dilations=[2, 1, 2], strides=[1, 2, 2])),
    ((1, 2, 5, 6, 7), dict(kernel_shape=[3, 3, 2], strides=[2, 2, 2], auto_pad="SAME_LOWER")),
]


@pytest.mark.parametrize("shape,attrs", CASES, ids=[str(a) for _, a in CASES])
@pytest.mark.parametrize("op", ["MaxPool", "AveragePool0", "AveragePool1"])
def test_pool_matches_ort(op, shape, attrs):
    if op.startswith("AveragePool"):
        attrs = dict(attrs, count_include_pad=int(op[-1]))
        op = "AveragePool"
    x = randn(*shape) * 3
    assert_matches_ort(pool_model(op, shape, **attrs), {"x": x})


@pytest.mark.parametrize("op,opset,attrs", [
    ("MaxPool", 1, dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])),
    ("MaxPool", 8, dict(kernel_shape=[3, 3], strides=[2, 2], storage_order=1)),
    ("MaxPool", 10, dict(kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1, dilations=[1, 2])),
    ("MaxPool", 12, dict(kernel_shape=[2, 3], strides=[2, 2], pads=[1, 1, 0, 1], dilations=[2, 1])),
    ("AveragePool", 7, dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=1)),
    ("AveragePool", 10, dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1)),
    ("AveragePool", 11, dict(kernel_shape=[2, 2], strides=[2, 2], auto_pad="SAME_UPPER",
                             count_include_pad=1)),
    ("AveragePool", 19, dict(kernel_shape=[3, 2], pads=[1, 1, 1, 1], dilations=[2, 2], count_include_pad=1)),
])
def test_pool_opsets(op, opset, attrs):
    shape = (1, 6, 11, 10)
    assert_matches_ort(pool_model(op, shape, opset=opset, **attrs), {"x": randn(*shape)})


@pytest.mark.parametrize("shape,kernel,strides,dilations,auto_pad", [
    ((1, 2, 11), [2], [1], [2], "SAME_UPPER"),
    ((1, 2, 11), [3], [2], [2], "SAME_LOWER"),
    ((1, 3, 9, 10), [2, 3], [1, 2], [3, 2], "SAME_UPPER"),
    ((1, 3, 9, 10), [3, 2], [2, 1], [2, 2], "SAME_LOWER"),
    ((1, 2, 11), [1], [3], [1], "SAME_UPPER"),        # kernel < stride: no padding at all
    ((1, 3, 9, 10), [2, 1], [3, 3], [1, 1], "SAME_LOWER"),
])
@pytest.mark.parametrize("op", ["MaxPool", "AveragePool0", "AveragePool1"])
def test_same_padding_follows_spec(op, shape, kernel, strides, dilations, auto_pad):
    """Where onnxruntime departs from the spec: it leaves the dilation out of SAME padding (one output
    short), and when the kernel is smaller than the stride its total pad goes negative (MaxPool refuses,
    AveragePool shifts its windows). bninfer pads (out - 1) * s + (k - 1) * d + 1 - in, at least 0 (as
    TensorFlow's SAME, where the mode comes from)."""
    include_pad = op == "AveragePool1"
    op = op[:-1] if op != "MaxPool" else op
    attrs = dict(kernel_shape=kernel, strides=strides, dilations=dilations, auto_pad=auto_pad)
    if op == "AveragePool":
        attrs["count_include_pad"] = int(include_pad)
    x = randn(*shape)
    y = run_bn(pool_model(op, shape, **attrs), {"x": x})[0]
    begin, end = [], []
    for a, size in enumerate(shape[2:]):
        out = -(-size // strides[a])
        total = max(0, (out - 1) * strides[a] + (kernel[a] - 1) * dilations[a] + 1 - size)
        b = total // 2 if auto_pad == "SAME_UPPER" else (total + 1) // 2
        begin.append(b)
        end.append(total - b)
    expected = numpy_pool(x, op, kernel, strides, dilations, begin, end, include_pad)
    assert y.shape == expected.shape == shape[:2] + tuple(-(-s // st) for s, st in zip(shape[2:], strides))
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)
    if op == "MaxPool" and set(strides) == {1}:  # onnx.reference gets strided SAME + dilation wrong too
        ref = ReferenceEvaluator(pool_model(op, shape, **attrs)).run(None, {"x": x})[0]
        np.testing.assert_allclose(y, ref, rtol=1e-6)


@pytest.mark.parametrize("shape,attrs", [
    ((1, 3, 9, 11), dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])),
    ((1, 3, 8, 9), dict(kernel_shape=[2, 2])),
    ((1, 2, 10, 9), dict(kernel_shape=[2, 3], strides=[1, 2], dilations=[2, 1])),
    ((2, 2, 13), dict(kernel_shape=[3], strides=[2], pads=[1, 1], ceil_mode=1)),
    ((1, 3, 9, 11), dict(kernel_shape=[2, 2], strides=[2, 2])),  # windows tiling the input
    ((1, 2, 10, 9), dict(kernel_shape=[3, 2], strides=[3, 2])),
    ((1, 2, 5, 6, 7), dict(kernel_shape=[2, 2, 3], strides=[2, 1, 2])),
])
def test_maxpool_nan_propagates(shape, attrs):
    """A window holding a NaN gives NaN (as numpy's max). onnx.reference is no oracle for this: its
    unit-stride path drops NaNs (it uses NaN as its padding marker) and its strided path keeps a NaN only
    when it is the window's first element; onnxruntime keeps it only when first too. Every window
    without NaN must still agree with onnx.reference."""
    x = randn(*shape)
    flat = x.reshape(-1)
    flat[::7] = np.nan
    flat[3] = np.inf
    flat[5] = -np.inf
    k = len(attrs["kernel_shape"])
    pads = attrs.get("pads", [0] * 2 * k)
    expected = numpy_pool(x, "MaxPool", attrs["kernel_shape"], attrs.get("strides", [1] * k),
                          attrs.get("dilations", [1] * k), pads[:k], pads[k:])
    model = pool_model("MaxPool", shape, **attrs)
    ours = run_bn(model, {"x": x})[0]
    assert ours.shape == expected.shape
    assert np.isnan(expected).any() and not np.isnan(expected).all()
    np.testing.assert_array_equal(ours, expected)  # NaNs in the same places, the rest exact
    ref = ReferenceEvaluator(model).run(None, {"x": x})[0]
    clean = ~np.isnan(expected)
    np.testing.assert_array_equal(ours[clean], ref[clean])


@pytest.mark.parametrize("shape,attrs", [
    ((1, 20, 24, 25), dict(kernel_shape=[2, 2], strides=[2, 2])),
    ((2, 3, 9, 8), dict(kernel_shape=[3, 2], strides=[3, 2])),
    ((1, 4, 10), dict(kernel_shape=[2], strides=[2])),
])
@pytest.mark.parametrize("op", ["MaxPool", "AveragePool"])
def test_tiling_windows_take_the_tiled_kernel(shape, attrs, op, monkeypatch):
    """Windows that tile the input (stride = kernel, no padding) run max_pool_tiled / avg_pool_tiled;
    trailing rows and columns no window covers are left out."""
    from bninfer.ops import pool
    monkeypatch.setattr(pool.K, "pool", None)  # the generic kernel would raise
    x = randn(*shape)
    k = len(attrs["kernel_shape"])
    expected = numpy_pool(x, op, attrs["kernel_shape"], attrs["strides"], [1] * k, [0] * k, [0] * k)
    got = run_bn(pool_model(op, shape, **attrs), {"x": x})[0]
    if op == "MaxPool":
        np.testing.assert_array_equal(got, expected)
    else:
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(got, run_ort(pool_model(op, shape, **attrs), {"x": x})[0], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("shape,attrs", [
    ((1, 5, 16, 16), dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])),   # ResNet's pool
    ((2, 3, 13, 17), dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])),   # odd sizes, batch 2
    ((1, 4, 13, 11), dict(kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1)),         # last window partial
    ((1, 3, 9, 40), dict(kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1])),    # Inception's 3x3/1
    ((1, 2, 12, 37), dict(kernel_shape=[5, 3], strides=[3, 2], pads=[2, 2, 1, 2])),   # pw = 2, tall windows
    ((1, 2, 7, 35), dict(kernel_shape=[1, 3], strides=[1, 2], pads=[0, 0, 0, 1])),
    ((2, 3, 30), dict(kernel_shape=[3], strides=[2], pads=[1, 1])),                   # 1-D
])
def test_maxpool_three_wide_windows_take_the_k3_kernel(shape, attrs, monkeypatch):
    """Windows 3 wide at stride 1 or 2 run max_pool_k3 (the generic kernel is never called), with -inf as
    padding, exactly as onnxruntime; also with -inf and +inf in the input."""
    from bninfer.ops import pool
    from tests.util import run_ort
    monkeypatch.setattr(pool.K, "pool", None)  # the generic kernel would raise
    x = randn(*shape)
    x.reshape(-1)[::11] = -np.inf
    x.reshape(-1)[5::13] = np.inf
    model = pool_model("MaxPool", shape, **attrs)
    np.testing.assert_array_equal(run_bn(model, {"x": x})[0], run_ort(model, {"x": x})[0])


def test_maxpool_nan_anywhere_in_window():
    """NaN first, last or in the middle of a window, among larger and smaller values."""
    x = np.array([[[np.nan, 1, 5, np.nan, -3, 2, 7, np.nan, 0]]], np.float32)
    y = run_bn(pool_model("MaxPool", x.shape, kernel_shape=[3], strides=[3]), {"x": x})[0]
    assert np.isnan(y).all()
    x = np.array([[[1, 2, 3, np.nan, 4, 5]]], np.float32)
    y = run_bn(pool_model("MaxPool", x.shape, kernel_shape=[2], strides=[2]), {"x": x})[0]
    np.testing.assert_array_equal(y, np.array([[[2, np.nan, 5]]], np.float32))


@pytest.mark.parametrize("shape", [(2, 17, 7, 7), (1, 3, 5), (1, 2, 3, 4, 5), (3, 33, 1, 1), (1, 5, 61, 53)])
@pytest.mark.parametrize("op", ["GlobalAveragePool", "GlobalMaxPool"])
def test_global_pool(op, shape):
    x = randn(*shape) + 2.0
    model = make_model([helper.make_node(op, ["x"], ["y"])], {"x": list(shape)}, ["y"], opset=1)
    assert_matches_ort(model, {"x": x})


def test_global_max_pool_nan():
    x = randn(1, 3, 4, 4)
    x[0, 1, 2, 3] = np.nan
    model = make_model([helper.make_node("GlobalMaxPool", ["x"], ["y"])], {"x": [1, 3, 4, 4]}, ["y"], opset=1)
    y = run_bn(model, {"x": x})[0].reshape(-1)
    assert np.isnan(y[1]) and not np.isnan(y[[0, 2]]).any()
    np.testing.assert_array_equal(y[[0, 2]], x[0, [0, 2]].max(axis=(1, 2)))


@pytest.mark.parametrize("shape", [(2, 17, 5, 6), (1, 7, 9), (1, 6, 2, 3, 4)])
@pytest.mark.parametrize("attrs", [dict(size=1), dict(size=2), dict(size=3, alpha=1e-3, beta=0.5, bias=2.0),
                                   dict(size=5, alpha=0.02, beta=0.75, bias=1.0), dict(size=4, alpha=0.1)])
def test_lrn(shape, attrs):
    x = randn(*shape) * 3
    model = make_model([helper.make_node("LRN", ["x"], ["y"], **attrs)], {"x": list(shape)}, ["y"], opset=13)
    if len(shape) == 4 and attrs["size"] % 2:
        assert_matches_ort(model, {"x": x})
        return
    # onnxruntime runs 4-D LRN of odd size only: the spec's formula in float64
    size, alpha = attrs["size"], attrs.get("alpha", 1e-4)
    beta, bias = attrs.get("beta", 0.75), attrs.get("bias", 1.0)
    sq = np.square(x.astype(np.float64))
    c = shape[1]
    window = np.stack([sq[:, max(0, k - (size - 1) // 2):min(c, k + size - 1 - (size - 1) // 2 + 1)].sum(1)
                       for k in range(c)], 1)
    expected = x / (bias + alpha / size * window) ** beta
    np.testing.assert_allclose(run_bn(model, {"x": x})[0], expected, rtol=1e-5, atol=1e-6)


def test_runs_from_threads():
    node = Node("AveragePool", "ap", ["x"], ["y"], {"kernel_shape": [3, 3], "strides": [2, 2],
                                                   "pads": [1, 1, 1, 1], "count_include_pad": 0})
    x = Value("x", (2, 5, 21, 19), np.dtype(np.float32))
    opdef = ops.get("AveragePool")
    (shape, dtype), = opdef.infer(node, [x])
    run = opdef.build(node, [x], [Value("y", shape, dtype)])
    xs = [randn(2, 5, 21, 19, seed=k) for k in range(8)]

    def one(a):
        y = np.empty(shape, np.float32)
        run([a], [y])
        return y
    serial = [one(a) for a in xs]
    with ThreadPoolExecutor(4) as pool:
        for _ in range(3):
            for a, b in zip(pool.map(one, xs), serial):
                np.testing.assert_array_equal(a, b)


# -- errors ------------------------------------------------------------------------------------------

def _build(op, attrs, shape, dtype=np.float32, name="bad_pool"):
    node = Node(op, name, ["x"], ["y"], dict(attrs))
    x = Value("x", shape, np.dtype(dtype))
    opdef = ops.get(op)
    (out_shape, out_dtype), = opdef.infer(node, [x])
    return opdef.build(node, [x], [Value("y", out_shape, out_dtype)])


@pytest.mark.parametrize("op,attrs,shape", [
    ("MaxPool", dict(kernel_shape=[3, 3]), (1, 2, 5)),                    # rank mismatch
    ("MaxPool", dict(kernel_shape=[7, 2]), (1, 2, 5, 5)),                 # window larger than input
    ("AveragePool", dict(kernel_shape=[2, 2], pads=[1, 1]), (1, 2, 5, 5)),  # pads of the wrong length
    ("AveragePool", dict(kernel_shape=[2, 2], strides=[0, 1]), (1, 2, 5, 5)),
    ("MaxPool", dict(kernel_shape=[3], dilations=[4]), (1, 1, 6)),        # dilated window too large
    ("MaxPool", dict(kernel_shape=[2, 2], auto_pad="SAME"), (1, 2, 5, 5)),
    ("MaxPool", dict(), (1, 2, 5, 5)),                                    # no kernel_shape
    ("LRN", dict(size=0), (1, 2, 5, 5)),
    ("GlobalMaxPool", dict(), (3,)),
])
def test_invalid_geometry_is_a_model_error(op, attrs, shape):
    with pytest.raises(ModelError, match="bad_pool"):
        _build(op, attrs, shape)


def test_invalid_geometry_in_a_model_names_the_node():
    model = pool_model("MaxPool", (1, 2, 4, 4), kernel_shape=[3, 3], dilations=[3, 3])
    with pytest.raises(ModelError, match="'pool'"):
        run_bn(model, {"x": randn(1, 2, 4, 4)})


@pytest.mark.parametrize("op,attrs", [("MaxPool", dict(kernel_shape=[2, 2])),
                                      ("AveragePool", dict(kernel_shape=[2, 2])), ("GlobalAveragePool", {}),
                                      ("GlobalMaxPool", {}), ("LRN", dict(size=3))])
def test_non_float32_is_unsupported(op, attrs):
    with pytest.raises(UnsupportedOperatorError, match="bad_pool"):
        _build(op, attrs, (1, 2, 4, 4), np.float64)


def test_four_d_pooling_is_unsupported():
    with pytest.raises(UnsupportedOperatorError, match="bad_pool"):
        _build("MaxPool", dict(kernel_shape=[2, 2, 2, 2]), (1, 1, 3, 3, 3, 3))
