"""Threads for one run: SessionOptions.intra_op_num_threads splits bninfer's large kernels, and large
GEMMs, over a pool of worker threads; the BLAS behind numpy (OpenBLAS/MKL) runs single-threaded inside
a run.

A session makes one `RunThreads`; `session.run` enters it, which makes it the current one for the calling
thread. Kernels ask `split` to run a call over ranges of their independent work (output-channel blocks,
tile rows): with more than one thread and enough work, the ranges go to the pool's workers and the caller
takes the first; otherwise the caller runs the whole range itself. The Numba kernels release the GIL
(nogil), so the parts run at once. Workers block on a queue between parallel regions: nothing spins.

Layers whose parts are lists of Numba kernel calls use `split_calls`: from a layer's second run on, its
parts are packed into tables of raw arguments (bninfer.kernels.calls) that a worker runs inside its spin,
without the GIL or Python, so a hand-over costs a microsecond or two instead of 12-25 (MobileNetV2 at
2 threads: 1.42-1.52 -> 1.18-1.20 of onnxruntime; EfficientNet-B0 1.40-1.51 -> 1.21-1.22).

Why one thread for the BLAS: after each call OpenBLAS's own threads keep spinning (sched_yield) for
milliseconds, and on a 2-core machine they took the second core from bninfer's worker (ResNet-50 at 2
threads ran no faster than at 1; with the BLAS on one thread, 1.6x faster). The limit is set only
around calls large enough for the BLAS to thread at all (OpenBLAS runs a GEMM of up to 4 * 65536
multiply-adds on one thread) and restored afterwards, so a user's own numpy keeps its settings and a
small model does not pay for setting it (threadpoolctl: ~3 us per set and restore).
"""
from __future__ import annotations

import contextlib
import os
import queue
import threading
from typing import Callable

import numpy as np

from . import record
from .kernels.calls import Packed, run_calls, run_table, table_failed
from .kernels.spin import (AWAKE, CALLER_ASLEEP, CALLER_SPIN_TICKS, CHAIN_FAILED, CHAIN_LATE, DONE, MAX_POLLS,
                           POSTED, ROW, SEEN, TASK, WAKING)

BLAS_SERIAL_MACS = 4 * 65536  # OpenBLAS's GEMM_MULTITHREAD_THRESHOLD * SMP_THRESHOLD_MIN
MIN_PART_MACS = 2_000_000  # less work per part (~15 us) does not pay for the hand-over to a spinning worker
# the same for parts the workers run natively (split_calls), whose hand-over takes a microsecond or two
MIN_NATIVE_PART_MACS = 150_000
# waking a sleeping worker takes ~150 us here: only a layer this large does it (a small model whose one
# large layer came after a pause ran slower on 2 threads than on 1)
MIN_WAKE_MACS = 30_000_000


def default_threads() -> int:
    """What intra_op_num_threads = 0 means: every core this process may run on (onnxruntime: one per
    physical core)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _blas_controllers() -> tuple:
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # optional at run time: without it BLAS keeps its own thread count
        return ()
    return tuple(ThreadpoolController().select(user_api="blas").lib_controllers)


class ThreadLimit:
    """Context manager: at most `n` BLAS threads while it is active (n <= 0: no limit). The BLAS
    libraries are looked up when the limit is made (a few ms): make one per session, reuse it per run.
    Concurrent runs of a session share it: the first to enter sets the limit, the last to leave restores
    the previous setting."""

    def __init__(self, n: int):
        self.n = int(n or 0)
        self._libs = _blas_controllers() if self.n > 0 else ()
        self._saved: list[int] = []
        self._active = 0
        self._lock = threading.Lock()

    def __enter__(self) -> "ThreadLimit":
        if self._libs:
            with self._lock:
                if self._active == 0:
                    self._saved = [lib.get_num_threads() for lib in self._libs]
                    for lib in self._libs:
                        lib.set_num_threads(self.n)
                self._active += 1
        return self

    def __exit__(self, *exc) -> None:
        if self._libs:
            with self._lock:
                self._active -= 1
                if self._active == 0:
                    for lib, n in zip(self._libs, self._saved):
                        lib.set_num_threads(n)


def _cpu_query():
    try:
        import ctypes
        getcpu = ctypes.CDLL(None, use_errno=True).sched_getcpu
        getcpu.restype = ctypes.c_int
        cpus = frozenset(os.sched_getaffinity(0))
        return getcpu if getcpu() >= 0 and len(cpus) > 1 else None
    except (AttributeError, OSError):  # not Linux/glibc: leave placement to the scheduler
        return None


_getcpu = _cpu_query()


def _place(workers: list[threading.Thread], placed: list) -> None:
    """At a run's first parallel region: keep the calling thread on its current CPU until the run ends
    (RunThreads restores its affinity) and the workers on the other CPUs the process may use.
    Unplaced, Linux woke each thread next to the one that woke it (a worker beside its caller, the
    caller beside the worker that released the GIL), and after a pause the two shared one CPU for
    the whole run: a 2-thread ResNet-50 run then took as long as a 1-thread one."""
    state = _local.__dict__
    if _getcpu is None or state.get("current") is None or state.get("restore"):
        return
    try:
        allowed = os.sched_getaffinity(0)
        mine = _getcpu()
        others = allowed - {mine}
        if not others:
            return
        os.sched_setaffinity(0, {mine})
        _local.restore = allowed
        for k, t in enumerate(workers):
            if placed[k] != others and t.native_id is not None:
                os.sched_setaffinity(t.native_id, others)
                placed[k] = others
    except OSError:  # not allowed: leave placement to the scheduler
        pass


# a worker's flag words, one cache line each (bninfer.kernels.spin says what each holds)
_POSTED, _DONE, _AWAKE, _CALLER_ASLEEP, _WAKING, _TASK, _SEEN = POSTED, DONE, AWAKE, CALLER_ASLEEP, WAKING, TASK, SEEN
_ROW = ROW
_WORKER_SPIN_TICKS = 2_000_000  # ~1 ms: how long an idle worker spins for the next part before it sleeps
_CALLER_SPIN_TICKS, _MAX_POLLS = CALLER_SPIN_TICKS, MAX_POLLS
# how long a worker that sees a new part spins on before it takes the GIL (~4 us): long enough for the
# caller to reach its own kernel, which lets the GIL go (see spin.serve_wait)
_SETTLE_TICKS = 8000


class Workers:
    """size - 1 daemon threads that run the parts a caller hands them; the caller runs one part itself.
    Shared by every session with the same thread count (see `workers`), one caller at a time: a caller
    that finds them busy runs all its parts itself.

    A part is a Python call (`map`) or a packed table (`run_tables`), which the worker runs inside its
    spin. Either is handed over through flag words and a bounded spin (bninfer.kernels.spin, without
    the GIL): an idle worker spins ~1 ms for the next part before it sleeps on its queue, and the caller
    spins for the workers' parts before it sleeps. Waking a sleeping thread cost ~25 us per hand-over
    here, and Linux put the woken worker on its waker's CPU: after a pause, a 2-thread run then took as
    long as a 1-thread one.

    For a Python part, the GIL decides the rest. A thread that asks for the GIL while another holds it
    sleeps, and the OS wake-up once it is let go took 20-50 us here: a worker that saw its part at once
    started it only after the caller's own part (the caller holds the GIL until its kernel starts). So a
    worker that sees a part spins a few microseconds more before it takes the GIL (found free: the caller is
    in its kernel by then), and publishes a finished part only once it has let the GIL go again (inside
    spin.serve_wait), where the caller, spinning without the GIL, can take it at once. A 25 us depthwise
    layer split in two took 92 us before, 31 after. Sleeping and waking on the queues use the flags under
    the GIL, which orders them; the caller's sleep for a part, whose flag the worker sets without it, also
    wakes every millisecond to look (a wake-up lost between the two flags costs no more). A stale wake-up
    only makes a sleeper check again."""

    def __init__(self, size: int):
        from .kernels.spin import hand_over, run_chain, serve_wait, take, wait_below
        self._wait, self._serve_wait, self._run_table, self._take = wait_below, serve_wait, run_table, take
        self._hand_over, self._run_chain = hand_over, run_chain
        self.size = size
        n = size - 1
        self._flags = np.zeros(n * _ROW, np.int64)
        self._rows = [self._flags[k * _ROW:(k + 1) * _ROW] for k in range(n)]  # no shared cache lines
        for row in self._rows:
            row[_AWAKE] = 1
        self._slots: list = [None] * n  # per worker: (fn, part) to run, then its exception or None
        self._wake = [queue.SimpleQueue() for _ in range(n)]
        self._done = [queue.SimpleQueue() for _ in range(n)]
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._serve, args=(k,), name=f"bninfer-worker-{k}", daemon=True)
                         for k in range(n)]
        self._placed: list = [None] * n  # the CPU set each worker was last given
        for t in self._threads:
            t.start()

    def _serve(self, k: int) -> None:
        row, done = self._rows[k], -1
        while True:
            v = self._serve_wait(row, _DONE, done, _CALLER_ASLEEP, _POSTED, _SEEN, _TASK, _WORKER_SPIN_TICKS,
                                 _MAX_POLLS, _SETTLE_TICKS)
            done = -1
            if v == -2:  # the part is published done, and the caller sleeps on its queue
                self._done[k].put(None)
                continue
            if v == -1:
                row[_AWAKE] = 0  # nothing came: sleep until the caller posts and sees this
                if row[_POSTED] == row[_SEEN]:
                    self._wake[k].get()
                row[_AWAKE], row[_WAKING] = 1, 0
                continue
            fn, part = self._slots[k]
            try:
                fn(*part)
                self._slots[k] = None
            except BaseException as e:  # noqa: BLE001 — handed to the caller, raised there
                self._slots[k] = e
            done = int(v)  # published by serve_wait, once this thread has let the GIL go

    def asleep(self) -> bool:
        return not all(row[_AWAKE] for row in self._rows)

    def wake(self) -> None:
        """Wake the sleeping workers without giving them a part: they spin for the next one. The
        wake-up takes ~50-150 us here; a run's later layers find them awake. Under the lock map holds:
        a caller that has the workers keeps them where it placed them."""
        if not self._lock.acquire(blocking=False):
            return
        try:
            _place(self._threads, self._placed)  # before the wake-up: else Linux wakes them beside this thread
            for k, row in enumerate(self._rows):
                if not row[_AWAKE] and not row[_WAKING]:
                    row[_WAKING] = 1
                    self._wake[k].put(None)
        finally:
            self._lock.release()

    def _post(self, k: int, task: int) -> None:
        row = self._rows[k]
        row[_TASK] = task  # before the part's number: the worker reads it once it sees the number
        row[_POSTED] += 1
        if not row[_AWAKE] and not row[_WAKING]:
            row[_WAKING] = 1
            self._wake[k].put(None)

    def _collect(self, k: int) -> None:
        """Wait for worker k's part."""
        row = self._rows[k]
        seq = row[_POSTED]
        if self._wait(row, _DONE, seq, _CALLER_SPIN_TICKS, _MAX_POLLS) < seq:
            row[_CALLER_ASLEEP] = 1
            while row[_DONE] < seq:  # the timeout: a wake-up lost between the two flags
                try:
                    self._done[k].get(timeout=0.001)
                except queue.Empty:
                    pass
            row[_CALLER_ASLEEP] = 0

    def map(self, fn: Callable, parts: list[tuple]) -> None:
        """fn(*part) for every part (at most `size`); the first exception is raised once all parts are
        done (so no worker still writes into the caller's buffers)."""
        if len(parts) == 1 or not self._lock.acquire(blocking=False):
            for part in parts:
                fn(*part)
            return
        try:
            _place(self._threads, self._placed)
            workers = range(len(parts) - 1)
            for k in workers:
                self._slots[k] = (fn, parts[k + 1])
                self._post(k, 0)
            error = None
            try:
                fn(*parts[0])
            except BaseException as e:  # noqa: BLE001
                error = e
            for k in workers:
                self._collect(k)
                error = error or self._slots[k]
            if error is not None:
                raise error
        finally:
            self._lock.release()

    def hand_over(self, own: int, tasks: np.ndarray) -> bool | None:
        """Part tables `tasks` (an int64 array: one per worker, at most size - 1) to the workers and `own`
        here, handed over in native code (spin.hand_over) when every worker spins or is being woken: the
        split layers of a native plan, whose hand-over through run_tables cost ~10 us of Python each. A
        part its worker has not taken by the time the caller's own is done runs here. None when nothing
        was handed over (a worker sleeps with no wake-up on its way, or another caller has the workers:
        the caller takes run_tables); else whether a part failed (the caller's Packed.check raises its
        exception). A worker going to sleep stores its awake word and then loads its posted word in
        Python, with no fence between: were it and spin.hand_over each to miss the other's store, the
        worker sleeps and the caller takes its part back. Never lost, never run twice (spin.take)."""
        if len(tasks) > len(self._rows) or not self._lock.acquire(blocking=False):
            return None
        try:
            _place(self._threads, self._placed)
            r = self._hand_over(self._flags, tasks, own)
            if r == 1:
                return None
            if r == 2:
                return self._finish_late(own, tasks)
            return r == 3
        finally:
            self._lock.release()

    def _finish_late(self, own: int, tasks) -> bool:
        """After a native hand-over whose part its worker took was not seen done within ~15 ms: wait
        for it from Python (waking its worker if it went to sleep); whether a part failed."""
        for k in range(len(tasks)):
            row = self._rows[k]
            if not row[_AWAKE] and not row[_WAKING]:
                row[_WAKING] = 1
                self._wake[k].put(None)
            self._collect(k)
        return any(table_failed(t) for t in (own, *tasks))

    def run_chain(self, prog: np.ndarray, starts: np.ndarray, first: int) -> int | None:
        """A native plan's segments from `first` on (spin.run_chain), its splits handed over from native
        code; a split whose part came late is waited for here and the chain goes on. spin.run_chain's
        answer (segment index * 8 + why it stopped), or None when another caller has the workers."""
        if not self._lock.acquire(blocking=False):
            return None
        try:
            _place(self._threads, self._placed)
            while True:
                r = self._run_chain(self._flags, prog, starts, first)
                i = r >> 3
                if r & 7 != CHAIN_LATE:
                    return r
                p = starts[i]
                own, tasks = int(prog[p + 1]), prog[p + 3:p + 3 + prog[p + 2]]
                if self._finish_late(own, tasks):
                    return i * 8 + CHAIN_FAILED
                first = i + 1
        finally:
            self._lock.release()

    def run_tables(self, tables: list[int]) -> None:
        """Every part table (bninfer.kernels.calls, at most `size`), the first on the calling thread:
        the workers run theirs natively, without the GIL; a part a worker has not taken (one still
        waking) by the time the caller's own is done runs here."""
        if len(tables) == 1 or not self._lock.acquire(blocking=False):
            for t in tables:
                self._run_table(t)
            return
        try:
            _place(self._threads, self._placed)
            workers = range(len(tables) - 1)
            for k in workers:
                self._post(k, tables[k + 1])
            self._run_table(tables[0])
            for k in workers:
                if self._take(self._flags, k * _ROW + _TASK) == tables[k + 1]:
                    self._run_table(tables[k + 1])
                else:
                    self._collect(k)
        finally:
            self._lock.release()


_pools: dict[int, Workers] = {}
_pools_lock = threading.Lock()


def workers(size: int) -> Workers:
    with _pools_lock:
        pool = _pools.get(size)
        if pool is None:
            pool = _pools[size] = Workers(size)
        return pool


_forks = [0]  # forks since import: a RunThreads' pool from before one belongs to the parent


def _after_fork() -> None:
    _pools.clear()
    _forks[0] += 1


if hasattr(os, "register_at_fork"):  # a forked child has none of the parent's worker threads
    os.register_at_fork(after_in_child=_after_fork)

_local = threading.local()


class RunThreads:
    """A session's threads: entering makes them the calling thread's current ones for one run."""

    def __init__(self, intra_op_num_threads: int):
        n = int(intra_op_num_threads or 0)
        self.size = n if n > 0 else default_threads()
        self.blas_limit = ThreadLimit(1)
        self._pool: Workers | None = None
        self._forks = -1

    @property
    def pool(self) -> Workers:
        # kept until a fork, after which the child makes its own (workers() takes a lock: 1 us a split)
        if self._pool is None or self._forks != _forks[0]:
            self._pool, self._forks = workers(self.size), _forks[0]
        return self._pool

    # Entered once per run: the thread's own dict of _local is read with .get, because getattr with a
    # default on a missing attribute raises and catches inside (entering and leaving took 1 us, now 0.4).
    def __enter__(self) -> "RunThreads":
        # the caller's previous state is kept per thread: one session may run in several threads at once
        state = _local.__dict__
        state["saved"] = (state.get("current"), state.get("saved"))
        state["current"] = self
        return self

    def __exit__(self, *exc) -> None:
        state = _local.__dict__
        restore = state.get("restore")
        if restore:  # the caller was kept on its CPU for this run's parallel regions (_place)
            state["restore"] = None
            try:
                os.sched_setaffinity(0, restore)
            except OSError:
                pass
        state["current"], state["saved"] = state["saved"]


def blas(macs: int):
    """The current run's BLAS thread limit (one) around a GEMM of `macs` multiply-adds (a no-op when the
    BLAS would run it on one thread anyway, or outside a run)."""
    cur = _local.__dict__.get("current")
    if cur is None or macs <= BLAS_SERIAL_MACS:
        return contextlib.nullcontext()
    return cur.blas_limit


def current_size() -> int:
    """The thread count of the current run (1 outside a run): for kernels that choose their chunking per
    run, so that a layer too small for several chunks of its preferred size still gives every thread one."""
    cur = _local.__dict__.get("current")
    return 1 if cur is None else cur.size


# A worker starts its part about this much after the caller starts its own (the hand-over: its spin
# sees the part, it takes the GIL, Python calls the kernel), at about MACS_PER_US multiply-adds a
# microsecond: the caller's share is that much larger, so that the parts end together.
WORKER_LAG_US = 8.0
MACS_PER_US = 40_000.0


# a worker that runs a part table natively starts it within about this much
NATIVE_LAG_US = 1.0


def _shares(n: int, grain: int, units: int, parts: int, macs: float,
            lag_us: float = WORKER_LAG_US) -> list[tuple[int, int]]:
    """`parts` ranges over [0, n) (bounds multiples of `grain`, but n): the first, the caller's, larger by
    the units a worker's late start (`lag_us`) is worth (at most an even share more), the rest even."""
    lag = min(units / parts, lag_us * MACS_PER_US * units / macs)
    each = (units - lag) / parts
    bounds = [0] + [min(n, round(lag + each * k) * grain) for k in range(1, parts)] + [n]
    return [(bounds[k], bounds[k + 1]) for k in range(parts)]


def split(call: Callable[[int, int], None], n: int, macs: float, grain: int = 1) -> None:
    """call(a, b) over [0, n) in contiguous ranges (bounds multiples of `grain`, but n; the caller's a
    little larger, _shares), one per thread of the current run, when the work (`macs` multiply-adds in
    all) gives each at least MIN_PART_MACS (and MIN_WAKE_MACS in all when the workers sleep); else
    call(0, n) on the calling thread."""
    cur = _local.__dict__.get("current")
    units = -(-n // grain)
    parts = 1 if cur is None else min(cur.size, units, int(macs // MIN_PART_MACS))
    if parts > 1 and record.active() is not None:  # a split cannot be recorded (bninfer.record)
        raise record.Unrecordable
    if parts > 1:
        pool = cur.pool
        if macs >= MIN_WAKE_MACS or not pool.asleep():
            pool.map(call, _shares(n, grain, units, parts, macs))
            return
        pool.wake()  # this layer runs here; the ones after it find the workers spinning
    call(0, n)


def wake_workers() -> None:
    """Wake the current run's sleeping workers (they spin for the next part), without waiting for them."""
    cur = _local.__dict__.get("current")
    if cur is not None and cur.size > 1:
        pool = cur.pool
        if pool.asleep():
            pool.wake()


def run_split(tables: list[int], packed: Packed, macs: float, tasks: np.ndarray | None = None) -> None:
    """A recorded split layer (bninfer.native): its packed parts over the current run's workers, as
    split_calls runs them, or all on the caller (waking the workers for the next layers) when they sleep
    and the layer is too small to wait for them. `tasks`, the workers' tables as an array, lets spinning
    workers take them from native code (Workers.hand_over)."""
    pool = _local.__dict__["current"].pool
    if tasks is not None:
        failed = pool.hand_over(tables[0], tasks)
        if failed is not None:
            if failed:
                packed.check()
            return
    if macs >= MIN_WAKE_MACS or not pool.asleep():
        pool.run_tables(tables)
    else:
        pool.wake()
        for t in tables:
            run_table(t)
    packed.check()


def run_chain(prog: np.ndarray, starts: np.ndarray, first: int) -> int | None:
    """A native plan's chain from segment `first` on, on the current run's workers (Workers.run_chain);
    None outside a run of several threads."""
    cur = _local.__dict__.get("current")
    return None if cur is None or cur.size < 2 else cur.pool.run_chain(prog, starts, first)


def owners(*arrays) -> tuple:
    """The object owning each array's memory (its base, or itself): a view made afresh each run has the
    same owner each run, a copy a new one. (Owners alone do not fix where a view starts: a caller's feeds
    may be slices of one buffer at another offset each run. split_calls' objs add the step's own input
    and output arrays, whose views the calls take at fixed offsets.)"""
    return tuple(a if a.base is None else a.base for a in arrays)


class PartTables:
    """One layer's part tables (bninfer.kernels.calls), packed at the second run that splits it the same
    way on the same buffers and kept: later runs hand the parts to the workers without Python.

    Keyed by the identity of the arrays the calls point into that are not the layer's own: the step's input
    and output arrays (the arena's, or a caller's feed read in place), the owners of the views taken of them
    (a copy made in the run has a new one) and thread-local scratches. A packed entry keeps them alive: an
    id that matches a kept object's is that object. Packing waits for a key's second run, so a caller's
    fresh input array on every run is never packed (it runs as before); a few keys are kept (one per
    concurrent run's arena), then the lot is dropped and packed again."""

    MAX_KEYS = 8

    def __init__(self):
        self._entries: dict = {}
        self._last = None

    def get(self, key: tuple, objs: tuple, make: Callable[[], list[list[tuple]]]) -> tuple | None:
        """The entry for `key`: (part table addresses or None, what keeps them valid), which the caller
        holds while the parts run (another run may drop it from here meanwhile); None at a first sighting."""
        entry = self._entries.get(key)
        if entry is not None:
            return entry
        if key != self._last:  # a first sighting: run as before
            self._last = key
            return None
        packed = Packed()
        with record.packing():  # each part a scratch of its own, kept by its packed arguments
            parts = make()
        tables = [packed.table(part) for part in parts]
        if any(t is None for t in tables):
            tables = None  # a call the trampolines cannot take: these parts stay with Python
        if len(self._entries) >= self.MAX_KEYS:
            self._entries.clear()
        entry = self._entries[key] = (tables, packed, objs)
        return entry


def split_calls(calls: Callable[[int, int], list[tuple]], n: int, macs: float, grain: int = 1,
                tables: PartTables | None = None, objs: Callable[[], tuple] = tuple) -> None:
    """split, for a layer whose part [a, b) is the kernel calls calls(a, b) lists ((dispatcher, args), ...).
    With `tables`, the parts are packed (PartTables) and run natively by the workers; `objs()` (asked only
    then: a serial run pays nothing for it) gives what the calls read outside the layer: the step's input
    and output arrays the calls take views of, and the owners of those views (`owners`). Every other array
    the calls pass must be the layer's own, alive as long as `tables`."""
    cur = _local.__dict__.get("current")
    units = -(-n // grain)
    parts = 1 if cur is None else min(cur.size, units, int(macs // (MIN_PART_MACS if tables is None
                                                                    else MIN_NATIVE_PART_MACS)))
    rec = record.active()
    if rec is not None:  # the plan records the step (bninfer.record)
        if parts <= 1:
            rec.calls.extend(calls(0, n))
        elif tables is None:
            raise record.Unrecordable
        else:
            rec.calls.append(record.Split([calls(a, b) for a, b in
                                           _shares(n, grain, units, parts, macs, NATIVE_LAG_US)], macs))
        return
    if parts > 1:
        pool = cur.pool
        if macs >= MIN_WAKE_MACS or not pool.asleep():
            entry = None
            if tables is not None:
                kept = objs()
                key = (tuple(map(id, kept)), cur.size, parts)
                entry = tables.get(key, kept, lambda: [calls(a, b) for a, b in
                                                       _shares(n, grain, units, parts, macs, NATIVE_LAG_US)])
            if entry is not None and entry[0] is not None:
                pool.run_tables(entry[0])
                entry[1].check()
                return
            parts = min(parts, int(macs // MIN_PART_MACS))  # from Python: the hand-over costs more
            if parts > 1:
                pool.map(lambda a, b: run_calls(calls(a, b)), _shares(n, grain, units, parts, macs))
                return
        else:
            pool.wake()
    run_calls(calls(0, n))
