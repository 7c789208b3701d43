"""Rewrite equivalent forms into the one the fusions know: ReduceMean over every spatial axis with
keepdims=1 (what the dynamo exporter emits for adaptive_avg_pool2d(x, 1)) is a GlobalAveragePool.

Guard: rank >= 3, the constant axes are exactly 2..rank-1 (any order, negative allowed), keepdims=1.
"""
from __future__ import annotations

from ..ir import Graph
from .report import Report


def run(g: Graph, report: Report) -> None:
    for node in [n for n in g.nodes if n.op == "ReduceMean"]:
        rank = len(g.values[node.inputs[0]].shape)
        axes = g.const(node.inputs[1]) if len(node.inputs) > 1 else None
        if rank < 3 or axes is None or not node.attrs.get("keepdims", 1):
            continue
        if sorted(int(a) % rank for a in axes.reshape(-1)) != list(range(2, rank)):
            continue
        node.op, node.inputs, node.attrs = "GlobalAveragePool", node.inputs[:1], {}
        report.fusions.append(f"ReduceMean {node.name!r} over the spatial axes -> GlobalAveragePool")
