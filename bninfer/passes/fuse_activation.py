"""Fuse an activation into the kernel that produces its input (Conv, ConvTranspose, Gemm, MatMul, a
standalone BatchNormalization): the activation runs when the producer stores its output.

Guards: the activation is in bninfer.activations.TABLE (so the kernel implements exactly it, with the
same attributes); Clip's bounds and PRelu's slope are constants, and the slope is per channel of the
producer's channel axis (or a scalar); the producer's output feeds only the activation; the producer has
no activation or post affine yet (a residual is fine: the epilogue adds it before the activation).
"""
from __future__ import annotations

import numpy as np

from .. import activations
from ..ir import Graph, Node
from ..ops import fusion
from . import match
from .report import Report


def run(g: Graph, report: Report) -> None:
    for act in [n for n in g.nodes if n.op in activations.TABLE]:
        producer = g.producer(act.inputs[0])
        if producer is None or producer.op not in match.EPILOGUE_OPS:
            continue
        if producer.attrs.get("activation") or fusion.extra(producer, "post_scale") is not None:
            continue
        if match.only_consumer(g, act.inputs[0]) is not act:
            continue
        spec = activation_spec(g, act, producer)
        if spec is None:
            continue
        attrs, slope = spec
        producer.attrs["activation"] = (act.op, attrs)
        if slope is not None:
            fusion.add_extra(producer, "slope", slope)
        match.absorb(g, producer, act)
        report.fusions.append(f"{producer.op} {producer.name!r} + {act.op} {act.name!r}")


def activation_spec(g: Graph, act: Node, producer: Node) -> tuple[dict, str | None] | None:
    """(attributes for the activation table, name of a constant per-channel slope) or None if this
    activation cannot be fused exactly."""
    if act.op == "Clip":
        bounds = {}
        for key, pos in (("min", 1), ("max", 2)):
            name = act.inputs[pos] if len(act.inputs) > pos else ""
            if name:
                value = match.const_scalar(g, name)
                if value is None:
                    return None
                bounds[key] = value
        return bounds, None
    if act.op == "PRelu":
        slope = g.const(act.inputs[1])
        if slope is None or not _per_channel(g, slope, producer):
            return None
        return {}, g.add_const(f"{act.name}_slope", np.asarray(slope, np.float32).reshape(-1))
    return dict(act.attrs), None


def _per_channel(g: Graph, slope: np.ndarray, producer: Node) -> bool:
    out_shape = g.values[producer.outputs[0]].shape
    if slope.size == 1:
        return True
    axis = match.EPILOGUE_OPS[producer.op] % len(out_shape)
    channels = out_shape[axis]
    # The slope broadcasts along the channel axis only: its shape, right-aligned to the output's,
    # is `channels` at that axis and 1 elsewhere.
    aligned = (1,) * (len(out_shape) - slope.ndim) + tuple(slope.shape)
    return len(aligned) == len(out_shape) and all(
        d == (channels if k == axis else 1) for k, d in enumerate(aligned))
