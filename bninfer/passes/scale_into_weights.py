"""Squeeze-excitation's per-channel Mul taken into the 1x1 conv that reads it (run by the plan after
bninfer.passes.layout, on the layout's copy of the graph).

W . (s * x) = (W * s) . x: the conv scales its weights by the factors each run (COUT x CIN products,
bninfer.kernels.blocked.scale_rows) and reads the unscaled value, instead of the Mul streaming its
CIN x H x W input into a second buffer. EfficientNet-B0's first projections scale 32 x 16 weights where
the Mul scaled 32 x 112 x 112 inputs (130 us a run at one thread).

Guards: the Mul is a blocked chain member, blocked in and out (bninfer.ops.excite_blocked); its output is
read once, by a blocked 1x1 conv as its X (not as a residual), and is no graph output; the conv takes no
factors yet; its weights are at most half as many values as the Mul's input (COUT <= H * W / 2: at 7x7,
EfficientNet-B0's 1152 -> 192 weights outnumber the inputs four to one).
"""
from __future__ import annotations

from ..ir import Graph
from ..ops import fusion
from . import match
from .layout import ATTR

# the most weights a conv scales per value the Mul would scale (COUT <= this x H x W)
WEIGHTS_PER_INPUT = 0.5


def run(graph: Graph) -> None:
    """Rewrite `graph` (a layout copy) in place."""
    for mul in [n for n in graph.nodes if n.op == "Mul" and n.attrs.get(ATTR)]:
        marks = mul.attrs[ATTR]
        conv = match.only_consumer(graph, mul.outputs[0])
        if not (marks.x and marks.y) or conv is None or not _takes_factors(conv, mul.outputs[0]):
            continue
        k = [pos for pos in (0, 1) if len(graph.values[mul.inputs[pos]].shape) == 5][0]  # the blocked one
        _, _, h, w, _ = graph.values[mul.outputs[0]].shape  # unpadded: only a 1x1 conv reads it
        if int(graph.values[conv.inputs[1]].shape[0]) > WEIGHTS_PER_INPUT * h * w:
            continue
        conv.inputs[0] = mul.inputs[k]
        fusion.add_extra(conv, "channel_scale", mul.inputs[1 - k])
        graph.remove_node(mul)
        graph.values.pop(mul.outputs[0], None)


def _takes_factors(conv, value: str) -> bool:
    """Whether `conv` is a blocked 1x1 conv reading `value` as its X, with no factors yet: a marked conv
    reading a blocked X with group 1 is one (bninfer.ops.conv_blocked.blocked_kind: a depthwise conv has
    groups, a stem reads NCHW)."""
    marks = conv.attrs.get(ATTR) if conv.op == "Conv" else None
    return (marks is not None and marks.x and conv.inputs[0] == value and int(conv.attrs.get("group", 1)) == 1
            and fusion.extra(conv, "channel_scale") is None)
