"""Kernel calls a worker thread makes without Python: a compiled kernel call, its arguments packed once
into raw words, run from a table by native code.

Handing a part of a layer to a worker through Python cost 12-25 us a split here: the worker had to take
the GIL and type some twenty arguments before its kernel started, and MobileNetV2's 100-200 us layers
lost a fifth of their time to it at 2 threads. A part's calls never change between runs of a plan
(the same kernels on the same arena buffers), so they are packed once:

- a call's arguments become int64 words (an array: data address, shape, strides; a number: its value,
  a float's bits as a float64);
- a trampoline, one per kernel signature, unpacks the words into Numba's own argument values and
  calls the kernel's native function (Numba's calling convention: a status code, which the C wrapper
  would only print if the kernel raised);
- a part is a table: [number of calls, status, then per call: trampoline, kernel, words' address].

`run_table` runs a table and stops at a call that fails, noting it in the status word; a worker's spin
loop (bninfer.kernels.spin.serve_wait) calls it directly, so a part starts within a microsecond of
being posted. `Packed.check` then runs a failed part again from Python, which raises the kernel's own
exception. The tables hold addresses only: whoever makes one keeps the arrays it points into alive
(`Packed.keep`).
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.core.compiler_lock import global_compiler_lock
from numba.extending import intrinsic
from numba.np.arrayobj import populate_array
from numba.np.numpy_support import as_dtype

from ..errors import WorkerError

_I64 = ir.IntType(64)


@intrinsic
def _word(typingctx, addr, i):
    """The int64 at address `addr`, index `i`."""
    def codegen(context, builder, sig, args):
        base = builder.inttoptr(args[0], _I64.as_pointer())
        return builder.load(builder.gep(base, [args[1]]))
    return types.int64(types.int64, types.int64), codegen


@intrinsic
def _set_word(typingctx, addr, i, value):
    """The int64 at address `addr`, index `i` = value."""
    def codegen(context, builder, sig, args):
        base = builder.inttoptr(args[0], _I64.as_pointer())
        builder.store(args[2], builder.gep(base, [args[1]]))
        return context.get_dummy_value()
    return types.none(types.int64, types.int64, types.int64), codegen


@intrinsic
def _call(typingctx, tramp, kern, words):
    """tramp(kern, words) for a trampoline's address: 0, or 1 when the kernel failed."""
    def codegen(context, builder, sig, args):
        fnty = ir.FunctionType(ir.IntType(32), [_I64, _I64])
        return builder.call(builder.inttoptr(args[0], fnty.as_pointer()), [args[1], args[2]])
    return types.int32(types.int64, types.int64, types.int64), codegen


@njit(nogil=True, cache=True)
def run_table(table):
    """The calls of the part table at address `table`, in order, up to one that fails (its number from
    1 then goes into the status word)."""
    n = _word(table, 0)
    for k in range(n):
        if _call(_word(table, 2 + 3 * k), _word(table, 3 + 3 * k), _word(table, 4 + 3 * k)) != 0:
            _set_word(table, 1, k + 1)
            return


@njit(nogil=True, cache=True, inline="always")
def table_failed(table):
    """Whether a call of the part table at address `table` failed (its status word is set)."""
    return _word(table, 1) != 0


# -- trampolines ------------------------------------------------------------------------------------

_trampolines: dict[tuple, tuple[int, object]] = {}


def _unpack(context, builder, argtys, words):
    """Numba's value for each argument type, read from consecutive int64 words at `words`."""
    base = builder.inttoptr(words, _I64.as_pointer())
    pos = 0

    def word():
        nonlocal pos
        pos += 1
        return builder.load(builder.gep(base, [ir.Constant(_I64, pos - 1)]))

    values = []
    for t in argtys:
        if isinstance(t, types.Array):
            ary = context.make_array(t)(context, builder)
            data_t = context.get_data_type(t.dtype)
            data = builder.inttoptr(word(), data_t.as_pointer())
            shape = [word() for _ in range(t.ndim)]
            strides = [word() for _ in range(t.ndim)]
            populate_array(ary, data=data, shape=cgutils.pack_array(builder, shape),
                           strides=cgutils.pack_array(builder, strides),
                           itemsize=context.get_constant(types.intp, context.get_abi_sizeof(data_t)), meminfo=None)
            values.append(ary._getvalue())
        elif isinstance(t, types.Boolean):
            values.append(builder.icmp_signed("!=", word(), ir.Constant(_I64, 0)))
        elif isinstance(t, types.Integer):
            values.append(context.cast(builder, word(), types.int64, t))
        else:  # Float, checked by _fits
            values.append(context.cast(builder, builder.bitcast(word(), ir.DoubleType()), types.float64, t))
    return values


def trampoline(argtys: tuple, restype) -> int:
    """The address of a native function (kern, words) -> 0, or 1 when the kernel raised, that calls the
    native function of a kernel compiled for `argtys` with arguments unpacked from `words`. Built straight
    in LLVM IR, once per signature and process (a few ms: no Numba pipeline, nothing to cache)."""
    key = (argtys, restype)
    with global_compiler_lock:
        hit = _trampolines.get(key)
        if hit is None:
            from numba.core.registry import cpu_target
            context = cpu_target.target_context
            name = f"bninfer_trampoline_{len(_trampolines)}"
            library = context.codegen().create_library(name)
            module = library.create_ir_module(name)
            i32 = ir.IntType(32)
            fn = ir.Function(module, ir.FunctionType(i32, [_I64, _I64]), name)
            builder = ir.IRBuilder(fn.append_basic_block("entry"))
            values = _unpack(context, builder, argtys, fn.args[1])
            conv = context.call_conv  # i32 status (retptr, excinfo**, the arguments flattened)
            kty = conv.get_function_type(restype, argtys)
            retptr = cgutils.alloca_once(builder, kty.args[0].pointee)
            excinfo = cgutils.alloca_once(builder, kty.args[1].pointee)
            args = list(conv._get_arg_packer(argtys).as_arguments(builder, values))
            code = builder.call(builder.inttoptr(fn.args[0], kty.as_pointer()), [retptr, excinfo] + args)
            ok = builder.or_(builder.icmp_signed("==", code, ir.Constant(i32, 0)),  # Numba's OK, or None
                             builder.icmp_signed("==", code, ir.Constant(i32, -2)))  # returned
            builder.ret(builder.select(ok, ir.Constant(i32, 0), ir.Constant(i32, 1)))
            library.add_ir_module(module)
            library.finalize()
            hit = _trampolines[key] = (library.get_pointer_to_function(name), library)
    return hit[0]


# -- packing ----------------------------------------------------------------------------------------

def _fits(t, a) -> bool:
    if isinstance(t, types.Array):
        if not isinstance(a, np.ndarray) or a.ndim != t.ndim or a.dtype != as_dtype(t.dtype):
            return False
        return {"C": a.flags.c_contiguous, "F": a.flags.f_contiguous}.get(t.layout, True)
    if isinstance(t, types.Boolean):
        return isinstance(a, (bool, np.bool_))
    if isinstance(t, types.Integer):
        return isinstance(a, (int, np.integer)) and not isinstance(a, (bool, np.bool_))
    if isinstance(t, types.Float):
        return isinstance(a, (int, float, np.integer, np.floating)) and not isinstance(a, (bool, np.bool_))
    return False


def _words(argtys: tuple, args: tuple) -> list[int]:
    out: list[int] = []
    for t, a in zip(argtys, args):
        if isinstance(t, types.Array):
            out.append(a.__array_interface__["data"][0])
            out.extend(a.shape)
            out.extend(a.strides)
        elif isinstance(t, types.Float):
            out.append(int(np.float64(a).view(np.int64)))
        else:
            out.append(int(a))
    return out


def _signature(kern, args):
    """The compiled signature of dispatcher `kern` that `args` fit, or None."""
    return next((s for s in kern.signatures if len(s) == len(args) and all(map(_fits, s, args))), None)


def packable(calls: list[tuple]) -> bool:
    """Whether every (dispatcher, args) of `calls` fits a compiled signature (Packed.table takes them)."""
    return all(_signature(kern, args) is not None for kern, args in calls)


def run_calls(calls: list[tuple]) -> None:
    for kern, args in calls:
        kern(*args)


class Packed:
    """Part tables for lists of kernel calls, and every array they point into (`keep`)."""

    def __init__(self):
        self.keep: list = []
        self.tables: list[np.ndarray] = []
        self.parts: list[list[tuple]] = []

    def check(self) -> None:
        """After the tables ran: a part whose call failed runs again from Python, which raises the
        kernel's exception (a kernel that raised there would raise again on the same arguments)."""
        for table, calls in zip(self.tables, self.parts):
            failed = int(table[1])
            if failed:
                table[1] = 0
                run_calls(calls)
                raise WorkerError(f"kernel {calls[failed - 1][0].__name__} failed in native code (a worker "
                                  "thread or a recorded plan), but not when run again from Python")

    def table(self, calls: list[tuple]) -> int | None:
        """Pack [(kernel dispatcher, args), ...] into a part table and return its address; None when a
        call has no compiled signature its arguments fit (the caller then runs the calls from Python)."""
        row = [len(calls), 0]
        for kern, args in calls:
            sig = _signature(kern, args)
            if sig is None:
                return None
            cres = kern.overloads[sig]
            words = np.array(_words(sig, args), np.int64)
            self.keep.append((kern, args, words))
            row += [trampoline(sig, cres.signature.return_type),
                    cres.library.get_pointer_to_function(cres.fndesc.llvm_func_name), words.ctypes.data]
        table = np.array(row, np.int64)
        self.tables.append(table)
        self.parts.append(calls)
        return table.ctypes.data
