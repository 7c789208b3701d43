"""fuse_activation and fuse_patterns: every activation of the table fused into Conv/Gemm/MatMul, the
multi-node forms exporters emit recognised, and the cases that must not fuse."""
import numpy as np
import pytest

from tests.graphs import Builder, check, counts, image
from tests.util import randn

ACTS = [("Relu", {}), ("LeakyRelu", {"alpha": 0.13}), ("Sigmoid", {}), ("Tanh", {}),
        ("HardSigmoid", {"alpha": 0.25, "beta": 0.4}), ("HardSwish", {}), ("Elu", {"alpha": 0.6}),
        ("Selu", {"alpha": 1.5, "gamma": 1.2}), ("Celu", {"alpha": 0.7}), ("Gelu", {}),
        ("Gelu", {"approximate": "tanh"}), ("Mish", {}), ("Softplus", {}), ("Softsign", {})]


@pytest.mark.parametrize("op,attrs", ACTS, ids=lambda v: str(v))
def test_conv_bn_activation_is_one_kernel(op, attrs):
    b = Builder()
    y = b.node(op, [b.bn(b.conv("x", 3, 5), 5)], **attrs)
    sess = check(b.model({"x": [1, 3, 9, 11]}, [y], opset=22), {"x": image()})
    assert counts(sess) == {"Conv": 1}


@pytest.mark.parametrize("op,attrs", [a for a in ACTS if a[0] in ("Sigmoid", "HardSwish", "Elu", "Selu", "Tanh")],
                         ids=lambda v: str(v))
@pytest.mark.parametrize("cin,cout,size,batch", [(96, 24, 1, 2), (8, 40, 1, 1), (8, 16, 4, 1)])
def test_activation_spans_on_blas_convs_with_an_affine_after_them(op, attrs, cin, cout, size, batch):
    """The BLAS path's epilogue: squeeze-excitation's 1x1 convs of one output pixel (one span over all
    channels, the affine after it per channel) and 1x1 convs of few input channels (a span a row)."""
    b = Builder(3)
    y = b.bn(b.node(op, [b.bn(b.conv("x", cin, cout, k=1), cout)], **attrs), cout)  # BN -> act -> BN
    x = randn(batch, cin, size, size, seed=2) * 3
    sess = check(b.model({"x": [batch, cin, size, size]}, [y], opset=22), {"x": x})
    assert counts(sess) == {"Conv": 1}


def test_clip_relu6_with_constant_bounds_fuses():
    b = Builder()
    lo, hi = b.const("lo", np.float32(0)), b.const("hi", np.float32(6))
    y = b.node("Clip", [b.bn(b.conv("x", 3, 5), 5), lo, hi])
    sess = check(b.model({"x": [1, 3, 9, 11]}, [y]), {"x": image() * 5})
    assert counts(sess) == {"Conv": 1}


def test_clip_with_one_bound_fuses():
    b = Builder()
    y = b.node("Clip", [b.conv("x", 3, 5), "", b.const("hi", np.float32(0.5))])
    sess = check(b.model({"x": [1, 3, 9, 11]}, [y]), {"x": image()})
    assert counts(sess) == {"Conv": 1}


@pytest.mark.parametrize("slope_shape", [(5, 1, 1), (1,), (1, 5, 1, 1)])
def test_prelu_per_channel_fuses(slope_shape):
    b = Builder()
    y = b.node("PRelu", [b.conv("x", 3, 5), b.const("s", randn(*slope_shape))])
    sess = check(b.model({"x": [1, 3, 9, 11]}, [y]), {"x": image()})
    assert counts(sess) == {"Conv": 1}


def test_prelu_not_per_channel_does_not_fuse():
    b = Builder()
    y = b.node("PRelu", [b.conv("x", 3, 5), b.const("s", randn(1, 11))])
    sess = check(b.model({"x": [1, 3, 9, 11]}, [y]), {"x": image()})
    assert counts(sess) == {"Conv": 1, "PRelu": 1}


def test_activation_not_fused_when_conv_output_is_shared():
    b = Builder()
    c = b.conv("x", 3, 5)
    y = b.node("Relu", [c])
    z = b.node("Sigmoid", [c])
    sess = check(b.model({"x": [1, 3, 9, 11]}, [y, z]), {"x": image()})
    assert counts(sess) == {"Conv": 1, "Relu": 1, "Sigmoid": 1}


@pytest.mark.parametrize("op", ["Gemm", "MatMul"])
def test_gemm_matmul_activation(op):
    b = Builder()
    w = b.const("W", randn(6, 8))
    h = b.node(op, ["x", w])
    y = b.node("LeakyRelu", [h], alpha=0.2)
    sess = check(b.model({"x": [2, 6]}, [y]), {"x": randn(2, 6)})
    assert counts(sess) == {op: 1}


# -- multi-node activation forms ------------------------------------------------------------------

def _silu(b, x):
    return b.node("Mul", [x, b.node("Sigmoid", [x])])


def _hardswish(b, x):
    return b.node("Mul", [b.node("HardSigmoid", [x], alpha=1 / 6, beta=0.5), x])


def _mish(b, x):
    return b.node("Mul", [x, b.node("Tanh", [b.node("Softplus", [x])])])


def _gelu_erf_torch(b, x):  # ((x * (erf(x / sqrt2) + 1)) * 0.5), as torch's classic exporter writes it
    e = b.node("Erf", [b.node("Div", [x, b.const("r2", np.float32(np.sqrt(2)))])])
    return b.node("Mul", [b.node("Mul", [x, b.node("Add", [e, b.const("one", np.float32(1))])]),
                          b.const("half", np.float32(0.5))])


def _gelu_erf_half_first(b, x):  # (x * 0.5) * (1 + erf(x * 0.7071))
    e = b.node("Erf", [b.node("Mul", [x, b.const("c", np.float32(1 / np.sqrt(2)))])])
    half = b.node("Mul", [x, b.const("half", np.float32(0.5))])
    return b.node("Mul", [half, b.node("Add", [b.const("one", np.float32(1)), e])])


def _gelu_tanh_pow(b, x):
    cube = b.node("Mul", [b.node("Pow", [x, b.const("three", np.float32(3))]), b.const("k", np.float32(0.044715))])
    inner = b.node("Mul", [b.node("Add", [x, cube]), b.const("s", np.float32(np.sqrt(2 / np.pi)))])
    t = b.node("Tanh", [inner])
    return b.node("Mul", [b.node("Mul", [x, b.node("Add", [t, b.const("one", np.float32(1))])]),
                          b.const("half", np.float32(0.5))])


def _gelu_tanh_mul(b, x):
    cube = b.node("Mul", [x, b.node("Mul", [x, x])])
    scaled = b.node("Mul", [cube, b.const("k", np.float32(0.044715))])
    inner = b.node("Mul", [b.const("s", np.float32(np.sqrt(2 / np.pi))), b.node("Add", [x, scaled])])
    t = b.node("Tanh", [inner])
    return b.node("Mul", [b.node("Mul", [x, b.node("Add", [t, b.const("one", np.float32(1))])]),
                          b.const("half", np.float32(0.5))])


@pytest.mark.parametrize("form", [_silu, _hardswish, _mish, _gelu_erf_torch, _gelu_erf_half_first,
                                  _gelu_tanh_pow, _gelu_tanh_mul], ids=lambda f: f.__name__)
def test_exporter_forms_fuse_into_conv(form):
    b = Builder()
    y = form(b, b.bn(b.conv("x", 3, 5), 5))
    sess = check(b.model({"x": [1, 3, 9, 11]}, [y]), {"x": image() * 2})
    assert counts(sess) == {"Conv": 1}


def test_hardsigmoid_gate_with_other_constants_is_not_hardswish():
    b = Builder()
    c = b.conv("x", 3, 5)
    y = b.node("Mul", [c, b.node("HardSigmoid", [c], alpha=0.2, beta=0.5)])
    sess = check(b.model({"x": [1, 3, 9, 11]}, [y]), {"x": image()})
    assert "HardSwish" not in str(sess.optimization_report())
    assert counts(sess)["Mul"] == 1


def test_gelu_with_wrong_constant_is_not_fused():
    b = Builder()
    c = b.conv("x", 3, 5)
    e = b.node("Erf", [b.node("Div", [c, b.const("r2", np.float32(1.5))])])
    y = b.node("Mul", [b.node("Mul", [c, b.node("Add", [e, b.const("one", np.float32(1))])]),
                       b.const("half", np.float32(0.5))])
    sess = check(b.model({"x": [1, 3, 9, 11]}, [y]), {"x": image()})
    assert counts(sess)["Erf"] == 1


def test_silu_whose_sigmoid_is_shared_is_not_fused():
    b = Builder()
    c = b.conv("x", 3, 5)
    s = b.node("Sigmoid", [c])
    y = b.node("Mul", [c, s])
    sess = check(b.model({"x": [1, 3, 9, 11]}, [y, s]), {"x": image()})
    assert counts(sess)["Sigmoid"] == 1
