"""Reductions, ArgMax/ArgMin and the softmax family against onnxruntime."""
import threading

import numpy as np
import pytest
from onnx import TensorProto, helper

import bninfer
from bninfer import ir, ops
from bninfer.errors import ModelError, UnsupportedOperatorError
from tests.util import assert_matches_ort, make_model, randn, run_bn

REDUCE_OPS = ["ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
              "ReduceSumSquare", "ReduceLogSum", "ReduceLogSumExp"]
AXES_VARIANTS = [None, [1], [-1], [0, 2], [-3, 3], [1, 2, 3], [3, 1]]


def _axes_in_attr(op, opset):
    return opset < (13 if op == "ReduceSum" else 18)


def reduce_model(op, shape, axes, opset, keepdims=1, name="red", **attrs):
    """A Reduce node in the form of its opset: axes as attribute or as a constant input."""
    inits = {}
    if axes is not None and _axes_in_attr(op, opset):
        node = helper.make_node(op, ["x"], ["y"], name=name, axes=axes, keepdims=keepdims, **attrs)
    elif axes is not None:
        inits["axes"] = np.array(axes, np.int64)
        node = helper.make_node(op, ["x", "axes"], ["y"], name=name, keepdims=keepdims, **attrs)
    else:
        node = helper.make_node(op, ["x"], ["y"], name=name, keepdims=keepdims, **attrs)
    return make_model([node], {"x": list(shape)}, ["y"], inits, opset=opset)


def _feed(op, shape, seed=None):
    x = randn(*shape, seed=seed)
    if op in ("ReduceLogSum",):
        x = np.abs(x) + 0.1
    if op == "ReduceProd":
        x = (np.abs(x) * 0.5 + 0.75) * np.sign(x)  # products of modest size
    return x


@pytest.mark.parametrize("op", REDUCE_OPS)
@pytest.mark.parametrize("axes", AXES_VARIANTS, ids=str)
@pytest.mark.parametrize("keepdims", [0, 1])
def test_reduce(op, axes, keepdims):
    shape = (2, 3, 5, 7)
    opset = 18 if op != "ReduceSum" else 13
    assert_matches_ort(reduce_model(op, shape, axes, opset, keepdims), {"x": _feed(op, shape)})


@pytest.mark.parametrize("op", REDUCE_OPS)
@pytest.mark.parametrize("opset", [11, 13, 18])
def test_reduce_opsets(op, opset):
    """Axes as an attribute (before 18; ReduceSum before 13) and as an input."""
    shape = (3, 17, 9)
    assert_matches_ort(reduce_model(op, shape, [-1, 0], opset), {"x": _feed(op, shape)})
    assert_matches_ort(reduce_model(op, shape, None, opset, keepdims=0), {"x": _feed(op, shape)})


@pytest.mark.parametrize("shape,axes", [((1, 64, 56, 56), [2, 3]), ((4, 128, 768), [-1]),
                                         ((1000,), [0]), ((7, 1, 3), [1]), ((5,), None)], ids=str)
@pytest.mark.parametrize("op", ["ReduceMean", "ReduceSum", "ReduceMax", "ReduceL2"])
def test_reduce_shapes(op, shape, axes):
    """Any two float32 engines differ by the rounding of their sums: the bound is eps * sqrt(n) times
    the largest sum of |x| (a fixed atol failed on a draw whose 768-term sum cancelled to 0.012)."""
    x = _feed(op, shape, seed=7)
    n = x.size if axes is None else int(np.prod([shape[a] for a in axes]))
    mags = np.abs(x).astype(np.float64)
    if op == "ReduceL2":
        mags = mags ** 2  # the sum runs over squares; the square root halves the relative error
    per_out = mags.sum() if axes is None else mags.sum(axis=tuple(axes))
    if op == "ReduceL2":
        per_out = np.sqrt(per_out) / 2
    atol = max(1e-5, 2 * np.finfo(np.float32).eps * np.sqrt(n) * float(np.max(per_out)))
    if op == "ReduceMean":
        atol /= n
    assert_matches_ort(reduce_model(op, shape, axes, 18), {"x": x}, atol=atol)


@pytest.mark.parametrize("op", REDUCE_OPS)
def test_noop_with_empty_axes(op):
    """No axes with noop_with_empty_axes=1: no reduction, but the elementwise part (abs, square, log)
    still applies, as in onnxruntime."""
    shape = (2, 3, 4)
    x = randn(*shape)
    for noop in (0, 1):
        for axes in (None, []):
            inits = {} if axes is None else {"axes": np.array(axes, np.int64)}
            ins = ["x"] if axes is None else ["x", "axes"]
            node = helper.make_node(op, ins, ["y"], keepdims=1, noop_with_empty_axes=noop)
            model = make_model([node], {"x": list(shape)}, ["y"], inits, opset=18)
            out = assert_matches_ort(model, {"x": x})[0]
            assert out.shape == (shape if noop else (1, 1, 1))


def test_reduce_nan_and_inf():
    x = np.array([[np.nan, 1, 2], [np.inf, 1, 2], [-np.inf, -np.inf, -np.inf], [1, 2, 3]], np.float32)
    for op in ("ReduceMax", "ReduceMin", "ReduceSum", "ReduceMean", "ReduceLogSumExp"):
        out = assert_matches_ort(reduce_model(op, (4, 3), [1], 18), {"x": x})[0]
        assert np.isnan(out[0, 0])


def _int_fold_model(op, data, axes, opset=18, keepdims=1):
    """A Reduce of an int64 constant (folded at load), cast to float and added to the input."""
    ins = ["c"] + (["axes"] if axes is not None else [])
    inits = {"c": data}
    if axes is not None:
        inits["axes"] = np.array(axes, np.int64)
    nodes = [helper.make_node(op, ins, ["r"], keepdims=keepdims),
             helper.make_node("Cast", ["r"], ["rf"], to=TensorProto.FLOAT),
             helper.make_node("Add", ["x", "rf"], ["y"])]
    return make_model(nodes, {"x": [1]}, ["y"], inits, opset=opset)


@pytest.mark.parametrize("op", ["ReduceSum", "ReduceProd", "ReduceMax", "ReduceMin", "ReduceMean"])
def test_reduce_int64_constant_folding(op):
    data = np.array([[2, 3, -4], [5, 7, 1]], np.int64)
    for axes in ([0], [1], None):
        model = _int_fold_model(op, data, axes)
        assert_matches_ort(model, {"x": np.zeros(1, np.float32)})


def _values(*specs):
    return [None if s is None else ir.Value(s[0], tuple(s[1]), np.dtype(s[2]), s[3]) for s in specs]


def test_reduce_build_direct_int64():
    """The op itself on int64 constants (what constant folding calls)."""
    data = np.arange(24, dtype=np.int64).reshape(2, 3, 4)
    node = ir.Node("ReduceSum", "rs", ["d", "a"], ["y"], {"keepdims": 0, "noop_with_empty_axes": 0})
    ins = _values(("d", data.shape, np.int64, data), ("a", (2,), np.int64, np.array([-1, 0])))
    opdef = ops.get("ReduceSum")
    (shape, dtype), = opdef.infer(node, ins)
    assert shape == (3,) and dtype == np.int64
    out = np.empty(shape, dtype)
    opdef.build(node, ins, [ir.Value("y", shape, dtype)])([data, ins[1].data], [out])
    np.testing.assert_array_equal(out, data.sum(axis=(0, 2)))


@pytest.mark.parametrize("axes", [[0, 0], [-1, 2], [3], [-4]], ids=str)
def test_reduce_bad_axes(axes):
    model = reduce_model("ReduceMean", (2, 3, 4), axes, 18, name="bad_reduce")
    with pytest.raises(ModelError, match="bad_reduce"):
        run_bn(model, {"x": randn(2, 3, 4)})


def test_reduce_runtime_axes_refused():
    node = helper.make_node("ReduceSum", ["x", "axes"], ["y"], name="dyn_axes")
    ins = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3]),
           helper.make_tensor_value_info("axes", TensorProto.INT64, [1])]
    outs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    model = helper.make_model(helper.make_graph([node], "g", ins, outs),
                              opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    with pytest.raises(UnsupportedOperatorError, match="dyn_axes"):
        bninfer.InferenceSession(model.SerializeToString())


def _double_model(node):
    ins = [helper.make_tensor_value_info("x", TensorProto.DOUBLE, [2, 3])]
    outs = [helper.make_tensor_value_info("y", TensorProto.DOUBLE, None)]
    model = helper.make_model(helper.make_graph([node], "g", ins, outs),
                              opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("op", ["ReduceSum", "Softmax"])
def test_non_float32_refused(op):
    model = _double_model(helper.make_node(op, ["x"], ["y"], name="dbl"))
    with pytest.raises(UnsupportedOperatorError, match="dbl"):
        bninfer.InferenceSession(model.SerializeToString())
    # and the op's build itself refuses a run-time float64 tensor
    node = ir.Node(op, "dbl2", ["x"], ["y"], {"keepdims": 1, "axis": -1})
    x = ir.Value("x", (2, 3), np.dtype(np.float64))
    with pytest.raises(UnsupportedOperatorError, match="dbl2"):
        ops.get(op).build(node, [x], [ir.Value("y", (2, 3), np.dtype(np.float64))])


# -- ArgMax / ArgMin ----------------------------------------------------------------------------------

@pytest.mark.parametrize("op", ["ArgMax", "ArgMin"])
@pytest.mark.parametrize("axis", [0, 1, -1])
@pytest.mark.parametrize("keepdims", [0, 1])
@pytest.mark.parametrize("last", [0, 1])
def test_arg_constant_folding(op, axis, keepdims, last):
    data = np.array([[[3, 1, 3], [0, 5, 5]], [[2, 2, -1], [7, 7, 0]]], np.float32)  # ties on purpose
    nodes = [helper.make_node(op, ["c"], ["r"], axis=axis, keepdims=keepdims, select_last_index=last),
             helper.make_node("Cast", ["r"], ["rf"], to=TensorProto.FLOAT),
             helper.make_node("Add", ["x", "rf"], ["y"])]
    model = make_model(nodes, {"x": [1]}, ["y"], {"c": data}, opset=13)
    assert_matches_ort(model, {"x": np.zeros(1, np.float32)})


# -- Softmax family --------------------------------------------------------------------------------------

SOFTMAX_OPS = ["Softmax", "LogSoftmax", "Hardmax"]


@pytest.mark.parametrize("op", SOFTMAX_OPS)
@pytest.mark.parametrize("opset", [1, 11, 13])
@pytest.mark.parametrize("axis", [None, 0, 1, 2, -1, -3])
def test_softmax_axes_and_opsets(op, opset, axis):
    """Before 13: flatten to 2-D at axis (default 1) and normalize the trailing block; from 13: one axis
    (default -1)."""
    shape = (2, 3, 5)
    if axis is not None and opset < 11 and axis < 0:
        pytest.skip("negative axis needs opset 11")
    attrs = {} if axis is None else {"axis": axis}
    x = randn(*shape) * 3
    if op == "Hardmax":
        x = np.round(x)  # ties: the first maximum wins
    model = make_model([helper.make_node(op, ["x"], ["y"], **attrs)], {"x": list(shape)}, ["y"], opset=opset)
    assert_matches_ort(model, {"x": x})


@pytest.mark.parametrize("op", SOFTMAX_OPS)
@pytest.mark.parametrize("shape,axis", [((1, 1000), -1), ((4, 12, 33, 33), -1), ((1, 21, 9, 13), 1),
                                        ((7,), 0), ((3, 1), 1), ((2, 3, 4, 5), 2)], ids=str)
def test_softmax_shapes(op, shape, axis):
    x = randn(*shape) * 2
    model = make_model([helper.make_node(op, ["x"], ["y"], axis=axis)], {"x": list(shape)}, ["y"], opset=13)
    assert_matches_ort(model, {"x": x})


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
def test_softmax_stable_and_nan(op):
    x = np.array([[1000.0, 999.0, -1000.0, 0.0], [-1e30, 1e30, 3.0, 2.0], [np.nan, 1.0, 2.0, 3.0],
                  [-np.inf, 0.0, 1.0, 2.0], [88.0, 89.0, 90.0, 91.0]], np.float32)
    model = make_model([helper.make_node(op, ["x"], ["y"], axis=1)], {"x": [5, 4]}, ["y"], opset=13)
    out = assert_matches_ort(model, {"x": x})[0]
    assert np.isfinite(out[[0, 4]]).all()
    assert np.isnan(out[2]).all()


@pytest.mark.parametrize("axis", [2, -4])
def test_softmax_bad_axis(axis):
    model = make_model([helper.make_node("Softmax", ["x"], ["y"], axis=axis, name="sm_bad")], {"x": [2, 3]},
                       ["y"], opset=13)
    with pytest.raises(ModelError, match="sm_bad"):
        run_bn(model, {"x": randn(2, 3)})


def test_softmax_threads():
    """One built op run from several threads at once on different buffers."""
    shape = (64, 257)
    node = ir.Node("Softmax", "sm", ["x"], ["y"], {"axis": -1, "coerce_2d": False})
    run = ops.get("Softmax").build(node, [ir.Value("x", shape, np.dtype(np.float32))],
                                   [ir.Value("y", shape, np.dtype(np.float32))])
    xs = [randn(*shape, seed=s) for s in range(4)]
    expect = [np.exp(x - x.max(1, keepdims=True)) / np.exp(x - x.max(1, keepdims=True)).sum(1, keepdims=True)
              for x in xs]
    errors = []

    def work(k):
        out = np.empty(shape, np.float32)
        for _ in range(50):
            run([xs[k]], [out])
            if not np.allclose(out, expect[k], rtol=1e-5, atol=1e-7):
                errors.append(k)
    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
