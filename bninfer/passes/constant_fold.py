"""Bind input shapes, infer every shape, and evaluate every node whose inputs are all constants.

After this pass every value has a static shape and dtype, constant subgraphs (Constant,
ConstantOfShape, Shape->Gather->Concat->Reshape chains, Cast of constants) are gone, and every value
computed at run time is float32 (anything else is refused with UnsupportedOperatorError).
"""
from __future__ import annotations

import numpy as np

from .. import ops
from ..errors import ModelError, UnsupportedOperatorError
from ..ir import Graph

# Ops that need only their input's (bound) shape, not its data: folded even on run-time inputs.
SHAPE_ONLY = {"Shape", "Size"}

# A single tensor above this size (declared or computed) is refused before anything is allocated.
MAX_TENSOR_BYTES = 4 << 30


def bind_inputs(graph: Graph, shapes: dict[str, tuple[int, ...]]) -> Graph:
    g = graph.copy()
    for name in g.inputs:
        g.values[name].shape = tuple(int(d) for d in shapes[name])
    return g


def run(graph: Graph) -> Graph:
    folded = []
    for node in graph.nodes:
        opdef = ops.get(node.op)
        ins = [graph.values[i] if i else None for i in node.inputs]
        for i in node.inputs:
            if i and graph.values[i].shape is None:
                raise ModelError(f"node {node.name!r} ({node.op}) reads {i!r}, whose shape is unknown")
        for k in opdef.const_inputs:
            if k < len(ins) and ins[k] is not None and ins[k].data is None:
                raise UnsupportedOperatorError(
                    f"node {node.name!r} ({node.op}): input {k} ({ins[k].name!r}) must be a constant "
                    f"(computed at run time here)", [node.name])
        results = opdef.infer(node, ins)
        outs = []
        for name, (shape, dtype) in zip(node.outputs, results):
            if not name:  # an omitted optional output
                outs.append(None)
                continue
            shape = tuple(int(d) for d in shape)
            if any(d < 0 for d in shape):
                raise ModelError(f"node {node.name!r} ({node.op}): output {name!r} has negative dimension "
                                 f"{shape}")
            nbytes = int(np.prod(shape, dtype=np.float64)) * np.dtype(dtype).itemsize
            if nbytes > MAX_TENSOR_BYTES:
                raise ModelError(f"node {node.name!r} ({node.op}): output {name!r} of shape {shape} would "
                                 f"take {nbytes / 2**30:.1f} GiB, above the {MAX_TENSOR_BYTES >> 30} GiB limit")
            value = graph.values[name]
            value.shape, value.dtype = shape, np.dtype(dtype)
            outs.append(value)
        if opdef.foldable and (node.op in SHAPE_ONLY or all(v is None or v.is_const for v in ins)):
            arrays = [None if v is None else np.empty(v.shape, v.dtype) for v in outs]
            opdef.build(node, ins, outs)([None if v is None else v.data for v in ins], arrays)
            for v, a in zip(outs, arrays):
                if v is not None:
                    v.data = a
            folded.append(node)
    for node in folded:
        graph.remove_node(node)
    graph.prune()
    for node in graph.nodes:
        for name in node.inputs + node.outputs:
            v = graph.values.get(name) if name else None
            if v is not None and not v.is_const and v.dtype != np.float32:
                raise UnsupportedOperatorError(
                    f"node {node.name!r} ({node.op}): tensor {name!r} is {v.dtype} at run time; bninfer "
                    f"runs float32 tensors only", [node.name])
    return graph
