"""The optimization pipeline: an ordered list of passes over a bound copy of the graph.

Each pass is a function `graph -> None` (rewriting in place) that records what it did in the report.
"""
from __future__ import annotations

from ..ir import Graph
from . import (canonicalize, constant_fold, eliminate, fold_batchnorm, fuse_activation, fuse_affine,
               fuse_patterns, fuse_residual)
from .report import Report

# Run in this order at ORT_ENABLE_BASIC and above:
PIPELINE = [
    eliminate.run,        # Identity, Dropout
    canonicalize.run,     # ReduceMean over H, W -> GlobalAveragePool
    fuse_patterns.run,    # x*Sigmoid(x) -> Swish, Erf/Tanh forms -> Gelu, ... (so they can fuse below)
    fold_batchnorm.run,   # Conv/ConvTranspose/Gemm/MatMul -> BN: into the weights
    fuse_residual.run,    # Conv + Add: before activations, as the epilogue adds it first
    fuse_activation.run,  # producer + activation (also into a BN that could not fold)
    fuse_affine.run,      # remaining BNs: epilogue after an activation, or prologue of the next convs
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
