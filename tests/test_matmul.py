"""Gemm and MatMul against onnxruntime, and their fused epilogue against numpy."""
import threading

import numpy as np
import pytest
from onnx import TensorProto, helper

import bninfer
from bninfer import activations, ir, ops, record
from bninfer import threads as bthreads
from bninfer.errors import ModelError, UnsupportedOperatorError
from bninfer.ops import fusion
from tests.util import assert_matches_ort, make_model, randn, run_bn

F32 = np.dtype(np.float32)

# -- Gemm through sessions ----------------------------------------------------------------------------

C_SHAPES = [None, "N", "1N", "M1", "MN", "1", "scalar"]


def _c_shape(kind, m, n):
    return {"N": (n,), "1N": (1, n), "M1": (m, 1), "MN": (m, n), "1": (1,), "scalar": ()}[kind]


@pytest.mark.parametrize("ta,tb", [(0, 0), (1, 0), (0, 1), (1, 1)])
@pytest.mark.parametrize("c_kind", C_SHAPES)
@pytest.mark.parametrize("const", ["B", "none", "A", "ABC"])
def test_gemm(ta, tb, c_kind, const):
    m, k, n = 5, 7, 11
    alpha, beta = (0.5, 1.5) if (ta + tb) % 2 else (1.0, 1.0)
    a = randn(*((k, m) if ta else (m, k)))
    b = randn(*((n, k) if tb else (k, n)))
    tensors = {"a": a, "b": b}
    ins = ["a", "b"]
    if c_kind is not None:
        tensors["c"] = randn(*_c_shape(c_kind, m, n))
        ins.append("c")
    is_const = {"B": {"b"}, "none": set(), "A": {"a"}, "ABC": {"a", "b", "c"}}[const]
    inits = {k_: v for k_, v in tensors.items() if k_ in is_const}
    feeds = {k_: v for k_, v in tensors.items() if k_ not in is_const}
    if not feeds:  # everything constant: folded at load; add a run-time input after it
        feeds = {"x": randn(m, n)}
        nodes = [helper.make_node("Gemm", ins, ["g"], alpha=alpha, beta=beta, transA=ta, transB=tb),
                 helper.make_node("Add", ["g", "x"], ["y"])]
    else:
        nodes = [helper.make_node("Gemm", ins, ["y"], alpha=alpha, beta=beta, transA=ta, transB=tb)]
    model = make_model(nodes, {k_: list(v.shape) for k_, v in feeds.items()}, ["y"], inits, opset=13)
    assert_matches_ort(model, feeds)


@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (1, 1000, 10), (3, 1, 4), (64, 33, 129), (17, 300, 2)])
@pytest.mark.parametrize("alpha,beta", [(1.0, 1.0), (2.0, 0.25), (-1.0, 0.0)])
def test_gemm_shapes(m, k, n, alpha, beta):
    a, b, c = randn(m, k), randn(n, k), randn(n)
    node = helper.make_node("Gemm", ["a", "b", "c"], ["y"], alpha=alpha, beta=beta, transB=1)
    model = make_model([node], {"a": [m, k]}, ["y"], {"b": b, "c": c}, opset=13)
    assert_matches_ort(model, {"a": a})


@pytest.mark.parametrize("opset", [7, 9, 11])
def test_gemm_old_opsets(opset):
    """Before 11 C is required; opset 7-10 Gemm has no `broadcast` attribute left."""
    a, b, c = randn(4, 6), randn(6, 3), randn(1, 3)
    node = helper.make_node("Gemm", ["a", "b", "c"], ["y"], alpha=0.7, beta=0.3)
    model = make_model([node], {"a": [4, 6]}, ["y"], {"b": b, "c": c}, opset=opset)
    assert_matches_ort(model, {"a": a})


def test_gemm_runtime_c_variants():
    m, k, n = 6, 5, 4
    a, b = randn(m, k), randn(k, n)
    for shape, beta in [((n,), 1.0), ((n,), 2.0), ((m, 1), 1.0), ((m, n), 0.5), ((1,), 1.0)]:
        c = randn(*shape)
        node = helper.make_node("Gemm", ["a", "b", "c"], ["y"], beta=beta)
        model = make_model([node], {"a": [m, k], "c": list(shape)}, ["y"], {"b": b}, opset=13)
        assert_matches_ort(model, {"a": a, "c": c})


# -- MatMul through sessions ------------------------------------------------------------------------

MATMUL_SHAPES = [
    ((7,), (7, 5)), ((4, 7), (7,)), ((7,), (7,)), ((3, 4), (4, 5)), ((2, 3, 9, 4), (4, 5)),
    ((2, 1, 3, 4), (5, 4, 6)), ((3, 4), (2, 4, 5)), ((2, 3, 4), (2, 4, 6)), ((1, 3, 4), (6, 4, 2)),
    ((5, 2, 3), (3,)), ((3,), (2, 3, 4)), ((1, 1), (1, 1)), ((4, 12, 33, 8), (4, 12, 8, 33)),
]


@pytest.mark.parametrize("sa,sb", MATMUL_SHAPES, ids=str)
@pytest.mark.parametrize("b_const", [False, True])
def test_matmul(sa, sb, b_const):
    a, b = randn(*sa), randn(*sb)
    node = helper.make_node("MatMul", ["a", "b"], ["y"])
    if b_const:
        model = make_model([node], {"a": list(sa)}, ["y"], {"b": b}, opset=13)
        assert_matches_ort(model, {"a": a})
    else:
        model = make_model([node], {"a": list(sa), "b": list(sb)}, ["y"], opset=13)
        assert_matches_ort(model, {"a": a, "b": b})


def test_matmul_const_a():
    a, b = randn(3, 4), randn(2, 4, 5)
    model = make_model([helper.make_node("MatMul", ["a", "b"], ["y"])], {"b": [2, 4, 5]}, ["y"], {"a": a},
                       opset=13)
    assert_matches_ort(model, {"b": b})


def test_matmul_int64_constant_folding():
    a = np.array([[1, 2, 3], [4, 5, 6]], np.int64)
    b = np.array([[7, -1], [0, 2], [3, 3]], np.int64)
    nodes = [helper.make_node("MatMul", ["a", "b"], ["p"]),
             helper.make_node("Cast", ["p"], ["pf"], to=TensorProto.FLOAT),
             helper.make_node("Add", ["x", "pf"], ["y"])]
    model = make_model(nodes, {"x": [2, 2]}, ["y"], {"a": a, "b": b}, opset=13)
    assert_matches_ort(model, {"x": randn(2, 2)})


def test_gemm_int_build_direct():
    a = np.array([[1, 2], [3, 4], [5, 6]], np.int64)
    b = np.array([[1, 0, 2], [0, 1, 3]], np.int64)
    c = np.array([10, 20, 30], np.int64)
    node = ir.Node("Gemm", "gi", ["a", "b", "c"], ["y"], {"alpha": 1.0, "beta": 1.0, "transA": 0, "transB": 0})
    ins = [ir.Value("a", a.shape, a.dtype, a), ir.Value("b", b.shape, b.dtype, b), ir.Value("c", c.shape, c.dtype, c)]
    opdef = ops.get("Gemm")
    (shape, dtype), = opdef.infer(node, ins)
    out = np.empty(shape, dtype)
    opdef.build(node, ins, [ir.Value("y", shape, dtype)])([a, b, c], [out])
    np.testing.assert_array_equal(out, a @ b + c)


# -- errors ---------------------------------------------------------------------------------------------

def _expect_model_error(nodes, inputs, inits, name, opset=13):
    model = make_model(nodes, inputs, ["y"], inits, opset=opset)
    with pytest.raises(ModelError, match=name):
        run_bn(model, {k: randn(*v) for k, v in inputs.items()})


def test_gemm_errors():
    g = lambda **kw: helper.make_node("Gemm", ["a", "b", "c"], ["y"], name="gemm_bad", **kw)  # noqa: E731
    _expect_model_error([g()], {"a": [3, 4]}, {"b": randn(5, 6), "c": randn(6)}, "gemm_bad")
    _expect_model_error([g(transB=1)], {"a": [3, 4]}, {"b": randn(4, 6), "c": randn(6)}, "gemm_bad")
    _expect_model_error([g()], {"a": [3, 4]}, {"b": randn(4, 6), "c": randn(5)}, "gemm_bad")
    _expect_model_error([g()], {"a": [3, 4]}, {"b": randn(4, 6), "c": randn(2, 6)}, "gemm_bad")
    _expect_model_error([g()], {"a": [3, 4]}, {"b": randn(4, 6), "c": randn(1, 3, 6)}, "gemm_bad")
    _expect_model_error([g()], {"a": [2, 3, 4]}, {"b": randn(4, 6), "c": randn(6)}, "gemm_bad")


def test_matmul_errors():
    mm = helper.make_node("MatMul", ["a", "b"], ["y"], name="mm_bad")
    _expect_model_error([mm], {"a": [3, 4]}, {"b": randn(5, 6)}, "mm_bad")
    _expect_model_error([mm], {"a": [4]}, {"b": randn(5)}, "mm_bad")
    _expect_model_error([mm], {"a": [2, 3, 4]}, {"b": randn(3, 4, 5)}, "mm_bad")


@pytest.mark.parametrize("op", ["MatMul", "Gemm"])
def test_non_float32_refused(op):
    node = ir.Node(op, "f64_node", ["a", "b"], ["y"], {"alpha": 1.0, "beta": 1.0, "transA": 0, "transB": 0})
    ins = [ir.Value("a", (2, 3), np.dtype(np.float64)), ir.Value("b", (3, 4), F32, randn(3, 4))]
    outs = [ir.Value("y", (2, 4), np.dtype(np.float64))]
    with pytest.raises(UnsupportedOperatorError, match="f64_node"):
        ops.get(op).build(node, ins, outs)
    gi = [helper.make_tensor_value_info("a", TensorProto.DOUBLE, [2, 3]),
          helper.make_tensor_value_info("b", TensorProto.DOUBLE, [3, 4])]
    go = [helper.make_tensor_value_info("y", TensorProto.DOUBLE, None)]
    model = helper.make_model(helper.make_graph([helper.make_node(op, ["a", "b"], ["y"], name="f64_node")],
                                                "g", gi, go), opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    with pytest.raises(UnsupportedOperatorError, match="f64_node"):
        bninfer.InferenceSession(model.SerializeToString())


# -- fused epilogue, built directly ---------------------------------------------------------------------

def _np_act(op, attrs, x, slope=None):
    x = x.astype(np.float64)
    if op is None:
        return x
    if op == "Relu":
        return np.where(x < 0, 0, x)
    if op == "LeakyRelu":
        return np.where(x < 0, x * attrs["alpha"], x)
    if op == "PRelu":
        return np.where(x < 0, x * slope.reshape(-1), x)
    if op == "Clip":
        return np.clip(x, attrs["min"], attrs["max"])
    if op == "Sigmoid":
        return 1 / (1 + np.exp(-x))
    if op == "HardSwish":
        return x * np.clip(x / 6 + 0.5, 0, 1)
    if op == "Tanh":
        return np.tanh(x)
    if op == "Swish":
        return x / (1 + np.exp(-attrs["alpha"] * x))
    if op == "Elu":
        return np.where(x < 0, attrs["alpha"] * np.expm1(x), x)
    if op == "Selu":
        return attrs["gamma"] * np.where(x <= 0, attrs["alpha"] * np.expm1(x), x)
    if op == "Gelu":
        from math import erf
        return 0.5 * x * (1 + np.vectorize(erf)(x / np.sqrt(2)))
    raise AssertionError(op)


ACTS = [None, ("Relu", {}), ("LeakyRelu", {"alpha": 0.1}), ("PRelu", {}), ("Clip", {"min": -0.5, "max": 0.7}),
        ("Sigmoid", {}), ("HardSwish", {}), ("Gelu", {}), ("Tanh", {}), ("Swish", {"alpha": 1.0}),
        ("Elu", {"alpha": 0.7}), ("Selu", {"alpha": 1.67, "gamma": 1.05})]


def _fused(op, m, k, n, act, residual, post, *, c_kind="N", b_const=True, res_const=False, a_shape=None,
           bias_extra=False, seed=0):
    """Build a fused Gemm/MatMul node on ir.Values, run it, and return (ours, numpy reference)."""
    rng = np.random.default_rng(seed)
    r = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    a = r(*(a_shape or (m, k)))
    b = r(k, n)
    vals = {"a": ir.Value("a", a.shape, F32), "b": ir.Value("b", b.shape, F32, b if b_const else None)}
    data = {"a": a, "b": b}
    inputs = ["a", "b"]
    attrs = {"alpha": 1.0, "beta": 1.0, "transA": 0, "transB": 0} if op == "Gemm" else {}
    out_shape = a.shape[:-1] + (n,)
    ref = a.astype(np.float64) @ b
    if op == "Gemm" and c_kind is not None:
        c = r(*_c_shape(c_kind, m, n))
        vals["c"] = ir.Value("c", c.shape, F32, c)
        data["c"] = c
        inputs.append("c")
        ref = ref + c
    node = ir.Node(op, f"fused_{op}", inputs, ["y"], attrs)
    base = len(inputs)

    def add(key, name, arr, const=True):
        vals[name] = ir.Value(name, arr.shape, F32, arr if const else None)
        data[name] = arr
        fusion.add_extra(node, key, name, base)

    if bias_extra:
        bias = r(n)
        vals["bias"] = ir.Value("bias", bias.shape, F32, bias)
        data["bias"] = bias
        node.inputs.append("bias")
        node.attrs.setdefault("extras", {})["bias"] = len(node.inputs) - 1
        ref = ref + bias
    if residual:
        res = r(*out_shape)
        add("residual", "res", res, const=res_const)
        ref = ref + res
    slope = None
    if act is not None:
        node.attrs["activation"] = act
        if act[0] == "PRelu":
            slope = r(n) * 0.3
            add("slope", "slope", slope)
    ref = _np_act(act[0] if act else None, act[1] if act else {}, ref, slope)
    if post:
        s, t = r(n), r(n)
        add("post_scale", "ps", s)
        add("post_shift", "pt", t)
        ref = ref * s + t
    ins = [vals[i] if i else None for i in node.inputs]
    opdef = ops.get(op)
    (shape, dtype), = opdef.infer(node, ins)
    assert tuple(shape) == out_shape
    run = opdef.build(node, ins, [ir.Value("y", shape, dtype)])
    out = np.full(shape, np.nan, np.float32)
    run([None if not i else data[i] for i in node.inputs], [out])
    return out, ref


@pytest.mark.parametrize("op", ["Gemm", "MatMul"])
@pytest.mark.parametrize("act", ACTS, ids=lambda a: a[0] if a else "none")
@pytest.mark.parametrize("residual,post", [(False, False), (True, False), (False, True), (True, True)])
def test_fused_epilogue(op, act, residual, post):
    out, ref = _fused(op, 9, 13, 17, act, residual, post)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("c_kind", [None, "N", "1", "M1", "MN"])
@pytest.mark.parametrize("res_const", [False, True])
@pytest.mark.parametrize("b_const", [False, True])
def test_fused_gemm_c_variants(c_kind, res_const, b_const):
    out, ref = _fused("Gemm", 6, 5, 7, ("Relu", {}), True, True, c_kind=c_kind, res_const=res_const,
                      b_const=b_const)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("a_shape", [(2, 3, 5), (1, 5), (4, 1, 2, 5)], ids=str)
@pytest.mark.parametrize("bias_extra", [False, True])
def test_fused_matmul_nd(a_shape, bias_extra):
    out, ref = _fused("MatMul", None, 5, 6, ("LeakyRelu", {"alpha": 0.2}), True, True, a_shape=a_shape,
                      bias_extra=bias_extra)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)
    out, ref = _fused("Gemm", 4, 5, 6, None, False, False, bias_extra=bias_extra)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("res_shape", [(1, 7), (7,), (6, 1), (1,)], ids=str)
@pytest.mark.parametrize("op", ["Gemm", "MatMul"])
def test_fused_residual_broadcasting(op, res_shape):
    """A residual that broadcasts to the output (not the same shape) is added before the kernel."""
    a, b, res = randn(6, 5), randn(5, 7), randn(*res_shape)
    attrs = {"alpha": 1.0, "beta": 1.0, "transA": 0, "transB": 0} if op == "Gemm" else {}
    node = ir.Node(op, "bres", ["a", "b"], ["y"], dict(attrs, activation=("Relu", {})))
    fusion.add_extra(node, "residual", "r", 3 if op == "Gemm" else 2)
    ins = [ir.Value("a", a.shape, F32), ir.Value("b", b.shape, F32, b), None][:len(node.inputs) - 1] + \
        [ir.Value("r", res.shape, F32)]
    run = ops.get(op).build(node, ins, [ir.Value("y", (6, 7), F32)])
    out = np.empty((6, 7), np.float32)
    run([a, b, None, res][:len(node.inputs) - 1] + [res], [out])
    np.testing.assert_allclose(out, np.maximum(a @ b + res, 0), rtol=1e-4, atol=1e-5)


def test_fused_prologue_refused():
    node = ir.Node("MatMul", "mm_pro", ["a", "b"], ["y"], {"pre_activation": ("Relu", {})})
    ins = [ir.Value("a", (2, 3), F32), ir.Value("b", (3, 4), F32, randn(3, 4))]
    with pytest.raises(UnsupportedOperatorError, match="mm_pro"):
        ops.get("MatMul").build(node, ins, [ir.Value("y", (2, 4), F32)])


def test_fused_nan_propagates():
    node = ir.Node("MatMul", "mm_nan", ["a", "b"], ["y"], {"activation": ("Relu", {})})
    b = randn(3, 4)
    ins = [ir.Value("a", (2, 3), F32), ir.Value("b", (3, 4), F32, b)]
    run = ops.get("MatMul").build(node, ins, [ir.Value("y", (2, 4), F32)])
    a = randn(2, 3)
    a[0, 0] = np.nan
    out = np.empty((2, 4), np.float32)
    run([a, b], [out])
    assert np.isnan(out[0]).all() and not np.isnan(out[1]).any()


def test_fused_prelu_slope_size_checked():
    node = ir.Node("MatMul", "mm_prelu", ["a", "b"], ["y"], {"activation": ("PRelu", {})})
    fusion.add_extra(node, "slope", "s", 2)
    ins = [ir.Value("a", (2, 3), F32), ir.Value("b", (3, 4), F32, randn(3, 4)), ir.Value("s", (3,), F32, randn(3))]
    with pytest.raises(ModelError, match="mm_prelu"):
        ops.get("MatMul").build(node, ins, [ir.Value("y", (2, 4), F32)])


def test_weights_prepared_once():
    """Constant B is transposed and alpha-scaled at build time: the run reads no constant input."""
    b = randn(6, 4)
    node = ir.Node("Gemm", "g_once", ["a", "b"], ["y"], {"alpha": 0.5, "beta": 1.0, "transA": 0, "transB": 1})
    ins = [ir.Value("a", (3, 4), F32), ir.Value("b", b.shape, F32, b)]
    run = ops.get("Gemm").build(node, ins, [ir.Value("y", (3, 6), F32)])
    a = randn(3, 4)
    out = np.empty((3, 6), np.float32)
    run([a, None], [out])  # B passed as None: must not be read at run time
    np.testing.assert_allclose(out, 0.5 * a @ b.T, rtol=1e-5, atol=1e-6)


def test_matmul_threads():
    """One built node run from several threads at once on different buffers."""
    node = ir.Node("MatMul", "mm_thr", ["a", "b"], ["y"], {"activation": ("Relu", {})})
    b = randn(64, 48)
    ins = [ir.Value("a", (2, 30, 64), F32), ir.Value("b", b.shape, F32, b)]
    run = ops.get("MatMul").build(node, ins, [ir.Value("y", (2, 30, 48), F32)])
    xs = [randn(2, 30, 64, seed=s) for s in range(4)]
    expect = [np.maximum(x @ b, 0) for x in xs]
    errors = []

    def work(k):
        out = np.empty((2, 30, 48), np.float32)
        for _ in range(100):
            run([xs[k], b], [out])
            if not np.allclose(out, expect[k], rtol=1e-4, atol=1e-5):
                errors.append(k)
    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_activation_table_codes_used():
    """The vectorized branches of the row kernel agree with activations.apply on edge values."""
    from bninfer.kernels.gemm import row_epilogue
    x = np.array([-np.inf, -3.0, -0.0, 0.0, 0.5, 3.0, np.inf, np.nan], np.float32)
    n = x.size
    for code, alpha, beta in [(activations.RELU, 0.0, 0.0), (activations.LEAKY_RELU, 0.1, 0.0),
                              (activations.CLIP, -1.0, 1.0), (activations.PRELU, 0.25, 0.0)]:
        y = x.copy()
        row_epilogue(y, 1, n, np.zeros(n, np.float32), False, y, False, code, np.full(n, alpha, np.float32),
                     beta, False, np.ones(n, np.float32), np.zeros(n, np.float32))
        expect = np.array([activations.apply.py_func(code, float(v), alpha, beta) for v in x], np.float32)
        np.testing.assert_array_equal(y, expect)


# -- the one-row product (batch-1 Linear layers): one kernel call, product and epilogue ------------------

@pytest.mark.parametrize("op", ["Gemm", "MatMul"])
@pytest.mark.parametrize("act", ACTS, ids=lambda a: a[0] if a else "none")
@pytest.mark.parametrize("residual,post", [(False, False), (True, False), (True, True)])
@pytest.mark.parametrize("k,n", [(13, 17), (37, 11)])
def test_one_row_fused_epilogue(op, act, residual, post, k, n):
    """13 x 17: row sweeps, three passes of four weight rows and one single row; 37 x 11 (rows at least
    twice the outputs): dot products, a pass of eight outputs and three alone, 37 = 4 vectors + 5."""
    out, ref = _fused(op, 1, k, n, act, residual, post)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("c_kind", [None, "N", "1", "M1", "MN"])
@pytest.mark.parametrize("res_const", [False, True])
@pytest.mark.parametrize("k,n", [(6, 7), (21, 9)])
def test_one_row_gemm_c_variants(c_kind, res_const, k, n):
    out, ref = _fused("Gemm", 1, k, n, ("Relu", {}), True, True, c_kind=c_kind, res_const=res_const)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("a_shape", [(5,), (1, 1, 5)], ids=str)
def test_one_row_matmul_shapes(a_shape):
    out, ref = _fused("MatMul", None, 5, 6, ("Relu", {}), False, True, a_shape=a_shape)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("a_shape", [(1, 0), (3, 0)], ids=str)
def test_empty_inner_dimension(a_shape):
    """K = 0: every output is the epilogue of 0, one row or several."""
    out, ref = _fused("MatMul", None, 0, 4, ("Relu", {}), False, True, a_shape=a_shape)
    assert out.shape == a_shape[:-1] + (4,)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)


def test_one_row_takes_the_vector_kernel(monkeypatch):
    """A batch-1 layer with constant weights runs as one vector_matrix call, nothing else; two rows or
    run-time weights do not."""
    from bninfer.ops import matmul
    calls = []
    real = matmul.K.vector_matrix
    monkeypatch.setattr(matmul.K, "vector_matrix", lambda *a: (calls.append(a[3:5]), real(*a)))
    monkeypatch.setattr(matmul.K, "row_epilogue", None)  # would raise if called
    monkeypatch.setattr(matmul, "_dot", None)
    out, ref = _fused("Gemm", 1, 9, 5, ("Relu", {}), True, True)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)
    assert calls == [(9, 5)]
    monkeypatch.undo()
    monkeypatch.setattr(matmul.K, "vector_matrix", None)
    for kwargs in [dict(m=2), dict(m=1, b_const=False)]:
        out, ref = _fused("Gemm", k=9, n=5, act=("Relu", {}), residual=True, post=True, **kwargs)
        np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("m,k,n", [(1, 13, 17), (1, 37, 11), (1, 300, 1000), (3, 13, 17)])
@pytest.mark.parametrize("act", [("Sigmoid", {}), ("Swish", {"alpha": 1.0}), ("Tanh", {}), ("Elu", {"alpha": 0.7})],
                         ids=lambda a: a[0])
def test_span_activations_run_after_the_product_not_element_by_element(m, k, n, act, monkeypatch):
    """Sigmoid, SiLU, Tanh, Elu (the codes with a loop-vectorized span) run as the activation's span over
    the output once the product and the rest of the epilogue are stored, one-row products (row sweeps, dot
    products, a product large enough to split) and others alike: the kernels get code NONE. With an
    affine after the activation, the kernel's epilogue applies it (the span takes no per-channel affine)."""
    from bninfer.ops import matmul
    codes, spans = [], []
    for name in ("vector_matrix", "matrix_vector", "sum_rows", "row_epilogue"):
        real = getattr(matmul.K, name)
        at = {"vector_matrix": 11, "matrix_vector": 10, "sum_rows": 8, "row_epilogue": 7}[name]  # the code
        monkeypatch.setattr(matmul.K, name, lambda *a, real=real, at=at: (codes.append(a[at]), real(*a))[1])
    real_call, real_split = record.call, bthreads.split_calls
    monkeypatch.setattr(record, "call", lambda kern, *a: (spans.append(kern in activations.SPANS.values()),
                                                          real_call(kern, *a))[1])
    monkeypatch.setattr(bthreads, "split_calls", lambda calls, n, *a, **kw: (
        spans.extend(kern in activations.SPANS.values() for kern, _ in calls(0, n)), real_split(calls, n, *a, **kw))[1])
    for post in (False, True):
        codes.clear(), spans.clear()
        out, ref = _fused("Gemm", m, k, n, act, True, post)
        np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)
        assert codes and all((c == activations.NONE) != post for c in codes)
        assert any(spans) != post


@pytest.mark.parametrize("k,n", [(1, 1), (3, 2049), (4101, 37), (1003, 300), (21, 2100)])
def test_vector_matrix_column_ranges(k, n):
    """Column ranges (as the threads split them) each get the product and the epilogue; columns
    past COLUMN_BLOCK and every remainder of k."""
    from bninfer.kernels.gemm import vector_matrix
    rng = np.random.default_rng(k + n)
    x, w = rng.standard_normal(k).astype(np.float32), rng.standard_normal((k, n)).astype(np.float32)
    bias, res, ps, pt = (rng.standard_normal(n).astype(np.float32) for _ in range(4))
    slope = rng.standard_normal(n).astype(np.float32)
    ref = np.where((z := x.astype(np.float64) @ w + bias + res) < 0, z * slope, z) * ps + pt
    y = np.full(n, np.nan, np.float32)
    cut = n // 3
    for c0, c1 in [(0, cut), (cut, n)]:
        vector_matrix(x, w.reshape(-1), y, k, n, c0, c1, bias, True, res, True, activations.PRELU, slope,
                      0.0, True, ps, pt)
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4 * np.sqrt(k))


@pytest.mark.parametrize("k,n", [(4101, 128), (9216, 128), (7, 256), (1030, 3), (1003, 257), (23, 1000)])
def test_one_row_products_over_narrow_and_wide_rows(k, n):
    """Rows of at most NARROW_ROW columns are prefetched ahead (up to the last row, never past it), wider
    ones taken eight at a time (then four, then one): the whole layer in one call, and in two shares of
    rows as the threads run it."""
    from bninfer.kernels.gemm import sum_rows, vector_matrix, vector_matrix_rows
    rng = np.random.default_rng(k * n)
    x, w = rng.standard_normal(k).astype(np.float32), rng.standard_normal((k, n)).astype(np.float32)
    ref = x.astype(np.float64) @ w
    zeros = np.zeros(n, np.float32)
    y = np.full(n, np.nan, np.float32)
    vector_matrix(x, w.reshape(-1), y, k, n, 0, n, zeros, False, zeros, False, activations.NONE, zeros, 0.0,
                  False, zeros, zeros)
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4 * np.sqrt(k))
    parts = np.full(2 * n, np.nan, np.float32)
    cut = k // 8 * 4
    vector_matrix_rows(x, w.reshape(-1), parts[:n], n, 0, cut)
    vector_matrix_rows(x, w.reshape(-1), parts[n:], n, cut, k)
    sum_rows(parts, 2, y, n, zeros, False, zeros, False, activations.NONE, zeros, 0.0, False, zeros, zeros)
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4 * np.sqrt(k))


@pytest.mark.parametrize("k,n", [(9216, 128), (37, 11), (5, 1), (8, 8), (1001, 13), (2048, 1000)])
def test_matrix_vector_output_ranges_give_the_same_floats(k, n):
    """The dot-product kernel over (N, K) weights: each output's sum is the same floats whether it is
    computed in a pass of eight or alone, so any split of the outputs (as threads take them: passes of
    eight; or not) gives bit-identical results; the epilogue applies to the range alone."""
    from bninfer.kernels.gemm import matrix_vector
    rng = np.random.default_rng(k * n)
    x, w = rng.standard_normal(k).astype(np.float32), rng.standard_normal((n, k)).astype(np.float32)
    bias, res, ps, pt = (rng.standard_normal(n).astype(np.float32) for _ in range(4))
    slope = rng.standard_normal(n).astype(np.float32)
    ref = np.where((z := w.astype(np.float64) @ x + bias + res) < 0, z * slope, z) * ps + pt

    def run(cuts):
        y = np.full(n, np.nan, np.float32)
        for o0, o1 in zip(cuts, cuts[1:]):
            matrix_vector(x, w.reshape(-1), y, k, o0, o1, bias, True, res, True, activations.PRELU, slope, 0.0,
                          True, ps, pt)
        return y
    whole = run([0, n])
    np.testing.assert_allclose(whole, ref, rtol=1e-4, atol=1e-4 * np.sqrt(k))
    for cuts in ([0, min(8, n), n], [0, n // 3, n], [0, 1, n - 1, n] if n > 2 else [0, n]):
        np.testing.assert_array_equal(run(cuts), whole)


@pytest.mark.parametrize("k,n,kernel", [(9216, 128, "matrix_vector"), (22, 11, "matrix_vector"),
                                        (21, 11, "vector_matrix"), (1280, 1000, "vector_matrix")])
def test_one_row_layers_take_the_longer_streams(k, n, kernel, monkeypatch):
    """A batch-1 layer whose weight rows are at least twice its outputs runs as dot products over the
    weights stored (N, K); a wider one as row sweeps over (K, N); the other kernel is never called."""
    from bninfer.kernels import gemm
    other = {"matrix_vector": "vector_matrix", "vector_matrix": "matrix_vector"}[kernel]
    calls = []
    real = getattr(gemm, kernel)
    monkeypatch.setattr(gemm, kernel, lambda *a: (calls.append(a[3]), real(*a)))
    monkeypatch.setattr(gemm, other, None)
    out, ref = _fused("Gemm", 1, k, n, ("Relu", {}), True, True)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4 * np.sqrt(k))
    assert calls == [k]


def test_one_row_runtime_bias_and_threads():
    """Gemm with a run-time C vector; layers large enough for the threaded path (split over row ranges, or
    for rows at least twice the outputs over output ranges, when the workers are awake)."""
    for k, n, c_const in [(33, 20, False), (4100, 2100, True), (9216, 160, False), (9216, 130, True)]:
        a, b, c = randn(1, k), randn(n, k), randn(n)
        node = helper.make_node("Gemm", ["a", "b", "c"], ["y"], transB=1, alpha=0.5)
        inits = {"b": b, "c": c} if c_const else {"b": b}
        feeds = {"a": a} if c_const else {"a": a, "c": c}
        model = make_model([node, helper.make_node("Relu", ["y"], ["z"])],
                           {k_: list(v.shape) for k_, v in feeds.items()}, ["z"], inits, opset=13)
        so = bninfer.SessionOptions()
        so.intra_op_num_threads = 2
        sess = bninfer.InferenceSession(model.SerializeToString(), so)
        for _ in range(3):
            np.testing.assert_allclose(sess.run(None, feeds)[0], np.maximum(0.5 * a.astype(np.float64) @ b.T + c, 0),
                                       rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("c_const", [False, True])
def test_dot_product_layers_give_the_same_floats_on_any_thread_count(c_const):
    """Outputs split over threads are each summed as on one thread: bit-identical results."""
    k, n = 9216, 130
    a, b, c = randn(1, k, seed=1), randn(n, k, seed=2), randn(n, seed=3)
    node = helper.make_node("Gemm", ["a", "b", "c"], ["y"], transB=1)
    inits = {"b": b, "c": c} if c_const else {"b": b}
    feeds = {"a": a} if c_const else {"a": a, "c": c}
    model = make_model([node, helper.make_node("Relu", ["y"], ["z"])],
                       {k_: list(v.shape) for k_, v in feeds.items()}, ["z"], inits, opset=13)
    outs = []
    for n_threads in (1, 2, 3):
        so = bninfer.SessionOptions()
        so.intra_op_num_threads = n_threads
        sess = bninfer.InferenceSession(model.SerializeToString(), so)
        outs += [sess.run(None, feeds)[0] for _ in range(3)]  # from Python, recorded, native
    for out in outs[1:]:
        np.testing.assert_array_equal(out, outs[0])
    np.testing.assert_allclose(outs[0], np.maximum(a.astype(np.float64) @ b.T + c, 0), rtol=1e-4, atol=1e-4)


def test_one_row_nan_propagates():
    node = ir.Node("MatMul", "mv_nan", ["a", "b"], ["y"], {"activation": ("Relu", {})})
    b = randn(6, 5)
    run = ops.get("MatMul").build(node, [ir.Value("a", (1, 6), F32), ir.Value("b", (6, 5), F32, b)],
                                  [ir.Value("y", (1, 5), F32)])
    a = randn(1, 6)
    a[0, 2] = np.nan
    out = np.empty((1, 5), np.float32)
    run([a, b], [out])
    assert np.isnan(out).all()
