"""Hostile and broken models: each is refused at load with a clear error naming the problem, before
anything large is allocated or compiled; nothing is read from outside the model's folder."""
import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import bninfer
from tests.util import make_model, randn


def _external_model(tmp_path, location="weights.bin", offset=None, length=None):
    """Add(x, w) where w lives in an external file; the file itself is written as weights.bin."""
    w = randn(4, 4)
    (tmp_path / "weights.bin").write_bytes(w.tobytes())
    tensor = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[4, 4])
    tensor.data_location = TensorProto.EXTERNAL
    entries = {"location": location}
    if offset is not None:
        entries["offset"] = str(offset)
    if length is not None:
        entries["length"] = str(length)
    for k, v in entries.items():
        e = tensor.external_data.add()
        e.key, e.value = k, v
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 4])], [tensor])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "model.onnx"
    path.write_bytes(model.SerializeToString())
    return path, w


def test_external_data_inside_the_folder_loads(tmp_path):
    path, w = _external_model(tmp_path)
    x = randn(4, 4)
    np.testing.assert_allclose(bninfer.InferenceSession(str(path)).run(None, {"x": x})[0], x + w)


@pytest.mark.parametrize("location,words", [("../secret.bin", "inside the model's folder"),
                                            ("/etc/passwd", "relative path"),
                                            ("sub/../../secret.bin", "inside the model's folder"),
                                            ("absent.bin", "does not exist")])
def test_external_data_paths_outside_are_refused(tmp_path, location, words):
    inner = tmp_path / "model_dir"
    inner.mkdir()
    (tmp_path / "secret.bin").write_bytes(b"\0" * 64)
    path, _ = _external_model(inner, location)
    with pytest.raises(bninfer.ModelError, match=words):
        bninfer.InferenceSession(str(path))


def test_external_data_symlink_is_refused(tmp_path):
    inner = tmp_path / "m"
    inner.mkdir()
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"\0" * 64)
    path, _ = _external_model(inner, "link.bin")
    os.symlink(secret, inner / "link.bin")
    with pytest.raises(bninfer.ModelError, match="symlink"):
        bninfer.InferenceSession(str(path))


def test_external_data_hard_link_is_refused(tmp_path):
    inner = tmp_path / "m"
    inner.mkdir()
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"\0" * 64)
    path, _ = _external_model(inner, "hard.bin")
    os.link(secret, inner / "hard.bin")
    with pytest.raises(bninfer.ModelError, match="hard link"):
        bninfer.InferenceSession(str(path))


@pytest.mark.parametrize("offset,length", [(60, 64), (0, 10 ** 9), (-4, None)])
def test_external_data_range_is_checked(tmp_path, offset, length):
    path, _ = _external_model(tmp_path, offset=offset, length=length)
    with pytest.raises(bninfer.ModelError, match="outside|integers|range"):
        bninfer.InferenceSession(str(path))


def test_external_data_from_bytes_is_refused(tmp_path):
    path, _ = _external_model(tmp_path)
    with pytest.raises(bninfer.ModelError, match="external"):
        bninfer.InferenceSession(path.read_bytes())


def test_giant_constant_of_shape_is_refused_before_allocation():
    shape = numpy_helper.from_array(np.array([1 << 20, 1 << 20, 1 << 10], np.int64), "shape")
    nodes = [helper.make_node("ConstantOfShape", ["shape"], ["big"], name="giant"),
             helper.make_node("Add", ["x", "big"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [shape])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(bninfer.ModelError, match="giant.*GiB"):
        bninfer.InferenceSession(model.SerializeToString())


def test_huge_declared_input_is_refused():
    model = make_model([helper.make_node("Relu", ["x"], ["y"], name="r")], {"x": [1 << 20, 1 << 20, 64]}, ["y"])
    with pytest.raises(bninfer.ModelError, match="GiB"):
        bninfer.InferenceSession(model.SerializeToString())


def test_cycle_is_refused():
    nodes = [helper.make_node("Relu", ["b"], ["a"], name="n1"), helper.make_node("Relu", ["a"], ["b"], name="n2"),
             helper.make_node("Add", ["x", "a"], ["y"], name="n3")]
    model = make_model(nodes, {"x": [2]}, ["y"])
    with pytest.raises(bninfer.ModelError, match="topologically sorted.*n1|cycle"):
        bninfer.InferenceSession(model.SerializeToString())


def test_undefined_input_is_named():
    model = make_model([helper.make_node("Add", ["x", "ghost"], ["y"], name="adder")], {"x": [2]}, ["y"])
    with pytest.raises(bninfer.ModelError, match="ghost"):
        bninfer.InferenceSession(model.SerializeToString())


def test_duplicate_output_name_is_refused():
    nodes = [helper.make_node("Relu", ["x"], ["y"], name="a"), helper.make_node("Sigmoid", ["x"], ["y"], name="b")]
    model = make_model(nodes, {"x": [2]}, ["y"])
    with pytest.raises(bninfer.ModelError, match="'y'"):
        bninfer.InferenceSession(model.SerializeToString())


def test_dangling_graph_output_is_refused():
    model = make_model([helper.make_node("Relu", ["x"], ["y"])], {"x": [2]}, ["y", "nowhere"])
    with pytest.raises(bninfer.ModelError, match="nowhere"):
        bninfer.InferenceSession(model.SerializeToString())


def test_future_opset_is_refused():
    model = make_model([helper.make_node("Relu", ["x"], ["y"])], {"x": [2]}, ["y"], opset=17)
    model.opset_import[0].version = 99
    with pytest.raises((bninfer.UnsupportedOperatorError, bninfer.ModelError), match="99"):
        bninfer.InferenceSession(model.SerializeToString())


def test_truncated_model_is_refused():
    data = make_model([helper.make_node("Add", ["x", "w"], ["y"])], {"x": [64]}, ["y"],
                      {"w": randn(64)}).SerializeToString()
    for cut in (len(data) // 3, len(data) - 7):
        with pytest.raises(bninfer.ModelError):
            bninfer.InferenceSession(data[:cut])


def test_random_bytes_are_refused():
    rng = np.random.default_rng(5)
    for _ in range(20):
        data = rng.integers(0, 256, int(rng.integers(1, 400)), dtype=np.uint8).tobytes()
        with pytest.raises(bninfer.BninferError):
            bninfer.InferenceSession(data)


def test_initializer_with_wrong_byte_count_is_refused():
    t = numpy_helper.from_array(randn(4), "w")
    t.raw_data = t.raw_data[:-4]
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])], [t])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(bninfer.ModelError, match="tensor name: w"):
        bninfer.InferenceSession(model.SerializeToString())


def test_control_flow_is_refused_as_unsupported():
    then = helper.make_graph([helper.make_node("Relu", ["x"], ["t"])], "then", [],
                             [helper.make_tensor_value_info("t", TensorProto.FLOAT, [2])])
    other = helper.make_graph([helper.make_node("Sigmoid", ["x"], ["e"])], "else", [],
                              [helper.make_tensor_value_info("e", TensorProto.FLOAT, [2])])
    nodes = [helper.make_node("If", ["c"], ["y"], name="branch", then_branch=then, else_branch=other)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2]),
                                           helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(bninfer.UnsupportedOperatorError, match="branch"):
        bninfer.InferenceSession(model.SerializeToString())


def test_external_data_in_a_constant_attribute_is_confined(tmp_path):
    """A Constant node's tensor may keep its data outside too: the same rules apply."""
    inner = tmp_path / "m"
    inner.mkdir()
    (tmp_path / "secret.bin").write_bytes(b"\0" * 64)
    tensor = TensorProto(name="c", data_type=TensorProto.FLOAT, dims=[4])
    tensor.data_location = TensorProto.EXTERNAL
    e = tensor.external_data.add()
    e.key, e.value = "location", "../secret.bin"
    nodes = [helper.make_node("Constant", [], ["c"], value=tensor, name="const_node"),
             helper.make_node("Add", ["x", "c"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    (inner / "model.onnx").write_bytes(model.SerializeToString())
    with pytest.raises(bninfer.ModelError, match="inside the model's folder"):
        bninfer.InferenceSession(str(inner / "model.onnx"))


def test_sparse_initializer_with_indices_outside_its_shape_is_refused():
    values = numpy_helper.from_array(np.array([1.0, 2.0], np.float32), "w")
    indices = numpy_helper.from_array(np.array([0, 99], np.int64), "w_idx")
    sparse = helper.make_sparse_tensor(values, indices, [4])
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
                              sparse_initializer=[sparse])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(bninfer.ModelError, match="w"):
        bninfer.InferenceSession(model.SerializeToString())


def test_sparse_initializer_loads():
    values = numpy_helper.from_array(np.array([1.0, 2.0], np.float32), "w")
    indices = numpy_helper.from_array(np.array([0, 3], np.int64), "w_idx")
    sparse = helper.make_sparse_tensor(values, indices, [4])
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
                              sparse_initializer=[sparse])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = randn(4)
    np.testing.assert_array_equal(bninfer.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0],
                                  x + np.array([1, 0, 0, 2], np.float32))
