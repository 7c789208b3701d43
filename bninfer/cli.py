"""The `bninfer` command line.

    bninfer bench [MODEL] [--threads N] [--runs N] [--warmup N] [--no-compare] [--json FILE]

MODEL is an .onnx file or the name of a model in the benchmark zoo (benchmarks/zoo.py); without it the
built-in default (the MNIST CNN) is used. Exit codes: 0 success, 2 user error (bad arguments, missing
or unreadable model, a model bninfer cannot run), 1 internal error, 130 interrupted. Every error is one
line on stderr (`--traceback` before the subcommand shows the Python traceback instead).
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import sys
import traceback
from pathlib import Path
from types import ModuleType
from typing import Any, Sequence

PROG = "bninfer"


class UsageError(Exception):
    """A user error: reported as one line on stderr, exit code 2."""


class _Parser(argparse.ArgumentParser):
    """argparse that reports errors as one line (raising UsageError) instead of usage + exit."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message} (see '{self.prog} --help')")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}")
    return value


# ------------------------------------------------------------------------------------------------
# The benchmark helpers live in benchmarks/ at the repository root (next to the bninfer package);
# that directory is not part of the installed distribution, so load it from the checkout.
# ------------------------------------------------------------------------------------------------
def _benchmarks_module(name: str) -> ModuleType:
    """benchmarks.<name> (zoo or compare), from the checkout this bninfer was imported from."""
    full = f"benchmarks.{name}"
    pkg = sys.modules.get("benchmarks")
    if pkg is None:
        root = Path(__file__).resolve().parent.parent / "benchmarks"
        init = root / "__init__.py"
        if init.is_file():
            spec = importlib.util.spec_from_file_location("benchmarks", init,
                                                          submodule_search_locations=[str(root)])
            assert spec is not None and spec.loader is not None
            pkg = importlib.util.module_from_spec(spec)
            sys.modules["benchmarks"] = pkg
            spec.loader.exec_module(pkg)
    try:
        return importlib.import_module(full)
    except ImportError as e:
        raise UsageError(f"the benchmark helpers ({full}) are not available in this installation "
                         f"({e}); run bninfer from a source checkout") from None


# ------------------------------------------------------------------------------------------------
# bench
# ------------------------------------------------------------------------------------------------
def _resolve_model(spec: str | None) -> tuple[str, Any, Any, str]:
    """(display name, source for the engines, onnx.ModelProto for metadata, description)."""
    import onnx

    if spec is None:
        zoo = _benchmarks_module("zoo")
        spec = zoo.DEFAULT_MODEL
    path = Path(spec).expanduser()
    if path.is_dir():
        raise UsageError(f"model path is a directory, not an .onnx file: {spec}")
    if path.is_file():
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


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    if len(text) > 400:
        text = text[:397] + "..."
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _fmt_shape(shape: Sequence) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _fmt_macs(m: int) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if m >= div:
            return f"{m / div:.2f} {unit}"
    return str(m)


def _fmt_s(seconds: float) -> str:
    return f"{seconds:.2f} s" if seconds >= 1 else f"{seconds * 1e3:.1f} ms"


def _cmd_bench(args: argparse.Namespace) -> int:
    if args.json:
        parent = Path(args.json).expanduser().resolve().parent
        if not parent.is_dir():
            raise UsageError(f"cannot write --json file {args.json}: directory {parent} does not exist")
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
        ours = compare.load("bninfer", source, feeds, args.threads)
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
                ref = compare.load("onnxruntime", source, feeds, args.threads)
            except Exception as e:  # noqa: BLE001 - the comparison is optional
                print(f"onnxruntime could not run the model ({_one_line(e)}): timing bninfer only",
                      file=out)
            else:
                print(f"onnxruntime load {_fmt_s(ref.load_s)}, first run {_fmt_s(ref.first_run_s)}", file=out)
                runners.append(ref)
    timings = compare.time_interleaved(runners, args.runs, args.warmup, rounds)
    result = compare.summarize(name, args.threads, runners, timings, macs or None)
    if "bninfer" in result.max_abs_diff:
        absd, reld = result.max_abs_diff["bninfer"], result.max_rel_diff["bninfer"]
        flag = "" if reld <= 1e-3 else "   WARNING: outputs differ"
        print(f"outputs     max |bninfer - onnxruntime| = {absd:.3g} (relative {reld:.3g}){flag}", file=out)
    print(result.report(), file=out, flush=True)

    if args.json:
        doc = result.to_json()
        doc.update(source=desc, warmup=args.warmup, runs=args.runs, rounds=rounds,
                   inputs={n: {"dtype": str(a.dtype), "shape": list(a.shape)} for n, a in feeds.items()},
                   bninfer_version=getattr(bninfer, "__version__", None))
        try:
            Path(args.json).expanduser().write_text(json.dumps(doc, indent=1) + "\n")
        except OSError as e:
            raise UsageError(f"cannot write --json file {args.json}: {e.strerror or e}") from None
        print(f"json        written to {args.json}", file=out)
    return 0


# ------------------------------------------------------------------------------------------------
# parser and entry point
# ------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="bninfer: a batch-1 CPU inference engine for ONNX models.")
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
    bench.set_defaults(func=_cmd_bench)

    # ---- PLACEHOLDER: subcommands not registered yet (the lead adds them here) -----------------
    # convert  (save an optimized graph for a short cold start)
    # run      (run a model on given inputs, print/save outputs)
    # inspect  (graph summary, optimization report, unsupported ops)
    # Until they are registered, `bninfer convert` is an argparse "invalid choice" error (exit 2).
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
            raise UsageError(f"missing command (commands: bench; see '{PROG} --help')")
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
