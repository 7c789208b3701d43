"""Kernel calls a worker thread makes without Python: a compiled kernel call, its arguments packed once
into raw words, run from a table by native code.

Handing a part of a layer to a worker through Python cost 12-25 us a split here: the worker had to take
the GIL and type some twenty arguments before its kernel started, and MobileNetV2's 100-200 us layers
lost a fifth of their time to it at 2 threads. A part's calls never change between runs of a plan
(the same kernels on the same arena buffers), so they are packed once:

- a call's arguments become int64 words (an array: data address, shape, strides; a number: its value,
  a float's bits as a float64);
- a trampoline, one per kernel signature (its object code kept in the kernel cache, run by an LLVM
  engine of its own), unpacks the words into Numba's own argument values and calls the kernel's native
  function (Numba's calling convention: a status code, which the C wrapper would only print if the
  kernel raised);
- a part is a table: [number of calls, status, then per call: trampoline, kernel, words' address].

`run_table` runs a table and stops at a call that fails, noting it in the status word; a worker's spin
loop (bninfer.kernels.spin.serve_wait) calls it directly, so a part starts within a microsecond of
being posted. `Packed.check` then runs a failed part again from Python, which raises the kernel's own
exception. The tables hold addresses only: whoever makes one keeps the arrays it points into alive
(`Packed.keep`).
"""
from __future__ import annotations

import hashlib

import llvmlite
import llvmlite.binding as llvm
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.core.compiler_lock import global_compiler_lock
from numba.extending import intrinsic
from numba.np.numpy_support import as_dtype

from .. import kernel_cache
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

_trampolines: dict[tuple, tuple[int, object]] = {}  # (address, the engine that keeps it)
trampoline_stats = {"built": 0, "loaded": 0}  # this process's trampolines: built, or loaded from the cache


def _unpack(context, builder, argtys, words) -> list:
    """The native function's arguments for `argtys`, flattened as Numba passes them (an array as its
    meminfo, parent, item count, item size, data pointer, shape and strides), read from consecutive
    int64 words at `words`. Built value by value: Numba's array helpers (a struct on the stack, filled
    field by field) made 20 kB of IR a kernel, and a trampoline took ~28 ms to build, most of a plan's
    second run (MNIST's 0.2 s)."""
    base = builder.inttoptr(words, _I64.as_pointer())
    pos = 0

    def word():
        nonlocal pos
        pos += 1
        return builder.load(builder.gep(base, [ir.Constant(_I64, pos - 1)]))

    flat = []
    for t in argtys:
        if isinstance(t, types.Array):
            data_t = context.get_data_type(t.dtype)
            data = builder.inttoptr(word(), data_t.as_pointer())
            shape = [word() for _ in range(t.ndim)]
            strides = [word() for _ in range(t.ndim)]
            nitems = ir.Constant(_I64, 1)
            for d in shape:
                nitems = builder.mul(nitems, d)
            null = ir.Constant(ir.IntType(8).as_pointer(), None)
            itemsize = ir.Constant(_I64, context.get_abi_sizeof(data_t))
            flat += [null, null, nitems, itemsize, data, *shape, *strides]
        elif isinstance(t, types.Boolean):
            flat.append(builder.zext(builder.icmp_signed("!=", word(), ir.Constant(_I64, 0)), ir.IntType(8)))
        elif isinstance(t, types.Integer):
            w = word()
            flat.append(w if t.bitwidth == 64 else builder.trunc(w, ir.IntType(t.bitwidth)))
        else:  # Float, checked by _fits
            d = builder.bitcast(word(), ir.DoubleType())
            flat.append(d if t == types.float64 else builder.fptrunc(d, ir.FloatType()))
    return flat


def _simplify(module, machine) -> None:
    """LLVM's -O1 pipeline on a trampoline's module (mem2reg and the like, so that the -O0 code
    generator keeps the unpacked words in registers); none without llvmlite's new pass manager."""
    if not hasattr(llvm, "create_pass_builder"):
        return
    builder = llvm.create_pass_builder(machine, llvm.create_pipeline_tuning_options(1))
    builder.getModulePassManager().run(module, builder)


def _machine():
    return llvm.Target.from_triple(llvm.get_process_triple()).create_target_machine(opt=0, codemodel="jitdefault")


def _object_name(argtys: tuple, restype) -> str:
    """The trampoline's symbol and its object's name in the kernel cache: the same in every process for
    a signature, llvmlite (its LLVM) and target; the cache's stamp covers this file and Numba's version,
    which decide the code and the argument layout it unpacks."""
    key = "|".join([t.name for t in argtys] + [restype.name, llvmlite.__version__, llvm.get_process_triple()])
    return "bninfer_trampoline_" + hashlib.sha256(key.encode()).hexdigest()[:24]


def _build(argtys: tuple, restype, name: str) -> bytes:
    """The object code of the trampoline for argtys, built straight in LLVM IR: through a Numba library
    (its optimization pipeline, then code generation at -O3) one took ~21 ms here; straight-line code
    needs neither: -O1's IR passes and the -O0 code generator take ~8 ms (its calls as fast: the MLP's
    run within 0.1 %; -O0 IR alone was 0.8 % slower)."""
    from numba.core.registry import cpu_target
    context = cpu_target.target_context
    machine = _machine()
    module = ir.Module(name)
    module.triple, module.data_layout = machine.triple, str(machine.target_data)
    i32 = ir.IntType(32)
    fn = ir.Function(module, ir.FunctionType(i32, [_I64, _I64]), name)
    builder = ir.IRBuilder(fn.append_basic_block("entry"))
    args = _unpack(context, builder, argtys, fn.args[1])
    conv = context.call_conv  # i32 status (retptr, excinfo**, the arguments flattened)
    kty = conv.get_function_type(restype, argtys)
    if [a.type for a in args] != list(kty.args[2:]):  # Numba's data model is not the one _unpack knows
        raise TypeError(f"cannot pack arguments {argtys}: native types {kty.args[2:]}")
    retptr = cgutils.alloca_once(builder, kty.args[0].pointee)
    excinfo = cgutils.alloca_once(builder, kty.args[1].pointee)
    code = builder.call(builder.inttoptr(fn.args[0], kty.as_pointer()), [retptr, excinfo] + args)
    ok = builder.or_(builder.icmp_signed("==", code, ir.Constant(i32, 0)),  # Numba's OK, or None
                     builder.icmp_signed("==", code, ir.Constant(i32, -2)))  # returned
    builder.ret(builder.select(ok, ir.Constant(i32, 0), ir.Constant(i32, 1)))
    compiled = llvm.parse_assembly(str(module))
    compiled.verify()
    _simplify(compiled, machine)
    return machine.emit_object(compiled)


def _load(obj: bytes, name: str) -> tuple[int, object]:
    """(the address of name, the engine that keeps it) for object code from _build."""
    engine = llvm.create_mcjit_compiler(llvm.parse_assembly(""), _machine())  # owns the machine
    engine.add_object_file(llvm.ObjectFileRef.from_data(obj))
    engine.finalize_object()
    return engine.get_function_address(name), engine


def trampoline(argtys: tuple, restype) -> int:
    """The address of a native function (kern, words) -> 0, or 1 when the kernel raised, that calls the
    native function of a kernel compiled for `argtys` with arguments unpacked from `words`. One per
    signature and process, each by an execution engine of its own, from object code the kernel cache
    keeps: a plan builds its tables at its second run, and building them all again in every process
    took ResNet-50's second run ~90 ms (11 trampolines; loading one takes ~1 ms)."""
    key = (argtys, restype)
    with global_compiler_lock:
        hit = _trampolines.get(key)
        if hit is None:
            name = _object_name(argtys, restype)
            obj = kernel_cache.load_object(name)
            if obj is not None:
                hit = _load(obj, name)
                trampoline_stats["loaded"] += bool(hit[0])
            if hit is None or not hit[0]:  # not cached (or not the trampoline: built again)
                obj = _build(argtys, restype, name)
                kernel_cache.store_object(name, obj)
                hit = _load(obj, name)
                trampoline_stats["built"] += 1
            _trampolines[key] = hit
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


def _kind(a):
    """All of an argument _fits looks at: arguments of one kind fit the same signatures."""
    if isinstance(a, np.ndarray):
        flags = a.flags
        return a.dtype, a.ndim, flags.c_contiguous, flags.f_contiguous
    if isinstance(a, (bool, np.bool_)):
        return bool
    if isinstance(a, (int, np.integer)):
        return int
    if isinstance(a, (float, np.floating)):
        return float
    return type(a)  # fits no signature


# (dispatcher, its arguments' kinds) -> (signature, trampoline, the kernel's native function). A plan
# packs ~200 calls at its second run (ResNet-50 at 2 threads); matching each against its kernel's
# signatures and asking Numba's engine for the function took ~120 ms of that run, for a few dozen kernels.
_natives: dict[tuple, tuple] = {}


def _native(kern, args) -> tuple | None:
    """(signature, trampoline, native function) of the compiled signature of dispatcher `kern` that
    `args` fit, or None. Only fits are remembered: a kernel compiled later may fit what none did."""
    key = (kern, tuple(map(_kind, args)))
    hit = _natives.get(key)
    if hit is None:
        sig = next((s for s in kern.signatures if len(s) == len(args) and all(map(_fits, s, args))), None)
        if sig is None:
            return None
        cres = kern.overloads[sig]
        hit = _natives[key] = (sig, trampoline(sig, cres.signature.return_type),
                               cres.library.get_pointer_to_function(cres.fndesc.llvm_func_name))
    return hit


def packable(calls: list[tuple]) -> bool:
    """Whether every (dispatcher, args) of `calls` fits a compiled signature (Packed.table takes them)."""
    return all(_native(kern, args) is not None for kern, args in calls)


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
            native = _native(kern, args)
            if native is None:
                return None
            sig, tramp, fn = native
            words = np.array(_words(sig, args), np.int64)
            self.keep.append((kern, args, words))
            row += [tramp, fn, words.ctypes.data]
        table = np.array(row, np.int64)
        self.tables.append(table)
        self.parts.append(calls)
        return table.ctypes.data
