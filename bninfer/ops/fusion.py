"""How a fused node carries its epilogue and prologue, and how a kernel gets them as arrays.

A fusable node (Conv, ConvTranspose, Gemm, MatMul, BatchNormalization's per-channel affine, ...) computes,
for output channel c (axis 1; the last axis for Gemm/MatMul):

    y = post_scale[c] * act(acc + bias[c] + residual, alpha[c], beta) + post_shift[c]

and, when it has a prologue, reads each in-bounds input element x of input channel k as

    x' = pre_act(pre_scale[k] * x + pre_shift[k])

(padding stays zero: the prologue belongs to the input of the padded op). Attributes on the node:
    "activation":     None or (op, attrs) from bninfer.activations.TABLE ("PRelu" takes a slope input)
    "pre_activation": None or (op, attrs)
and extra inputs appended after the op's own inputs, named in node.attrs["extras"] (key -> position):
    residual, post_scale, post_shift, pre_scale, pre_shift, slope, pre_slope, and channel_scale: run-time
    factors (N or 1, C, 1, 1) of the input's channels (x' = s * x), which only the blocked 1x1 conv takes
    (bninfer.passes.scale_into_weights, in a plan's own copy of the graph).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import activations
from ..errors import ModelError
from ..ir import Node

# How many inputs each fusable op owns (optional ones included): extras come after these.
OWN_INPUTS = {"Conv": 3, "ConvTranspose": 3, "Gemm": 3, "MatMul": 2, "BatchNormalization": 5,
              "GlobalAveragePool": 1, "GlobalMaxPool": 1}

EXTRA_KEYS = ("bias", "residual", "post_scale", "post_shift", "pre_scale", "pre_shift", "slope", "pre_slope",
              "channel_scale")


def add_extra(node: Node, key: str, value_name: str, base_inputs: int | None = None) -> None:
    """Attach value `value_name` to `node` as its extra input `key` (`base_inputs`: the op's own input
    count, padded with omitted inputs so that extras never shift an optional input; by default
    OWN_INPUTS of the op)."""
    assert key in EXTRA_KEYS
    if base_inputs is None:
        base_inputs = OWN_INPUTS[node.op]
    extras = dict(node.attrs.get("extras", {}))
    if key in extras:
        node.inputs[extras[key]] = value_name
    else:
        while len(node.inputs) < base_inputs:
            node.inputs.append("")
        extras[key] = len(node.inputs)
        node.inputs.append(value_name)
    node.attrs["extras"] = extras


def extra(node: Node, key: str) -> int | None:
    """Position of extra input `key`, or None."""
    return node.attrs.get("extras", {}).get(key)


def base_inputs(node: Node) -> int:
    """How many of the node's inputs are its own (not fusion extras)."""
    extras = node.attrs.get("extras", {})
    return min(extras.values()) if extras else len(node.inputs)


@dataclass
class Stage:
    """An activation with its per-channel alpha (an array of length C) and scalar beta."""

    code: int
    alpha: np.ndarray
    beta: float


def stage(node: Node, spec, channels: int, slope: np.ndarray | None, where: str) -> Stage:
    if spec is None:
        return Stage(activations.NONE, np.zeros(channels, np.float32), 0.0)
    op, attrs = spec
    code = activations.code_of(op, attrs)
    alpha, beta = activations.params_of(op, attrs)
    if op == "PRelu":
        if slope is None:
            raise ModelError(f"node {node.name!r}: fused PRelu ({where}) has no slope input")
        s = np.asarray(slope, np.float32).reshape(-1)
        if s.size not in (1, channels):
            raise ModelError(f"node {node.name!r}: fused PRelu slope has {s.size} values for {channels} "
                             f"channels")
        return Stage(code, np.array(np.broadcast_to(s, (channels,)), np.float32), 0.0)
    return Stage(code, np.full(channels, alpha, np.float32), beta)


def channel_vector(node: Node, data, channels: int, what: str, fill: float) -> np.ndarray:
    """A constant per-channel vector (scale, shift, bias) as float32 of length `channels`."""
    if data is None:
        return np.full(channels, fill, np.float32)
    v = np.asarray(data, np.float32).reshape(-1)
    if v.size not in (1, channels):
        raise ModelError(f"node {node.name!r}: {what} has {v.size} values for {channels} channels")
    # A writeable copy: Numba compiles separate versions for read-only arrays.
    return np.array(np.broadcast_to(v, (channels,)), np.float32)


@dataclass
class Epilogue:
    act: Stage
    residual: int | None  # input position of the residual, or None
    has_post: bool
    post_scale: np.ndarray
    post_shift: np.ndarray


@dataclass
class Prologue:
    has_pre: bool
    act: Stage
    scale: np.ndarray
    shift: np.ndarray


def _const(ins: list, pos: int | None):
    if pos is None:
        return None
    v = ins[pos]
    if v is None or v.data is None:
        raise ModelError("fused scale/shift/slope inputs must be constants")
    return v.data


def epilogue(node: Node, ins: list, channels: int) -> Epilogue:
    scale_pos, shift_pos = extra(node, "post_scale"), extra(node, "post_shift")
    return Epilogue(
        act=stage(node, node.attrs.get("activation"), channels, _const(ins, extra(node, "slope")), "epilogue"),
        residual=extra(node, "residual"),
        has_post=scale_pos is not None or shift_pos is not None,
        post_scale=channel_vector(node, _const(ins, scale_pos), channels, "post scale", 1.0),
        post_shift=channel_vector(node, _const(ins, shift_pos), channels, "post shift", 0.0),
    )


def prologue(node: Node, ins: list, channels: int) -> Prologue:
    scale_pos, shift_pos = extra(node, "pre_scale"), extra(node, "pre_shift")
    spec = node.attrs.get("pre_activation")
    return Prologue(
        has_pre=scale_pos is not None or shift_pos is not None or spec is not None,
        act=stage(node, spec, channels, _const(ins, extra(node, "pre_slope")), "prologue"),
        scale=channel_vector(node, _const(ins, scale_pos), channels, "pre scale", 1.0),
        shift=channel_vector(node, _const(ins, shift_pos), channels, "pre shift", 0.0),
    )
