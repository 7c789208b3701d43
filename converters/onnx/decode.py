"""TensorProto -> numpy array and AttributeProto -> Python value, as onnx.numpy_helper / onnx.helper
decode them, for the types numpy holds natively. Rarer element types (bfloat16, float8, 4-bit, strings,
complex) are handed to onnx.numpy_helper, which imports the full onnx package."""
from __future__ import annotations

import sys
from typing import Any

import numpy as np

from .proto import AttributeProto, TensorProto

# element type -> (numpy dtype, the typed field that holds values when there is no raw_data)
_NATIVE = {
    TensorProto.FLOAT: (np.float32, "float_data"),
    TensorProto.DOUBLE: (np.float64, "double_data"),
    TensorProto.INT64: (np.int64, "int64_data"),
    TensorProto.UINT64: (np.uint64, "uint64_data"),
    TensorProto.UINT32: (np.uint32, "uint64_data"),
    TensorProto.INT32: (np.int32, "int32_data"),
    TensorProto.INT16: (np.int16, "int32_data"),
    TensorProto.UINT16: (np.uint16, "int32_data"),
    TensorProto.INT8: (np.int8, "int32_data"),
    TensorProto.UINT8: (np.uint8, "int32_data"),
    TensorProto.BOOL: (np.bool_, "int32_data"),
    TensorProto.FLOAT16: (np.float16, "int32_data"),
}


def to_array(tensor: TensorProto) -> np.ndarray:
    """The tensor's values (read-only when they come from raw_data, like numpy_helper's)."""
    native = _NATIVE.get(tensor.data_type)
    if native is None or tensor.HasField("segment") or sys.byteorder != "little":
        from onnx import numpy_helper
        return numpy_helper.to_array(tensor)
    dtype, field = native
    dims = tuple(tensor.dims)
    if tensor.HasField("raw_data"):
        return np.frombuffer(tensor.raw_data, dtype=dtype).reshape(dims)
    values = getattr(tensor, field)
    if tensor.data_type == TensorProto.FLOAT16:
        # int32_data holds each half's bit pattern
        return np.array(values, np.int32).view(np.uint32).astype(np.uint16).view(np.float16).reshape(dims)
    if dtype is np.bool_:
        return np.array(values, np.int32).view(np.uint32).astype(np.uint8).view(np.bool_).reshape(dims)
    if field == "int32_data" and dtype is not np.int32:
        return np.array(values, np.int32).astype(dtype).reshape(dims)
    return np.array(values, dtype).reshape(dims)


_SCALAR = {AttributeProto.FLOAT: "f", AttributeProto.INT: "i", AttributeProto.STRING: "s",
           AttributeProto.TENSOR: "t", AttributeProto.SPARSE_TENSOR: "sparse_tensor",
           AttributeProto.GRAPH: "g", AttributeProto.TYPE_PROTO: "tp"}
_REPEATED = {AttributeProto.FLOATS: "floats", AttributeProto.INTS: "ints",
             AttributeProto.STRINGS: "strings", AttributeProto.TENSORS: "tensors",
             AttributeProto.SPARSE_TENSORS: "sparse_tensors", AttributeProto.GRAPHS: "graphs",
             AttributeProto.TYPE_PROTOS: "type_protos"}


def attribute_value(attr: AttributeProto) -> Any:
    """The attribute's value by its declared type (onnx.helper.get_attribute_value)."""
    if attr.type in _SCALAR:
        return getattr(attr, _SCALAR[attr.type])
    if attr.type in _REPEATED:
        return list(getattr(attr, _REPEATED[attr.type]))
    if attr.type == AttributeProto.UNDEFINED:
        return None
    raise ValueError(f"attribute {attr.name!r} has unknown type {attr.type}")
