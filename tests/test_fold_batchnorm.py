"""fold_batchnorm: BN folded into Conv / ConvTranspose / Gemm / MatMul weights, and the cases that must
not fold. Every case: optimized == unoptimized == onnxruntime, and the node count says what happened."""
import numpy as np
import pytest

import bninfer
from tests.graphs import Builder, check, counts, image
from tests.util import randn


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("group,cin,cout", [(1, 3, 5), (2, 4, 6), (6, 6, 6)])
def test_conv_bn_folds(bias, group, cin, cout):
    b = Builder()
    y = b.bn(b.conv("x", cin, cout, group=group, bias=bias), cout)
    sess = check(b.model({"x": [1, cin, 9, 11]}, [y]), {"x": image(cin)})
    assert counts(sess) == {"Conv": 1}
    assert "folded into the weights of Conv" in str(sess.optimization_report())


@pytest.mark.parametrize("dims", [1, 3])
def test_conv_bn_folds_1d_3d(dims):
    b = Builder()
    y = b.bn(b.conv("x", 3, 4, dims=dims), 4)
    shape = [1, 3] + [7] * dims
    sess = check(b.model({"x": shape}, [y]), {"x": randn(*shape)})
    assert counts(sess) == {"Conv": 1}


def test_keras_epsilon_and_fp16_statistics():
    """epsilon 1e-3 from the attribute; float16 running statistics (opset 15 allows them) fold in
    float64 and are cast once."""
    b = Builder()
    y = b.bn(b.conv("x", 3, 4), 4, epsilon=1e-3, dtype=np.float16)
    sess = check(b.model({"x": [1, 3, 9, 11]}, [y], opset=15), {"x": image()})
    assert counts(sess) == {"Conv": 1}


@pytest.mark.parametrize("group,stride", [(1, 1), (2, 2), (3, 1)])
def test_conv_transpose_bn_folds_per_group(group, stride):
    """ConvTranspose weights are (Cin, Cout/group, k, k): the scale runs along axis 1, per group."""
    b = Builder()
    cin, cout = 6, 12
    w = b.const("W", b.rng.standard_normal((cin, cout // group, 3, 3)).astype(np.float32) / 4)
    bias = b.const("B", b.rng.standard_normal(cout).astype(np.float32))
    t = b.node("ConvTranspose", ["x", w, bias], group=group, strides=[stride, stride], pads=[1, 1, 1, 1])
    y = b.bn(t, cout)
    sess = check(b.model({"x": [1, cin, 5, 6]}, [y]), {"x": randn(1, cin, 5, 6)})
    assert counts(sess) == {"ConvTranspose": 1}


@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("c_shape", [None, (7,), (1, 7), (3, 7)])
def test_gemm_bn_folds(trans_b, c_shape):
    b = Builder()
    w = b.const("W", randn(*((7, 5) if trans_b else (5, 7))))
    ins = ["x", w] + ([b.const("C", randn(*c_shape))] if c_shape else [])
    y = b.bn(b.node("Gemm", ins, transB=trans_b, alpha=0.7, beta=1.3), 7)
    sess = check(b.model({"x": [3, 5]}, [y]), {"x": randn(3, 5)})
    assert counts(sess) == {"Gemm": 1}


def test_matmul_bn1d_folds_into_gemm():
    b = Builder()
    y = b.bn(b.node("MatMul", ["x", b.const("W", randn(10, 20))]), 20)
    sess = check(b.model({"x": [4, 10]}, [y]), {"x": randn(4, 10)})
    assert counts(sess) == {"Gemm": 1}


def test_shared_weight_is_not_overwritten():
    """Two convs read the same weight; only one is followed by BN. The other must be unchanged."""
    b = Builder()
    w = b.const("W", randn(4, 3, 3, 3))
    c1 = b.node("Conv", ["x", w], pads=[1, 1, 1, 1])
    c2 = b.node("Conv", ["x", w], pads=[1, 1, 1, 1])
    y = b.bn(c1, 4)
    sess = check(b.model({"x": [1, 3, 8, 8]}, [y, c2]), {"x": image(3, 8, 8)})
    assert counts(sess) == {"Conv": 2}


def test_no_fold_when_conv_output_is_read_elsewhere():
    b = Builder()
    c = b.conv("x", 3, 4)
    y = b.bn(c, 4)
    z = b.node("Relu", [c])
    sess = check(b.model({"x": [1, 3, 9, 11]}, [y, z]), {"x": image()})
    assert counts(sess)["BatchNormalization"] == 1


def test_no_fold_when_conv_output_is_a_graph_output():
    b = Builder()
    c = b.conv("x", 3, 4)
    y = b.bn(c, 4)
    sess = check(b.model({"x": [1, 3, 9, 11]}, [y, c]), {"x": image()})
    assert counts(sess)["BatchNormalization"] == 1


def test_bn_output_as_graph_output_keeps_its_name():
    b = Builder()
    y = b.bn(b.conv("x", 3, 4), 4)
    sess = check(b.model({"x": [1, 3, 9, 11]}, [y]), {"x": image()})
    assert [o.name for o in sess.get_outputs()] == [y]
    assert sess.run([y], {"x": image()})[0].shape == (1, 4, 9, 11)


def test_no_fold_with_runtime_statistics():
    """BN parameters fed at run time cannot fold: the BN runs (as one kernel)."""
    from onnx import helper
    from tests.util import make_model
    conv_w = randn(4, 3, 3, 3)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c", "g", "b", "m", "v"], ["y"])]
    model = make_model(nodes, {"x": [1, 3, 6, 6], "g": [4], "b": [4], "m": [4], "v": [4]}, ["y"], {"w": conv_w})
    feeds = {"x": image(3, 6, 6), "g": -np.abs(randn(4)), "b": randn(4), "m": randn(4), "v": np.abs(randn(4)) + 0.1}
    sess = check(model, feeds)
    assert counts(sess) == {"Conv": 1, "BatchNormalization": 1}


def test_spatial_0_is_not_folded_and_runs():
    """Opset 7-8 spatial=0: per-element parameters (C, H, W): not foldable per channel."""
    b = Builder()
    c = b.conv("x", 3, 2)
    params = [b.const(n, v) for n, v in (("g", randn(2, 9, 11)), ("b", randn(2, 9, 11)),
                                         ("m", randn(2, 9, 11)), ("v", np.abs(randn(2, 9, 11)) + 0.1))]
    y = b.node("BatchNormalization", [c] + params, spatial=0)
    model = b.model({"x": [1, 3, 9, 11]}, [y], opset=7)
    sess = bninfer.InferenceSession(model.SerializeToString())
    assert counts(sess)["BatchNormalization"] == 1
    g, be, m, v = (b.inits[p] for p in params)
    x = image()
    expected = g * (_conv_output(model, x) - m) / np.sqrt(v + 1e-5) + be
    unfused = bninfer.InferenceSession(model.SerializeToString(), _opts_disable())
    np.testing.assert_allclose(sess.run(None, {"x": x})[0], expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(unfused.run(None, {"x": x})[0], expected, rtol=1e-4, atol=1e-4)


def _opts_disable():
    so = bninfer.SessionOptions()
    so.graph_optimization_level = bninfer.GraphOptimizationLevel.ORT_DISABLE_ALL
    return so


def _conv_output(model, x):
    import onnx
    from tests.util import run_ort
    m = onnx.ModelProto()
    m.CopyFrom(model)
    conv_out = m.graph.node[0].output[0]
    del m.graph.node[1:]
    del m.graph.output[:]
    m.graph.output.extend([onnx.helper.make_tensor_value_info(conv_out, onnx.TensorProto.FLOAT, None)])
    return run_ort(m, {"x": x})[0]


@pytest.mark.parametrize("opset,attrs", [(15, {"training_mode": 1}), (6, {"is_test": 0})])
def test_training_mode_is_refused(opset, attrs):
    b = Builder()
    y = b.bn(b.conv("x", 3, 4), 4, **attrs)
    model = b.model({"x": [1, 3, 9, 11]}, [y], opset=opset)
    with pytest.raises(bninfer.TrainingModeError, match="training|is_test"):
        bninfer.InferenceSession(model.SerializeToString())
    with pytest.raises(NotImplementedError):
        bninfer.InferenceSession(model.SerializeToString())


def test_is_test_1_at_opset_6_folds():
    b = Builder()
    y = b.bn(b.conv("x", 3, 4), 4, is_test=1)
    model = b.model({"x": [1, 3, 9, 11]}, [y], opset=6)
    sess = bninfer.InferenceSession(model.SerializeToString())
    assert counts(sess) == {"Conv": 1}
