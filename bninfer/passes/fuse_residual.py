"""Fuse a residual Add into the Conv (or Gemm/MatMul) producing one of its operands: the kernel adds
the other operand when it stores its output, before any activation (ResNet's conv-BN-Add-ReLU).

Guards: the operands have the same shape (never broadcast: the kernel adds element by element); the
producer's output feeds only the Add; the producer has no fused activation, residual or affine yet; the
other operand is not computed from the producer's output (that would be a cycle).
"""
from __future__ import annotations

from ..ir import Graph
from ..ops import fusion
from . import match
from .report import Report

RESIDUAL_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul"}


def run(g: Graph, report: Report) -> None:
    for add in [n for n in g.nodes if n.op == "Add" and len(n.inputs) == 2]:
        if add.attrs.get("legacy_axis") is not None or add.inputs[0] == add.inputs[1]:
            continue
        a, b = (g.values[i] for i in add.inputs)
        if a.shape != b.shape:
            continue
        # Prefer the producer that comes later, so that its residual is already computed.
        order = {id(n): k for k, n in enumerate(g.nodes)}
        candidates = []
        for mine in add.inputs:
            producer = match.producer_of(g, mine, RESIDUAL_OPS)
            if producer is None or match.has_fusion(producer) or match.only_consumer(g, mine) is not add:
                continue
            other = match.other_input(add, mine)
            if match.depends_on(g, other, producer):
                continue
            candidates.append((order[id(producer)], producer, other))
        if not candidates:
            continue
        _, producer, other = max(candidates, key=lambda c: c[0])
        fusion.add_extra(producer, "residual", other)
        match.absorb(g, producer, add)
        g.toposort()
        report.fusions.append(f"{producer.op} {producer.name!r} + residual Add {add.name!r}")

