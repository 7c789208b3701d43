"""Place every BatchNormalization that could not fold into weights as a per-channel scale+shift inside a
neighbouring kernel, never as a pass of its own:

- after a fused activation or residual (Conv -> ReLU -> BN): the producer's epilogue applies
  s·y + t after the activation (post affine);
- before convolutions (pre-activation ResNet, DenseNet: BN -> ReLU -> Conv, and BN -> Conv) and global
  pools (their final BN -> ReLU -> GlobalAveragePool): every reader applies act(s·x + t) to the
  in-bounds input elements it loads (prologue), which keeps zero padding exact where folding forward
  into the weights would not;
- otherwise the BN stays a single kernel that also runs the activation fused into it (one pass).

Runs after activation fusion, so a BN followed by an activation has that activation fused into it.
"""
from __future__ import annotations

import numpy as np

from ..ir import Graph, Node
from ..ops import fusion
from . import match
from .report import Report


def run(g: Graph, report: Report) -> None:
    for bn in [n for n in g.nodes if n.op == "BatchNormalization"]:
        params = match.channel_params(g, bn)
        if params is None or fusion.extra(bn, "residual") is not None or \
                fusion.extra(bn, "post_scale") is not None:
            _keep(bn, report, "its parameters are not constant or not per channel" if params is None else
                  "it carries a residual")
            continue
        s, t, _ = params
        where = _into_producer(g, bn, s, t) or _into_consumers(g, bn, s, t)
        if where:
            report.batchnorms.append(f"{bn.name!r}: {where}")
        else:
            _keep(bn, report, "no neighbouring kernel can take it")


def _keep(bn: Node, report: Report, why: str) -> None:
    act = bn.attrs.get("activation")
    fused = f" with {act[0]} fused" if act else ""
    report.batchnorms.append(f"{bn.name!r}: kept as one scale+shift kernel{fused} ({why})")


def _into_producer(g: Graph, bn: Node, s: np.ndarray, t: np.ndarray) -> str | None:
    """Post affine in the producer's epilogue (the producer has an activation or residual: otherwise the
    BN would have been folded into its weights)."""
    if bn.attrs.get("activation"):
        return None  # the BN's own activation would have to follow the affine: not in the epilogue
    producer = g.producer(bn.inputs[0])
    if producer is None or producer.op not in match.EPILOGUE_OPS or match.only_consumer(g, bn.inputs[0]) is not bn:
        return None
    if fusion.extra(producer, "post_scale") is not None:
        return None
    shape = g.values[producer.outputs[0]].shape
    axis = match.EPILOGUE_OPS[producer.op] % len(shape)
    if axis != 1 or shape[1] != s.size:
        return None  # Gemm/MatMul epilogues run along the last axis: BN's channel must be that axis
    fusion.add_extra(producer, "post_scale", g.add_const(f"{bn.name}_scale", s.astype(np.float32)))
    fusion.add_extra(producer, "post_shift", g.add_const(f"{bn.name}_shift", t.astype(np.float32)))
    match.absorb(g, producer, bn)
    return f"scale+shift in the epilogue of {producer.op} {producer.name!r} (after its " \
           f"{(producer.attrs.get('activation') or ('residual',))[0]})"


def _into_consumers(g: Graph, bn: Node, s: np.ndarray, t: np.ndarray) -> str | None:
    """Prologue of every Conv that reads the BN's output (with the BN's fused activation)."""
    out = bn.outputs[0]
    readers = g.consumers(out)
    if out in g.outputs or not readers:
        return None
    for r in readers:
        if r.op not in match.PROLOGUE_OPS or r.inputs[0] != out or r.inputs.count(out) != 1:
            return None
        if fusion.extra(r, "pre_scale") is not None or r.attrs.get("pre_activation"):
            return None
        if g.values[r.inputs[0]].shape[1] != s.size:
            return None
    scale = g.add_const(f"{bn.name}_scale", s.astype(np.float32))
    shift = g.add_const(f"{bn.name}_shift", t.astype(np.float32))
    act = bn.attrs.get("activation")
    slope_pos = fusion.extra(bn, "slope")
    for r in readers:
        r.inputs[0] = bn.inputs[0]
        fusion.add_extra(r, "pre_scale", scale)
        fusion.add_extra(r, "pre_shift", shift)
        if act:
            r.attrs["pre_activation"] = act
            if slope_pos is not None:
                fusion.add_extra(r, "pre_slope", bn.inputs[slope_pos])
    g.remove_node(bn)
    g.values.pop(out, None)
    names = ", ".join(f"{r.op} {r.name!r}" for r in readers)
    with_act = f" and {act[0]}" if act else ""
    return f"scale+shift{with_act} in the prologue of {names}"
