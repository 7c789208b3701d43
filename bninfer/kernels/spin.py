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
