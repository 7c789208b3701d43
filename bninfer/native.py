"""A plan's steps as stretches of native calls: every run of consecutive steps whose kernel calls can be
recorded (bninfer.record) becomes one part table (bninfer.kernels.calls), which one call into native code
runs kernel after kernel, without Python between them. A small model (the MNIST CNN, the MLP) then
crosses from Python into native code once per run.

At several threads a layer that splits becomes a `Split`: its parts packed into one table per thread,
handed to the workers as threads.split_calls hands them, without the op's own Python around them. A
plan with splits runs its segments as one `Chain`: one native call runs the tables and hands the splits
over (bninfer.kernels.spin.run_chain), and Python takes a segment only where the chain stops for it (a
step left to Python, a worker asleep, a failed call).

Made per arena and thread count, after a run of the arena at that thread count went through Python (so
every kernel has its compiled signature): the tables point into that arena's buffers and into scratches
of their own. A step stays with Python when its op is not recordable, when it splits through Python
(threads.split), or when a call fits no compiled signature.
"""
from __future__ import annotations

import numpy as np

from . import record, threads
from .kernels.calls import Packed, packable, run_table
from .kernels.spin import CHAIN_DONE, CHAIN_FAILED, CHAIN_PYTHON, CHAIN_SPLIT, CHAIN_TABLE


class Table:
    """Consecutive recorded steps, run by one native call."""

    def __init__(self, calls: list[tuple], keep: list):
        self.packed = Packed()
        self.packed.keep.extend(keep)
        self.addr = self.packed.table(calls)  # (never None: native._record checked every call fits)
        self.status = self.packed.tables[-1]

    def __call__(self) -> None:
        run_table(self.addr)
        if self.status[1]:  # a kernel failed: Python runs the calls again and raises its exception
            self.packed.check()


class Split:
    """A recorded layer split over the run's threads (bninfer.record.Split), its parts packed."""

    def __init__(self, split: record.Split, keep: list):
        self.packed = Packed()
        self.packed.keep.extend(keep)
        self.tables = [self.packed.table(part) for part in split.parts]
        self.tasks = np.array(self.tables[1:], np.int64)  # the workers' parts, for a native hand-over
        self.macs = split.macs

    def __call__(self) -> None:
        threads.run_split(self.tables, self.packed, self.macs, self.tasks)


def _record(run, ins, outs) -> tuple[list, list] | None:
    """The kernel calls that `run(ins, outs)` makes, and the scratches they use; None when it cannot be
    recorded or packed."""
    if not getattr(run, "recordable", False):
        return None
    try:
        with record.recording() as rec:
            run(ins, outs)
    except record.Unrecordable:
        return None
    serial = [c for c in rec.calls if type(c) is not record.Split]
    split = [c for part in rec.calls if type(part) is record.Split for p in part.parts for c in p]
    if not (packable(serial) and packable(split)):  # a call no compiled signature fits
        return None
    return rec.calls, rec.keep


class Segments(list):
    """A plan's segments; `chain` is their Chain when any is a Split (else None)."""

    chain: "Chain | None" = None


class Chain:
    """Segments as a program for spin.run_chain: `prog` holds each segment's words, `starts` where each
    begins. It holds the tables' addresses only: the segments keep them valid."""

    def __init__(self, segs: list):
        prog: list[int] = []
        starts = []
        for seg in segs:
            starts.append(len(prog))
            if type(seg) is Table:
                prog += [CHAIN_TABLE, seg.addr]
            elif type(seg) is Split:
                prog += [CHAIN_SPLIT, seg.tables[0], len(seg.tasks), *seg.tasks.tolist()]
            else:
                prog.append(CHAIN_PYTHON)
        self.prog = np.array(prog, np.int64)
        self.starts = np.array(starts, np.int64)


def segments(calls: list[tuple]) -> Segments:
    """For a plan's bound calls [(run, ins, outs, node), ...]: what runs them, in order: a Table for each
    stretch of recorded steps, a (run, ins, outs) triple for each step left to Python."""
    out = Segments()
    pending: list[tuple] = []
    keep: list = []

    def close() -> None:
        if pending:
            out.append(Table(list(pending), list(keep)))
            pending.clear()
            keep.clear()

    for run, ins, outs, _ in calls:
        recorded = _record(run, ins, outs)
        if recorded is None:
            close()
            out.append((run, ins, outs))
            continue
        step_keep = recorded[1]
        keep.extend(step_keep)
        for c in recorded[0]:
            if type(c) is record.Split:
                close()
                out.append(Split(c, step_keep))
                keep.extend(step_keep)  # the step's calls after its split may use them too
            else:
                pending.append(c)
    close()
    if any(type(seg) is Split for seg in out):
        out.chain = Chain(out)
    return out


def run(segs: Segments) -> None:
    """Run the segments in order. With a chain, the caller has woken sleeping workers first
    (threads.wake_workers: Plan.run does so before it copies the input, so they get up meanwhile)."""
    chain = segs.chain
    i, n = 0, len(segs)
    while i < n:
        if chain is not None:
            r = threads.run_chain(chain.prog, chain.starts, i)
            if r is None:  # another caller has the workers: segment by segment (each runs here)
                chain = None
            else:
                i, why = r >> 3, r & 7
                if why == CHAIN_DONE:
                    return
                if why == CHAIN_FAILED:
                    segs[i].packed.check()  # raises the kernel's own exception
                    i += 1
                    continue
        # a step for Python, or a split whose worker sleeps (run_split wakes it and runs the parts here)
        seg = segs[i]
        if type(seg) is tuple:
            seg[0](seg[1], seg[2])
        else:
            seg()
        i += 1

