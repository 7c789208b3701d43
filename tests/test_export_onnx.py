"""converters/onnx/export.py: an optimized graph written back as standard ONNX runs in onnxruntime with
the outputs bninfer gives (rtol 1e-5, atol 1e-5), for every kind of fusion the passes make: prologue
(with and without an activation, PRelu too), residual, activation (Relu, LeakyRelu, PRelu, Clip,
Swish, HardSigmoid, ...), post affine, Gemm/MatMul epilogues, a BN kept as its own kernel; folded
BatchNormalizations and Dropouts stay gone."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import bninfer
from converters.onnx.export import to_onnx
from tests.graphs import Builder

DATA = Path(__file__).parent / "data"


def bn(b: Builder, x: str, c: int) -> str:
    """A BatchNormalization with non-trivial but moderate statistics (negative gammas, shifted means,
    variances 0.3..2): a scale of ~300 (as tests/graphs.py's near-zero variances give) would make
    float32 reassociation differences exceed atol 1e-5."""
    r = b.rng
    gamma = r.uniform(0.5, 1.5, c) * np.where(np.arange(c) % 3 == 0, -1.0, 1.0)
    params = [b.const(n, v.astype(np.float32)) for n, v in (
        ("gamma", gamma), ("beta", 0.3 * r.standard_normal(c)), ("mean", 0.3 * r.standard_normal(c)),
        ("var", r.uniform(0.3, 2.0, c)))]
    return b.node("BatchNormalization", [x] + params, epsilon=1e-5)


def conv(b: Builder, x: str, cin: int, cout: int, **kw) -> str:
    return b.conv(x, cin, cout, **kw)


def gemm(b: Builder, x: str, k: int, n: int, trans_b: bool = False) -> str:
    w = (b.rng.standard_normal((n, k) if trans_b else (k, n)) / np.sqrt(k)).astype(np.float32)
    bias = (0.1 * b.rng.standard_normal(n)).astype(np.float32)
    return b.node("Gemm", [x, b.const("W", w), b.const("B", bias)], transB=int(trans_b))


def act(b: Builder, kind: str, x: str, c: int) -> str:
    if kind == "PRelu":
        slope = b.const("slope", b.rng.uniform(0.05, 0.5, (c, 1, 1)).astype(np.float32))
        return b.node("PRelu", [x, slope])
    if kind == "Clip":
        return b.node("Clip", [x, b.const("lo", np.float32(-0.5)), b.const("hi", np.float32(1.5))])
    if kind == "Relu6":
        return b.node("Clip", [x, b.const("lo", np.float32(0)), b.const("hi", np.float32(6))])
    if kind == "Swish":
        return b.node("Mul", [x, b.node("Sigmoid", [x])])
    if kind == "LeakyRelu":
        return b.node("LeakyRelu", [x], alpha=0.2)
    if kind == "HardSigmoid":
        return b.node("HardSigmoid", [x], alpha=0.3, beta=0.4)
    return b.node(kind, [x])


def export_and_compare(model: onnx.ModelProto, feeds: dict, expect: set[str] | None = None,
                       expect_activations: set[str] | None = None) -> onnx.ModelProto:
    """Optimize with bninfer, export, check the ONNX, run it in onnxruntime, compare; `expect` are
    fusion kinds (extras keys, 'activation', 'pre_activation') the optimized graph must contain."""
    sess = bninfer.InferenceSession(model.SerializeToString())
    ours = sess.run(None, feeds)
    graph = sess.optimized_graph()
    kinds = {k for n in graph.nodes for k in n.attrs.get("extras", {})}
    kinds |= {k for n in graph.nodes for k in ("activation", "pre_activation") if n.attrs.get(k)}
    acts = {n.attrs[k][0] for n in graph.nodes for k in ("activation", "pre_activation") if n.attrs.get(k)}
    assert (expect or set()) <= kinds, (expect, kinds)
    assert (expect_activations or set()) <= acts, (expect_activations, acts)
    exported = to_onnx(graph)
    onnx.checker.check_model(exported, full_check=True)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    theirs = ort.InferenceSession(exported.SerializeToString(), so,
                                  providers=["CPUExecutionProvider"]).run(None, feeds)
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        assert a.shape == b.shape and a.dtype == b.dtype
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    # BNs that bninfer removed are not in the export either; Dropout never is.
    ops = [n.op_type for n in exported.graph.node]
    assert ops.count("BatchNormalization") == graph.op_counts().get("BatchNormalization", 0)
    assert "Dropout" not in ops and "Identity" not in ops
    return exported


def image(c: int, h: int = 8, w: int = 9, seed: int = 1) -> dict:
    return {"x": np.random.default_rng(seed).standard_normal((1, c, h, w)).astype(np.float32)}


@pytest.mark.parametrize("pre", [None, "Relu", "PRelu", "LeakyRelu"])
def test_prologue(pre):
    """BN (-> activation) -> padded Conv: the BN's scale+shift and the activation in the conv's
    prologue; read by two convs (a projection shortcut) as in a pre-activation ResNet."""
    b = Builder(1)
    h = bn(b, "x", 4)
    if pre:
        h = act(b, pre, h, 4)
    y = b.node("Add", [conv(b, h, 4, 6, pad=1), conv(b, h, 4, 6, k=1, pad=0)])
    exported = export_and_compare(b.model({"x": [1, 4, 8, 9]}, [y]), image(4),
                                  {"pre_scale", "pre_shift"} | ({"pre_activation"} if pre else set()))
    assert not any(n.op_type == "BatchNormalization" for n in exported.graph.node)


@pytest.mark.parametrize("relu", [False, True])
def test_residual(relu):
    """conv-BN-ReLU-conv-BN-Add(-ReLU): BNs folded into the weights, the Add in the epilogue."""
    b = Builder(2)
    h = b.node("Relu", [bn(b, conv(b, "x", 4, 4), 4)])
    y = b.node("Add", [bn(b, conv(b, h, 4, 4), 4), "x"])
    if relu:
        y = b.node("Relu", [y])
    export_and_compare(b.model({"x": [1, 4, 8, 9]}, [y]), image(4),
                       {"residual"} | ({"activation"} if relu else set()))


@pytest.mark.parametrize("kind", ["Relu", "LeakyRelu", "PRelu", "Clip", "Relu6", "Swish", "HardSigmoid",
                                  "Sigmoid", "Tanh", "Elu", "HardSwish", "Softplus"])
def test_activation(kind):
    b = Builder(3)
    y = act(b, kind, bn(b, conv(b, "x", 3, 5), 5), 5)
    name = {"Relu6": "Clip"}.get(kind, kind)
    export_and_compare(b.model({"x": [1, 3, 8, 9]}, [y]), image(3), {"activation"}, {name})


@pytest.mark.parametrize("kind", ["Relu", "PRelu", "Clip"])
def test_post_affine(kind):
    """Conv -> activation -> BN: s * act(conv) + t in the conv's epilogue."""
    b = Builder(4)
    y = bn(b, act(b, kind, conv(b, "x", 3, 6), 6), 6)
    export_and_compare(b.model({"x": [1, 3, 8, 9]}, [y]), image(3), {"post_scale", "post_shift", "activation"})


def test_residual_activation_and_post_affine_together():
    """Conv + Add -> Relu -> BN: residual, activation and post affine in one epilogue."""
    b = Builder(5)
    y = bn(b, b.node("Relu", [b.node("Add", [conv(b, "x", 4, 4), "x"])]), 4)
    export_and_compare(b.model({"x": [1, 4, 8, 9]}, [y]), image(4),
                       {"residual", "activation", "post_scale"})


@pytest.mark.parametrize("trans_b", [False, True])
def test_gemm_epilogue(trans_b):
    """Gemm -> BN1d -> PRelu (folded into weights + activation), Gemm -> Relu -> BN1d (post affine),
    Gemm -> Clip, Gemm -> Dropout (eliminated)."""
    b = Builder(6)
    x = "x"
    h = bn(b, gemm(b, x, 10, 12, trans_b), 12)
    slope = b.const("slope", b.rng.uniform(0.05, 0.5, 12).astype(np.float32))
    h = b.node("PRelu", [h, slope])
    h = bn(b, b.node("Relu", [gemm(b, h, 12, 8, trans_b)]), 8)
    h = b.node("Dropout", [h])
    h = act(b, "Clip", gemm(b, h, 8, 6), 6)
    y = act(b, "Swish", gemm(b, h, 6, 4, trans_b), 4)
    feeds = {"x": np.random.default_rng(2).standard_normal((3, 10)).astype(np.float32)}
    export_and_compare(b.model({"x": [3, 10]}, [y]), feeds, {"activation", "post_scale", "slope"},
                       {"PRelu", "Relu", "Clip", "Swish"})


def test_matmul_epilogue():
    """MatMul (3-D activations) -> BN over the last axis? No: BN is per channel (axis 1); a MatMul whose
    output's channel axis is also its last axis (rank 2) folds the BN and fuses the activation."""
    b = Builder(7)
    w = b.const("W", (b.rng.standard_normal((6, 5)) / 3).astype(np.float32))
    y = b.node("Relu", [bn(b, b.node("MatMul", ["x", w]), 5)])
    feeds = {"x": np.random.default_rng(3).standard_normal((2, 6)).astype(np.float32)}
    export_and_compare(b.model({"x": [2, 6]}, [y]), feeds, {"activation"})


def test_bn_kept_as_its_own_kernel_with_activation():
    """BN -> Relu -> MaxPool: no neighbouring kernel can take the BN: exported as BatchNormalization
    + Relu."""
    b = Builder(8)
    y = b.node("MaxPool", [b.node("Relu", [bn(b, "x", 3)])], kernel_shape=[2, 2], strides=[2, 2])
    exported = export_and_compare(b.model({"x": [1, 3, 8, 8]}, [y]), image(3, 8, 8), {"activation"})
    assert [n.op_type for n in exported.graph.node].count("BatchNormalization") == 1


def test_every_fusion_kind_in_one_graph():
    b = Builder(9)
    h = act(b, "PRelu", bn(b, "x", 4), 4)                      # prologue with PRelu
    c = b.node("Add", [bn(b, conv(b, h, 4, 4), 4), "x"])        # folded BN + residual
    c = act(b, "Clip", c, 4)                                    # activation after the residual
    s = act(b, "Swish", conv(b, c, 4, 6), 6)                    # Swish
    s = bn(b, b.node("Relu", [conv(b, s, 6, 6)]), 6)            # post affine
    g = b.node("Flatten", [b.node("GlobalAveragePool", [s])])
    y = b.node("Relu", [gemm(b, g, 6, 5)])                      # Gemm epilogue
    export_and_compare(b.model({"x": [1, 4, 8, 9]}, [y]), image(4),
                       {"pre_scale", "pre_slope", "residual", "post_scale", "activation", "pre_activation"},
                       {"PRelu", "Clip", "Swish", "Relu"})


@pytest.mark.parametrize("fixture", sorted(p.stem for p in DATA.glob("*.onnx")))
def test_torch_fixtures(fixture):
    """Every torch-exported fixture, optimized and exported, runs in onnxruntime like in bninfer."""
    model = onnx.load(str(DATA / f"{fixture}.onnx"))
    x = np.load(DATA / f"{fixture}.npz")["input"]
    name = model.graph.input[0].name
    export_and_compare(model, {name: x})
