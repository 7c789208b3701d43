"""Elementwise ops and the activation table against onnxruntime."""
import numpy as np
import pytest
from onnx import helper

from tests.util import assert_matches_ort, make_model, randn

ACTIVATIONS = [
    ("Relu", {}, 14), ("LeakyRelu", {"alpha": 0.07}, 16), ("Sigmoid", {}, 13), ("Tanh", {}, 13),
    ("HardSigmoid", {"alpha": 0.3, "beta": 0.4}, 6), ("HardSwish", {}, 14), ("Elu", {"alpha": 0.7}, 6),
    ("Selu", {"alpha": 1.5, "gamma": 1.1}, 6), ("Celu", {"alpha": 0.8}, 12), ("Gelu", {}, 20),
    ("Gelu", {"approximate": "tanh"}, 20), ("Softplus", {}, 1), ("Softsign", {}, 1), ("Mish", {}, 18),
]


@pytest.mark.parametrize("op,attrs,opset", ACTIVATIONS, ids=lambda v: str(v))
@pytest.mark.parametrize("shape", [(1, 3, 5, 7), (2, 17)])
def test_activation(op, attrs, opset, shape):
    x = randn(*shape) * 4
    x.flat[0] = 30.0  # exp overflow territory
    x.flat[1] = -30.0
    model = make_model([helper.make_node(op, ["x"], ["y"], **attrs)], {"x": list(shape)}, ["y"], opset=opset)
    assert_matches_ort(model, {"x": x})


def test_nan_propagates_through_relu_and_clip():
    x = np.array([[np.nan, -1.0, 2.0, np.inf, -np.inf]], np.float32)
    for node in (helper.make_node("Relu", ["x"], ["y"]), helper.make_node("Clip", ["x", "lo", "hi"], ["y"])):
        model = make_model([node], {"x": [1, 5]}, ["y"], {"lo": np.float32(0), "hi": np.float32(6)}, opset=13)
        out = assert_matches_ort(model, {"x": x})[0]
        assert np.isnan(out[0, 0])


@pytest.mark.parametrize("opset", [6, 11, 13])
def test_clip_opsets(opset):
    x = randn(2, 8) * 10
    if opset < 11:
        node = helper.make_node("Clip", ["x"], ["y"], min=-1.5, max=6.0)
        inits = {}
    else:
        node = helper.make_node("Clip", ["x", "lo", "hi"], ["y"])
        inits = {"lo": np.float32(-1.5), "hi": np.float32(6.0)}
    assert_matches_ort(make_model([node], {"x": [2, 8]}, ["y"], inits, opset=opset), {"x": x})


@pytest.mark.parametrize("slope_shape", [(1,), (3, 1, 1), (5,)])
def test_prelu(slope_shape):
    x = randn(2, 3, 4, 5)
    model = make_model([helper.make_node("PRelu", ["x", "s"], ["y"])], {"x": [2, 3, 4, 5]}, ["y"],
                       {"s": randn(*slope_shape)})
    assert_matches_ort(model, {"x": x})


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div", "Max", "Min", "Pow"])
@pytest.mark.parametrize("shapes", [((2, 3, 4), (2, 3, 4)), ((2, 3, 4), (4,)), ((1, 3, 1), (2, 1, 5))])
def test_binary_broadcast(op, shapes):
    a, b = randn(*shapes[0]), randn(*shapes[1])
    if op == "Pow":
        a = np.abs(a) + 0.1
    model = make_model([helper.make_node(op, ["a", "b"], ["y"])],
                       {"a": list(shapes[0]), "b": list(shapes[1])}, ["y"], opset=13)
    assert_matches_ort(model, {"a": a, "b": b})


def test_legacy_broadcast_axis():
    """Opset-6 Add with broadcast=1, axis=1: B of shape (C,) aligns with axis 1 of (N, C, H, W)."""
    a, b = randn(2, 3, 4, 5), randn(3)
    model = make_model([helper.make_node("Add", ["a", "b"], ["y"], broadcast=1, axis=1)],
                       {"a": [2, 3, 4, 5]}, ["y"], {"b": b}, opset=6)
    from tests.util import run_bn
    np.testing.assert_allclose(run_bn(model, {"a": a})[0], a + b.reshape(3, 1, 1), rtol=1e-6)


@pytest.mark.parametrize("op", ["Sum", "Mean"])
def test_variadic(op):
    xs = [randn(2, 3), randn(3), randn(1, 3)]
    model = make_model([helper.make_node(op, ["a", "b", "c"], ["y"])],
                       {"a": [2, 3], "b": [3], "c": [1, 3]}, ["y"], opset=13)
    assert_matches_ort(model, dict(zip("abc", xs)))


@pytest.mark.parametrize("op", ["Neg", "Abs", "Exp", "Sqrt", "Reciprocal", "Erf", "Floor", "Ceil"])
def test_unary(op):
    x = randn(3, 7)
    if op in ("Sqrt", "Reciprocal"):
        x = np.abs(x) + 0.5
    model = make_model([helper.make_node(op, ["x"], ["y"])], {"x": [3, 7]}, ["y"], opset=13)
    assert_matches_ort(model, {"x": x})
