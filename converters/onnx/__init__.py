"""Import an ONNX model into bninfer's graph (bninfer.ir.Graph)."""
from __future__ import annotations

from typing import Any

import numpy as np

from bninfer import ops as bn_ops
from bninfer.errors import ModelError, TrainingModeError, UnsupportedOperatorError
from bninfer.ir import Graph, Node, Value

from . import load as _load
from . import proto as pb
from .decode import to_array
from .ops import Context, attr_value, to_ir

ONNX_DOMAINS = ("", "ai.onnx")
# Ops the converter itself turns into constants (they never reach the runtime).
CONVERTER_OPS = {"Constant"}


def import_model(source: Any) -> Graph:
    """Path, bytes or onnx.ModelProto -> ir.Graph, with every unsupported node reported at once."""
    model = _load.load(source)
    opset = _default_opset(model)
    g = model.graph
    values: dict[str, Value] = {}

    for init in g.initializer:
        _add_const(values, init.name, _to_array(init))
    for sp in g.sparse_initializer:
        _add_const(values, sp.values.name, _sparse_to_array(sp))

    inputs = []
    for vi in g.input:
        if vi.name in values:
            continue  # an initializer listed among the inputs (IR < 4): a constant here
        values[vi.name] = Value(vi.name, *_declared(vi))
        inputs.append(vi.name)
    declared = {vi.name: _declared(vi) for vi in list(g.output) + list(g.value_info)}

    nodes: list[Node] = []
    problems: list[tuple[str, Exception | None, pb.NodeProto]] = []
    used_names: set[str] = set()
    ctx = Context(lambda base, data: _fresh_const(values, base, data))
    for i, proto in enumerate(g.node):
        name = proto.name or f"{proto.op_type}_{i}"
        if name in used_names:
            name = f"{name}_{i}"
        used_names.add(name)
        if proto.domain not in ONNX_DOMAINS:
            problems.append((name, None, proto))
            continue
        if proto.op_type == "Constant":
            _constant(values, proto, name)
            continue
        try:
            node = to_ir(proto, opset, ctx, name)
        except UnsupportedOperatorError as e:
            problems.append((name, e, proto))
            continue
        if bn_ops.get(node.op) is None:
            problems.append((name, None, proto))
            continue
        nodes.append(node)
        for out in node.outputs:
            if not out:
                continue
            if out in values:
                raise ModelError(f"node {name!r} ({proto.op_type}) writes {out!r}, which is already defined")
            values[out] = Value(out)
    if problems:
        raise _unsupported(problems, opset)

    for node in nodes:
        for inp in node.inputs:
            if inp and inp not in values:
                raise ModelError(f"node {node.name!r} ({node.op}) reads {inp!r}, which no node, input or "
                                 f"initializer defines")
    outputs = [vo.name for vo in g.output]
    for name in outputs:
        if name not in values:
            raise ModelError(f"graph output {name!r} is not produced by any node, input or initializer")
        v = values[name]
        if v.shape is None and not v.is_const and name in declared:
            v.shape, v.dtype = declared[name]
    graph = Graph(nodes, values, inputs, outputs, g.name or "graph")
    graph.toposort()
    return graph


def _default_opset(model: pb.ModelProto) -> int:
    opset = None
    for imp in model.opset_import:
        if imp.domain in ONNX_DOMAINS:
            opset = imp.version
    if opset is None:
        opset = 1  # the checker accepts a model without the default domain only if no node uses it
    newest = pb.newest_opset()
    if opset > newest:
        raise UnsupportedOperatorError(f"the model uses ONNX opset {opset}; this bninfer (onnx "
                                       f"{pb.onnx_version()}) knows opsets up to {newest}")
    return opset


def _unsupported(problems, opset: int) -> UnsupportedOperatorError:
    lines = []
    training = False
    for name, err, proto in problems:
        where = f"{name!r}: {proto.op_type} (domain {proto.domain or 'ai.onnx'!r}, opset {opset})"
        lines.append(f"  {where}" + (f": {err}" if err else ""))
        training |= isinstance(err, TrainingModeError)
    cls = TrainingModeError if training else UnsupportedOperatorError
    return cls(f"{len(problems)} node(s) of this model are not supported by bninfer:\n" + "\n".join(lines),
               [p[0] for p in problems])


_DTYPES = {pb.TensorProto.FLOAT: np.float32, pb.TensorProto.DOUBLE: np.float64,
           pb.TensorProto.FLOAT16: np.float16, pb.TensorProto.INT64: np.int64,
           pb.TensorProto.INT32: np.int32, pb.TensorProto.INT8: np.int8,
           pb.TensorProto.UINT8: np.uint8, pb.TensorProto.BOOL: np.bool_,
           pb.TensorProto.INT16: np.int16, pb.TensorProto.UINT16: np.uint16}


def _declared(vi: pb.ValueInfoProto) -> tuple:
    t = vi.type
    if not t.HasField("tensor_type"):
        raise UnsupportedOperatorError(f"input/output {vi.name!r} is not a tensor (sequence, map or "
                                       f"optional types are not supported)")
    tt = t.tensor_type
    dtype = _DTYPES.get(tt.elem_type)
    dtype = np.dtype(dtype) if dtype is not None else np.dtype("O")
    if not tt.HasField("shape"):
        return None, dtype
    dims = []
    for k, d in enumerate(tt.shape.dim):
        if d.HasField("dim_value"):
            if d.dim_value < 0:
                raise ModelError(f"{vi.name!r} declares negative dimension {d.dim_value}")
            dims.append(int(d.dim_value))
        else:
            dims.append(d.dim_param or f"{vi.name}_dim{k}")
    return tuple(dims), dtype


def _to_array(tensor: pb.TensorProto) -> np.ndarray:
    try:
        return to_array(tensor)
    except Exception as e:  # malformed sizes, unknown dtypes
        raise ModelError(f"tensor {tensor.name!r} cannot be read: {e}") from None


def _sparse_to_array(sp: pb.SparseTensorProto) -> np.ndarray:
    values = _to_array(sp.values)
    indices = _to_array(sp.indices).astype(np.int64)
    dims = tuple(int(d) for d in sp.dims)
    dense = np.zeros(int(np.prod(dims)), values.dtype)
    flat = indices if indices.ndim == 1 else np.ravel_multi_index(indices.T, dims)
    if flat.size and (flat.min() < 0 or flat.max() >= dense.size):
        raise ModelError(f"sparse tensor {sp.values.name!r} has indices outside its shape {dims}")
    dense[flat] = values.reshape(-1)
    return dense.reshape(dims)


def _add_const(values: dict, name: str, data: np.ndarray) -> None:
    if name in values:
        raise ModelError(f"tensor name {name!r} is defined twice")
    values[name] = Value(name, tuple(int(d) for d in data.shape), data.dtype, data)


def _fresh_const(values: dict, base: str, data: np.ndarray) -> str:
    name, k = base, 0
    while name in values:
        k += 1
        name = f"{base}_{k}"
    _add_const(values, name, np.asarray(data))
    return name


def _constant(values: dict, proto: pb.NodeProto, name: str) -> None:
    if len(proto.attribute) != 1:
        raise ModelError(f"Constant node {name!r} must have exactly one value attribute")
    attr = proto.attribute[0]
    if attr.name == "sparse_value":
        data = _sparse_to_array(attr.sparse_tensor)
    elif attr.name == "value":
        data = _to_array(attr.t)
    elif attr.name in ("value_float", "value_floats"):
        data = np.asarray(attr_value(attr, name), np.float32)
    elif attr.name in ("value_int", "value_ints"):
        data = np.asarray(attr_value(attr, name), np.int64)
    else:
        raise UnsupportedOperatorError(f"Constant node {name!r}: attribute {attr.name!r} is not supported",
                                       [name])
    _add_const(values, proto.output[0], data)
