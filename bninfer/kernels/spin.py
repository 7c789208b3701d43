"""Bounded busy-waits on a flag word, for handing work between threads within a run.

A thread that blocks on a lock is woken by the kernel, on this VM in ~25 us per hand-over, and Linux
wakes it next to the thread that woke it: after a pause the two then shared one CPU for a whole run.
A thread that spins on a flag sees the change in well under a microsecond and keeps its own CPU.
The waits here run without the GIL, read the flag with an atomic load (so LLVM cannot hoist the read
out of the loop), pause between reads, and give up after a number of cycle-counter ticks: the caller
then blocks, so nothing spins when there is no work.
"""
from __future__ import annotations

import platform

from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from .calls import run_table, table_failed

_X86 = platform.machine().lower() in ("x86_64", "amd64", "i686", "x86")


@intrinsic
def _load_acquire(typingctx, flags, i):
    """flags[i] of an int64 array, read with an acquire atomic load."""
    if not (isinstance(flags, types.Array) and flags.dtype == types.int64 and isinstance(i, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        ary = context.make_array(flags)(context, builder, args[0])
        ptr = builder.gep(ary.data, [args[1]])
        return builder.load_atomic(ptr, "acquire", 8)
    return types.int64(flags, i), codegen


@intrinsic
def _store_seq_cst(typingctx, flags, i, value):
    """flags[i] = value for an int64 array, a sequentially consistent atomic store (x86: xchg, a full
    barrier: the loads after it see what other threads stored before it)."""
    if not (isinstance(flags, types.Array) and flags.dtype == types.int64 and isinstance(i, types.Integer)
            and isinstance(value, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        ary = context.make_array(flags)(context, builder, args[0])
        ptr = builder.gep(ary.data, [args[1]])
        val = context.cast(builder, args[2], sig.args[2], types.int64)
        builder.atomic_rmw("xchg", ptr, val, "seq_cst")
        return context.get_dummy_value()
    return types.none(flags, i, value), codegen


@intrinsic
def _exchange(typingctx, flags, i, value):
    """flags[i] = value for an int64 array, returning the value it replaced: one atomic, sequentially
    consistent step (x86: xchg), so of two threads exchanging the same word, one gets what the other put."""
    if not (isinstance(flags, types.Array) and flags.dtype == types.int64 and isinstance(i, types.Integer)
            and isinstance(value, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        ary = context.make_array(flags)(context, builder, args[0])
        ptr = builder.gep(ary.data, [args[1]])
        val = context.cast(builder, args[2], sig.args[2], types.int64)
        return builder.atomic_rmw("xchg", ptr, val, "seq_cst")
    return types.int64(flags, i, value), codegen


@intrinsic
def _pause(typingctx):
    """The spin-wait hint (x86 `pause`: yields the core's pipeline to its sibling, saves power)."""
    def codegen(context, builder, sig, args):
        if _X86:  # the intrinsic, not inline asm: Numba's JIT has no asm parser
            fn = builder.module.declare_intrinsic("llvm.x86.sse2.pause", fnty=ir.FunctionType(ir.VoidType(), []))
            builder.call(fn, [])
        return context.get_dummy_value()
    return types.none(), codegen


@intrinsic
def _ticks(typingctx):
    """The CPU's cycle counter (llvm.readcyclecounter; 0 where there is none)."""
    def codegen(context, builder, sig, args):
        fn = builder.module.declare_intrinsic("llvm.readcyclecounter", fnty=ir.FunctionType(ir.IntType(64), []))
        return builder.call(fn, [])
    return types.int64(), codegen


@njit(nogil=True, cache=True)
def wait_while(flags, i, value, max_ticks, max_polls):
    """Spin while flags[i] == value, for at most max_ticks cycle-counter ticks (and max_polls reads,
    which bounds the wait where the counter does not run); returns the last value read."""
    t0 = _ticks()
    n = 0
    v = _load_acquire(flags, i)
    while v == value:
        n += 1
        if n >= max_polls or _ticks() - t0 >= max_ticks:
            break
        _pause()
        v = _load_acquire(flags, i)
    return v


@njit(nogil=True, cache=True)
def wait_below(flags, i, value, max_ticks, max_polls):
    """Spin while flags[i] < value, bounded as wait_while; returns the last value read."""
    t0 = _ticks()
    n = 0
    v = _load_acquire(flags, i)
    while v < value:
        n += 1
        if n >= max_polls or _ticks() - t0 >= max_ticks:
            break
        _pause()
        v = _load_acquire(flags, i)
    return v


@njit(nogil=True, cache=True)
def take(flags, i):
    """The part table posted at flags[i], which is marked TAKEN in the same atomic step: the table, or
    TAKEN when the worker (or the caller) got it first, or 0 for a part for Python."""
    return _exchange(flags, i, TAKEN)


@njit(nogil=True, cache=True)
def serve_wait(flags, done_i, done, asleep_i, posted_i, seen_i, task_i, max_ticks, max_polls, settle_ticks):
    """A worker between parts, without the GIL. Publish flags[done_i] = done (done >= 0; return -2 at
    once when flags[asleep_i] says its caller sleeps and needs waking), then spin while
    flags[posted_i] == flags[seen_i] as wait_while does (return -1 when nothing came). A new part with
    a table at flags[task_i] (bninfer.kernels.calls) runs here, is published done, and the spin goes on
    for the next. A part for Python (task 0) is returned, its number also kept in flags[seen_i]; before
    that the worker spins settle_ticks more: the caller holds the GIL until its own kernel starts, and a
    thread that asks for a held GIL sleeps, woken only after a slow OS wake-up.
    The table is taken (take): a part its caller took back first (TAKEN) is published done unrun."""
    seen = flags[seen_i]
    while True:
        if done >= 0:
            _store_seq_cst(flags, done_i, done)  # after the GIL is released: the caller can take it at once
            if _load_acquire(flags, asleep_i) != 0:
                return -2
        v = wait_while(flags, posted_i, seen, max_ticks, max_polls)
        if v == seen:
            return -1
        seen = v
        flags[seen_i] = v
        task = _exchange(flags, task_i, TAKEN)  # posted before the part's number: seen with it
        if task == 0:
            break
        if task != TAKEN:
            run_table(task)
        done = v
    if settle_ticks > 0:
        t0 = _ticks()
        n = 0
        while _ticks() - t0 < settle_ticks and n < max_polls:
            _pause()
            n += 1
    return v


# a worker's flag words (one cache line per worker, bninfer.threads.Workers): the task number posted by
# the caller, the last one the worker finished (it only grows: a part its caller took back may be
# published late, or skipped for a later one), whether the worker is awake (spinning or working), whether
# the caller sleeps, whether a wake-up is on its way, the part table of a native part (0: a part for
# Python; TAKEN once the worker or its caller has it), the last task number the worker saw
POSTED, DONE, AWAKE, CALLER_ASLEEP, WAKING, TASK, SEEN = 0, 1, 2, 3, 4, 5, 6
TAKEN = -1
ROW = 8  # int64 words per worker: 64 bytes, no shared cache lines
CALLER_SPIN_TICKS = 40_000_000  # ~15 ms: how long the caller spins for a worker's part before it sleeps
MAX_POLLS = 1_000_000  # bounds every spin where the cycle counter does not run


@njit(nogil=True, cache=True)
def hand_over(flags, tasks, own):
    """A split layer's packed part tables without Python: post tasks[k] to worker k (its flag words at
    flags[k * ROW:]), run the table `own` here, then take back each worker's part not yet taken and run
    it here, and spin for the others, as Workers.run_tables does from Python (~10 us a layer there, ~1
    here; three arguments: Numba's dispatch takes a fraction of a microsecond for each). A worker still
    waking (0.3-1.7 ms on this VM, p90 much longer) or descheduled by the host then costs the layer no
    more than running its part here. Returns
      0  every part ran, and none failed;
      1  nothing was posted: a worker is asleep and no wake-up is on its way (the caller takes the Python
         way, which wakes it);
      2  a part its worker took was not seen done within CALLER_SPIN_TICKS (the caller waits from Python);
      3  every part ran, and one failed (the caller's Packed.check raises its exception).
    A part is run once: the worker and the caller each take it with one atomic exchange (take)."""
    n = tasks.size
    for k in range(n):
        if _load_acquire(flags, k * ROW + AWAKE) == 0 and _load_acquire(flags, k * ROW + WAKING) == 0:
            return 1
    for k in range(n):
        flags[k * ROW + TASK] = tasks[k]  # before the part's number: the worker reads it once it sees that
        _store_seq_cst(flags, k * ROW + POSTED, flags[k * ROW + POSTED] + 1)
    run_table(own)
    for k in range(n):
        if _exchange(flags, k * ROW + TASK, TAKEN) == tasks[k]:
            run_table(tasks[k])  # not taken yet: its worker is late
            continue
        seq = flags[k * ROW + POSTED]
        if wait_below(flags, k * ROW + DONE, seq, CALLER_SPIN_TICKS, MAX_POLLS) < seq:
            return 2
    failed = table_failed(own)
    for k in range(n):
        failed = failed or table_failed(tasks[k])
    return 3 if failed else 0


# A plan's chain of segments (bninfer.native.Chain): per segment, at its start in the program, one of
#   CHAIN_TABLE, table              a stretch of recorded steps: its part table, run here
#   CHAIN_SPLIT, own, n, task * n   a split layer: the caller's table and the workers' (hand_over)
#   CHAIN_PYTHON                    a step left to Python
CHAIN_TABLE, CHAIN_SPLIT, CHAIN_PYTHON = 0, 1, 2
# why run_chain stopped (the low 3 bits of its answer; the segment's index above them)
CHAIN_DONE, CHAIN_ASLEEP, CHAIN_LATE, CHAIN_FAILED, CHAIN_FOR_PYTHON = 0, 1, 2, 3, 4


@njit(nogil=True, cache=True)
def run_chain(flags, prog, starts, first):
    """Segments first, first + 1, ... of a chain, without Python between them: a table runs here, a
    split is handed over as hand_over does (from native.Split, each cost ~3.6 us of Python, during which
    the worker idled: MobileNetV2 and EfficientNet-B0 at 2 threads ran 3 % faster as one chain).
    Returns i * 8 + why, segment i being the one that stopped it:
    CHAIN_DONE with i = the segment count when every one ran; CHAIN_ASLEEP (a split whose worker sleeps:
    nothing posted), CHAIN_LATE (a split's part its worker took, not seen done within CALLER_SPIN_TICKS),
    CHAIN_FAILED (a segment's call failed; the split's other parts all ran), CHAIN_FOR_PYTHON."""
    for i in range(first, starts.size):
        p = starts[i]
        kind = prog[p]
        if kind == CHAIN_TABLE:
            run_table(prog[p + 1])
            if table_failed(prog[p + 1]):
                return i * 8 + CHAIN_FAILED
        elif kind == CHAIN_SPLIT:
            r = hand_over(flags, prog[p + 3:p + 3 + prog[p + 2]], prog[p + 1])
            if r != 0:
                return i * 8 + r  # hand_over's 1, 2, 3 are CHAIN_ASLEEP, CHAIN_LATE, CHAIN_FAILED
        else:
            return i * 8 + CHAIN_FOR_PYTHON
    return starts.size * 8 + CHAIN_DONE
