"""The execution plan of a static, optimized graph: one kernel call per node, buffers allocated once.

Buffers live in an arena: one preallocated array per run-time value. Several threads may run the same
session at once, so each concurrent run takes an arena of its own from a pool (made on demand, kept for
reuse); nothing is allocated per inference but the returned outputs.
"""
from __future__ import annotations

import queue
from dataclasses import dataclass

import numpy as np

from . import ops
import time

from .ir import Graph, Node


@dataclass
class Step:
    node: Node
    run: ops.Run
    inputs: list  # per input: ("buf", slot) | ("const", array) | None
    outputs: list  # slot per output, None for an omitted optional output


class Plan:
    def __init__(self, graph: Graph):
        self.graph = graph
        slots: dict[str, int] = {}
        self.shapes: list[tuple[int, ...]] = []

        def slot(name: str) -> int:
            if name not in slots:
                slots[name] = len(self.shapes)
                self.shapes.append(graph.values[name].shape)
            return slots[name]

        self.input_slots = {name: slot(name) for name in graph.inputs}
        self.steps: list[Step] = []
        for node in graph.nodes:
            opdef = ops.get(node.op)
            ins = [graph.values[i] if i else None for i in node.inputs]
            outs = [graph.values[o] if o else None for o in node.outputs]
            refs = [None if v is None else ("const", v.data) if v.is_const else ("buf", slot(v.name))
                    for v in ins]
            self.steps.append(Step(node, opdef.build(node, ins, outs), refs,
                                   [slot(o) if o else None for o in node.outputs]))
        self.outputs = [("const", graph.values[o].data) if graph.values[o].is_const else ("buf", slot(o))
                        for o in graph.outputs]
        self._arenas: queue.SimpleQueue = queue.SimpleQueue()

    def _bind(self) -> tuple[list[np.ndarray], list]:
        bufs = [np.empty(s, np.float32) for s in self.shapes]
        calls = []
        for st in self.steps:
            ins = [None if r is None else r[1] if r[0] == "const" else bufs[r[1]] for r in st.inputs]
            calls.append((st.run, ins, [None if o is None else bufs[o] for o in st.outputs], st.node))
        return bufs, calls

    def run(self, feeds: dict[str, np.ndarray], profiler=None) -> list[np.ndarray]:
        """Run on `feeds`; with a bninfer.profiling.Profiler, time every kernel call."""
        try:
            bufs, calls = self._arenas.get_nowait()
        except queue.Empty:
            bufs, calls = self._bind()
        try:
            for name, array in feeds.items():
                np.copyto(bufs[self.input_slots[name]], array)
            if profiler is None:
                for run, ins, outs, _ in calls:
                    run(ins, outs)
            else:
                clock = time.perf_counter_ns
                for run, ins, outs, node in calls:
                    t0 = clock()
                    run(ins, outs)
                    profiler.record(node, t0, clock())
            return [ref[1].copy() if ref[0] == "const" else bufs[ref[1]].copy() for ref in self.outputs]
        finally:
            self._arenas.put((bufs, calls))
