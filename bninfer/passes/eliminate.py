"""Remove nodes that do nothing at inference: Identity, and Dropout in eval mode."""
from __future__ import annotations

from ..ir import Graph
from .report import Report

PASS_THROUGH = {"Identity", "Dropout"}


def run(graph: Graph, report: Report) -> None:
    for node in list(graph.nodes):
        if node.op not in PASS_THROUGH:
            continue
        # Guard: a Dropout's mask output must be unused, and a graph output keeps its name (ORT does
        # the same: the node stays when its output is a graph output).
        if any(graph.uses(o) for o in node.outputs[1:]) or node.outputs[0] in graph.outputs:
            continue
        graph.replace_uses(node.outputs[0], node.inputs[0])
        graph.remove_node(node)
        report.eliminated.append(f"{node.op} {node.name!r}")
