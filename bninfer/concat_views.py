"""Concats that copy nothing: their inputs are written in place, inside the concatenated buffer.

When every dimension before a Concat's axis is 1 (batch-1 NCHW along channels, the DenseNet case), each
input is one contiguous run of the output. Such an input can live there from the start: its producer
writes straight into that run, later readers read it there, and the Concat has nothing left to do. A
DenseNet layer concatenates all earlier features, so the concats of one block nest: the features live
inside the block's last concat, and every earlier concat is a prefix of it (placed as well).

`place` decides it per Concat, from the last to the first: a Concat whose inputs are all free (not yet
placed) places them in its output; one whose inputs already sit side by side, in order, inside one
buffer becomes a view of that run itself. Anything else (an input that is a graph input or a constant,
one read twice by the Concat, inputs placed apart) keeps its copy. The plan then allocates one block per
buffer that others live in, alive from the first write into it to the last read of any value inside.
"""
from __future__ import annotations

import numpy as np

from .ir import Graph


def place(graph: Graph) -> tuple[dict[str, tuple[str, int]], set[int]]:
    """(value -> (the value it lives in, offset in elements), the id() of every Concat node left out:
    node names need not be unique)."""
    inside: dict[str, tuple[str, int]] = {}
    elided: set[int] = set()
    graph_inputs = set(graph.inputs)
    for node in reversed(graph.nodes):
        if node.op != "Concat" or not _eligible(graph, node, graph_inputs):
            continue
        out = node.outputs[0]
        sizes = [_size(graph, i) for i in node.inputs]
        offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(int).tolist()
        placed = [i in inside for i in node.inputs]
        if not any(placed):
            for name, off in zip(node.inputs, offsets):
                inside[name] = (out, off)
            elided.add(id(node))
        elif all(placed) and out not in inside:
            where = [resolve(inside, i) for i in node.inputs]
            root, base = where[0]
            if all(w == (root, base + off) for w, off in zip(where, offsets)):
                inside[out] = (root, base)
                elided.add(id(node))
    return inside, elided


def resolve(inside: dict[str, tuple[str, int]], name: str) -> tuple[str, int]:
    """The buffer `name` finally lives in (through values placed inside placed values) and its offset."""
    off = 0
    while name in inside:
        name, k = inside[name]
        off += k
    return name, off


def _size(graph: Graph, name: str) -> int:
    return int(np.prod(graph.values[name].shape, dtype=np.int64))


def _eligible(graph: Graph, node, graph_inputs: set[str]) -> bool:
    """Every input a distinct float32 value some step writes, the output one run of them each."""
    names = node.inputs
    if not names or any(not n for n in names) or len(set(names)) != len(names) or not node.outputs:
        return False
    values = [graph.values[n] for n in names] + [graph.values[node.outputs[0]]]
    if any(v.is_const or v.name in graph_inputs or v.dtype != np.float32 or not v.is_static for v in values):
        return False
    shape = tuple(values[-1].shape)
    axis = int(node.attrs.get("axis", 0))
    axis = axis + len(shape) if axis < 0 else axis
    return 0 <= axis < len(shape) and int(np.prod(shape[:axis], dtype=np.int64)) == 1
