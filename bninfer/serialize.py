"""The .bninfer file: an optimized (folded, fused) graph and its weights, ready to plan.

Format, version 1 — a zip archive holding
    manifest.json   {"format": "bninfer", "version": 1, "graph": {...}, "report": {...}}
    tensors/K.npy   one constant per file, numpy's .npy format (read with allow_pickle=False)
The graph lists inputs and outputs (name, shape, dtype), nodes (op, name, inputs, outputs, attrs) and
constants (name -> tensors/K.npy). Attribute values are JSON; arrays inside attributes are written as
{"__tensor__": "tensors/K.npy"} and tuples as {"__tuple__": [...]}.

A .bninfer file is specialised to the input shapes it was optimized for (like a compiled engine):
dynamic dimensions are bound when it is written. Nothing in it is executable and nothing is unpickled;
on load every name, shape, dtype and op is checked before use.
"""
from __future__ import annotations

import io
import json
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from . import ops
from .errors import ModelError
from .ir import Graph, Node, Value
from .passes.report import Report

FORMAT, VERSION = "bninfer", 1
MAGIC = b"PK\x03\x04"
MAX_MEMBER_BYTES = 4 << 30
# What reading a damaged archive can raise (bad CRC, truncated data, an unknown compression method or
# an encrypted member, bad deflate data, a .npy header that does not parse; UnicodeDecodeError and
# JSONDecodeError are ValueErrors).
_READ_ERRORS = (ValueError, EOFError, OSError, RuntimeError, NotImplementedError, zipfile.BadZipFile,
                zlib.error)
_DTYPES = {"float32", "float16", "float64", "int64", "int32", "int8", "uint8", "bool"}


def save(graph: Graph, report: Report | None, path: str | Path) -> None:
    tensors: list[np.ndarray] = []

    def tensor_ref(array: np.ndarray) -> str:
        tensors.append(np.ascontiguousarray(array))
        return f"tensors/{len(tensors) - 1}.npy"

    def encode(v: Any) -> Any:
        if isinstance(v, np.ndarray):
            return {"__tensor__": tensor_ref(v)}
        if isinstance(v, tuple):
            return {"__tuple__": [encode(x) for x in v]}
        if isinstance(v, list):
            return [encode(x) for x in v]
        if isinstance(v, dict):
            return {str(k): encode(x) for k, x in v.items()}
        if isinstance(v, (np.integer, np.floating, np.bool_)):
            return v.item()
        return v

    def value_info(name: str) -> dict:
        v = graph.values[name]
        return {"name": name, "shape": list(v.shape), "dtype": str(v.dtype)}

    manifest = {
        "format": FORMAT, "version": VERSION, "name": graph.name,
        "graph": {
            "inputs": [value_info(n) for n in graph.inputs],
            "outputs": [value_info(n) for n in graph.outputs],
            "constants": {n: tensor_ref(v.data) for n, v in graph.values.items() if v.is_const},
            "nodes": [{"op": n.op, "name": n.name, "inputs": n.inputs, "outputs": n.outputs,
                       "attrs": encode(n.attrs)} for n in graph.nodes],
        },
        "report": None if report is None else {
            "nodes_before": report.nodes_before, "nodes_after": report.nodes_after,
            "batchnorms": report.batchnorms, "fusions": report.fusions, "eliminated": report.eliminated},
    }
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr("manifest.json", json.dumps(manifest, indent=1))
        for k, array in enumerate(tensors):
            buf = io.BytesIO()
            np.save(buf, array, allow_pickle=False)
            z.writestr(f"tensors/{k}.npy", buf.getvalue())


def is_bninfer(source: Any) -> bool:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source[:4]) == MAGIC
    if isinstance(source, (str, Path)) and Path(source).is_file():
        with open(source, "rb") as f:
            return f.read(4) == MAGIC
    return False


def load(source: Any) -> tuple[Graph, Report | None]:
    """Read and check a .bninfer file (path or bytes) into a static graph."""
    try:
        z = zipfile.ZipFile(io.BytesIO(bytes(source)) if isinstance(source, (bytes, bytearray, memoryview))
                            else source)
    except _READ_ERRORS as e:
        raise ModelError(f"not a readable .bninfer file: {e}") from None
    with z:
        manifest = _manifest(z)
        g = manifest.get("graph")
        if not isinstance(g, dict):
            raise ModelError(".bninfer manifest has no graph")

        def read_tensor(ref: Any) -> np.ndarray:
            if not isinstance(ref, str) or not ref.startswith("tensors/") or ref not in z.namelist():
                raise ModelError(f".bninfer file refers to a missing tensor {ref!r}")
            if z.getinfo(ref).file_size > MAX_MEMBER_BYTES:
                raise ModelError(f".bninfer tensor {ref!r} is too large")
            try:
                return np.load(io.BytesIO(z.read(ref)), allow_pickle=False)
            except _READ_ERRORS as e:
                raise ModelError(f".bninfer tensor {ref!r} cannot be read: {e}") from None

        def decode(v: Any) -> Any:
            if isinstance(v, dict):
                if set(v) == {"__tensor__"}:
                    return read_tensor(v["__tensor__"])
                if set(v) == {"__tuple__"}:
                    return tuple(decode(x) for x in v["__tuple__"])
                return {k: decode(x) for k, x in v.items()}
            if isinstance(v, list):
                return [decode(x) for x in v]
            return v

        values: dict[str, Value] = {}
        for name, ref in _dict(g, "constants").items():
            data = read_tensor(ref)
            if str(data.dtype) not in _DTYPES:
                raise ModelError(f".bninfer constant {name!r} ({ref}) has unsupported dtype {data.dtype}")
            values[name] = Value(name, tuple(int(d) for d in data.shape), data.dtype, data)
        inputs = [_io_value(vi, values) for vi in _list(g, "inputs")]
        nodes = []
        for nd in _list(g, "nodes"):
            try:
                node = Node(str(nd["op"]), str(nd["name"]), [str(i) for i in nd["inputs"]],
                            [str(o) for o in nd["outputs"]], decode(nd.get("attrs", {})))
            except (KeyError, TypeError, AttributeError) as e:
                raise ModelError(f".bninfer node entry is malformed: {e}") from None
            if not isinstance(node.attrs, dict) or not isinstance(nd["inputs"], list) \
                    or not isinstance(nd["outputs"], list):
                raise ModelError(f".bninfer node {node.name!r} is malformed (inputs, outputs or attrs)")
            if ops.get(node.op) is None:
                raise ModelError(f".bninfer node {node.name!r} has unknown op {node.op!r}")
            for o in node.outputs:
                if o in values:
                    raise ModelError(f".bninfer node {node.name!r} redefines {o!r}")
                values[o] = Value(o)
            nodes.append(node)
        for node in nodes:
            for i in node.inputs:
                if i and i not in values:
                    raise ModelError(f".bninfer node {node.name!r} reads undefined {i!r}")
        outputs = []
        for vo in _list(g, "outputs"):
            name = vo.get("name") if isinstance(vo, dict) else None
            if not isinstance(name, str) or name not in values:
                raise ModelError(f".bninfer graph output {name!r} is not defined")
            _declare(vo, values[name])
            outputs.append(name)
        graph = Graph(nodes, values, inputs, outputs, str(manifest.get("name", "graph")))
        graph.toposort()
        return graph, _report(manifest.get("report"))


def _report(rep: Any) -> Report | None:
    if rep is None:
        return None
    ok = isinstance(rep, dict)
    fields = {}
    for k in ("nodes_before", "nodes_after"):
        v = rep.get(k, {}) if ok else None
        ok = ok and isinstance(v, dict) and all(isinstance(a, str) and type(b) is int for a, b in v.items())
        fields[k] = v
    for k in ("batchnorms", "fusions", "eliminated"):
        v = rep.get(k, []) if ok else None
        ok = ok and isinstance(v, list) and all(isinstance(x, str) for x in v)
        fields[k] = v
    if not ok:
        raise ModelError(".bninfer optimization report is malformed")
    return Report(**fields)


def _declare(vo: dict, value: Value) -> None:
    """The shape and dtype a graph output declares (get_outputs() shows them before any run); the
    planner re-infers and overwrites them."""
    if value.is_const or value.shape is not None:
        return
    try:
        shape, dtype = tuple(int(d) for d in vo["shape"]), str(vo["dtype"])
    except (KeyError, TypeError, ValueError):
        return
    if dtype in _DTYPES and all(d >= 0 for d in shape):
        value.shape, value.dtype = shape, np.dtype(dtype)


def _manifest(z: zipfile.ZipFile) -> dict:
    if "manifest.json" not in z.namelist():
        raise ModelError("not a .bninfer file: no manifest.json")
    if z.getinfo("manifest.json").file_size > 256 << 20:
        raise ModelError(".bninfer manifest is too large")
    try:
        manifest = json.loads(z.read("manifest.json"))
    except _READ_ERRORS as e:
        raise ModelError(f".bninfer manifest cannot be read or is not valid JSON: {e}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ModelError("not a .bninfer file: wrong format tag")
    if manifest.get("version") != VERSION:
        raise ModelError(f".bninfer format version {manifest.get('version')!r} is not supported "
                         f"(this bninfer reads version {VERSION})")
    return manifest


def _dict(g: dict, key: str) -> dict:
    v = g.get(key, {})
    if not isinstance(v, dict):
        raise ModelError(f".bninfer graph field {key!r} is malformed")
    return v


def _list(g: dict, key: str) -> list:
    v = g.get(key, [])
    if not isinstance(v, list):
        raise ModelError(f".bninfer graph field {key!r} is malformed")
    return v


def _io_value(vi: Any, values: dict) -> str:
    try:
        name, shape, dtype = str(vi["name"]), [int(d) for d in vi["shape"]], str(vi["dtype"])
    except (KeyError, TypeError, ValueError):
        raise ModelError(f".bninfer graph input entry {vi!r} is malformed") from None
    if dtype not in _DTYPES or any(d < 0 for d in shape):
        raise ModelError(f".bninfer graph input {name!r} has bad dtype or shape")
    if name in values:
        raise ModelError(f".bninfer graph input {name!r} is defined twice")
    values[name] = Value(name, tuple(shape), np.dtype(dtype))
    return name
