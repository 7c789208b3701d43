"""Per-kernel timing in onnxruntime's Chrome-trace format (chrome://tracing, Perfetto).

Each event is one kernel call of the plan: its node, the op chain fused into it, input/output shapes,
its time in microseconds and its GFLOP/s (from the node's multiply-accumulate count).
"""
from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from .ir import Graph, Node


def macs(node: Node, graph: Graph) -> int:
    """Multiply-accumulates of one node (0 for data movement and elementwise ops)."""
    def shape(name):
        v = graph.values.get(name) if name else None
        return v.shape if v is not None and v.shape is not None else None

    out = shape(node.outputs[0])
    if out is None:
        return 0
    if node.op == "Conv":
        w = shape(node.inputs[1])
        return int(np.prod(out) * np.prod(w[1:])) if w else 0
    if node.op == "ConvTranspose":
        x, w = shape(node.inputs[0]), shape(node.inputs[1])
        return int(np.prod(x) * np.prod(w[1:])) if x and w else 0
    if node.op in ("Gemm", "MatMul"):
        a = shape(node.inputs[0])
        if not a:
            return 0
        k = a[0] if node.op == "Gemm" and node.attrs.get("transA") else a[-1]
        return int(np.prod(out) * k)
    return 0


def op_chain(node: Node) -> str:
    """'BN>Relu>Conv+Add>Relu' style description of what a fused node computes."""
    parts = []
    extras = node.attrs.get("extras", {})
    if "pre_scale" in extras:
        parts.append("Affine>")
    if node.attrs.get("pre_activation"):
        parts.append(node.attrs["pre_activation"][0] + ">")
    parts.append(node.op)
    if "residual" in extras:
        parts.append("+Add")
    if node.attrs.get("activation"):
        parts.append(">" + node.attrs["activation"][0])
    if "post_scale" in extras or "post_shift" in extras:
        parts.append(">Affine")
    return "".join(parts)


@dataclass
class Profiler:
    graph: Graph
    start_ns: int = field(default_factory=time.perf_counter_ns)
    events: list[dict] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._info: dict[str, tuple] = {}

    def _node_info(self, node: Node) -> tuple:
        info = self._info.get(node.name)
        if info is None:
            shapes = lambda names: [{n: list(self.graph.values[n].shape)} for n in names  # noqa: E731
                                    if n and self.graph.values.get(n) is not None]
            info = (op_chain(node), shapes(node.inputs), shapes(node.outputs), macs(node, self.graph))
            self._info[node.name] = info
        return info

    def record(self, node: Node, t0_ns: int, t1_ns: int) -> None:
        chain, ins, outs, n_macs = self._node_info(node)
        dur_us = (t1_ns - t0_ns) / 1000.0
        event = {"cat": "Node", "pid": os.getpid(), "tid": threading.get_ident() % 100000,
                 "dur": round(dur_us, 3), "ts": round((t0_ns - self.start_ns) / 1000.0, 3), "ph": "X",
                 "name": f"{node.name}_kernel_time",
                 "args": {"op_name": node.op, "fused_ops": chain, "input_type_shape": ins,
                          "output_type_shape": outs, "macs": n_macs,
                          "gflops": round(2 * n_macs / (dur_us * 1e3), 3) if dur_us > 0 else 0.0}}
        with self._lock:
            self.events.append(event)

    def record_run(self, t0_ns: int, t1_ns: int) -> None:
        with self._lock:
            self.events.append({"cat": "Session", "pid": os.getpid(), "tid": threading.get_ident() % 100000,
                                "dur": round((t1_ns - t0_ns) / 1000.0, 3),
                                "ts": round((t0_ns - self.start_ns) / 1000.0, 3), "ph": "X",
                                "name": "model_run", "args": {}})

    def write(self, path: str) -> str:
        with self._lock:
            events = list(self.events)
        with open(path, "w") as f:
            json.dump(events, f, indent=0)
        return path

    def table(self) -> list[dict]:
        """Per node: calls, mean microseconds, GFLOP/s, fused op chain — slowest first."""
        rows: dict[str, dict] = {}
        with self._lock:
            events = [e for e in self.events if e["cat"] == "Node"]
        for e in events:
            r = rows.setdefault(e["name"][:-len("_kernel_time")], {
                "node": e["name"][:-len("_kernel_time")], "op": e["args"]["op_name"],
                "fused_ops": e["args"]["fused_ops"], "calls": 0, "total_us": 0.0, "macs": e["args"]["macs"]})
            r["calls"] += 1
            r["total_us"] += e["dur"]
        for r in rows.values():
            r["mean_us"] = r["total_us"] / r["calls"]
            r["gflops"] = 2 * r["macs"] / (r["mean_us"] * 1e3) if r["mean_us"] > 0 else 0.0
        return sorted(rows.values(), key=lambda r: -r["mean_us"])
