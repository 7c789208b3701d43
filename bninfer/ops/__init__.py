"""The op registry: for each IR op, how to infer its output shapes and how to build its kernel call.

An op is registered with

    @register("Relu", infer=same_as_input)
    def build(node, ins, outs):          # ins/outs: ir.Value (shapes static, constants carry .data)
        ...
        return run                       # run(in_arrays, out_arrays) -> None, writes into out_arrays

`infer(node, ins)` returns one (shape, dtype) per output and raises ModelError on inconsistent inputs.
Shapes are always concrete here: the session binds input shapes before inference. `run` receives
contiguous arrays (None for an omitted optional input) and preallocated contiguous outputs; it may be
called from several threads at once on different buffers, so it must keep no mutable state.
Inputs listed in `const_inputs` (shape tensors, axes, scales, ...) must be constants at plan time.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from ..errors import ModelError, UnsupportedOperatorError
from ..ir import Node, Value

Run = Callable[[list, list], None]
Infer = Callable[[Node, list], list]


@dataclass(frozen=True)
class OpDef:
    name: str
    infer: Infer
    build: Callable[[Node, list, list], Run]
    const_inputs: tuple[int, ...] = ()
    # Evaluate on constants at load time? False for ops whose constant folding would only bloat the
    # model (none yet) or that must stay visible.
    foldable: bool = True


REGISTRY: dict[str, OpDef] = {}


def register(*names: str, infer: Infer, const_inputs: Sequence[int] = (), foldable: bool = True):
    def deco(build):
        for name in names:
            REGISTRY[name] = OpDef(name, infer, build, tuple(const_inputs), foldable)
        return build
    return deco


# -- helpers shared by op definitions ---------------------------------------------------------------

def same_as_input(node: Node, ins: list) -> list:
    return [(ins[0].shape, ins[0].dtype)]


def broadcast_shapes(node: Node, *shapes: tuple) -> tuple:
    try:
        return tuple(int(d) for d in np.broadcast_shapes(*shapes))
    except ValueError:
        raise ModelError(f"node {node.name!r} ({node.op}): input shapes {list(shapes)} do not broadcast") \
            from None


def normalize_axis(node: Node, axis: int, rank: int, what: str = "axis") -> int:
    if not -rank <= axis < rank:  # a scalar (rank 0) has no axis at all
        raise ModelError(f"node {node.name!r} ({node.op}): {what} {axis} is out of range for rank {rank}")
    return axis % rank


def require_float32(node: Node, ins: list) -> None:
    for v in ins:
        if v is not None and v.dtype != np.float32:
            raise UnsupportedOperatorError(
                f"node {node.name!r} ({node.op}): input {v.name!r} has dtype {v.dtype}; "
                f"bninfer computes this op in float32 only", [node.name])


def const_ints(node: Node, v: Value | None, what: str) -> list[int] | None:
    """The integer list held by a constant input, or None when the input is omitted."""
    if v is None:
        return None
    if v.data is None:
        raise UnsupportedOperatorError(
            f"node {node.name!r} ({node.op}): input {what} ({v.name!r}) must be a constant", [node.name])
    return [int(x) for x in np.asarray(v.data).reshape(-1)]


_loaded = False


def _load_all() -> None:
    """Import every op module (importing one registers its ops). Guarded by a flag, not by the registry
    being empty: a caller may have imported one op module directly before."""
    global _loaded
    if not _loaded:
        from . import elementwise, conv, pool, shape, reduce, norm, matmul, resize  # noqa: F401
        _loaded = True


def get(op: str) -> OpDef | None:
    _load_all()
    return REGISTRY.get(op)


def supported_ops() -> set[str]:
    _load_all()
    return set(REGISTRY)
