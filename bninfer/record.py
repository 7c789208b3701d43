"""Recording a step's kernel calls instead of making them, so that the plan can run a whole stretch of
steps as one native call (bninfer.plan, bninfer.kernels.calls).

A step's run is Python around Numba kernels: it takes views of its buffers, then calls kernels on them.
Between runs of one arena nothing of that changes, so the calls are recorded once (the run called under
`recording()`: `call` and threads.split_calls note their calls instead of making them) and later runs
make them from a packed table, without Python between the kernels. On the MNIST CNN or the MLP the
Python around the kernels weighed 1-2 us a step, a tenth of a small model's run.

A run may be recorded only when all it does at run time goes through `call`, threads.split_calls or
`scratch` (no numpy work of its own, no state kept from one run to the next): the op says so with
`recordable(run)`. A layer that threads.split_calls would split over threads is recorded as a `Split`
(its parts run by the workers from packed tables, as split_calls runs them); one that threads.split
would split raises `Unrecordable` and stays with Python.
Scratches asked for while recording are fresh, zeroed and owned by the recording (a scratch kept per
thread would be shared by every arena's table that thread recorded: two runs at once would share it).
"""
from __future__ import annotations

import contextlib
import threading

from .memory import aligned_zeros

_local = threading.local()


class Unrecordable(Exception):
    """The run cannot be recorded as it stands (a layer threads.split would split over threads, a
    broadcast residual copied each run)."""


class Split:
    """A layer split over the run's threads, as recorded: the kernel calls of each thread's part (the
    caller's first), and the layer's multiply-adds (threads.split_calls' `macs`)."""

    def __init__(self, parts: list[list[tuple]], macs: float):
        self.parts, self.macs = parts, macs


class Recording:
    def __init__(self) -> None:
        self.calls: list = []  # (kernel dispatcher, args), or a Split
        self.keep: list = []  # scratches the calls point into


def active() -> Recording | None:
    """The calling thread's recording, or None."""
    return _local.__dict__.get("rec")


@contextlib.contextmanager
def recording():
    """Record the kernel calls made in this block on this thread (nothing runs)."""
    state = _local.__dict__
    saved = state.get("rec")
    rec = state["rec"] = Recording()
    try:
        yield rec
    finally:
        state["rec"] = saved


def call(kern, *args) -> None:
    """kern(*args), or noted by the current recording."""
    rec = _local.__dict__.get("rec")
    if rec is None:
        kern(*args)
    else:
        rec.calls.append((kern, args))


def calls(lst: list[tuple]) -> None:
    """Every (kern, args) of `lst`, or all noted by the current recording."""
    rec = _local.__dict__.get("rec")
    if rec is None:
        for kern, args in lst:
            kern(*args)
    else:
        rec.calls.extend(lst)


@contextlib.contextmanager
def packing():
    """While one thread makes the calls of every part of a split layer, to pack them into part tables
    (threads.PartTables): each scratch asked for is a fresh one, which the packed part keeps (the
    packing thread's own would be shared by every part, run at once by several threads)."""
    _local.packing = True
    try:
        yield
    finally:
        _local.packing = False


def scratch(size: int, per_thread: threading.local | None = None):
    """A zeroed float32 scratch of `size`: the calling thread's own (kept in `per_thread` across runs;
    without it, a new one), or, while recording or packing, a fresh one (the recording keeps it; a packed
    part keeps its arguments)."""
    rec = _local.__dict__.get("rec")
    if rec is not None or per_thread is None or _local.__dict__.get("packing"):
        buf = aligned_zeros(size)
        if rec is not None:
            rec.keep.append(buf)
        return buf
    buf = getattr(per_thread, "buf", None)
    if buf is None:
        buf = per_thread.buf = aligned_zeros(size)
    return buf


def recordable(run):
    """Mark `run` as one whose every kernel call can be recorded (see the module's docstring)."""
    run.recordable = True
    return run
