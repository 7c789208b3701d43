"""Squeeze-excitation on channel-blocked values (bninfer.kernels.blocked), for the chains
bninfer.passes.layout marks: GlobalAveragePool reading a blocked value (its (N, C, 1, 1) output is plain
NCHW), and the Mul that scales a blocked value by one factor per channel (blocked out).

EfficientNet's block runs depthwise conv -> squeeze-excitation -> 1x1 project: with these two ops in the
chain, the depthwise conv's output stays blocked, as MobileNetV2's does.
"""
from __future__ import annotations

import numpy as np

from .. import record, threads
from ..errors import ModelError
from ..kernels import blocked as BK
from ..kernels import conv_direct as CD
from ..kernels import elementwise as EK
from . import fusion
from .conv import _PaddedInput


def _four_d(shape) -> tuple | None:
    shape = tuple(int(d) for d in shape)
    return (1,) * (4 - len(shape)) + shape if len(shape) <= 4 else None


def scaled_input(node, ins) -> int | None:
    """For a Mul of a 4-D float32 value (N, C, H, W) by per-channel factors (N or 1, C, 1, 1): the
    position of the value; None for any other node."""
    if node.op != "Mul" or len(ins) != 2 or any(v is None or v.shape is None for v in ins):
        return None
    if any(v.dtype != np.float32 for v in ins) or node.attrs:  # nothing fused into it
        return None
    for k in (0, 1):
        x, s = ins[k], _four_d(ins[1 - k].shape)
        if len(x.shape) != 4 or s is None or node.inputs[0] == node.inputs[1]:
            continue
        n, c, h, w = (int(d) for d in x.shape)
        if s[0] in (1, n) and s[1:] == (c, 1, 1) and h * w > 1:
            return k
    return None


def se_kind(node, ins) -> str | None:
    """"gap" for a GlobalAveragePool of a 4-D float32 value with nothing fused into it, "scale" for a
    per-channel Mul (scaled_input); None otherwise."""
    if node.op == "GlobalAveragePool":
        x = ins[0] if ins else None
        if x is None or x.shape is None or len(x.shape) != 4 or x.dtype != np.float32:
            return None
        try:
            return None if fusion.prologue(node, ins, int(x.shape[1])).has_pre else "gap"
        except (ModelError, ValueError, TypeError):
            return None  # the plain build reports it
    return "scale" if scaled_input(node, ins) is not None else None


def build(node, ins, outs):
    """The run of a marked GlobalAveragePool or Mul: its blocked input is (N, NB, H, W, 16)."""
    if node.op == "GlobalAveragePool":
        return _gap(ins, outs)
    return _scale(node, ins, outs)


# Both ops stream their tensor once, memory-bound: for the threads' split thresholds an element counts as
# the multiply-adds a conv does in the time (~0.5 ns an element scaled, ~0.25 summed, at ~40 a ns)
_SCALE_MACS, _GAP_MACS = 20, 10


def _gap(ins, outs):
    n, nb, h, w, _ = ins[0].shape
    C = int(outs[0].shape[1])
    P = h * w
    CD.compile_now(BK.global_avg, BK.GAP_SIG)
    xs = nb * P * BK.CB
    tables = [threads.PartTables() for _ in range(n)]

    def run(i, o):
        x, y = i[0].reshape(-1), o[0].reshape(-1)
        for k in range(n):
            xk, yk = x[k * xs:(k + 1) * xs], y[k * C:(k + 1) * C]

            def blocks(b0, b1, xk=xk, yk=yk):  # the channels of blocks [b0, b1)
                c0, c1 = b0 * BK.CB, min(C, b1 * BK.CB)
                return [(BK.global_avg, (xk[b0 * P * BK.CB:b1 * P * BK.CB], yk[c0:c1], c1 - c0, P))]
            threads.split_calls(blocks, nb, _GAP_MACS * xs, 1, tables[k],
                                lambda: threads.owners(x, y) + tuple(i) + tuple(o))
    return record.recordable(run)


def _scale(node, ins, outs):
    k = [pos for pos in (0, 1) if len(ins[pos].shape) == 5][0]  # the blocked operand
    n, nb, h, w, _ = ins[k].shape
    s_shape = _four_d(ins[1 - k].shape)
    C = s_shape[1]
    per_image = s_shape[0] > 1
    P = h * w
    CD.compile_now(BK.scale_channels, BK.SCALE_SIG)
    xs = nb * P * BK.CB
    factors = _PaddedInput(nb * BK.CB)  # the factors padded to whole blocks (zeros past C stay zero)
    tables = [threads.PartTables() for _ in range(n)]

    def run(i, o):
        x, s, y = i[k].reshape(-1), i[1 - k].reshape(-1), o[0].reshape(-1)
        f = factors.get()
        for m in range(n):
            record.call(EK.copy, s[m * C:(m + 1) * C] if per_image else s[:C], f[:C])
            xm, ym = x[m * xs:(m + 1) * xs], y[m * xs:(m + 1) * xs]

            def blocks(b0, b1, xm=xm, ym=ym):
                a, b = b0 * P * BK.CB, b1 * P * BK.CB
                return [(BK.scale_channels, (xm[a:b], f[b0 * BK.CB:b1 * BK.CB], ym[a:b], b1 - b0, P))]
            threads.split_calls(blocks, nb, _SCALE_MACS * xs, 1, tables[m],
                                lambda: threads.owners(x, y, f) + tuple(i) + tuple(o) + (f,))
    return record.recordable(run)
