"""The `bninfer` command line.

    bninfer bench   [MODEL] [--threads N] [--runs N] [--warmup N] [--no-compare] [--json FILE]
                    [--profile] [--trace FILE] [--quiet]
    bninfer convert MODEL [-o OUT.bninfer] [--onnx OUT.onnx] [--shape NAME=1,3,224,224 ...]
    bninfer run     MODEL [--input x.npy | --input NAME=x.npy ... | --random] [--shape ...]
                    [--output out.npz] [--seed N]
    bninfer inspect MODEL [--dot FILE] [--svg FILE] [--shape ...]

MODEL is an .onnx file, a .bninfer file (written by `convert`; not for `bench`) or the name of a model in
the benchmark zoo (benchmarks/zoo.py); bench without MODEL uses the built-in default (the MNIST CNN).
Dynamic input dimensions are bound to 1 unless --shape says otherwise.

Exit codes: 0 success, 2 user error (bad arguments, missing or unreadable model or input file, an input
that does not fit the model, a model bninfer cannot run, a corrupt .bninfer file, `--svg` without
Graphviz), 1 internal error, 130 interrupted. Every error is one line on stderr (`--traceback` before
the subcommand shows the Python traceback instead). Progress counters go to stderr, only when it is a
terminal and --quiet is not given.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Iterator, Sequence

PROG = "bninfer"
COMMANDS = ("bench", "convert", "run", "inspect")


class UsageError(Exception):
    """A user error: reported as one line on stderr, exit code 2."""


class _Parser(argparse.ArgumentParser):
    """argparse that reports errors as one line (raising UsageError) instead of usage + exit."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message} (see '{self.prog} --help')")


def _int_at_least(minimum: int, what: str):
    """An argparse type: an integer >= minimum, with a one-line error naming what was expected."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"expected a {what} integer, got {text!r}")
        return value
    return parse


_positive_int = _int_at_least(1, "positive")
_non_negative_int = _int_at_least(0, "non-negative")


# ------------------------------------------------------------------------------------------------
# The benchmark helpers (the model zoo, the interleaved comparison) live in the benchmarks package.
# ------------------------------------------------------------------------------------------------
def _benchmarks_module(name: str) -> ModuleType:
    """benchmarks.<name> (zoo or compare): installed with bninfer (pyproject packages benchmarks*)."""
    full = f"benchmarks.{name}"
    try:
        return importlib.import_module(full)
    except ImportError as e:
        raise UsageError(f"the benchmark helpers ({full}) are not available in this installation "
                         f"({e}); reinstall bninfer") from None


# ------------------------------------------------------------------------------------------------
# Small helpers: formatting, progress, output files
# ------------------------------------------------------------------------------------------------
def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    if len(text) > 400:
        text = text[:397] + "..."
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _fmt_shape(shape: Sequence | None) -> str:
    if shape is None:
        return "[?]"
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _fmt_macs(m: int) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if m >= div:
            return f"{m / div:.2f} {unit}"
    return str(m)


def _fmt_s(seconds: float) -> str:
    return f"{seconds:.2f} s" if seconds >= 1 else f"{seconds * 1e3:.1f} ms"


def _fmt_bytes(n: int) -> str:
    for unit, div in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if n >= div:
            return f"{n / div:.1f} {unit}"
    return f"{n} B"


def _micro() -> str:
    """'µs' when stdout can print it, else 'us'."""
    try:
        "µ".encode(sys.stdout.encoding or "ascii")
        return "µs"
    except (UnicodeEncodeError, LookupError):
        return "us"


class Progress:
    """A one-line counter on stderr, redrawn in place with a carriage return and erased when done.
    Silent unless enabled and the stream is a terminal (so logs and pipes stay clean)."""

    def __init__(self, enabled: bool = True, stream: Any = None) -> None:
        self.stream = sys.stderr if stream is None else stream
        try:
            tty = bool(self.stream.isatty())
        except (AttributeError, ValueError, OSError):
            tty = False
        self.enabled = enabled and tty
        self._width = 0
        self._lock = threading.Lock()

    def show(self, text: str) -> None:
        if not self.enabled:
            return
        with self._lock:
            self.stream.write("\r" + text + " " * max(0, self._width - len(text)))
            self.stream.flush()
            self._width = len(text)

    def clear(self) -> None:
        if not self.enabled or not self._width:
            return
        with self._lock:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()
            self._width = 0

    @contextlib.contextmanager
    def ticking(self, label: str, interval: float = 0.1) -> Iterator[None]:
        """Show 'label 1.3 s', counting up, while the block runs (one blocking call: compilation)."""
        if not self.enabled:
            yield
            return
        stop = threading.Event()
        t0 = time.perf_counter()

        def loop() -> None:
            while not stop.wait(interval):
                self.show(f"{label} {time.perf_counter() - t0:.1f} s")

        self.show(f"{label} 0.0 s")
        thread = threading.Thread(target=loop, name="bninfer-progress", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
            self.clear()


def _check_writable(path: str | None, what: str) -> None:
    """A user error now, before any work, when the file could not be written."""
    if not path:
        return
    p = Path(path).expanduser()
    if p.is_dir():
        raise UsageError(f"cannot write {what} {path}: it is a directory")
    parent = p.resolve().parent
    if not parent.is_dir():
        raise UsageError(f"cannot write {what} {path}: directory {parent} does not exist")


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _write_atomic(path: str, write: Any) -> int:
    """write(tmp_path) then rename over path (no half-written file on failure); returns the size."""
    target = Path(path).expanduser()
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.resolve().parent)
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # as open() would create it (mkstemp makes it 0600)
        write(tmp)
        os.replace(tmp, target)
    except OSError as e:
        raise UsageError(f"cannot write {path}: {e.strerror or e}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target.stat().st_size


# ------------------------------------------------------------------------------------------------
# Models and sessions (convert, run, inspect)
# ------------------------------------------------------------------------------------------------
@dataclass
class _Model:
    name: str      # for messages
    source: Any    # what InferenceSession takes: a path or the zoo model's bytes
    kind: str      # "onnx", "bninfer" or "zoo"
    desc: str


def _find_model(spec: str) -> _Model:
    from . import serialize

    path = Path(spec).expanduser()
    if path.is_dir():
        raise UsageError(f"model path is a directory, not a model file: {spec}")
    if path.is_file():
        try:
            with open(path, "rb") as f:
                head = f.read(4)
        except OSError as e:
            raise UsageError(f"cannot read {spec}: {e.strerror or e}") from None
        if head == serialize.MAGIC:
            return _Model(path.name, str(path), "bninfer", f".bninfer file {path}")
        return _Model(path.name, str(path), "onnx", f"ONNX file {path}")
    if spec.endswith((".onnx", ".bninfer")) or os.sep in spec or (os.altsep and os.altsep in spec):
        raise UsageError(f"model file not found: {spec}")
    zoo = _benchmarks_module("zoo")
    key = zoo.canonical_name(spec)
    if key is None:
        raise UsageError(f"unknown model {spec!r}: not an existing file and not a zoo model "
                         f"(zoo: {', '.join(zoo.ZOO)})")
    return _Model(key, zoo.build_bytes(key), "zoo", f"zoo: {zoo.DESCRIPTIONS.get(key, key)}")


def _open_session(model: _Model, progress: Progress | None = None, threads: int = 0,
                  profiling: bool = False, profile_prefix: str | None = None) -> Any:
    import bninfer

    so = bninfer.SessionOptions()
    so.intra_op_num_threads = threads
    if profiling:
        so.enable_profiling = True
        if profile_prefix:
            so.profile_file_prefix = profile_prefix
    try:
        with (progress or Progress(False)).ticking(f"bninfer: loading {model.name}"):
            return bninfer.InferenceSession(model.source, so)
    except bninfer.UnsupportedOperatorError as e:
        raise UsageError(f"bninfer cannot run {model.name}: {_one_line(e)}") from None
    except bninfer.BninferError as e:
        raise UsageError(f"cannot load {model.name}: {_one_line(e)}") from None
    except OSError as e:
        raise UsageError(f"cannot read {model.name}: {e.strerror or e}") from None


_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
           "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(int8)": "int8",
           "tensor(uint8)": "uint8", "tensor(bool)": "bool"}


def _dtype(arg: Any) -> str:
    return _DTYPES.get(arg.type, arg.type)


def _parse_dims(text: str, what: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(d) for d in text.replace("x", ",").split(",") if d.strip())
    except ValueError:
        dims = ()
    if not dims or any(d < 1 for d in dims):
        raise UsageError(f"{what}: expected positive integers separated by commas (like 1,3,224,224), "
                         f"got {text!r}")
    return dims


def _bind_shapes(sess: Any, specs: Sequence[str] | None) -> tuple[dict[str, tuple[int, ...]], list[str]]:
    """Input shapes from --shape NAME=1,3,224,224 (or just 1,3,224,224 for a one-input model); every
    other dynamic dimension is bound to 1. Returns the shapes and one note per bound dimension."""
    inputs = {a.name: a for a in sess.get_inputs()}
    given: dict[str, tuple[int, ...]] = {}
    for spec in specs or []:
        name, eq, dims = spec.rpartition("=")
        if not eq:
            if len(inputs) != 1:
                raise UsageError(f"--shape {spec}: the model has {len(inputs)} inputs "
                                 f"({', '.join(inputs)}); write --shape NAME=DIMS")
            name = next(iter(inputs))
        if name not in inputs:
            raise UsageError(f"--shape {spec}: unknown input name {name!r} (the model's inputs: "
                             f"{', '.join(inputs)})")
        given[name] = _parse_dims(dims, f"--shape {spec}")
    shapes: dict[str, tuple[int, ...]] = {}
    notes: list[str] = []
    for name, arg in inputs.items():
        declared = list(arg.shape)
        shape = given.get(name)
        if shape is None:
            shapes[name] = tuple(d if isinstance(d, int) else 1 for d in declared)
        else:
            if len(shape) != len(declared):
                raise UsageError(f"--shape {name}={','.join(map(str, shape))}: input {name!r} has rank "
                                 f"{len(declared)} (shape {_fmt_shape(declared)}), not {len(shape)}")
            for axis, (want, got) in enumerate(zip(declared, shape)):
                if isinstance(want, int) and want != got:
                    raise UsageError(f"--shape {name}={','.join(map(str, shape))}: dimension {axis} of "
                                     f"input {name!r} is fixed at {want} (shape {_fmt_shape(declared)})")
            shapes[name] = shape
        for axis, d in enumerate(declared):
            if not isinstance(d, int):
                example = ",".join(str(x) if isinstance(x, int) else "N" for x in declared)
                how = "from --shape" if name in given else f"default; choose with --shape {name}={example}"
                notes.append(f"input {name!r}: dynamic dimension {axis} ({d!r}) bound to "
                             f"{shapes[name][axis]} ({how})")
    return shapes, notes


def _plan(sess: Any, shapes: dict[str, tuple[int, ...]], model: _Model) -> None:
    """Optimize and plan the session for these input shapes (no kernel runs)."""
    import bninfer

    try:
        sess._plan_for(shapes)
    except bninfer.BninferError as e:
        bound = ", ".join(f"{n}={_fmt_shape(s)}" for n, s in shapes.items())
        raise UsageError(f"cannot optimize {model.name} for input shapes {bound}: {_one_line(e)}") from None


def _bn_fate(line: str) -> str:
    if "folded into the weights" in line:
        return "folded into weights"
    if "prologue" in line:
        return "in a prologue"
    if "epilogue" in line:
        return "in an epilogue"
    if "kept as" in line:
        return "kept as a scale+shift kernel"
    return "other"


def _summary(report: Any) -> str:
    """'21 -> 10 nodes; BatchNormalization 5: 2 folded into weights, ...; 7 fused chains; ...'"""
    parts = [f"{sum(report.nodes_before.values())} -> {sum(report.nodes_after.values())} nodes"]
    if report.batchnorms:
        fates = Counter(_bn_fate(s) for s in report.batchnorms)
        parts.append(f"BatchNormalization {len(report.batchnorms)}: "
                     + ", ".join(f"{n} {fate}" for fate, n in fates.most_common()))
    else:
        parts.append("no BatchNormalization")
    parts.append(f"{len(report.fusions)} fused chain{'s' if len(report.fusions) != 1 else ''}")
    if report.eliminated:
        ops = Counter(s.split()[0] for s in report.eliminated)
        parts.append(f"{len(report.eliminated)} eliminated ("
                     + ", ".join(f"{op} {n}" for op, n in sorted(ops.items())) + ")")
    return "; ".join(parts)


def _print_io(sess: Any, shapes: dict[str, tuple[int, ...]] | None, notes: Sequence[str], out: Any) -> None:
    for a in sess.get_inputs():
        bound = ""
        if shapes is not None and list(shapes[a.name]) != list(a.shape):
            bound = f" -> bound to {_fmt_shape(shapes[a.name])}"
        print(f"input       {a.name}: {_dtype(a)} {_fmt_shape(a.shape)}{bound}", file=out)
    for a in sess.get_outputs():
        print(f"output      {a.name}: {_dtype(a)} {_fmt_shape(a.shape)}", file=out)
    for note in notes:
        print(f"note        {note}", file=out)


# ------------------------------------------------------------------------------------------------
# convert
# ------------------------------------------------------------------------------------------------
def _cmd_convert(args: argparse.Namespace) -> int:
    import bninfer

    if args.output is None and args.onnx is None:
        args.output = (Path(args.model).stem if Path(args.model).suffix else args.model) + ".bninfer"
    if args.output is not None and args.output.endswith(".onnx"):
        raise UsageError(f"-o writes the .bninfer format; for standard ONNX use --onnx {args.output}")
    _check_writable(args.output, "output file")
    _check_writable(args.onnx, "--onnx file")
    model = _find_model(args.model)
    for target in (args.output, args.onnx):
        if target and model.kind != "zoo" and \
                Path(target).expanduser().resolve() == Path(model.source).resolve():
            raise UsageError(f"refusing to overwrite the model itself ({target}); choose another output name")
    progress = Progress(not args.quiet)
    sess = _open_session(model, progress)
    shapes, notes = _bind_shapes(sess, args.shape)
    _plan(sess, shapes, model)
    out = sys.stdout
    print(f"model       {model.name} ({model.desc})", file=out)
    _print_io(sess, shapes, notes, out)
    report = sess.optimization_report()
    print(f"optimized   {_summary(report)}", file=out)
    for line in report.batchnorms:
        print(f"  {line}", file=out)
    graph = sess.optimized_graph()
    if args.output is not None:
        size = _write_atomic(args.output, sess.save_optimized)
        print(f"wrote       {args.output} (.bninfer, {_fmt_bytes(size)}, {len(graph.nodes)} nodes)", file=out)
    if args.onnx is not None:
        import onnx

        from converters.onnx.export import OPSET, to_onnx
        try:
            proto = to_onnx(graph)
        except bninfer.BninferError as e:
            raise UsageError(f"cannot export {model.name} to ONNX: {_one_line(e)}") from None
        size = _write_atomic(args.onnx, lambda p: onnx.save(proto, p))
        ops = Counter(n.op_type for n in proto.graph.node)
        left = [f"{op} {ops[op]}" for op in ("BatchNormalization", "Dropout") if ops[op]]
        print(f"wrote       {args.onnx} (ONNX opset {OPSET}, {_fmt_bytes(size)}, {len(proto.graph.node)} "
              f"nodes; {'left: ' + ', '.join(left) if left else 'no BatchNormalization or Dropout'})",
              file=out)
    return 0


# ------------------------------------------------------------------------------------------------
# run
# ------------------------------------------------------------------------------------------------
def _load_array_file(path: str) -> Any:
    """An .npy array or an .npz archive (allow_pickle=False); a user error when unreadable."""
    import numpy as np

    p = Path(path).expanduser()
    if p.is_dir():
        raise UsageError(f"--input {path}: is a directory, not an .npy file")
    if not p.is_file():
        raise UsageError(f"--input {path}: file not found")
    try:
        data = np.load(str(p), allow_pickle=False)
        if isinstance(data, np.lib.npyio.NpzFile):
            with data:
                return {k: data[k] for k in data.files}
        return data
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, KeyError) as e:
        raise UsageError(f"--input {path}: not a readable .npy/.npz file ({_one_line(e)})") from None


def _read_inputs(specs: Sequence[str], names: list[str]) -> tuple[dict[str, Any], dict[str, str]]:
    """--input values -> (feeds, where each came from). Forms: NAME=FILE.npy, FILE.npy (a one-input
    model) and FILE.npz (arrays whose keys are input names; other keys are ignored)."""
    import numpy as np

    feeds: dict[str, Any] = {}
    origin: dict[str, str] = {}

    def put(name: str, array: Any, where: str) -> None:
        if name in feeds:
            raise UsageError(f"input {name!r} is given twice ({origin[name]} and {where})")
        feeds[name], origin[name] = array, where

    for spec in specs:
        name, eq, path = spec.partition("=")
        if eq and not Path(spec).expanduser().is_file():
            if name not in names:
                raise UsageError(f"--input {spec}: unknown input name {name!r} (the model's inputs: "
                                 f"{', '.join(names)})")
            data = _load_array_file(path)
            if isinstance(data, dict):
                if name in data:
                    data = data[name]
                elif len(data) == 1:
                    data = next(iter(data.values()))
                else:
                    raise UsageError(f"--input {spec}: the .npz file has no array named {name!r} "
                                     f"(it has {', '.join(data) or 'none'})")
            put(name, data, path)
            continue
        data = _load_array_file(spec)
        if isinstance(data, dict):
            found = [k for k in data if k in names]
            if not found and len(names) == 1 and len(data) == 1:
                found = list(data)
                data = {names[0]: next(iter(data.values()))}
            if not found:
                raise UsageError(f"--input {spec}: no array in the .npz file is named after an input "
                                 f"(arrays: {', '.join(data) or 'none'}; inputs: {', '.join(names)})")
            for k in (k for k in data if k in names):
                put(k, data[k], f"{spec}[{k}]")
            continue
        free = [n for n in names if n not in feeds]
        if len(names) != 1 or not free:
            raise UsageError(f"--input {spec}: the model has {len(names)} inputs ({', '.join(names)}); "
                             f"write --input NAME={spec}")
        put(free[0], data, spec)
    for name, a in feeds.items():
        if not isinstance(a, np.ndarray):
            raise UsageError(f"input {name!r} from {origin[name]} is not an array")
    return feeds, origin


def _random_input(shape: tuple[int, ...], dtype: str, rng: Any) -> Any:
    import numpy as np

    dt = np.dtype(dtype)
    if dt.kind == "f":
        return rng.standard_normal(shape).astype(dt)
    if dt.kind == "b":
        return rng.random(shape) < 0.5
    return rng.integers(0, 10, size=shape).astype(dt)


def _output_lines(name: str, y: Any) -> list[str]:
    import numpy as np

    head = f"output      {name}: {y.dtype} {_fmt_shape(y.shape)}"
    if y.size == 0:
        return [head + "  (empty)"]
    if y.dtype.kind in "fiub":
        v = y.astype(np.float64)
        finite = np.isfinite(v)
        stats = v[finite] if not finite.all() else v
        line = head
        if stats.size:
            line += f"  min {stats.min():.6g}  max {stats.max():.6g}  mean {stats.mean():.6g}"
        if not finite.all():
            line += f"  ({int((~finite).sum())} non-finite)"
        lines = [line]
        if y.ndim == 2 and y.shape[0] == 1 and y.shape[1] >= 2:
            row = v[0]
            order = np.argsort(-np.where(np.isnan(row), -np.inf, row), kind="stable")[:5]
            lines.append(f"            top-{len(order)} (index, value): "
                         + ", ".join(f"({int(i)}, {row[i]:.6g})" for i in order))
        return lines
    return [head]


def _cmd_run(args: argparse.Namespace) -> int:
    import numpy as np

    import bninfer

    if args.output is not None:
        _check_writable(args.output, "--output file")
    model = _find_model(args.model)
    progress = Progress(not args.quiet)
    sess = _open_session(model, progress)
    names = [a.name for a in sess.get_inputs()]
    feeds, origin = _read_inputs(args.input or [], names)
    missing = [n for n in names if n not in feeds]
    if missing and args.input and not args.random:
        raise UsageError(f"missing input(s) {', '.join(missing)}: give --input NAME=FILE.npy for each, "
                         f"or --random to fill them with random values")
    if missing:
        shapes, notes = _bind_shapes(sess, args.shape)
        rng = np.random.default_rng(args.seed)
        args_by_name = {a.name: a for a in sess.get_inputs()}
        for n in missing:
            feeds[n] = _random_input(shapes[n], _dtype(args_by_name[n]), rng)
            origin[n] = f"random, seed {args.seed}"
        notes = [note for note in notes if any(note.startswith(f"input {n!r}:") for n in missing)]
    elif args.shape:
        raise UsageError("--shape only applies to random inputs; the input files give every shape")
    else:
        notes = []
    out = sys.stdout
    print(f"model       {model.name} ({model.desc})", file=out)
    for n in names:
        a = feeds[n]
        print(f"input       {n}: {a.dtype} {_fmt_shape(a.shape)} ({origin[n]})", file=out)
    for note in notes:
        print(f"note        {note}", file=out)
    out.flush()
    try:
        with progress.ticking("bninfer: first run (compiling kernels)"):
            t0 = time.perf_counter()
            outputs = sess.run(None, feeds)
            t1 = time.perf_counter()
    except (bninfer.InputError, bninfer.InputTypeError) as e:
        hint = ""
        if isinstance(e, bninfer.InputTypeError) and "dtype" in str(e):
            hint = " (convert the array, e.g. np.save(path, x.astype(np.float32)))"
        raise UsageError(f"the input does not fit {model.name}: {e}{hint}") from None
    except bninfer.BninferError as e:
        raise UsageError(f"bninfer cannot run {model.name} on this input: {_one_line(e)}") from None
    for meta, y in zip(sess.get_outputs(), outputs):
        for line in _output_lines(meta.name, y):
            print(line, file=out)
    print(f"time        {_fmt_s(t1 - t0)} (first run: includes kernel compilation or cache load)", file=out)
    if args.output is not None:
        arrays = {meta.name: y for meta, y in zip(sess.get_outputs(), outputs)}

        def write(path: str) -> None:
            with open(path, "wb") as f:
                np.savez(f, **arrays)

        size = _write_atomic(args.output, write)
        print(f"wrote       {args.output} ({len(arrays)} array{'s' if len(arrays) != 1 else ''}: "
              f"{', '.join(arrays)}; {_fmt_bytes(size)})", file=out)
    return 0


# ------------------------------------------------------------------------------------------------
# inspect
# ------------------------------------------------------------------------------------------------
def _cmd_inspect(args: argparse.Namespace) -> int:
    from . import dot, passes, profiling
    from .session import GraphOptimizationLevel

    _check_writable(args.dot, "--dot file")
    _check_writable(args.svg, "--svg file")
    dot_program = shutil.which("dot") if args.svg else None
    if args.svg and dot_program is None and args.dot is None:
        # --svg was the only file asked for and cannot be made: fail before doing any work.
        raise UsageError(f"cannot write --svg {args.svg}: the Graphviz 'dot' program is not installed "
                         f"(install graphviz, or write the DOT text with --dot FILE)")
    model = _find_model(args.model)
    progress = Progress(not args.quiet)
    sess = _open_session(model, progress)
    shapes, notes = _bind_shapes(sess, args.shape)
    _plan(sess, shapes, model)
    prebuilt = model.kind == "bninfer"
    out = sys.stdout
    print(f"model       {model.name} ({model.desc})", file=out)
    _print_io(sess, shapes, notes, out)
    out.flush()
    with progress.ticking("bninfer: measuring the optimized against the unoptimized graph"):
        report = sess.optimization_report(measure=not prebuilt)
    after = sess.optimized_graph()
    before = None
    if not prebuilt:
        before, _ = passes.optimize(sess._graph, shapes, GraphOptimizationLevel.ORT_DISABLE_ALL)

    ops = sorted(set(report.nodes_before) | set(report.nodes_after))
    width = max([len("total")] + [len(op) for op in ops]) + 2
    print(f"nodes       {'op':<{width}}{'before':>7}{'after':>7}", file=out)
    for op in ops:
        n_before, n_after = report.nodes_before.get(op, 0), report.nodes_after.get(op, 0)
        print(f"            {op:<{width}}{n_before:>7}{n_after:>7}", file=out)
    print(f"            {'total':<{width}}{sum(report.nodes_before.values()):>7}"
          f"{sum(report.nodes_after.values()):>7}", file=out)
    chains = Counter(profiling.op_chain(n) for n in after.nodes)
    fused = {c: k for c, k in chains.items() if any(s in c for s in (">", "+"))}
    if fused:
        ranked = sorted(fused.items(), key=lambda x: -x[1])
        print("kernels     fused: " + ", ".join(f"{c} {k}" for c, k in ranked), file=out)
    print(f"summary     {_summary(report)}", file=out)
    for title, items in (("BatchNormalization", report.batchnorms), ("fused chains", report.fusions),
                         ("eliminated", report.eliminated)):
        print(f"{title} ({len(items)})" + (":" if items else ""), file=out)
        for line in items:
            print(f"  {line}", file=out)
    if prebuilt:
        print("deviation   not measured: a .bninfer file holds only the optimized graph", file=out)
    else:
        print(f"deviation   largest |optimized - unoptimized| on a random N(0, 1) input (seed 0): "
              f"{report.max_deviation:.3g}", file=out)
    if args.dot or args.svg:
        text = dot.to_dot_pair(before, after, ("before: unoptimized, constants folded", "after: optimized"))
        if prebuilt:
            print("note        the .bninfer file has no unoptimized graph: the DOT shows the optimized "
                  "graph only", file=out)
        if args.dot:
            size = _write_atomic(args.dot, lambda p: Path(p).write_text(text))
            print(f"wrote       {args.dot} (Graphviz DOT, {_fmt_bytes(size)}; render with "
                  f"dot -Tsvg {args.dot} -o graph.svg)", file=out)
        if args.svg:
            if dot_program is None:
                out.flush()
                print(f"{PROG} inspect: warning: --svg {args.svg} not written: the Graphviz 'dot' program "
                      f"is not installed (the DOT text is in {args.dot})", file=sys.stderr)
            else:
                def render(path: str) -> None:
                    try:
                        p = subprocess.run([dot_program, "-Tsvg", "-o", path], input=text.encode(),
                                           capture_output=True, timeout=600)
                    except (OSError, subprocess.TimeoutExpired) as e:
                        raise UsageError(f"cannot run {dot_program}: {_one_line(e)}") from None
                    if p.returncode != 0:
                        msg = (p.stderr.decode(errors="replace").strip().splitlines() or ["no message"])[0]
                        raise UsageError(f"{dot_program} failed (exit {p.returncode}): {msg}")

                size = _write_atomic(args.svg, render)
                print(f"wrote       {args.svg} (SVG, {_fmt_bytes(size)})", file=out)
    return 0


# ------------------------------------------------------------------------------------------------
# bench
# ------------------------------------------------------------------------------------------------
def _resolve_model(spec: str | None) -> tuple[str, Any, Any, str]:
    """(display name, source for the engines, onnx.ModelProto for metadata, description)."""
    import onnx

    from . import serialize

    if spec is None:
        zoo = _benchmarks_module("zoo")
        spec = zoo.DEFAULT_MODEL
    path = Path(spec).expanduser()
    if path.is_dir():
        raise UsageError(f"model path is a directory, not an .onnx file: {spec}")
    if path.is_file():
        if serialize.is_bninfer(str(path)):
            raise UsageError(f"{spec} is a .bninfer file: bench needs the .onnx model (onnxruntime runs "
                             f"it too); time the .bninfer file with 'bninfer run'")
        try:
            proto = onnx.load(str(path), load_external_data=False)
        except Exception as e:  # noqa: BLE001 - protobuf raises several types
            raise UsageError(f"cannot read {spec} as an ONNX model: {_one_line(e)}") from None
        if not proto.graph.node:
            raise UsageError(f"cannot read {spec} as an ONNX model: the graph has no nodes")
        return path.name, str(path), proto, f"file {path}"
    if spec.endswith(".onnx") or os.sep in spec or (os.altsep and os.altsep in spec):
        raise UsageError(f"model file not found: {spec}")
    zoo = _benchmarks_module("zoo")
    key = zoo.canonical_name(spec)
    if key is None:
        raise UsageError(f"unknown model {spec!r}: not an existing file and not a zoo model "
                         f"(zoo: {', '.join(zoo.ZOO)})")
    data = zoo.build_bytes(key)
    proto = onnx.ModelProto()
    proto.ParseFromString(data)
    return key, data, proto, f"zoo: {zoo.DESCRIPTIONS.get(key, key)}"


def _load_timed(compare: ModuleType, engine: str, source: Any, feeds: dict, threads: int,
                progress: Progress) -> Any:
    """compare.load with a counter on stderr while it loads, plans and compiles."""
    label = "bninfer: loading, optimizing, compiling kernels" if engine == "bninfer" else f"{engine}: loading"
    with progress.ticking(label):
        return compare.load(engine, source, feeds, threads)


def _profile(args: argparse.Namespace, name: str, source: Any, feeds: dict, progress: Progress,
             out: Any) -> list[dict]:
    """Run a profiling session (a separate one: per-kernel timing costs a little per call, so the
    latency numbers above come from an unprofiled session) and print the per-kernel table."""
    import bninfer

    tmpdir = tempfile.mkdtemp(prefix="bninfer-trace-")
    try:
        model = _Model(name, source, "onnx", "")
        sess = _open_session(model, progress, threads=args.threads, profiling=True,
                             profile_prefix=os.path.join(tmpdir, "profile"))
        prof = sess.profiler()
        try:
            for k in range(max(1, args.warmup)):
                progress.show(f"profile: warm-up {k + 1}/{max(1, args.warmup)}")
                sess.run(None, feeds)
            prof.events.clear()  # the table and the trace hold the profiled runs only
            for k in range(args.runs):
                if k % 5 == 0:
                    progress.show(f"profile: run {k + 1}/{args.runs}")
                sess.run(None, feeds)
        except bninfer.BninferError as e:
            raise UsageError(f"bninfer cannot run {name}: {_one_line(e)}") from None
        finally:
            progress.clear()
        rows = prof.table()
        runs = [e["dur"] for e in prof.events if e.get("cat") == "Session"]
        kernel_total = sum(r["mean_us"] for r in rows)
        mu = _micro()
        run_mean = sum(runs) / len(runs) if runs else 0.0
        print(f"profile     per kernel, mean over {args.runs} profiled runs, slowest first; kernels "
              f"{kernel_total:.1f} {mu} of {run_mean:.1f} {mu} per run", file=out)
        nw = min(40, max([len("node")] + [len(r["node"]) for r in rows]))
        cw = min(32, max([len("fused ops")] + [len(r["fused_ops"]) for r in rows]))
        print(f"  {'node':<{nw}}  {'fused ops':<{cw}}{'mean ' + mu:>12}{'GFLOP/s':>10}{'share':>8}", file=out)
        for r in rows:
            node = r["node"] if len(r["node"]) <= nw else "..." + r["node"][-(nw - 3):]
            chain = r["fused_ops"] if len(r["fused_ops"]) <= cw else r["fused_ops"][:cw - 3] + "..."
            gf = f"{r['gflops']:.1f}" if r["macs"] else "-"
            share = 100.0 * r["mean_us"] / kernel_total if kernel_total > 0 else 0.0
            print(f"  {node:<{nw}}  {chain:<{cw}}{r['mean_us']:>12.1f}{gf:>10}{share:>7.1f}%", file=out)
        if args.trace:
            path = sess.end_profiling()
            try:
                size = _write_atomic(args.trace, lambda p: shutil.copyfile(path, p))
            finally:
                os.unlink(path)
            print(f"trace       {args.trace} (Chrome trace JSON, {_fmt_bytes(size)}; open in "
                  f"chrome://tracing or ui.perfetto.dev)", file=out)
        return rows
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def _cmd_bench(args: argparse.Namespace) -> int:
    import random

    if args.json:
        parent = Path(args.json).expanduser().resolve().parent
        if not parent.is_dir():
            raise UsageError(f"cannot write --json file {args.json}: directory {parent} does not exist")
    if args.trace:
        args.profile = True
        _check_writable(args.trace, "--trace file")
    progress = Progress(not args.quiet)
    name, source, proto, desc = _resolve_model(args.model)
    zoo = _benchmarks_module("zoo")
    compare = _benchmarks_module("compare")
    feeds = zoo.input_for(proto, seed=0)
    try:
        macs = zoo.macs(proto)
    except Exception:  # noqa: BLE001 - MACs are informational only
        macs = 0

    out = sys.stdout
    print(f"model       {name} ({desc})" + (f", {_fmt_macs(macs)} MACs" if macs else ""), file=out)
    for n, a in feeds.items():
        print(f"input       {n}: {a.dtype} {_fmt_shape(a.shape)}", file=out)
    rounds = compare.default_rounds(args.runs)
    print(f"settings    threads {args.threads}, warm-up {args.warmup}, runs {args.runs} "
          f"(interleaved in {rounds} shuffled rounds)", file=out, flush=True)

    import bninfer

    try:
        ours = _load_timed(compare, "bninfer", source, feeds, args.threads, progress)
    except bninfer.BninferError as e:
        raise UsageError(f"bninfer cannot run {name}: {_one_line(e)}") from None
    print(f"bninfer     load+plan {_fmt_s(ours.load_s)}, first run {_fmt_s(ours.first_run_s)} "
          f"(includes kernel compilation or cache load)", file=out, flush=True)
    for o, meta in zip(ours.outputs, ours.session.get_outputs()):
        print(f"output      {meta.name}: {o.dtype} {_fmt_shape(o.shape)}", file=out)
    runners = [ours]
    if not args.no_compare:
        if not compare.ort_available():
            print("onnxruntime not installed: timing bninfer only", file=out)
        else:
            try:
                ref = _load_timed(compare, "onnxruntime", source, feeds, args.threads, progress)
            except Exception as e:  # noqa: BLE001 - the comparison is optional
                print(f"onnxruntime could not run the model ({_one_line(e)}): timing bninfer only",
                      file=out)
            else:
                print(f"onnxruntime load {_fmt_s(ref.load_s)}, first run {_fmt_s(ref.first_run_s)}", file=out)
                runners.append(ref)
    out.flush()
    # Warm-up here (shuffled and interleaved, as compare.time_interleaved does it) to show a counter.
    rng, order = random.Random(0), list(runners)
    try:
        for k in range(args.warmup):
            progress.show(f"warm-up {k + 1}/{args.warmup}")
            rng.shuffle(order)
            for r in order:
                r.call()
        progress.show(f"timing {args.runs} runs per engine in {rounds} rounds")
        timings = compare.time_interleaved(runners, args.runs, 0, rounds)
    finally:
        progress.clear()
    result = compare.summarize(name, args.threads, runners, timings, macs or None)
    if "bninfer" in result.max_abs_diff:
        absd, reld = result.max_abs_diff["bninfer"], result.max_rel_diff["bninfer"]
        flag = "" if reld <= 1e-3 else "   WARNING: outputs differ"
        print(f"outputs     max |bninfer - onnxruntime| = {absd:.3g} (relative {reld:.3g}){flag}", file=out)
    print(result.report(), file=out, flush=True)

    rows = _profile(args, name, source, feeds, progress, out) if args.profile else None

    if args.json:
        doc = result.to_json()
        doc.update(source=desc, warmup=args.warmup, runs=args.runs, rounds=rounds,
                   inputs={n: {"dtype": str(a.dtype), "shape": list(a.shape)} for n, a in feeds.items()},
                   bninfer_version=getattr(bninfer, "__version__", None))
        if rows is not None:
            doc["profile"] = rows
        try:
            Path(args.json).expanduser().write_text(json.dumps(doc, indent=1) + "\n")
        except OSError as e:
            raise UsageError(f"cannot write --json file {args.json}: {e.strerror or e}") from None
        print(f"json        written to {args.json}", file=out)
    return 0


# ------------------------------------------------------------------------------------------------
# parser and entry point
# ------------------------------------------------------------------------------------------------
_MODEL_HELP = "an .onnx file, a .bninfer file or a zoo model name"


def _add_shape(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--shape", action="append", metavar="NAME=DIMS",
                   help=f"bind an input's shape {what}, e.g. --shape input=1,3,224,224 (repeat per input; "
                        f"NAME= may be left out for a one-input model); other dynamic dimensions are 1")


def _add_quiet(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quiet", "-q", action="store_true",
                   help="no progress counter on stderr (it is shown only when stderr is a terminal)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="bninfer: a batch-1 CPU inference engine for ONNX models.",
                     epilog="Exit codes: 0 success, 2 user error, 1 internal error, 130 interrupted.")
    parser.add_argument("--version", action="version", version=f"{PROG} {_version()}")
    parser.add_argument("--traceback", action="store_true",
                        help="on errors, show the Python traceback instead of one line")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    bench = sub.add_parser(
        "bench", help="measure latency (p50/p90/p99) against onnxruntime",
        description="Measure batch-1 latency of bninfer and, beside it, onnxruntime on the same model "
                    "and input, interleaved in shuffled rounds in one process.")
    bench.add_argument("model", nargs="?", metavar="MODEL",
                       help="an .onnx file or a zoo model name (default: the MNIST CNN)")
    bench.add_argument("--threads", type=_positive_int, default=1, metavar="N",
                       help="intra-op threads for both engines (default 1)")
    bench.add_argument("--runs", type=_positive_int, default=100, metavar="N",
                       help="timed runs per engine (default 100)")
    bench.add_argument("--warmup", type=_non_negative_int, default=10, metavar="N",
                       help="untimed runs per engine before timing (default 10)")
    bench.add_argument("--no-compare", action="store_true", help="time bninfer only")
    bench.add_argument("--json", metavar="FILE", help="also write the results (all timings) as JSON")
    bench.add_argument("--profile", action="store_true",
                       help="then time every kernel in a profiling session (the same number of runs) and "
                            "print the per-kernel table, slowest first")
    bench.add_argument("--trace", metavar="FILE",
                       help="write the profile as Chrome-trace JSON (chrome://tracing, Perfetto); "
                            "implies --profile")
    _add_quiet(bench)
    bench.set_defaults(func=_cmd_bench)

    convert = sub.add_parser(
        "convert", help="save the optimized (folded, fused) graph as .bninfer and/or ONNX",
        description="Optimize a model once and save the result: the .bninfer format (loads with no "
                    "optimization work; bninfer.InferenceSession reads it) and/or standard ONNX with the "
                    "BatchNormalizations folded (onnxruntime runs it). Both are specialised to the bound "
                    "input shapes. Without -o and --onnx, writes MODEL.bninfer in the current directory.")
    convert.add_argument("model", metavar="MODEL", help=_MODEL_HELP)
    convert.add_argument("-o", "--output", metavar="OUT.bninfer", help="write the .bninfer file here")
    convert.add_argument("--onnx", metavar="OUT.onnx", help="write the optimized graph as standard ONNX here")
    _add_shape(convert, "before optimizing")
    _add_quiet(convert)
    convert.set_defaults(func=_cmd_convert)

    run = sub.add_parser(
        "run", help="run a model once and summarize (or save) its outputs",
        description="Run a model on inputs from .npy/.npz files or on random inputs, and print each output's "
                    "shape, dtype, min/max/mean and, for a (1, C) output, the top 5 (index, value).")
    run.add_argument("model", metavar="MODEL", help=_MODEL_HELP)
    run.add_argument("--input", "-i", action="append", metavar="[NAME=]FILE",
                     help="an input array: FILE.npy for a one-input model, NAME=FILE.npy per input, or "
                          "FILE.npz holding arrays named after the inputs (repeatable)")
    run.add_argument("--random", action="store_true",
                     help="fill every input not given with --input with seeded random values (N(0, 1) "
                          "for float inputs); the default when no --input is given")
    run.add_argument("--seed", type=_non_negative_int, default=0, metavar="N",
                     help="seed of the random inputs (default 0)")
    _add_shape(run, "for random inputs")
    run.add_argument("--output", "-o", metavar="OUT.npz", help="save the outputs, by name, to an .npz file")
    _add_quiet(run)
    run.set_defaults(func=_cmd_run)

    inspect = sub.add_parser(
        "inspect", help="inputs, outputs, node counts, what became of every BatchNormalization, graphs",
        description="Show a model's inputs and outputs, node counts by op before and after optimization, "
                    "what became of every BatchNormalization, every fused chain, and the largest deviation "
                    "of the optimized from the unoptimized graph on a random input; optionally write both "
                    "graphs as Graphviz DOT (--dot) or SVG (--svg, needs the Graphviz 'dot' program: "
                    "without it --svg alone is an error, and beside --dot a warning).")
    inspect.add_argument("model", metavar="MODEL", help=_MODEL_HELP)
    inspect.add_argument("--dot", metavar="FILE", help="write the graph before and after as Graphviz DOT")
    inspect.add_argument("--svg", metavar="FILE", help="render the same with Graphviz 'dot' to SVG")
    _add_shape(inspect, "before optimizing")
    _add_quiet(inspect)
    inspect.set_defaults(func=_cmd_inspect)
    return parser


def _version() -> str:
    try:
        from . import __version__
        return __version__
    except Exception:  # noqa: BLE001
        return "unknown"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    show_tb = "--traceback" in argv
    prog = PROG
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            raise UsageError(f"missing command (commands: {', '.join(COMMANDS)}; see '{PROG} --help')")
        prog = f"{PROG} {args.command}"
        return int(args.func(args) or 0)
    except SystemExit as e:  # --help, --version
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    except UsageError as e:
        if show_tb:
            traceback.print_exc()
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 1
    except Exception as e:  # noqa: BLE001 - never show a traceback unless asked
        if show_tb:
            traceback.print_exc()
        print(f"{prog}: internal error: {_one_line(e)} (rerun with '{PROG} --traceback ...' for "
              f"details)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
