"""Reductions (Reduce*, ArgMax/ArgMin) and the softmax family (Softmax, LogSoftmax, Hardmax).

All of them are numpy ufunc reductions writing into the preallocated output: numpy's float32 kernels
are SIMD (AVX-512 exp, pairwise sums), which a scalar Numba loop without fastmath does not match. The
same code serves constant folding on any dtype (shape arithmetic on int64).

Softmax-family layout: the input is viewed as (outer, n, inner) and normalized over n. From opset 13
that is the one axis (inner = the dims after it); before opset 13 (node.attrs["coerce_2d"]) the input is
flattened to 2-D at `axis` and normalized over the whole trailing block (n = prod(shape[axis:]),
inner = 1).
"""
from __future__ import annotations

import numpy as np

from ..errors import ModelError
from . import const_ints, normalize_axis, register, require_float32

# -- Reduce* --------------------------------------------------------------------------------------------

_REDUCE_OPS = ("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
               "ReduceSumSquare", "ReduceLogSum", "ReduceLogSumExp")


def _reduce_axes(node, ins) -> tuple[int, ...]:
    """Normalized, sorted axes to reduce. No axes with noop_with_empty_axes gives (): a reduction over
    one element each, which still applies the op's elementwise part (abs, square, log), as onnxruntime
    does."""
    rank = len(ins[0].shape)
    if len(ins) > 1 and ins[1] is not None:
        axes = const_ints(node, ins[1], "axes")
    else:
        axes = node.attrs.get("axes")  # opset < 18 form, if a converter left it as an attribute
        axes = None if axes is None else [int(a) for a in np.asarray(axes).reshape(-1)]
    if not axes:
        return () if int(node.attrs.get("noop_with_empty_axes", 0)) else tuple(range(rank))
    norm = [normalize_axis(node, a, rank, "axes entry") for a in axes]
    if len(set(norm)) != len(norm):
        raise ModelError(f"node {node.name!r} ({node.op}): axes {axes} repeat an axis")
    return tuple(sorted(norm))


def _reduce_infer(node, ins):
    shape = tuple(int(d) for d in ins[0].shape)
    axes = _reduce_axes(node, ins)
    if int(node.attrs.get("keepdims", 1)):
        out = tuple(1 if k in axes else d for k, d in enumerate(shape))
    else:
        out = tuple(d for k, d in enumerate(shape) if k not in axes)
    return [(out, ins[0].dtype)]


def _empty_value(op: str, dtype) -> float:
    """What a reduction over zero elements gives (ONNX: the reduction's identity)."""
    if op in ("ReduceMax", "ReduceLogSumExp"):
        return -np.inf if np.issubdtype(dtype, np.floating) else np.iinfo(dtype).min
    if op == "ReduceMin":
        return np.inf if np.issubdtype(dtype, np.floating) else np.iinfo(dtype).max
    if op == "ReduceProd":
        return 1
    if op == "ReduceLogSum":
        return -np.inf
    if op == "ReduceMean":
        return np.nan if np.issubdtype(dtype, np.floating) else 0
    return 0


def _reduce_float(op: str, x: np.ndarray, axes: tuple, y: np.ndarray, count: int) -> None:
    """y (keepdims shape) = reduction of float32 x over axes."""
    if op == "ReduceSum":
        np.add.reduce(x, axis=axes, keepdims=True, out=y)
    elif op == "ReduceMean":
        np.add.reduce(x, axis=axes, keepdims=True, out=y)
        np.divide(y, np.float32(count), out=y)
    elif op == "ReduceMax":
        np.maximum.reduce(x, axis=axes, keepdims=True, out=y)
    elif op == "ReduceMin":
        np.minimum.reduce(x, axis=axes, keepdims=True, out=y)
    elif op == "ReduceProd":
        np.multiply.reduce(x, axis=axes, keepdims=True, out=y)
    elif op == "ReduceL1":
        np.add.reduce(np.abs(x), axis=axes, keepdims=True, out=y)
    elif op in ("ReduceL2", "ReduceSumSquare"):
        np.add.reduce(np.square(x), axis=axes, keepdims=True, out=y)
        if op == "ReduceL2":
            np.sqrt(y, out=y)
    elif op == "ReduceLogSum":
        np.add.reduce(x, axis=axes, keepdims=True, out=y)
        np.log(y, out=y)
    elif op == "ReduceLogSumExp":
        # max + log(sum(exp(x - max))): no overflow; a row of -inf gives -inf, NaN propagates.
        m = np.maximum.reduce(x, axis=axes, keepdims=True)
        finite = np.where(np.isfinite(m), m, np.float32(0))
        np.add.reduce(np.exp(x - finite), axis=axes, keepdims=True, out=y)
        np.log(y, out=y)
        np.add(y, finite, out=y)
    else:  # pragma: no cover - registry and table agree
        raise AssertionError(op)


def _reduce_generic(op: str, x: np.ndarray, axes: tuple) -> np.ndarray:
    """Any-dtype reduction (constant folding), keepdims shape."""
    kw = dict(axis=axes, keepdims=True)
    if op == "ReduceSum":
        return np.sum(x, **kw)
    if op == "ReduceMean":
        s = np.sum(x, **kw)
        n = max(int(np.prod([x.shape[a] for a in axes], dtype=np.int64)), 1)
        return s / n if np.issubdtype(x.dtype, np.floating) else np.trunc(s / n)
    if op == "ReduceMax":
        return np.max(x, **kw)
    if op == "ReduceMin":
        return np.min(x, **kw)
    if op == "ReduceProd":
        return np.prod(x, **kw)
    if op == "ReduceL1":
        return np.sum(np.abs(x), **kw)
    if op == "ReduceL2":
        return np.sqrt(np.sum(np.square(x), **kw))
    if op == "ReduceSumSquare":
        return np.sum(np.square(x), **kw)
    if op == "ReduceLogSum":
        return np.log(np.sum(x, **kw))
    if op == "ReduceLogSumExp":
        return np.log(np.sum(np.exp(x), **kw))
    raise AssertionError(op)  # pragma: no cover


@register(*_REDUCE_OPS, infer=_reduce_infer, const_inputs=(1,))
def _reduce(node, ins, outs):
    op = node.op
    axes = _reduce_axes(node, ins)
    shape = tuple(int(d) for d in ins[0].shape)
    kshape = tuple(1 if k in axes else d for k, d in enumerate(shape))
    count = int(np.prod([shape[a] for a in axes], dtype=np.int64))
    empty = count == 0
    fill = _empty_value(op, ins[0].dtype)

    if ins[0].dtype != np.float32:
        if ins[0].data is None:
            require_float32(node, ins[:1])

        def run_generic(i, o):
            if empty:
                o[0].fill(fill)
            else:
                np.copyto(o[0], _reduce_generic(op, i[0], axes).reshape(o[0].shape), casting="unsafe")
        return run_generic

    quiet = op in ("ReduceLogSum", "ReduceLogSumExp")  # log(0) = -inf is a result, not an error

    def run(i, o):
        y = o[0].reshape(kshape)
        if empty:
            y.fill(fill)
        elif quiet:
            with np.errstate(all="ignore"):
                _reduce_float(op, i[0], axes, y, count)
        else:
            _reduce_float(op, i[0], axes, y, count)
    return run


# -- ArgMax / ArgMin ---------------------------------------------------------------------------------

def _arg_infer(node, ins):
    shape = tuple(int(d) for d in ins[0].shape)
    axis = normalize_axis(node, int(node.attrs.get("axis", 0)), len(shape))
    if shape and shape[axis] == 0:
        raise ModelError(f"node {node.name!r} ({node.op}): axis {axis} has size 0")
    if int(node.attrs.get("keepdims", 1)):
        out = shape[:axis] + (1,) + shape[axis + 1:]
    else:
        out = shape[:axis] + shape[axis + 1:]
    return [(out, np.dtype(np.int64))]


@register("ArgMax", "ArgMin", infer=_arg_infer)
def _arg(node, ins, outs):
    shape = tuple(int(d) for d in ins[0].shape)
    axis = normalize_axis(node, int(node.attrs.get("axis", 0)), len(shape))
    last = bool(node.attrs.get("select_last_index", 0))
    fn = np.argmax if node.op == "ArgMax" else np.argmin
    n = shape[axis] if shape else 1

    def run(i, o):
        x = i[0]
        if last:
            idx = (n - 1) - fn(np.flip(x, axis=axis), axis=axis)
        else:
            idx = fn(x, axis=axis)
        np.copyto(o[0], idx.reshape(o[0].shape), casting="unsafe")
    return run


# -- Softmax, LogSoftmax, Hardmax --------------------------------------------------------------------

def _softmax_layout(node, shape: tuple) -> tuple[int, int, int]:
    rank = len(shape)
    default = 1 if node.attrs.get("coerce_2d") else -1
    axis = normalize_axis(node, int(node.attrs.get("axis", default)), rank)
    if rank == 0:
        return 1, 1, 1
    outer = int(np.prod(shape[:axis], dtype=np.int64))
    if node.attrs.get("coerce_2d"):
        return outer, int(np.prod(shape[axis:], dtype=np.int64)), 1
    return outer, int(shape[axis]), int(np.prod(shape[axis + 1:], dtype=np.int64))


def _softmax_infer(node, ins):
    _softmax_layout(node, tuple(ins[0].shape))
    return [(ins[0].shape, ins[0].dtype)]


@register("Softmax", "LogSoftmax", "Hardmax", infer=_softmax_infer)
def _softmax(node, ins, outs):
    if ins[0].data is None or not np.issubdtype(ins[0].dtype, np.floating):
        require_float32(node, ins[:1])
    shape3 = _softmax_layout(node, tuple(int(d) for d in ins[0].shape))
    op = node.op
    if shape3[1] == 0 or 0 in shape3:
        return lambda i, o: None

    if op == "Hardmax":
        def run_hardmax(i, o):
            x, y = i[0].reshape(shape3), o[0].reshape(shape3)
            idx = np.argmax(x, axis=1)[:, None, :]
            y.fill(0)
            np.put_along_axis(y, idx, 1, axis=1)
        return run_hardmax

    log = op == "LogSoftmax"

    def run(i, o):
        x, y = i[0].reshape(shape3), o[0].reshape(shape3)
        with np.errstate(all="ignore"):  # inf/NaN inputs give NaN rows, as in onnxruntime, silently
            m = np.maximum.reduce(x, axis=1, keepdims=True)  # NaN in a row -> the whole row NaN
            np.subtract(x, m, out=y)
            np.exp(y, out=y)
            s = np.add.reduce(y, axis=1, keepdims=True)
            if log:  # (x - max) - log(sum): y is recomputed rather than kept in a temporary
                np.log(s, out=s)
                np.subtract(x, m, out=y)
                np.subtract(y, s, out=y)
            else:
                np.divide(y, s, out=y)
    return run
