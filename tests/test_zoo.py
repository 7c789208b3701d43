"""The benchmark zoo (benchmarks/zoo.py): every model is a valid opset-17 float32 batch-1 graph with
non-trivial BatchNormalization, runs in onnxruntime with finite O(1) outputs that match the builder's own
numpy forward pass, and has the expected MAC count. bninfer itself is run on the small models only."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

from benchmarks import zoo

ort = pytest.importorskip("onnxruntime")

# MACs of the reference architectures (torchvision's counts; /work/shared/notes/peers.md).
EXPECTED_MACS = {
    "resnet18": 1.814e9, "resnet50": 4.089e9, "mobilenetv2": 300.8e6, "efficientnet-b0": 385.8e6,
    "densenet121": 2.834e9, "preact-resnet18": 1.814e9, "mnist-cnn": 11.99e6,
    "mnist-cnn-relu-bn": 11.99e6, "mnist-cnn-nobn": 11.99e6, "mlp": 220,
}
EXPECTED_OPS = {
    "mobilenetv2": {"Clip"},                       # ReLU6
    "efficientnet-b0": {"Sigmoid", "Mul", "GlobalAveragePool"},  # SiLU and squeeze-excitation
    "densenet121": {"Concat", "AveragePool"},
    "mlp": {"Gemm", "Dropout"},
}


def _ort_session(model: onnx.ModelProto):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _ort_run(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    return _ort_session(model).run(None, feeds)


def _bn_params(model: onnx.ModelProto) -> list[tuple[np.ndarray, ...]]:
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    return [tuple(inits[i] for i in n.input[1:5]) for n in model.graph.node
            if n.op_type == "BatchNormalization"]


def test_zoo_names():
    assert {"resnet18", "resnet50", "mobilenetv2", "efficientnet-b0", "densenet121", "preact-resnet18",
            "mnist-cnn", "mnist-cnn-relu-bn", "mnist-cnn-nobn", "mlp"} <= set(zoo.ZOO)
    assert zoo.DEFAULT_MODEL in zoo.ZOO and zoo.DEFAULT_MODEL in zoo.SMALL
    assert set(zoo.DESCRIPTIONS) == set(zoo.ZOO)
    assert zoo.canonical_name("MNIST_CNN") == "mnist-cnn"
    assert zoo.canonical_name("efficientnetb0") == "efficientnet-b0"
    assert zoo.canonical_name("nope") is None
    with pytest.raises(KeyError, match="unknown zoo model"):
        zoo.build("nope")


@pytest.mark.parametrize("name", list(zoo.ZOO))
def test_zoo_model(name: str):
    model, feeds, expected = zoo.build_with_reference(name)
    onnx.checker.check_model(model, full_check=True)
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 17)]
    (inp,) = model.graph.input
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert inp.type.tensor_type.shape.dim[0].dim_value == 1
    ops = {n.op_type for n in model.graph.node}
    assert EXPECTED_OPS.get(name, set()) <= ops

    # BatchNormalization is present (unfolded) and non-trivial, except in the no-BN variant.
    bns = _bn_params(model)
    if name == "mnist-cnn-nobn":
        assert not bns
    else:
        assert bns
        gammas = np.concatenate([b[0] for b in bns])
        assert (gammas < 0).any() and (gammas > 0).any()
        for scale, bias, mean, var in bns:
            assert (var > 0).all() and np.abs(mean).max() > 0 and np.abs(bias).max() > 0
            assert not np.allclose(var, 1.0)

    assert zoo.macs(model) == pytest.approx(EXPECTED_MACS[name], rel=0.005)

    # onnxruntime runs it; outputs finite and O(1); equal to the builder's own numpy forward pass.
    sess = _ort_session(model)
    (out,) = sess.run(None, feeds)
    assert out.dtype == np.float32 and out.shape == expected.shape
    assert np.isfinite(out).all()
    assert 0.05 < np.sqrt(np.mean(out.astype(np.float64) ** 2)) < 20
    np.testing.assert_allclose(out, expected, rtol=1e-3, atol=1e-4 * max(1.0, np.abs(expected).max()))

    # The benchmark input (input_for) is seeded and runs too.
    bench_feeds = zoo.input_for(model, seed=0)
    assert set(bench_feeds) == {"input"}
    np.testing.assert_array_equal(bench_feeds["input"], zoo.input_for(model, seed=0)["input"])
    assert not np.array_equal(bench_feeds["input"], zoo.input_for(model, seed=1)["input"])
    assert np.isfinite(sess.run(None, bench_feeds)[0]).all()


def test_build_is_deterministic_and_fresh():
    a, b = zoo.build("mnist-cnn"), zoo.build("mnist-cnn")
    assert a.SerializeToString() == b.SerializeToString() == zoo.build_bytes("mnist-cnn")
    a.graph.node[0].name = "changed"  # copies: editing one does not touch the cache
    assert zoo.build("mnist-cnn").graph.node[0].name != "changed"


def test_input_for_dynamic_and_integer_inputs():
    from onnx import TensorProto, helper

    g = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"]), helper.make_node("Identity", ["ids"], ["z"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3]),
         helper.make_tensor_value_info("ids", TensorProto.INT64, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("z", TensorProto.INT64, None)])
    feeds = zoo.input_for(helper.make_model(g))
    assert feeds["x"].shape == (1, 3) and feeds["x"].dtype == np.float32
    assert feeds["ids"].dtype == np.int64 and not feeds["ids"].any()


@pytest.mark.parametrize("name", zoo.SMALL)
def test_small_models_in_bninfer(name: str):
    """bninfer runs the small zoo models (the big ones are left to the benchmark suite)."""
    import bninfer

    model, feeds, expected = zoo.build_with_reference(name)
    (out,) = bninfer.InferenceSession(model.SerializeToString()).run(None, feeds)
    np.testing.assert_allclose(out, _ort_run(model, feeds)[0], rtol=1e-4, atol=1e-5)
