"""InferenceSession: a drop-in for onnxruntime's. Load -> optimize -> plan -> run."""
from __future__ import annotations

import enum
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from . import passes, serialize
from .errors import BninferError, InputError, InputTypeError, ModelError
from .ir import Graph
from .plan import Plan
from .threads import RunThreads


class GraphOptimizationLevel(enum.IntEnum):
    ORT_DISABLE_ALL = 0
    ORT_ENABLE_BASIC = 1
    ORT_ENABLE_EXTENDED = 2
    ORT_ENABLE_ALL = 99


class ExecutionMode(enum.IntEnum):
    ORT_SEQUENTIAL = 0
    ORT_PARALLEL = 1


class SessionOptions:
    """The onnxruntime SessionOptions fields that bninfer honours (others are accepted and ignored)."""

    def __init__(self) -> None:
        self.intra_op_num_threads: int = 0
        self.inter_op_num_threads: int = 0
        self.graph_optimization_level: GraphOptimizationLevel = GraphOptimizationLevel.ORT_ENABLE_ALL
        self.optimized_model_filepath: str = ""
        self.enable_profiling: bool = False
        self.profile_file_prefix: str = "bninfer_profile"
        self.log_severity_level: int = 2
        self.execution_mode: ExecutionMode = ExecutionMode.ORT_SEQUENTIAL


class RunOptions:
    def __init__(self) -> None:
        self.log_severity_level = 2
        self.run_tag = ""


@dataclass(frozen=True)
class NodeArg:
    """What get_inputs()/get_outputs() return, as in onnxruntime."""

    name: str
    shape: list
    type: str


_TYPE_NAMES = {np.dtype(np.float32): "tensor(float)", np.dtype(np.float16): "tensor(float16)",
               np.dtype(np.float64): "tensor(double)", np.dtype(np.int64): "tensor(int64)",
               np.dtype(np.int32): "tensor(int32)", np.dtype(np.int8): "tensor(int8)",
               np.dtype(np.uint8): "tensor(uint8)", np.dtype(np.bool_): "tensor(bool)"}

_MAX_PLANS = 8  # plans kept for distinct input shapes (dynamic batch)


class InferenceSession:
    """Run an ONNX model (path, bytes or onnx.ModelProto) on the CPU with bninfer's kernels."""

    def __init__(self, path_or_bytes: Any, sess_options: SessionOptions | None = None,
                 providers: Sequence | None = None, provider_options: Sequence | None = None,
                 **kwargs: Any) -> None:
        self._options = sess_options or SessionOptions()
        self._plans: OrderedDict[tuple, Plan] = OrderedDict()
        self._reports: dict[tuple, passes.Report] = {}
        self._lock = threading.Lock()
        self._prebuilt_report: passes.Report | None = None
        if serialize.is_bninfer(path_or_bytes):
            # An already optimized graph, specialised to its input shapes.
            self._graph, self._prebuilt_report = serialize.load(path_or_bytes)
            self._prebuilt = True
        else:
            from converters import import_model
            self._graph = import_model(path_or_bytes)
            self._prebuilt = False
        # Plan now when every input shape is known, so that errors surface at load time; a dynamic
        # dimension is bound (to 1) for the check and re-bound on the first run.
        try:
            self._plan_for(self._default_shapes())
        except BninferError:
            raise
        except Exception as e:  # a hostile or corrupt .bninfer file: nodes whose attributes do not fit
            if not self._prebuilt:
                raise
            raise ModelError(f"the .bninfer graph is inconsistent: {type(e).__name__}: {e}") from None
        if self._options.optimized_model_filepath:
            self.save_optimized(self._options.optimized_model_filepath)
        self._threads = RunThreads(self._options.intra_op_num_threads)
        # (type, dtype, shape) per input of the feeds seen valid -> their plan: later runs skip the checks
        self._seen: dict[tuple, Plan] = {}
        self._input_names = tuple(self._graph.inputs)
        self._profiler = None
        if self._options.enable_profiling:
            from .profiling import Profiler
            self._profiler = Profiler(self.optimized_graph())

    # -- metadata --------------------------------------------------------------------------------
    def get_inputs(self) -> list[NodeArg]:
        return [self._arg(n) for n in self._graph.inputs]

    def get_outputs(self) -> list[NodeArg]:
        return [self._arg(n) for n in self._graph.outputs]

    def get_providers(self) -> list[str]:
        return ["CPUExecutionProvider"]

    def get_session_options(self) -> SessionOptions:
        return self._options

    def _arg(self, name: str) -> NodeArg:
        v = self._graph.values[name]
        shape = list(v.shape) if v.shape is not None else None
        return NodeArg(name, shape, _TYPE_NAMES.get(np.dtype(v.dtype) if v.dtype is not None else None,
                                                    f"tensor({v.dtype})"))

    # -- planning --------------------------------------------------------------------------------
    def _default_shapes(self) -> dict[str, tuple[int, ...]]:
        return {n: tuple(d if isinstance(d, int) else 1 for d in self._graph.values[n].shape)
                for n in self._graph.inputs}

    def _plan_for(self, shapes: dict[str, tuple[int, ...]]) -> Plan:
        key = tuple(shapes[n] for n in self._graph.inputs)
        with self._lock:
            plan = self._plans.get(key)
            if plan is not None:
                self._plans.move_to_end(key)
                return plan
            if self._prebuilt:
                graph = passes.constant_fold.run(passes.constant_fold.bind_inputs(self._graph, shapes))
                report = self._prebuilt_report or passes.Report()
            else:
                graph, report = passes.optimize(self._graph, shapes, self._options.graph_optimization_level)
            plan = Plan(graph)
            self._plans[key] = plan
            self._reports[key] = report
            if len(self._plans) > _MAX_PLANS:
                old, _ = self._plans.popitem(last=False)
                self._reports.pop(old, None)
                self._seen = {}  # it may point at the plan just dropped
            return plan

    def optimization_report(self, measure: bool = False) -> "passes.Report":
        """What the optimizer did to the graph planned most recently (BN folds, fusions, node counts).
        With measure=True it also runs the unoptimized graph on a seeded random input and records the
        largest absolute deviation of the outputs (report.max_deviation)."""
        key = next(reversed(self._plans))
        report = self._reports[key]
        if measure and report.max_deviation is None and not self._prebuilt:
            shapes = dict(zip(self._graph.inputs, key))
            rng = np.random.default_rng(0)
            feeds = {n: rng.standard_normal(shapes[n]).astype(np.float32) for n in self._graph.inputs}
            plain, _ = passes.optimize(self._graph, shapes, GraphOptimizationLevel.ORT_DISABLE_ALL)
            ours = self._plans[key].run(feeds)
            theirs = Plan(plain).run(feeds)
            report.max_deviation = max((float(np.max(np.abs(a.astype(np.float64) - b))) if a.size else 0.0
                                        for a, b in zip(ours, theirs)), default=0.0)
        return report

    def optimized_graph(self) -> Graph:
        """The optimized graph planned most recently (bound to its input shapes)."""
        return self._plans[next(reversed(self._plans))].graph

    def save_optimized(self, path: str) -> None:
        """Write the optimized graph: standard ONNX for a .onnx path (fusions written back as standard
        ops, BN folds kept), else the .bninfer format."""
        graph = self.optimized_graph()
        if str(path).endswith(".onnx"):
            import onnx
            from converters.onnx.export import to_onnx
            onnx.save(to_onnx(graph), path)
        else:
            serialize.save(graph, self.optimization_report(), path)

    # -- running ---------------------------------------------------------------------------------
    def run(self, output_names: Sequence[str] | None, input_feed: dict[str, Any],
            run_options: RunOptions | None = None) -> list[np.ndarray]:
        if isinstance(output_names, str):
            raise InputTypeError("output_names must be a list of names or None, not a string")
        plan, feeds = None, input_feed
        if type(input_feed) is dict and len(input_feed) == len(self._input_names):
            # feeds like those of an earlier, checked run: their plan by a dict lookup (checking the
            # feeds and finding the plan took a small model's run 2 us)
            plan = self._seen.get(self._feed_key(input_feed))
        if plan is None:
            feeds = self._check_feeds(input_feed)
            plan = self._plan_for({n: feeds[n].shape for n in self._graph.inputs})
            if len(self._seen) < 64:
                self._seen[self._feed_key(feeds)] = plan
        with self._threads:
            if self._profiler is None:
                results = plan.run(feeds)
            else:
                t0 = time.perf_counter_ns()
                results = plan.run(feeds, self._profiler)
                self._profiler.record_run(t0, time.perf_counter_ns())
        if not output_names:  # None or [] mean every output, as in onnxruntime
            return results
        index = {n: i for i, n in enumerate(self._graph.outputs)}
        missing = [n for n in output_names if n not in index]
        if missing:
            raise InputError(f"unknown output name(s) {missing}; the model's outputs are "
                             f"{self._graph.outputs}")
        return [results[index[n]] for n in output_names]

    def _feed_key(self, input_feed: dict) -> tuple | None:
        """(type, dtype, shape) of every input's array, in the graph's order; None if one is missing or
        not array-like."""
        try:
            return tuple([(type(a), a.dtype, a.shape) for a in map(input_feed.__getitem__, self._input_names)])
        except (KeyError, AttributeError, TypeError):
            return None

    def _check_feeds(self, input_feed: dict[str, Any]) -> dict[str, np.ndarray]:
        if not isinstance(input_feed, dict):
            raise InputTypeError(f"input_feed must be a dict of input name -> numpy array, "
                                 f"not {type(input_feed).__name__}")
        expected = self._graph.inputs
        unknown = [n for n in input_feed if n not in expected]
        if unknown:
            raise InputError(f"unknown input name(s) {unknown}; the model's inputs are {expected}")
        missing = [n for n in expected if n not in input_feed]
        if missing:
            raise InputError(f"missing input(s) {missing}; the model's inputs are {expected}")
        feeds = {}
        for name in expected:
            array = input_feed[name]
            if isinstance(array, np.generic):  # a numpy scalar is a 0-d tensor
                array = np.asarray(array)
            if not isinstance(array, np.ndarray):
                raise InputTypeError(f"input {name!r} must be a numpy array, not {type(array).__name__}")
            value = self._graph.values[name]
            if array.dtype != value.dtype:
                raise InputTypeError(f"input {name!r} has dtype {array.dtype}; expected {value.dtype} "
                                     f"({_TYPE_NAMES.get(np.dtype(value.dtype), value.dtype)})")
            if array.ndim != len(value.shape):
                raise InputError(f"input {name!r} has rank {array.ndim} (shape {array.shape}); "
                                 f"expected rank {len(value.shape)} (shape {list(value.shape)})")
            for axis, (got, want) in enumerate(zip(array.shape, value.shape)):
                if isinstance(want, int) and got != want:
                    raise InputError(f"input {name!r} has shape {array.shape}; expected "
                                     f"{list(value.shape)} (dimension {axis} must be {want})")
                if not isinstance(want, int) and got == 0:
                    raise InputError(f"input {name!r}: dynamic dimension {axis} ({want!r}) is 0")
            feeds[name] = array
        return feeds

    # -- profiling (onnxruntime API) -------------------------------------------------------------
    def end_profiling(self) -> str:
        """Write the Chrome-trace JSON of the kernel timings since the session started (when
        SessionOptions.enable_profiling is set) and return its path; "" when profiling is off."""
        if self._profiler is None:
            return ""
        stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
        path = f"{self._options.profile_file_prefix}_{stamp}.json"
        self._profiler.write(path)
        return path

    def profiler(self):
        """The live bninfer.profiling.Profiler (None unless profiling is enabled)."""
        return self._profiler


def _is_path(source: Any) -> bool:
    return isinstance(source, (str, os.PathLike))
