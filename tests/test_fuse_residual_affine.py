"""fuse_residual and fuse_affine: residual Adds into convs, and every BN placement that cannot fold
into weights (after an activation, before convolutions, standing alone)."""
import numpy as np
import pytest

from tests.graphs import Builder, check, counts, image
from tests.util import randn


@pytest.mark.parametrize("conv_first", [True, False])
def test_resnet_block_is_two_convs(conv_first):
    """conv-BN-ReLU-conv-BN-Add-ReLU: two fused convs, the Add and both BNs gone."""
    b = Builder()
    h = b.node("Relu", [b.bn(b.conv("x", 4, 4), 4)])
    h = b.bn(b.conv(h, 4, 4), 4)
    y = b.node("Relu", [b.node("Add", [h, "x"] if conv_first else ["x", h])])
    sess = check(b.model({"x": [1, 4, 8, 8]}, [y]), {"x": image(4, 8, 8)})
    assert counts(sess) == {"Conv": 2}
    assert any("residual" in f for f in sess.optimization_report().fusions)


def test_broadcasting_add_is_not_fused():
    b = Builder()
    y = b.node("Add", [b.conv("x", 3, 4), b.const("r", randn(4, 1, 1))])
    sess = check(b.model({"x": [1, 3, 9, 11]}, [y]), {"x": image()})
    assert counts(sess) == {"Conv": 1, "Add": 1}


def test_add_of_a_value_computed_from_the_conv_is_not_fused():
    b = Builder()
    c = b.conv("x", 3, 4)
    y = b.node("Add", [c, b.node("Sigmoid", [c])])
    sess = check(b.model({"x": [1, 3, 9, 11]}, [y]), {"x": image()})
    assert counts(sess)["Add"] == 1


def test_conv_relu_bn_is_one_kernel():
    """BN after the activation: s·relu(conv) + t in the conv's epilogue."""
    b = Builder()
    y = b.bn(b.node("Relu", [b.conv("x", 3, 6)]), 6)
    sess = check(b.model({"x": [1, 3, 9, 11]}, [y]), {"x": image()})
    assert counts(sess) == {"Conv": 1}
    assert "epilogue of Conv" in str(sess.optimization_report())


def test_gemm_relu_bn1d_is_one_kernel():
    b = Builder()
    y = b.bn(b.node("Relu", [b.node("Gemm", ["x", b.const("W", randn(5, 7))])]), 7)
    sess = check(b.model({"x": [3, 5]}, [y]), {"x": randn(3, 5)})
    assert counts(sess) == {"Gemm": 1}


@pytest.mark.parametrize("act", [None, "Relu", "LeakyRelu"])
def test_preactivation_bn_goes_into_conv_prologue(act):
    """BN -> act -> Conv with zero padding: exact only in the prologue (padding is not shifted)."""
    b = Builder()
    h = b.bn("x", 3)
    if act:
        h = b.node(act, [h])
    y = b.conv(h, 3, 5, pad=1)
    sess = check(b.model({"x": [1, 3, 9, 11]}, [y]), {"x": image()})
    assert counts(sess) == {"Conv": 1}
    assert "prologue of Conv" in str(sess.optimization_report())


def test_preactivation_block_with_projection_shortcut():
    """Pre-activation ResNet: BN-ReLU feeds both the 3x3 conv and the 1x1 shortcut conv."""
    b = Builder()
    h = b.node("Relu", [b.bn("x", 4)])
    main = b.conv(b.node("Relu", [b.bn(b.conv(h, 4, 6, stride=2), 6)]), 6, 6)
    short = b.conv(h, 4, 6, k=1, stride=2, pad=0)
    y = b.node("Add", [main, short])
    sess = check(b.model({"x": [1, 4, 10, 10]}, [y]), {"x": image(4, 10, 10)})
    assert "BatchNormalization" not in counts(sess)


def test_densenet_concat_bn_relu_conv():
    b = Builder()
    c1 = b.conv("x", 3, 4)
    cat = b.node("Concat", ["x", c1], axis=1)
    y = b.conv(b.node("Relu", [b.bn(cat, 7)]), 7, 4, k=1, pad=0)
    sess = check(b.model({"x": [1, 3, 9, 11]}, [y]), {"x": image()})
    assert "BatchNormalization" not in counts(sess)


def test_standalone_bn_is_one_kernel_with_its_activation():
    b = Builder()
    y = b.node("Relu", [b.bn("x", 3)])
    sess = check(b.model({"x": [1, 3, 9, 11]}, [y]), {"x": image()})
    assert counts(sess) == {"BatchNormalization": 1}
    assert "kept as one scale+shift kernel with Relu fused" in str(sess.optimization_report())


def test_bn_feeding_a_conv_and_something_else_stays():
    b = Builder()
    h = b.bn("x", 3)
    y = b.conv(h, 3, 4)
    z = b.node("Sigmoid", [h])
    sess = check(b.model({"x": [1, 3, 9, 11]}, [y, z]), {"x": image()})
    assert counts(sess)["BatchNormalization"] == 1


def test_mnist_three_bn_orders_give_the_same_kernel_count():
    def mnist(order):
        b = Builder()
        h = "x"
        for cin, cout in ((1, 8), (8, 16)):
            c = b.conv(h, cin, cout, pad=0)
            if order == "conv-bn-relu":
                h = b.node("Relu", [b.bn(c, cout)])
            elif order == "conv-relu-bn":
                h = b.bn(b.node("Relu", [c]), cout)
            else:
                h = b.node("Relu", [c])
        h = b.node("Flatten", [b.node("MaxPool", [h], kernel_shape=[2, 2], strides=[2, 2])])
        y = b.node("Gemm", [h, b.const("W", randn(10, 16 * 12 * 12) / 30)], transB=1)
        return b.model({"x": [1, 1, 28, 28]}, [y])

    x = randn(1, 1, 28, 28)
    kernels = {order: sum(counts(check(mnist(order), {"x": x})).values())
               for order in ("conv-bn-relu", "conv-relu-bn", "no-bn")}
    assert len(set(kernels.values())) == 1, kernels


@pytest.mark.parametrize("pool", ["GlobalAveragePool", "GlobalMaxPool"])
@pytest.mark.parametrize("act", [None, "Relu", "LeakyRelu"])
def test_final_bn_relu_goes_into_the_global_pool(pool, act):
    """Pre-activation ResNet / DenseNet end: BN -> ReLU -> GlobalAveragePool, no standalone BN."""
    b = Builder()
    h = b.bn(b.conv("x", 3, 6), 6)
    h = b.bn(b.node("Concat", [h, "x"], axis=1), 9)
    if act:
        h = b.node(act, [h])
    y = b.node(pool, [h])
    sess = check(b.model({"x": [1, 3, 9, 11]}, [y]), {"x": image()})
    assert "BatchNormalization" not in counts(sess)
    assert f"prologue of {pool}" in str(sess.optimization_report())


@pytest.mark.parametrize("axes", [[2, 3], [-1, -2]])
def test_spatial_reducemean_is_a_global_pool_and_takes_the_bn(axes):
    """The dynamo exporter writes adaptive_avg_pool2d(x, 1) as ReduceMean(axes=[-1, -2], keepdims=1)."""
    b = Builder()
    h = b.node("Relu", [b.bn(b.conv("x", 3, 6), 6)])
    h = b.node("Relu", [b.bn(b.node("Concat", [h, "x"], axis=1), 9)])
    y = b.node("ReduceMean", [h, b.const("axes", np.array(axes, np.int64))], keepdims=1)
    sess = check(b.model({"x": [1, 3, 9, 11]}, [y], opset=18), {"x": image()})
    assert counts(sess) == {"Conv": 1, "Concat": 1, "GlobalAveragePool": 1}


def test_reducemean_over_other_axes_stays():
    b = Builder()
    y = b.node("ReduceMean", [b.conv("x", 3, 6), b.const("axes", np.array([1, 3], np.int64))], keepdims=1)
    sess = check(b.model({"x": [1, 3, 9, 11]}, [y], opset=18), {"x": image()})
    assert counts(sess) == {"Conv": 1, "ReduceMean": 1}


@pytest.mark.parametrize("name", ["preact_block_classic", "preact_block_dynamo", "densenet_block_classic",
                                  "densenet_block_dynamo"])
def test_torch_preactivation_and_densenet_fixtures_run_no_standalone_bn(name):
    import bninfer
    from pathlib import Path
    sess = bninfer.InferenceSession(str(Path(__file__).parent / "data" / f"{name}.onnx"))
    report = sess.optimization_report()
    assert report.nodes_before.get("BatchNormalization", 0) > 0
    assert "BatchNormalization" not in report.nodes_after, report.batchnorms
