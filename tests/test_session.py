"""The onnxruntime-compatible session API: loading, metadata, run(), feed validation, dynamic batch,
unsupported-op reporting."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import bninfer
from tests.util import make_model, randn


def _model(opset=17, batch="N"):
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("Add", ["r", "b"], ["y"], name="add"),
             helper.make_node("Sigmoid", ["r"], ["z"], name="sig")]
    return make_model(nodes, {"x": [batch, 3, 4]}, ["y", "z"], {"b": randn(3, 4)}, opset=opset)


def test_metadata_like_onnxruntime():
    sess = bninfer.InferenceSession(_model().SerializeToString())
    (inp,) = sess.get_inputs()
    assert (inp.name, inp.shape, inp.type) == ("x", ["N", 3, 4], "tensor(float)")
    assert [o.name for o in sess.get_outputs()] == ["y", "z"]
    assert sess.get_providers() == ["CPUExecutionProvider"]


def test_sources_path_bytes_and_modelproto(tmp_path):
    model = _model()
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    x = randn(2, 3, 4)
    results = [bninfer.InferenceSession(src).run(None, {"x": x})[0]
               for src in (str(path), path, model.SerializeToString(), model)]
    for r in results[1:]:
        np.testing.assert_array_equal(r, results[0])


def test_output_names_select_and_order():
    sess = bninfer.InferenceSession(_model().SerializeToString(), providers=["CPUExecutionProvider"])
    x = randn(1, 3, 4)
    y, z = sess.run(None, {"x": x})
    z2, y2 = sess.run(["z", "y"], {"x": x})
    np.testing.assert_array_equal(y, y2)
    np.testing.assert_array_equal(z, z2)
    with pytest.raises(ValueError, match="'nope'"):
        sess.run(["nope"], {"x": x})
    assert len(sess.run([], {"x": x})) == 2  # an empty list means every output, as in onnxruntime
    with pytest.raises(TypeError, match="list of names"):
        sess.run("y", {"x": x})


def test_dynamic_batch_is_replanned():
    sess = bninfer.InferenceSession(_model().SerializeToString())
    for n in (1, 5, 2, 5):
        x = randn(n, 3, 4)
        y, _ = sess.run(None, {"x": x})
        assert y.shape == (n, 3, 4)
        np.testing.assert_allclose(y, np.maximum(x, 0) + sess._graph.values["b"].data, rtol=1e-6)


def test_outputs_are_fresh_arrays():
    sess = bninfer.InferenceSession(_model().SerializeToString())
    a = sess.run(None, {"x": randn(1, 3, 4)})[0]
    keep = a.copy()
    sess.run(None, {"x": randn(1, 3, 4)})
    np.testing.assert_array_equal(a, keep)


def test_non_contiguous_feed_is_accepted():
    sess = bninfer.InferenceSession(_model().SerializeToString())
    big = randn(2, 4, 3)
    x = big.transpose(0, 2, 1)
    assert not x.flags.c_contiguous
    y = sess.run(["z"], {"x": x})[0]
    np.testing.assert_allclose(y, 1 / (1 + np.exp(-np.maximum(x, 0))), rtol=1e-6)


@pytest.mark.parametrize("feed,error,words", [
    ({"x": randn(1, 3, 4), "w": randn(1)}, ValueError, ["'w'", "unknown"]),
    ({}, ValueError, ["missing", "'x'"]),
    ({"x": randn(3, 4)}, ValueError, ["'x'", "rank 2", "rank 3"]),
    ({"x": randn(1, 3, 5)}, ValueError, ["'x'", "dimension 2 must be 4"]),
    ({"x": randn(1, 3, 4).astype(np.float64)}, TypeError, ["'x'", "float64", "float32"]),
    ({"x": [[1.0]]}, TypeError, ["'x'", "numpy array"]),
])
def test_bad_feeds_are_named(feed, error, words):
    sess = bninfer.InferenceSession(_model().SerializeToString())
    with pytest.raises(error) as info:
        sess.run(None, feed)
    for w in words:
        assert w in str(info.value)


@pytest.mark.parametrize("feed,error,words", [
    ({"x": randn(1, 3, 4), "w": randn(1)}, ValueError, ["'w'", "unknown"]),
    ({"y": randn(1, 3, 4)}, ValueError, ["'y'", "unknown"]),
    ({"x": randn(1, 3, 5)}, ValueError, ["'x'", "dimension 2 must be 4"]),
    ({"x": randn(1, 3, 4).astype(np.float64)}, TypeError, ["'x'", "float64", "float32"]),
    ({"x": randn(1, 3, 4).tolist()}, TypeError, ["'x'", "numpy array"]),
])
def test_bad_feeds_after_good_runs_are_still_checked(feed, error, words):
    """Runs with feeds like an earlier checked run skip the checks: any other feed is still checked."""
    sess = bninfer.InferenceSession(_model().SerializeToString())
    for _ in range(2):
        sess.run(None, {"x": randn(1, 3, 4)})
    with pytest.raises(error) as info:
        sess.run(None, feed)
    for w in words:
        assert w in str(info.value)


@pytest.mark.parametrize("kind", ["plain", "read-only", "fortran", "strided", "unaligned", "subclass"])
def test_feeds_read_in_place_or_copied(kind):
    """A C-contiguous, writeable, aligned float32 feed is read in place, anything else is copied: either
    way the results are right, the feed is left untouched, and no reference to it is kept."""
    import gc
    import weakref

    class Sub(np.ndarray):
        pass
    sess = bninfer.InferenceSession(_model().SerializeToString())
    base = randn(2, 3, 4)
    if kind == "read-only":
        x = base.copy()
        x.flags.writeable = False
    elif kind == "fortran":
        x = np.asfortranarray(base)
    elif kind == "strided":
        x = np.repeat(base, 2, axis=2)[:, :, ::2]
    elif kind == "unaligned":
        raw = np.zeros(base.nbytes + 1, np.uint8)
        x = raw[1:].view(np.float32).reshape(base.shape)
        x[...] = base
        assert not x.flags.aligned
    elif kind == "subclass":
        x = base.copy().view(Sub)
    else:
        x = base.copy()
    keep = np.array(x)
    for _ in range(2):
        y, z = sess.run(None, {"x": x})
        np.testing.assert_allclose(y, np.maximum(base, 0) + sess._graph.values["b"].data, rtol=1e-6)
        np.testing.assert_allclose(z, 1 / (1 + np.exp(-np.maximum(base, 0))), rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(x), keep)
    ref = weakref.ref(x)
    del x
    gc.collect()
    assert ref() is None


def test_an_input_that_is_an_output_is_returned_as_a_copy():
    model = make_model([helper.make_node("Relu", ["x"], ["y"])], {"x": [2, 3]}, ["y", "x"])
    sess = bninfer.InferenceSession(model.SerializeToString())
    x = randn(2, 3)
    y, x_out = sess.run(None, {"x": x})
    assert x_out is not x and not np.shares_memory(x_out, x)
    np.testing.assert_array_equal(x_out, x)
    np.testing.assert_array_equal(y, np.maximum(x, 0))


def test_every_unsupported_node_is_listed_once():
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="ok"),
             helper.make_node("TopK", ["a", "k"], ["v", "i"], name="topk_node"),
             helper.make_node("Custom", ["a"], ["c"], name="custom_node", domain="com.example"),
             helper.make_node("Det", ["a"], ["d"], name="det_node")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 3])],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in "vcd"],
                              [onnx.numpy_helper.from_array(np.array([2], np.int64), "k")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.example", 1)])
    with pytest.raises(bninfer.UnsupportedOperatorError) as info:
        bninfer.InferenceSession(model.SerializeToString())
    msg = str(info.value)
    assert isinstance(info.value, NotImplementedError)
    for words in (["topk_node", "TopK"], ["custom_node", "Custom", "com.example"], ["det_node", "Det"]):
        assert all(w in msg for w in words), msg
    assert "'ok'" not in msg
    assert info.value.nodes == ["topk_node", "custom_node", "det_node"]


def test_integer_runtime_tensors_are_refused_clearly():
    nodes = [helper.make_node("Add", ["x", "x"], ["y"], name="int_add")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.INT32, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.INT32, [2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(bninfer.UnsupportedOperatorError, match="int_add.*int32"):
        bninfer.InferenceSession(model.SerializeToString())


@pytest.mark.parametrize("data,words", [(b"", "not a valid ONNX model"), (b"\x00\xffgarbage" * 7, "not a valid"),
                                        (b"\x08\x07", "not a valid")])
def test_bad_bytes_are_refused(data, words):
    with pytest.raises(bninfer.ModelError, match=words):
        bninfer.InferenceSession(data)


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(bninfer.ModelError, match="no model file"):
        bninfer.InferenceSession(str(tmp_path / "absent.onnx"))
    (tmp_path / "empty.onnx").write_bytes(b"")
    with pytest.raises(bninfer.ModelError, match="empty"):
        bninfer.InferenceSession(str(tmp_path / "empty.onnx"))


def test_wrong_source_type():
    with pytest.raises(TypeError, match="path, bytes or onnx.ModelProto"):
        bninfer.InferenceSession(12)


def test_constant_subgraph_folds_at_load():
    """Shape -> Gather -> Unsqueeze -> Concat -> Reshape, as torch exports a flatten."""
    i64 = lambda v: np.array(v, np.int64)  # noqa: E731
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
             helper.make_node("Unsqueeze", ["n", "ax"], ["n1"]),
             helper.make_node("Concat", ["n1", "minus1"], ["shape"], axis=0),
             helper.make_node("Reshape", ["x", "shape"], ["y"])]
    model = make_model(nodes, {"x": ["N", 3, 4]}, ["y"],
                       {"zero": i64(0), "ax": i64([0]), "minus1": i64([-1])}, opset=13)
    sess = bninfer.InferenceSession(model.SerializeToString())
    assert sess.optimization_report().nodes_after == {"Reshape": 1}
    x = randn(2, 3, 4)
    np.testing.assert_array_equal(sess.run(None, {"x": x})[0], x.reshape(2, 12))


def test_session_options_fields_exist():
    so = bninfer.SessionOptions()
    so.intra_op_num_threads = 1
    so.graph_optimization_level = bninfer.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.optimized_model_filepath = ""
    so.enable_profiling = False
    assert bninfer.GraphOptimizationLevel.ORT_DISABLE_ALL < bninfer.GraphOptimizationLevel.ORT_ENABLE_BASIC \
        < bninfer.GraphOptimizationLevel.ORT_ENABLE_EXTENDED < bninfer.GraphOptimizationLevel.ORT_ENABLE_ALL


def test_registry_is_complete_after_importing_one_op_module_first():
    import subprocess
    import sys
    code = "import bninfer.ops.pool, bninfer.ops as o; print(o.get('Resize') is not None, o.get('Conv') is not None)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["True", "True"], out.stderr[-500:]


def test_arena_shares_blocks_between_values_whose_lives_do_not_overlap():
    """A chain of 12 same-size ops needs two blocks (plus the input's), not twelve; results unchanged."""
    nodes = [helper.make_node("Relu" if k % 2 else "Sigmoid", [f"t{k}" if k else "x"], [f"t{k + 1}"])
             for k in range(12)]
    model = make_model(nodes, {"x": [1, 64]}, ["t12"])
    sess = bninfer.InferenceSession(model.SerializeToString())
    plan = sess._plans[next(reversed(sess._plans))]
    assert len(plan.block_sizes) <= 3 and plan.arena_bytes <= 3 * 64 * 4
    x = randn(1, 64)
    y = x
    for k in range(12):
        y = np.maximum(y, 0) if k % 2 else 1 / (1 + np.exp(-y))
    np.testing.assert_allclose(sess.run(None, {"x": x})[0], y, rtol=1e-6)
