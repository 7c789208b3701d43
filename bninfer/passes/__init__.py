"""The optimization pipeline: an ordered list of passes over a bound copy of the graph.

Each pass is a function `graph -> None` (rewriting in place) that records what it did in the report.
"""
from __future__ import annotations

from ..ir import Graph
from . import constant_fold, eliminate
from .report import Report

# Run in this order at ORT_ENABLE_BASIC and above. Folding BN into weights comes before activation
# fusion (a Conv->BN->Relu chain becomes Conv->Relu, then one fused Conv).
PIPELINE = [
    eliminate.run,
]


def optimize(graph: Graph, input_shapes: dict, level: int) -> tuple[Graph, Report]:
    g = constant_fold.bind_inputs(graph, input_shapes)
    report = Report(nodes_before=g.op_counts())
    g = constant_fold.run(g)
    if level > 0:
        for step in PIPELINE:
            step(g, report)
        g.prune()
    report.nodes_after = g.op_counts()
    return g, report
