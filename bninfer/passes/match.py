"""Small questions that the rewrite passes ask of a graph (guards), and the one common patch."""
from __future__ import annotations

import numpy as np

from ..ir import Graph, Node

# Ops whose kernels implement the fused epilogue of bninfer.ops.fusion, and the channel axis of it.
EPILOGUE_OPS = {"Conv": 1, "ConvTranspose": 1, "Gemm": -1, "MatMul": -1, "BatchNormalization": 1}
# Ops whose kernels implement the fused prologue (per input channel, applied to in-bounds elements).
PROLOGUE_OPS = {"Conv", "GlobalAveragePool", "GlobalMaxPool"}


def only_consumer(g: Graph, name: str) -> Node | None:
    """The single node reading `name`, if exactly one node reads it once and it is no graph output."""
    if name in g.outputs:
        return None
    readers = g.consumers(name)
    if len(readers) != 1 or readers[0].inputs.count(name) != 1:
        return None
    return readers[0]


def producer_of(g: Graph, name: str, op: str | set[str]) -> Node | None:
    node = g.producer(name) if name else None
    ops = {op} if isinstance(op, str) else op
    return node if node is not None and node.op in ops else None


def const_scalar(g: Graph, name: str) -> float | None:
    data = g.const(name)
    if data is None or data.size != 1:
        return None
    return float(np.asarray(data).reshape(-1)[0])


def is_close(value: float | None, target: float, rtol: float = 1e-5) -> bool:
    return value is not None and abs(value - target) <= rtol * max(1.0, abs(target))


def other_input(node: Node, name: str) -> str:
    a, b = node.inputs[:2]
    return b if a == name else a


def depends_on(g: Graph, name: str, node: Node) -> bool:
    """Whether value `name` is computed (directly or not) from an output of `node`."""
    targets = set(node.outputs)
    seen: set[str] = set()
    stack = [name]
    while stack:
        v = stack.pop()
        if v in targets:
            return True
        if v in seen or not v:
            continue
        seen.add(v)
        p = g.producer(v)
        if p is not None:
            stack.extend(p.inputs)
    return False


def absorb(g: Graph, keeper: Node, gone: Node) -> None:
    """Patch: `keeper` now computes what `gone` computed (its first output), and `gone` is removed.
    `keeper` takes over the name of `gone`'s output, so graph outputs keep their names."""
    old = keeper.outputs[0]
    keeper.outputs[0] = gone.outputs[0]
    g.remove_node(gone)
    g.values.pop(old, None)


def has_fusion(node: Node) -> bool:
    return bool(node.attrs.get("activation") or node.attrs.get("extras"))


def channel_params(g: Graph, bn: Node) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(s, t, mean) in float64 of a foldable BN: y = s*x + t, or None if its parameters are not constant
    or it is not per-channel."""
    if bn.attrs.get("spatial", 1) != 1 or len(bn.inputs) < 5:
        return None
    if any(o and g.uses(o) for o in bn.outputs[1:]):
        return None  # training outputs are read: not an inference BN
    params = [g.const(i) for i in bn.inputs[1:5]]
    if any(p is None for p in params):
        return None
    gamma, beta, mean, var = (np.asarray(p, np.float64).reshape(-1) for p in params)
    if not gamma.size == beta.size == mean.size == var.size:
        return None
    eps = float(bn.attrs.get("epsilon", 1e-5))
    s = gamma / np.sqrt(var + eps)
    return s, beta - mean * s, mean
