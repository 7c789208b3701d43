"""The importer's own reading of ONNX protobufs (converters/onnx/proto.py, decode.py) against onnx's:
tensors and attributes decode as onnx.numpy_helper / onnx.helper decode them, schema defaults match
onnx.defs, and a fresh process builds a session without importing the onnx package, which still
imports and works afterwards."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import AttributeProto, TensorProto, helper, numpy_helper

from converters.onnx import proto
from converters.onnx.decode import attribute_value, to_array

ROOT = Path(__file__).resolve().parents[1]

NATIVE = [TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.INT64, TensorProto.UINT64,
          TensorProto.UINT32, TensorProto.INT32, TensorProto.INT16, TensorProto.UINT16,
          TensorProto.INT8, TensorProto.UINT8, TensorProto.BOOL, TensorProto.FLOAT16]


def _values(elem_type: int, shape: tuple) -> np.ndarray:
    rng = np.random.default_rng(elem_type)
    dtype = helper.tensor_dtype_to_np_dtype(elem_type)
    if dtype == np.bool_:
        return rng.random(shape) < 0.5
    if np.issubdtype(dtype, np.floating):
        return (rng.standard_normal(shape) * 100).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, shape, dtype=dtype, endpoint=True)


@pytest.mark.parametrize("raw", [True, False], ids=["raw_data", "typed_field"])
@pytest.mark.parametrize("shape", [(2, 3, 4), (), (0, 5)], ids=["3d", "scalar", "empty"])
@pytest.mark.parametrize("elem_type", NATIVE, ids=[TensorProto.DataType.Name(t) for t in NATIVE])
def test_to_array_matches_numpy_helper(elem_type, shape, raw):
    values = _values(elem_type, shape)
    tensor = helper.make_tensor("t", elem_type, shape, values.reshape(-1).tolist() if not raw
                                else values.tobytes(), raw=raw)
    assert tensor.HasField("raw_data") == raw
    got, want = to_array(tensor), numpy_helper.to_array(tensor)
    assert got.dtype == want.dtype == values.dtype and got.shape == want.shape == shape
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(got, values)


def test_to_array_hands_rare_types_to_numpy_helper():
    values = np.array([1.5, -2.25, 3.0], np.float32)
    tensor = helper.make_tensor("b", TensorProto.BFLOAT16, (3,), values.tolist())
    got = to_array(tensor)
    assert got.dtype == numpy_helper.to_array(tensor).dtype
    np.testing.assert_array_equal(got.astype(np.float32), values)


def test_to_array_refuses_a_wrong_element_count():
    for raw in (False, True):
        data = np.array([1.0, 2.0], np.float32)
        tensor = helper.make_tensor("t", TensorProto.FLOAT, (2,), data.tobytes() if raw else data, raw=raw)
        tensor.dims[:] = [2, 3]
        with pytest.raises(ValueError):
            to_array(tensor)


ATTRIBUTES = {
    "float": 1.5, "int": -3, "string": "same", "floats": [1.0, -2.5], "ints": [1, 2, 3],
    "strings": ["a", "bc"], "tensor": numpy_helper.from_array(np.arange(6, dtype=np.float32), "w"),
    "tensors": [numpy_helper.from_array(np.arange(2, dtype=np.int64), "i")],
    "graph": helper.make_graph([], "g", [], []),
}


@pytest.mark.parametrize("name", ATTRIBUTES)
def test_attribute_value_matches_helper(name):
    attr = helper.make_attribute(name, ATTRIBUTES[name])
    assert attribute_value(attr) == helper.get_attribute_value(attr)
    assert attribute_value(AttributeProto(name="u")) is None


@pytest.mark.parametrize("op,opset", [("Conv", 11), ("LeakyRelu", 6), ("Gemm", 13), ("Elu", 22),
                                      ("BatchNormalization", 9), ("Resize", 19), ("HardSigmoid", 22),
                                      ("Relu", 14), ("NoSuchOp", 21)])
def test_attribute_defaults_match_onnx_defs(op, opset):
    try:
        schema = onnx.defs.get_schema(op, opset)
        want = {n: a.default_value for n, a in schema.attributes.items()
                if a.default_value.type != AttributeProto.UNDEFINED}
    except onnx.defs.SchemaError:
        want = {}
    got = proto.attribute_defaults(op, opset)
    assert got == want
    assert proto.newest_opset() == onnx.defs.onnx_opset_version()


def test_checker_refuses_what_onnx_refuses(tmp_path):
    node = helper.make_node("Relu", ["x"], ["y"])
    good = helper.make_model(helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])]))
    proto.check_model(good)
    bad = onnx.ModelProto()
    bad.CopyFrom(good)
    bad.graph.node[0].input[0] = "nowhere"
    for model in (bad, str(tmp_path / "bad.onnx")):
        onnx.save(bad, str(tmp_path / "bad.onnx"))
        with pytest.raises(onnx.checker.ValidationError):
            proto.check_model(model)


def _python(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_a_session_does_not_import_onnx_which_still_works_afterwards(tmp_path):
    model = helper.make_model(helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
         helper.make_node("LeakyRelu", ["c"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 5, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 5, 5])],
        [numpy_helper.from_array(np.random.default_rng(0).standard_normal((3, 2, 3, 3)).astype(np.float32),
                                 "w")]), opset_imports=[helper.make_opsetid("", 13)])
    onnx.save(model, str(tmp_path / "m.onnx"))
    out = _python(f"""
        import sys
        import numpy as np
        import bninfer
        x = np.random.default_rng(1).standard_normal((1, 2, 5, 5)).astype(np.float32)
        s = bninfer.InferenceSession({str(tmp_path / "m.onnx")!r})
        y = s.run(None, {{"x": x}})[0]
        print("onnx imported by the session:", "onnx" in sys.modules)
        from converters.onnx import proto
        import onnx, onnx.checker, onnx.reference
        assert onnx.onnx_cpp2py_export is sys.modules["onnx.onnx_cpp2py_export"]
        assert onnx.ModelProto is proto.ModelProto and onnx.TensorProto is proto.TensorProto
        model = onnx.load({str(tmp_path / "m.onnx")!r})
        onnx.checker.check_model(model, full_check=True)
        want = onnx.reference.ReferenceEvaluator(model).run(None, {{"x": x}})[0]
        np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)
        again = bninfer.InferenceSession(model).run(None, {{"x": x}})[0]
        np.testing.assert_array_equal(again, y)
        print("fast path:", not proto.FULL_IMPORT)
    """)
    assert "onnx imported by the session: False" in out
    assert "fast path: True" in out


def test_an_onnx_laid_out_differently_is_imported_whole():
    out = _python("""
        import importlib.util, sys
        find_spec = importlib.util.find_spec
        importlib.util.find_spec = lambda name, *a: None if name == "onnx" else find_spec(name, *a)
        from converters.onnx import proto
        importlib.util.find_spec = find_spec
        import onnx
        print(proto.FULL_IMPORT, proto.ModelProto is onnx.ModelProto, "onnx" in sys.modules)
    """)
    assert out.split() == ["True", "True", "True"]
