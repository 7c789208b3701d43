"""bninfer's graph: values, nodes and the graph that holds them. No ONNX types here.

Op names and attribute names follow ONNX at its newest opset (the converter upgrades older forms), with
every attribute present (defaults filled in). Fused nodes carry extra attributes documented in
`bninfer.ops.fused`.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import numpy as np

from .errors import ModelError

Dim = int | str  # an int, or the name of a dynamic dimension
Shape = tuple[Dim, ...]


@dataclass
class Value:
    """A tensor in the graph: its name, shape and dtype once known, and its data if it is a constant."""

    name: str
    shape: Shape | None = None
    dtype: np.dtype | None = None
    data: np.ndarray | None = None

    @property
    def is_const(self) -> bool:
        return self.data is not None

    @property
    def is_static(self) -> bool:
        return self.shape is not None and all(isinstance(d, int) for d in self.shape)


@dataclass
class Node:
    op: str
    name: str
    inputs: list[str]  # "" marks an omitted optional input
    outputs: list[str]
    attrs: dict = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"{self.op}({self.name!r}: {self.inputs} -> {self.outputs})"


class Graph:
    """Nodes kept in topological order, values by name, graph inputs and outputs by name."""

    def __init__(self, nodes: list[Node], values: dict[str, Value], inputs: list[str], outputs: list[str],
                 name: str = "graph"):
        self.nodes = nodes
        self.values = values
        self.inputs = inputs
        self.outputs = outputs
        self.name = name
        self._counter = 0

    # -- queries ---------------------------------------------------------------------------------
    def value(self, name: str) -> Value:
        return self.values[name]

    def const(self, name: str) -> np.ndarray | None:
        """The constant data of `name`, or None if it is computed at run time or omitted."""
        if not name:
            return None
        v = self.values.get(name)
        return None if v is None else v.data

    def producer(self, name: str) -> Node | None:
        for node in self.nodes:
            if name in node.outputs:
                return node
        return None

    def consumers(self, name: str) -> list[Node]:
        return [n for n in self.nodes if name in n.inputs]

    def uses(self, name: str) -> int:
        """How many places read `name`: node inputs plus graph outputs."""
        return sum(n.inputs.count(name) for n in self.nodes) + self.outputs.count(name)

    def op_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for n in self.nodes:
            counts[n.op] = counts.get(n.op, 0) + 1
        return counts

    # -- edits -----------------------------------------------------------------------------------
    def fresh_name(self, base: str) -> str:
        """A value or node name not used yet, derived from `base` (folded tensors get new names)."""
        while True:
            self._counter += 1
            name = f"{base}__{self._counter}"
            if name not in self.values and not any(n.name == name for n in self.nodes):
                return name

    def add_const(self, base: str, data: np.ndarray) -> str:
        name = self.fresh_name(base)
        data = np.ascontiguousarray(data)
        self.values[name] = Value(name, tuple(int(d) for d in data.shape), data.dtype, data)
        return name

    def replace_uses(self, old: str, new: str) -> None:
        """Make every reader of `old` read `new` instead (graph outputs keep their names: see callers)."""
        for n in self.nodes:
            n.inputs = [new if i == old else i for i in n.inputs]

    def remove_node(self, node: Node) -> None:
        self.nodes.remove(node)

    def prune(self) -> None:
        """Drop nodes whose outputs nobody reads, and values nothing refers to."""
        live = set(self.outputs)
        kept: list[Node] = []
        for n in reversed(self.nodes):
            if any(o in live for o in n.outputs):
                kept.append(n)
                live.update(i for i in n.inputs if i)
        self.nodes = kept[::-1]
        live.update(o for n in self.nodes for o in n.outputs if o)  # unread outputs of kept nodes
        live.update(self.inputs)
        self.values = {k: v for k, v in self.values.items() if k in live}

    def toposort(self) -> None:
        """Order nodes so that every input is produced before it is read; refuse cycles."""
        produced = {n: i for i, node in enumerate(self.nodes) for n in node.outputs}
        state: dict[int, int] = {}  # 1 = on the stack, 2 = done
        order: list[Node] = []
        for start in range(len(self.nodes)):
            if state.get(start):
                continue
            stack: list[tuple[int, Iterator[str]]] = [(start, iter(self.nodes[start].inputs))]
            state[start] = 1
            while stack:
                idx, it = stack[-1]
                for name in it:
                    dep = produced.get(name)
                    if dep is None or state.get(dep) == 2:
                        continue
                    if state.get(dep) == 1:
                        raise ModelError(f"the graph has a cycle through node {self.nodes[dep].name!r} "
                                         f"({self.nodes[dep].op})")
                    state[dep] = 1
                    stack.append((dep, iter(self.nodes[dep].inputs)))
                    break
                else:
                    stack.pop()
                    state[idx] = 2
                    order.append(self.nodes[idx])
        self.nodes = order

    def copy(self) -> Graph:
        """A copy whose nodes and values can be edited freely; constant arrays are shared (never edit
        them in place: passes write folded tensors under new names)."""
        values = {k: Value(v.name, v.shape, v.dtype, v.data) for k, v in self.values.items()}
        nodes = [Node(n.op, n.name, list(n.inputs), list(n.outputs), copy.copy(n.attrs)) for n in self.nodes]
        g = Graph(nodes, values, list(self.inputs), list(self.outputs), self.name)
        g._counter = self._counter
        return g

    def runtime_values(self) -> Iterable[Value]:
        return (v for v in self.values.values() if not v.is_const)
