"""The execution plan of a static, optimized graph: one kernel call per node, buffers allocated once.

Buffers live in an arena planned by liveness: a value occupies a block from the step that writes it to
the last step that reads it (graph inputs from the start, graph outputs to the end), and values whose
lives do not overlap share a block, so the arena is a fraction of the sum of all intermediates and
stays warm in cache. A step's outputs never share a block with its inputs, except values placed inside
a concat's output (bninfer.concat_views: the concat step is left out, its inputs are views of its
output, written in place; a block holding such views lives as long as any of them). Several threads
may run the same session at once, so each concurrent run takes an arena of its own from a pool (made on
demand, kept for reuse); nothing is allocated per inference but the returned outputs.

From an arena's second run on, its steps run as recorded native calls (bninfer.native): each stretch
of recordable steps is one call into a table of kernel calls, a layer split over threads hands its
packed parts to the workers directly, and Python runs only what cannot be recorded. The feeds are then
copied into the arena's input buffers, which the tables point at.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from . import concat_views, memory, native, ops, threads
from .ir import Graph, Node
from .passes import layout, scale_into_weights


@dataclass
class Step:
    node: Node
    run: ops.Run
    inputs: list  # per input: ("buf", slot) | ("const", array) | None
    outputs: list  # slot per output, None for an omitted optional output


class Plan:
    def __init__(self, graph: Graph, blocked: bool = True, native: bool = True):
        """The plan of `graph` (static shapes); with `blocked`, depthwise-separable chains run on
        channel-blocked values (bninfer.passes.layout, on a copy: self.graph stays as given; their
        squeeze-excitation factors scale the next 1x1 conv's weights, bninfer.passes.scale_into_weights);
        with `native`, from an arena's second run on, stretches of steps run as native calls
        (bninfer.native)."""
        self.graph = graph
        self.native = native
        if blocked:
            graph = layout.run(graph)
            if graph is not self.graph:  # (a copy of its own)
                scale_into_weights.run(graph)
        slots: dict[str, int] = {}
        self.shapes: list[tuple[int, ...]] = []

        def slot(name: str) -> int:
            if name not in slots:
                slots[name] = len(self.shapes)
                self.shapes.append(graph.values[name].shape)
            return slots[name]

        self.input_slots = {name: slot(name) for name in graph.inputs}
        inside, elided = concat_views.place(graph)
        self.steps: list[Step] = []
        for node in graph.nodes:
            if id(node) in elided:  # its inputs are written in place, inside its output
                continue
            opdef = ops.get(node.op)
            ins = [graph.values[i] if i else None for i in node.inputs]
            outs = [graph.values[o] if o else None for o in node.outputs]
            refs = [None if v is None else ("const", v.data) if v.is_const else ("buf", slot(v.name))
                    for v in ins]
            self.steps.append(Step(node, opdef.build(node, ins, outs), refs,
                                   [slot(o) if o else None for o in node.outputs]))
        self.outputs = [("const", graph.values[o].data) if graph.values[o].is_const else ("buf", slot(o))
                        for o in graph.outputs]
        # slot -> (slot of the buffer it lives in, offset in floats), for values placed inside another
        self.view_of = {slot(name): (slot(root), off)
                        for name, (root, off) in ((n, concat_views.resolve(inside, n)) for n in inside)}
        self.block_of, self.block_sizes = self._assign_blocks()
        # where each graph input is read: (step, position) pairs, pointed at the caller's array itself
        # when it can stand in for the arena's copy (see run)
        self._readers = {name: [(k, p) for k, st in enumerate(self.steps) for p, r in enumerate(st.inputs)
                                if r == ("buf", slot_)] for name, slot_ in self.input_slots.items()}
        out_slots = {ref[1] for ref in self.outputs if ref[0] == "buf"}
        self._copied = {name for name, slot_ in self.input_slots.items() if slot_ in out_slots}
        self._arenas: list[_Arena] = []  # made on demand, one per concurrent run

    def _assign_blocks(self) -> tuple[list[int], list[int]]:
        """Slot -> block, and each block's size in floats: greedy over the steps, reusing the smallest
        free block that fits (growing a free one when none fits)."""
        n_steps = len(self.steps)

        def root(slot: int) -> int:  # a value placed inside another lives (and is counted) as that one
            return self.view_of[slot][0] if slot in self.view_of else slot

        last_use = {s: -1 for s in self.input_slots.values()}
        for i, st in enumerate(self.steps):
            for r in st.inputs:
                if r is not None and r[0] == "buf":
                    last_use[root(r[1])] = i
            for o in st.outputs:
                if o is not None:
                    last_use.setdefault(root(o), i)
        for ref in self.outputs:
            if ref[0] == "buf":
                last_use[root(ref[1])] = n_steps  # graph outputs live to the end
        size = [int(np.prod(s, dtype=np.int64)) for s in self.shapes]
        block_of = [-1] * len(self.shapes)
        sizes: list[int] = []
        free: list[int] = []

        def take(slot: int) -> None:
            fits = [b for b in free if sizes[b] >= size[slot]]
            if fits:
                b = min(fits, key=lambda b: sizes[b])
            elif free:
                b = max(free, key=lambda b: sizes[b])
                sizes[b] = size[slot]
            else:
                b = len(sizes)
                sizes.append(size[slot])
                block_of[slot] = b
                return
            free.remove(b)
            block_of[slot] = b

        def release(step: int) -> None:
            for slot_, last in last_use.items():
                if last == step and block_of[slot_] >= 0:
                    free.append(block_of[slot_])

        for slot_ in self.input_slots.values():
            take(slot_)
        release(-1)  # inputs nobody reads
        for i, st in enumerate(self.steps):
            for o in st.outputs:
                if o is not None and block_of[root(o)] < 0:
                    take(root(o))
            release(i)
        return block_of, sizes

    @property
    def arena_bytes(self) -> int:
        return 4 * sum(self.block_sizes)

    @property
    def values_bytes(self) -> int:
        """What one buffer per value would take (for comparison)."""
        return 4 * sum(int(np.prod(s, dtype=np.int64)) for s in self.shapes)

    def _bind(self) -> "_Arena":
        blocks = [memory.aligned_empty(n) for n in self.block_sizes]
        size = [int(np.prod(s, dtype=np.int64)) for s in self.shapes]
        bufs = [None if k in self.view_of else blocks[b][:size[k]].reshape(s)
                for k, (b, s) in enumerate(zip(self.block_of, self.shapes))]
        for k, (r, off) in self.view_of.items():
            bufs[k] = bufs[r].reshape(-1)[off:off + size[k]].reshape(self.shapes[k])
        calls = []
        for st in self.steps:
            ins = [None if r is None else r[1] if r[0] == "const" else bufs[r[1]] for r in st.inputs]
            calls.append((st.run, ins, [None if o is None else bufs[o] for o in st.outputs], st.node))
        inputs = [(name, bufs[slot_], [(calls[k][1], p) for k, p in self._readers[name]], name in self._copied)
                  for name, slot_ in self.input_slots.items()]
        outputs = [ref[1] if ref[0] == "const" else bufs[ref[1]] for ref in self.outputs]
        return _Arena(bufs, calls, inputs, outputs)

    def run(self, feeds: dict[str, np.ndarray], profiler=None) -> list[np.ndarray]:
        """Run on `feeds` (an array for every graph input, of the planned shapes); with a
        bninfer.profiling.Profiler, time every kernel call."""
        try:
            arena = self._arenas.pop()  # list.pop and .append are atomic: concurrent runs take their own
        except IndexError:
            arena = self._bind()
        size = threads.current_size()
        segs = None
        if profiler is None and self.native:
            segs = arena.native.get(size)
            if segs is None and size in arena.ran:
                # every kernel has its compiled signature since the arena's first run at this thread count:
                # record and pack them (here, not after that run: its output comes no later for it)
                segs = arena.native[size] = native.segments(arena.calls)
        if segs is not None:  # stretches of steps as native calls (bninfer.native), on the arena's buffers
            try:
                if segs.chain is not None:  # workers asleep since the last run get up while the input is copied
                    threads.wake_workers()
                for name, buf, _, _ in arena.inputs:
                    np.copyto(buf, feeds[name])
                native.run(segs)
                return [a.copy() for a in arena.outputs]
            finally:
                self._arenas.append(arena)
        ran = False
        try:
            for name, buf, readers, copied in arena.inputs:
                # The caller's array is read in place when it has the layout the kernels were built for
                # (Numba types a read-only or unaligned array apart); else it is copied into the arena.
                # Kernels never write their inputs. A graph input that is also an output stays a copy.
                array = feeds[name]
                flags = array.flags
                if array.dtype is buf.dtype and flags.c_contiguous and flags.writeable and flags.aligned \
                        and not copied:
                    for ins, pos in readers:
                        ins[pos] = array
                else:
                    np.copyto(buf, array)
            if profiler is None:
                for run, ins, outs, _ in arena.calls:
                    run(ins, outs)
            else:
                clock = time.perf_counter_ns
                for run, ins, outs, node in arena.calls:
                    t0 = clock()
                    run(ins, outs)
                    profiler.record(node, t0, clock())
            ran = True
            return [a.copy() for a in arena.outputs]
        finally:
            for _, buf, readers, _ in arena.inputs:  # hold no reference to the caller's arrays between runs
                for ins, pos in readers:
                    ins[pos] = buf
            if ran:
                arena.ran.add(size)
            self._arenas.append(arena)


@dataclass
class _Arena:
    """One run's buffers: every value's array (views into the liveness-shared blocks), the calls bound
    to them, per graph input (name, arena array, where steps read it, whether it must be copied), and
    what the outputs are copied from."""
    bufs: list
    calls: list
    inputs: list
    outputs: list
    native: dict = field(default_factory=dict)  # thread count -> bninfer.native segments
    ran: set = field(default_factory=set)  # thread counts of its runs from Python
