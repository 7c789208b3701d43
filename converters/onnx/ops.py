"""ONNX node -> IR node: attributes decoded, defaults filled from ONNX's schema for the node's opset, and
older opset forms upgraded to the newest one (attributes that later became inputs, renamed ops).

Each upgrade is a small function `(node, opset, ctx) -> node` registered for one op type.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from bninfer.errors import ModelError, TrainingModeError, UnsupportedOperatorError
from bninfer.ir import Node

from . import proto as pb
from .decode import attribute_value, to_array


class Context:
    """What an upgrade may do besides editing its node: add constants to the graph."""

    def __init__(self, add_const: Callable[[str, np.ndarray], str]):
        self.add_const = add_const


UPGRADES: dict[str, Callable[[Node, int, Context], Node]] = {}


def upgrade(*ops: str):
    def deco(fn):
        for op in ops:
            UPGRADES[op] = fn
        return fn
    return deco


def attr_value(attr: pb.AttributeProto, node_name: str):
    if attr.type in (pb.AttributeProto.GRAPH, pb.AttributeProto.GRAPHS):
        raise UnsupportedOperatorError(f"node {node_name!r}: subgraph attribute {attr.name!r} (control flow) "
                                       f"is not supported", [node_name])
    if attr.ref_attr_name:
        raise ModelError(f"node {node_name!r}: attribute {attr.name!r} refers to a function attribute")
    value = attribute_value(attr)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, pb.TensorProto):
        return to_array(value)
    if isinstance(value, list) and value and isinstance(value[0], bytes):
        return [v.decode("utf-8", "replace") for v in value]
    return value


def schema_defaults(op: str, opset: int, domain: str = "") -> dict:
    return {name: attr_value(a, op) for name, a in pb.attribute_defaults(op, opset, domain).items()}


def to_ir(proto: pb.NodeProto, opset: int, ctx: Context, name: str) -> Node:
    attrs = schema_defaults(proto.op_type, opset)
    attrs.update({a.name: attr_value(a, name) for a in proto.attribute})
    node = Node(proto.op_type, name, list(proto.input), list(proto.output), attrs)
    fix = UPGRADES.get(node.op)
    return fix(node, opset, ctx) if fix else node


# -- attributes that became inputs --------------------------------------------------------------------

def _attr_to_input(node: Node, ctx: Context, attr: str, position: int, dtype=np.int64) -> None:
    """Move attribute `attr` into input slot `position` (as a constant), padding with omitted inputs."""
    if attr not in node.attrs:
        return
    value = np.asarray(node.attrs.pop(attr), dtype=dtype)
    while len(node.inputs) <= position:
        node.inputs.append("")
    node.inputs[position] = ctx.add_const(f"{node.name}_{attr}", value)


@upgrade("Squeeze", "Unsqueeze")
def _squeeze(node, opset, ctx):
    if opset < 13:
        _attr_to_input(node, ctx, "axes", 1)
    return node


@upgrade("ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2", "ReduceSumSquare",
         "ReduceLogSum", "ReduceLogSumExp")
def _reduce(node, opset, ctx):
    if opset < 18:
        _attr_to_input(node, ctx, "axes", 1)
    return node


@upgrade("ReduceSum")
def _reduce_sum(node, opset, ctx):
    if opset < 13:
        _attr_to_input(node, ctx, "axes", 1)
    return node


@upgrade("Split")
def _split(node, opset, ctx):
    if opset < 13:
        _attr_to_input(node, ctx, "split", 1)
    return node


@upgrade("Clip")
def _clip(node, opset, ctx):
    if opset < 11:
        node.attrs.setdefault("min", float(np.finfo(np.float32).min))
        node.attrs.setdefault("max", float(np.finfo(np.float32).max))
        _attr_to_input(node, ctx, "min", 1, np.float32)
        _attr_to_input(node, ctx, "max", 2, np.float32)
    return node


@upgrade("Pad")
def _pad(node, opset, ctx):
    if opset < 11:
        node.attrs.setdefault("pads", node.attrs.pop("paddings", None))
        _attr_to_input(node, ctx, "pads", 1)
        _attr_to_input(node, ctx, "value", 2, np.float32)
    return node


@upgrade("Slice")
def _slice(node, opset, ctx):
    if opset < 10:
        _attr_to_input(node, ctx, "starts", 1)
        _attr_to_input(node, ctx, "ends", 2)
        _attr_to_input(node, ctx, "axes", 3)
    return node


@upgrade("Reshape")
def _reshape(node, opset, ctx):
    if opset < 5:
        _attr_to_input(node, ctx, "shape", 1)
    return node


@upgrade("Upsample")
def _upsample(node, opset, ctx):
    # Upsample (opset 7-9) is Resize with asymmetric coordinates; nearest rounds down.
    mode = node.attrs.pop("mode", "nearest")
    if opset < 9:
        scales = node.attrs.pop("scales", None)
        if scales is None:
            raise ModelError(f"node {node.name!r} (Upsample): no scales")
        node.inputs = [node.inputs[0], "", ctx.add_const(f"{node.name}_scales", np.asarray(scales, np.float32))]
    else:
        node.inputs = [node.inputs[0], "", node.inputs[1]]
    node.op = "Resize"
    node.attrs = {"mode": "linear" if mode in ("linear", "bilinear") else mode,
                  "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor",
                  "cubic_coeff_a": -0.75, "exclude_outside": 0, "extrapolation_value": 0.0,
                  "antialias": 0, "keep_aspect_ratio_policy": "stretch"}
    return node


@upgrade("Resize")
def _resize(node, opset, ctx):
    if opset < 11:
        # Resize-10: inputs (X, scales), asymmetric coordinates; nearest is onnxruntime's "simple" rounding
        # (up when an axis shrinks, down otherwise).
        node.inputs = [node.inputs[0], "", node.inputs[1]]
        node.attrs.update({"coordinate_transformation_mode": "asymmetric", "nearest_mode": "simple",
                           "cubic_coeff_a": -0.75, "exclude_outside": 0, "extrapolation_value": 0.0})
    node.attrs.setdefault("antialias", 0)
    node.attrs.setdefault("keep_aspect_ratio_policy", "stretch")
    return node


@upgrade("Softmax", "LogSoftmax", "Hardmax")
def _softmax(node, opset, ctx):
    # Before opset 13 the input was coerced to 2-D at `axis` (default 1) and normalized over [axis:].
    node.attrs["coerce_2d"] = opset < 13
    return node


@upgrade("Add", "Sub", "Mul", "Div", "Pow")
def _binary(node, opset, ctx):
    # Opset < 7: `broadcast=1` with `axis` aligns B at that axis of A; keep it for shape-time handling.
    broadcast = node.attrs.pop("broadcast", 0)
    axis = node.attrs.pop("axis", None)
    node.attrs.pop("consumed_inputs", None)
    if broadcast and axis is not None:
        node.attrs["legacy_axis"] = int(axis)
    return node


@upgrade("BatchNormalization")
def _batchnorm(node, opset, ctx):
    node.attrs.pop("consumed_inputs", None)
    node.attrs.pop("momentum", None)
    if opset < 7 and not node.attrs.pop("is_test", 0):
        raise TrainingModeError(f"node {node.name!r} (BatchNormalization) has is_test=0: it computes batch "
                                f"statistics (training mode), which an inference engine cannot fold or run",
                                [node.name])
    node.attrs.pop("is_test", None)
    if node.attrs.get("training_mode", 0):
        raise TrainingModeError(f"node {node.name!r} (BatchNormalization) has training_mode=1: it computes "
                                f"batch statistics, not an inference graph", [node.name])
    node.attrs.pop("training_mode", None)
    node.attrs["spatial"] = int(node.attrs.get("spatial", 1))
    return node


@upgrade("Dropout")
def _dropout(node, opset, ctx):
    node.attrs = {}
    if opset < 7 and not node.attrs.get("is_test", 1):
        pass  # older Dropout is a pass-through at inference whatever is_test says; ORT agrees
    node.inputs = node.inputs[:3]
    return node


@upgrade("GroupNormalization")
def _groupnorm(node, opset, ctx):
    # GroupNormalization-18 took scale and bias per group; 21 per channel.
    node.attrs["per_group_params"] = opset < 21
    return node


@upgrade("PRelu")
def _prelu(node, opset, ctx):
    if opset < 7:
        node.attrs["legacy_channel_slope"] = True
    node.attrs.pop("consumed_inputs", None)
    return node


@upgrade("MaxPool")
def _maxpool(node, opset, ctx):
    if len(node.outputs) > 1 and node.outputs[1]:
        raise UnsupportedOperatorError(f"node {node.name!r} (MaxPool): the Indices output is not supported",
                                       [node.name])
    return node
