"""bninfer.ir.Graph (optimized) -> standard ONNX that onnxruntime runs with the same outputs.

BatchNormalizations folded into weights stay folded and Dropout/Identity stay gone; a fused node is
written back as its standard ops (prologue Mul/Add/activation, the op, residual Add, activation,
epilogue Mul/Add), since no standard op carries an epilogue.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from bninfer.errors import ModelError
from bninfer.ir import Graph, Node
from bninfer.ops import fusion

OPSET = 21
_INTERNAL_ATTRS = {"activation", "pre_activation", "extras", "coerce_2d", "legacy_axis", "per_group_params",
                   "spatial"}
_ELEM = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.int64): TensorProto.INT64,
         np.dtype(np.bool_): TensorProto.BOOL, np.dtype(np.float16): TensorProto.FLOAT16,
         np.dtype(np.float64): TensorProto.DOUBLE, np.dtype(np.int32): TensorProto.INT32}


class _Writer:
    def __init__(self, graph: Graph):
        self.g = graph
        self.nodes: list[onnx.NodeProto] = []
        self.inits: dict[str, np.ndarray] = {n: v.data for n, v in graph.values.items() if v.is_const}
        self.k = 0

    def name(self, base: str) -> str:
        self.k += 1
        return f"{base}__x{self.k}"

    def const(self, base: str, array) -> str:
        n = self.name(base)
        self.inits[n] = np.asarray(array)
        return n

    def emit(self, op: str, inputs: list[str], base: str, output: str | None = None, **attrs) -> str:
        out = output or self.name(base)
        self.nodes.append(helper.make_node(op, inputs, [out], name=self.name(f"{base}_{op}"), **attrs))
        return out

    def channel_const(self, base: str, vec: np.ndarray, rank: int, axis: int) -> str:
        shape = [1] * rank
        shape[axis] = vec.size
        return self.const(base, np.asarray(vec, np.float32).reshape(shape[1:] if axis else shape))

    def activation(self, spec, x: str, base: str, slope: str | None, rank: int, axis: int,
                   output: str | None = None) -> str:
        op, attrs = spec
        if op == "Clip":
            lo = self.const(f"{base}_min", np.float32(attrs.get("min", -np.inf)))
            hi = self.const(f"{base}_max", np.float32(attrs.get("max", np.inf)))
            return self.emit("Clip", [x, lo, hi], base, output)
        if op == "PRelu":
            return self.emit("PRelu", [x, self.channel_const(f"{base}_slope", self.g.const(slope), rank, axis)],
                             base, output)
        if op == "Swish":  # Swish is opset 24: write x * Sigmoid(alpha * x)
            alpha = float(attrs.get("alpha", 1.0))
            scaled = x if alpha == 1.0 else self.emit("Mul", [x, self.const("alpha", np.float32(alpha))], base)
            return self.emit("Mul", [x, self.emit("Sigmoid", [scaled], base)], base, output)
        return self.emit(op, [x], base, output, **attrs)

    def node(self, n: Node) -> None:
        extras = n.attrs.get("extras", {})
        own = fusion.base_inputs(n)
        inputs = list(n.inputs[:own])
        while inputs and not inputs[-1]:
            inputs.pop()
        attrs = {k: v for k, v in n.attrs.items() if k not in _INTERNAL_ATTRS}
        out_shape = self.g.values[n.outputs[0]].shape
        rank = len(out_shape)
        axis = (rank - 1) if n.op in ("Gemm", "MatMul") else 1
        x = inputs[0] if inputs else ""
        # Prologue on the input.
        in_rank = len(self.g.values[x].shape) if x else 0
        if "pre_scale" in extras:
            x = self.emit("Mul", [x, self.channel_const("pre_s", self.g.const(n.inputs[extras["pre_scale"]]),
                                                        in_rank, 1)], n.name)
            x = self.emit("Add", [x, self.channel_const("pre_t", self.g.const(n.inputs[extras["pre_shift"]]),
                                                        in_rank, 1)], n.name)
        if n.attrs.get("pre_activation"):
            slope = n.inputs[extras["pre_slope"]] if "pre_slope" in extras else None
            x = self.activation(n.attrs["pre_activation"], x, n.name, slope, in_rank, 1)
        if inputs:
            inputs[0] = x
        inputs, attrs = self.legacy(n, inputs, attrs)
        steps = [k for k in ("residual", "activation", "post") if
                 (k == "residual" and "residual" in extras) or (k == "activation" and n.attrs.get("activation"))
                 or (k == "post" and "post_scale" in extras)]
        final = n.outputs[0]
        y = final if not steps else self.name(n.name)
        if n.op in ("Softmax", "LogSoftmax", "Hardmax") and n.attrs.get("coerce_2d"):
            flat = self.emit("Flatten", [inputs[0]], n.name, axis=int(attrs.pop("axis", 1)))
            soft = self.emit(n.op, [flat], n.name, axis=1)
            shape = self.const("shape", np.asarray(out_shape, np.int64))
            self.emit("Reshape", [soft, shape], n.name, y)
        else:
            self.nodes.append(helper.make_node(n.op, inputs, [y] + n.outputs[1:], name=n.name, **attrs))
        for k, step in enumerate(steps):
            out = final if k == len(steps) - 1 else None
            if step == "residual":
                y = self.emit("Add", [y, n.inputs[extras["residual"]]], n.name, out)
            elif step == "activation":
                slope = n.inputs[extras["slope"]] if "slope" in extras else None
                y = self.activation(n.attrs["activation"], y, n.name, slope, rank, axis, out)
            else:
                y = self.emit("Mul", [y, self.channel_const("post_s", self.g.const(n.inputs[extras["post_scale"]]),
                                                            rank, axis)], n.name)
                y = self.emit("Add", [y, self.channel_const("post_t", self.g.const(n.inputs[extras["post_shift"]]),
                                                            rank, axis)], n.name, out)

    def legacy(self, n: Node, inputs: list[str], attrs: dict) -> tuple[list[str], dict]:
        """IR attributes that stand for older ONNX forms, written in opset-21 terms."""
        if "legacy_axis" in n.attrs:
            b = self.g.const(inputs[1])
            if b is None:
                raise ModelError(f"node {n.name!r}: legacy broadcast with a run-time operand cannot be exported")
            a_rank = len(self.g.values[inputs[0]].shape)
            axis = n.attrs["legacy_axis"] % a_rank
            inputs[1] = self.const("b", np.asarray(b).reshape(b.shape + (1,) * (a_rank - axis - b.ndim)))
        if n.op == "BatchNormalization" and n.attrs.get("spatial", 1) == 0:
            raise ModelError(f"node {n.name!r}: BatchNormalization spatial=0 has no opset-{OPSET} form")
        if n.op == "GroupNormalization" and n.attrs.get("per_group_params"):
            groups = int(n.attrs["num_groups"])
            c = self.g.values[inputs[0]].shape[1]
            for k in (1, 2):
                inputs[k] = self.const("gn", np.repeat(np.asarray(self.g.const(inputs[k])), c // groups))
        return inputs, attrs


def to_onnx(graph: Graph) -> onnx.ModelProto:
    w = _Writer(graph)
    for n in graph.nodes:
        w.node(n)
    used = {i for n in w.nodes for i in n.input} | set(graph.outputs)
    inits = [numpy_helper.from_array(np.asarray(a), name) for name, a in w.inits.items() if name in used]

    def info(name: str) -> onnx.ValueInfoProto:
        v = graph.values[name]
        return helper.make_tensor_value_info(name, _ELEM.get(np.dtype(v.dtype), TensorProto.FLOAT), list(v.shape))

    onnx_graph = helper.make_graph(w.nodes, graph.name, [info(n) for n in graph.inputs],
                                   [info(n) for n in graph.outputs], inits)
    model = helper.make_model(onnx_graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="bninfer")
    model.ir_version = 10
    return model
