"""Data-movement and shape ops: Concat, Split, Slice, Flatten, Reshape, Transpose, Squeeze, Unsqueeze, Pad,
Shape, Size, Gather, ConstantOfShape, Range, Expand, Tile.

Everything here is numpy: these ops also run at load time on constants of any dtype (int64 shape
tensors, bool masks), and at run time they are plain copies (float32 reshapes by a kernel, which a
recorded plan calls natively: bninfer.record). Every index, shape, axis or pad is worked
out at plan time (shape tensors are constants: see `const_inputs`), so `run` only moves data.
"""
from __future__ import annotations

import math

import numpy as np

from .. import record
from ..errors import ModelError, UnsupportedOperatorError
from ..kernels import elementwise as EK
from . import broadcast_shapes, const_ints, normalize_axis, register


def _opt(ins: list, k: int):
    """Input k, or None when it is omitted (absent or "")."""
    return ins[k] if k < len(ins) else None


def _err(node, message: str) -> ModelError:
    return ModelError(f"node {node.name!r} ({node.op}): {message}")


def _prod(dims) -> int:
    p = 1
    for d in dims:
        p *= int(d)
    return p


def _axes(node, axes, rank: int, what: str = "axes") -> list[int]:
    out = [normalize_axis(node, a, rank, what) for a in axes]
    if len(set(out)) != len(out):
        raise _err(node, f"{what} {list(axes)} repeat an axis")
    return out


def _copy_reshaped(i, o):
    """Reshape-like ops: the data does not change, only the shape (one contiguous copy)."""
    np.copyto(o[0], i[0].reshape(o[0].shape))


@record.recordable
def _copy_flat(i, o):
    """_copy_reshaped for float32 values, by a kernel a recorded plan can call (bninfer.record)."""
    record.call(EK.copy, i[0].reshape(-1), o[0].reshape(-1))


def _reshaped(node, ins, outs):
    return _copy_flat if ins[0].dtype == np.float32 and ins[0].data is None else _copy_reshaped


# -- Concat ------------------------------------------------------------------------------------------

def _concat_axis(node, ins) -> int:
    if not ins or any(v is None for v in ins):
        raise _err(node, "needs at least one input and no omitted inputs")
    if node.attrs.get("axis") is None:
        raise _err(node, "the axis attribute is required")
    return normalize_axis(node, int(node.attrs["axis"]), len(ins[0].shape))


def _concat_infer(node, ins):
    axis = _concat_axis(node, ins)
    first = tuple(ins[0].shape)
    total = 0
    for v in ins:
        shape = tuple(v.shape)
        if len(shape) != len(first):
            raise _err(node, f"inputs have different ranks: {first} and {shape} ({v.name!r})")
        if shape[:axis] + shape[axis + 1:] != first[:axis] + first[axis + 1:]:
            raise _err(node, f"input {v.name!r} has shape {shape}, which does not match {first} outside "
                             f"axis {axis}")
        if v.dtype != ins[0].dtype:
            raise _err(node, f"inputs have different dtypes {ins[0].dtype} and {v.dtype} ({v.name!r})")
        total += shape[axis]
    return [(first[:axis] + (total,) + first[axis + 1:], ins[0].dtype)]


@register("Concat", infer=_concat_infer)
def _concat(node, ins, outs):
    axis = _concat_axis(node, ins)
    shapes = [tuple(v.shape) for v in ins]

    def run(i, o):
        np.concatenate([a.reshape(s) for a, s in zip(i, shapes)], axis=axis, out=o[0])
    return run


# -- Split -------------------------------------------------------------------------------------------

def _split_sizes(node, ins) -> tuple[int, list[int]]:
    shape = ins[0].shape
    axis = normalize_axis(node, int(node.attrs.get("axis", 0)), len(shape))
    dim = shape[axis]
    n = len(node.outputs)
    split = const_ints(node, _opt(ins, 1), "split")
    num_outputs = node.attrs.get("num_outputs")
    if split:  # an empty split tensor reads as "not given"
        if len(split) != n:
            raise _err(node, f"split {split} has {len(split)} entries for {n} outputs")
        if any(s < 0 for s in split):
            raise _err(node, f"split {split} has a negative size")
        if sum(split) != dim:
            raise _err(node, f"split sizes {split} sum to {sum(split)}, but axis {axis} of input shape "
                             f"{tuple(shape)} has {dim}")
        return axis, split
    if num_outputs is not None:
        num_outputs = int(num_outputs)
        if num_outputs != n:
            raise _err(node, f"num_outputs={num_outputs} but the node has {n} outputs")
        chunk = -(-dim // n)  # ceil: every chunk but the last has this size
        last = dim - chunk * (n - 1)
        if last < 0:
            raise _err(node, f"axis {axis} of size {dim} cannot be split into {n} chunks of {chunk}")
        return axis, [chunk] * (n - 1) + [last]
    if n == 0 or dim % n:
        raise _err(node, f"axis {axis} of size {dim} does not split evenly into {n} outputs")
    return axis, [dim // n] * n


def _split_infer(node, ins):
    axis, sizes = _split_sizes(node, ins)
    shape = tuple(ins[0].shape)
    return [(shape[:axis] + (s,) + shape[axis + 1:], ins[0].dtype) for s in sizes]


@register("Split", infer=_split_infer, const_inputs=(1,))
def _split(node, ins, outs):
    axis, sizes = _split_sizes(node, ins)
    shape = tuple(ins[0].shape)
    lead = (slice(None),) * axis
    slices, start = [], 0
    for s in sizes:
        slices.append(lead + (slice(start, start + s),))
        start += s

    def run(i, o):
        x = i[0].reshape(shape)
        for out, sl in zip(o, slices):
            np.copyto(out, x[sl])
    return run


# -- Slice -------------------------------------------------------------------------------------------

def _slice_plan(node, ins) -> tuple[tuple, tuple[int, ...]]:
    """The numpy index of the slice and the output shape."""
    shape = tuple(ins[0].shape)
    rank = len(shape)
    starts = const_ints(node, _opt(ins, 1), "starts")
    ends = const_ints(node, _opt(ins, 2), "ends")
    if starts is None or ends is None:
        raise _err(node, "starts and ends are required")
    axes = const_ints(node, _opt(ins, 3), "axes")
    steps = const_ints(node, _opt(ins, 4), "steps")
    axes = list(range(len(starts))) if axes is None else axes
    steps = [1] * len(starts) if steps is None else steps
    if not len(starts) == len(ends) == len(axes) == len(steps):
        raise _err(node, f"starts {starts}, ends {ends}, axes {axes} and steps {steps} must have the same "
                         f"length")
    axes = _axes(node, axes, rank)
    index = [slice(None)] * rank
    out = list(shape)
    for ax, s, e, st in zip(axes, starts, ends, steps):
        d = shape[ax]
        if st == 0:
            raise _err(node, f"step 0 on axis {ax}")
        if s < 0:
            s += d
        if e < 0:
            e += d
        if d == 0:
            index[ax], out[ax] = slice(0, 0), 0
            continue
        if st > 0:
            s, e = min(max(s, 0), d), min(max(e, 0), d)
        else:
            s, e = min(max(s, 0), d - 1), min(max(e, -1), d - 1)
        out[ax] = len(range(s, e, st))
        index[ax] = slice(s, e if e >= 0 else None, st)
    return tuple(index), tuple(out)


def _slice_infer(node, ins):
    return [(_slice_plan(node, ins)[1], ins[0].dtype)]


@register("Slice", infer=_slice_infer, const_inputs=(1, 2, 3, 4))
def _slice(node, ins, outs):
    index, _ = _slice_plan(node, ins)
    shape = tuple(ins[0].shape)
    return lambda i, o: np.copyto(o[0], i[0].reshape(shape)[index])


# -- Flatten, Reshape, Squeeze, Unsqueeze ------------------------------------------------------------

def _flatten_infer(node, ins):
    shape = tuple(ins[0].shape)
    rank = len(shape)
    axis = int(node.attrs.get("axis", 1))
    if not -rank <= axis <= rank:
        raise _err(node, f"axis {axis} is out of range for rank {rank}")
    if axis < 0:
        axis += rank
    return [((_prod(shape[:axis]), _prod(shape[axis:])), ins[0].dtype)]


def _reshape_infer(node, ins):
    in_shape = tuple(ins[0].shape)
    shape = const_ints(node, _opt(ins, 1), "shape")
    if shape is None:
        raise _err(node, "the shape input is required")
    allowzero = int(node.attrs.get("allowzero", 0))
    out, infer_at = [], -1
    for k, d in enumerate(shape):
        if d == -1:
            if infer_at >= 0:
                raise _err(node, f"shape {shape} has more than one -1")
            infer_at = k
            out.append(1)
        elif d == 0 and not allowzero:
            if k >= len(in_shape):
                raise _err(node, f"shape {shape} copies dimension {k} (0), but the input {in_shape} has "
                                 f"rank {len(in_shape)}")
            out.append(in_shape[k])
        elif d < 0:
            raise _err(node, f"shape {shape} has invalid dimension {d}")
        else:
            out.append(d)
    total = _prod(in_shape)
    if infer_at >= 0:
        if allowzero and 0 in shape:
            raise _err(node, f"shape {shape} has both -1 and 0 with allowzero=1")
        known = _prod(out)
        if known == 0 or total % known:
            raise _err(node, f"cannot reshape input of shape {in_shape} ({total} elements) to {shape}")
        out[infer_at] = total // known
    if _prod(out) != total:
        raise _err(node, f"cannot reshape input of shape {in_shape} ({total} elements) to {tuple(out)} "
                         f"({_prod(out)} elements)")
    return [(tuple(out), ins[0].dtype)]


def _squeeze_infer(node, ins):
    shape = tuple(ins[0].shape)
    axes = const_ints(node, _opt(ins, 1), "axes")
    if not axes:  # absent or empty: every dimension of size 1
        return [(tuple(d for d in shape if d != 1), ins[0].dtype)]
    axes = _axes(node, axes, len(shape))
    for a in axes:
        if shape[a] != 1:
            raise _err(node, f"cannot squeeze axis {a} of size {shape[a]} (input shape {shape})")
    return [(tuple(d for k, d in enumerate(shape) if k not in axes), ins[0].dtype)]


def _unsqueeze_infer(node, ins):
    shape = tuple(ins[0].shape)
    axes = const_ints(node, _opt(ins, 1), "axes")
    if axes is None:
        raise _err(node, "the axes input is required")
    rank = len(shape) + len(axes)
    axes = _axes(node, axes, rank)
    rest = iter(shape)
    return [(tuple(1 if k in axes else next(rest) for k in range(rank)), ins[0].dtype)]


register("Flatten", infer=_flatten_infer)(_reshaped)
register("Reshape", infer=_reshape_infer, const_inputs=(1,))(_reshaped)
register("Squeeze", infer=_squeeze_infer, const_inputs=(1,))(_reshaped)
register("Unsqueeze", infer=_unsqueeze_infer, const_inputs=(1,))(_reshaped)


# -- Transpose ---------------------------------------------------------------------------------------

def _perm(node, rank: int) -> list[int]:
    perm = node.attrs.get("perm")
    if perm is None:
        return list(range(rank))[::-1]
    perm = [int(p) for p in perm]
    if sorted(perm) != list(range(rank)):
        raise _err(node, f"perm {perm} is not a permutation of the {rank} axes")
    return perm


def _transpose_infer(node, ins):
    shape = tuple(ins[0].shape)
    return [(tuple(shape[p] for p in _perm(node, len(shape))), ins[0].dtype)]


@register("Transpose", infer=_transpose_infer)
def _transpose(node, ins, outs):
    shape = tuple(ins[0].shape)
    perm = _perm(node, len(shape))
    return lambda i, o: np.copyto(o[0], i[0].reshape(shape).transpose(perm))


# -- Pad ---------------------------------------------------------------------------------------------

_PAD_MODES = {"constant", "reflect", "edge", "wrap"}


def _pad_plan(node, ins) -> tuple[list[int], list[int], str]:
    shape = tuple(ins[0].shape)
    rank = len(shape)
    mode = node.attrs.get("mode", "constant")
    if mode not in _PAD_MODES:
        raise UnsupportedOperatorError(f"node {node.name!r} (Pad): mode {mode!r} is not supported",
                                       [node.name])
    pads = const_ints(node, _opt(ins, 1), "pads")
    if pads is None:
        raise _err(node, "the pads input is required")
    axes = const_ints(node, _opt(ins, 3), "axes")
    axes = list(range(rank)) if axes is None else _axes(node, axes, rank)
    if len(pads) != 2 * len(axes):
        raise _err(node, f"pads {pads} must have 2 x {len(axes)} entries")
    begin, end = [0] * rank, [0] * rank
    for k, a in enumerate(axes):
        begin[a], end[a] = pads[k], pads[k + len(axes)]
    for a in range(rank):
        d = shape[a]
        if d + begin[a] + end[a] < 0:
            raise _err(node, f"pads {pads} crop axis {a} of size {d} below zero")
        if mode != "constant" and (begin[a] > 0 or end[a] > 0):
            kept = d + min(begin[a], 0) + min(end[a], 0)
            if kept <= 0:
                raise _err(node, f"mode {mode!r} cannot pad axis {a}, which is empty")
            if mode == "reflect" and max(begin[a], end[a]) >= kept:
                raise _err(node, f"mode 'reflect' pads axis {a} of size {kept} by {max(begin[a], end[a])}, "
                                 f"more than size - 1")
    return begin, end, mode


def _pad_infer(node, ins):
    begin, end, _ = _pad_plan(node, ins)
    return [(tuple(d + b + e for d, b, e in zip(ins[0].shape, begin, end)), ins[0].dtype)]


@register("Pad", infer=_pad_infer, const_inputs=(1, 2, 3))
def _pad(node, ins, outs):
    begin, end, mode = _pad_plan(node, ins)
    shape = tuple(ins[0].shape)
    # Negative pads crop first; what remains is padded by the positive amounts.
    crop = tuple(slice(max(-b, 0), d - max(-e, 0)) for d, b, e in zip(shape, begin, end))
    widths = [(max(b, 0), max(e, 0)) for b, e in zip(begin, end)]
    value = _opt(ins, 2)
    fill = 0
    if value is not None and np.asarray(value.data).size:
        fill = np.asarray(value.data).reshape(-1)[0]
    if mode == "constant":
        inner = tuple(slice(b, b + (s.stop - s.start)) for s, (b, _) in zip(crop, widths))

        def run(i, o):
            o[0].fill(fill)
            o[0][inner] = i[0].reshape(shape)[crop]
        return run
    np_mode = {"reflect": "reflect", "edge": "edge", "wrap": "wrap"}[mode]
    return lambda i, o: np.copyto(o[0], np.pad(i[0].reshape(shape)[crop], widths, mode=np_mode))


# -- Shape, Size -------------------------------------------------------------------------------------

def _shape_range(node, rank: int) -> tuple[int, int]:
    start = int(node.attrs.get("start", 0))
    end = node.attrs.get("end")
    end = rank if end is None else int(end)
    start = min(max(start + rank if start < 0 else start, 0), rank)
    end = min(max(end + rank if end < 0 else end, 0), rank)
    return start, max(start, end)


def _shape_infer(node, ins):
    start, end = _shape_range(node, len(ins[0].shape))
    return [((end - start,), np.dtype(np.int64))]


@register("Shape", infer=_shape_infer)
def _shape(node, ins, outs):
    start, end = _shape_range(node, len(ins[0].shape))
    data = np.array(ins[0].shape[start:end], np.int64)
    return lambda i, o: np.copyto(o[0], data)


@register("Size", infer=lambda node, ins: [((), np.dtype(np.int64))])
def _size(node, ins, outs):
    n = _prod(ins[0].shape)
    return lambda i, o: o[0].fill(n)


# -- Gather ------------------------------------------------------------------------------------------

def _gather_plan(node, ins) -> tuple[int, np.ndarray]:
    shape = tuple(ins[0].shape)
    if not shape:
        raise _err(node, "cannot gather from a scalar")
    axis = normalize_axis(node, int(node.attrs.get("axis", 0)), len(shape))
    if ins[1].data is None:
        raise UnsupportedOperatorError(f"node {node.name!r} (Gather): indices {ins[1].name!r} must be a "
                                       f"constant", [node.name])
    indices = np.asarray(ins[1].data)
    if not np.issubdtype(indices.dtype, np.integer):
        raise _err(node, f"indices have dtype {indices.dtype}; expected int32 or int64")
    indices = indices.astype(np.int64)
    d = shape[axis]
    if indices.size and (indices.min() < -d or indices.max() >= d):
        bad = indices[(indices < -d) | (indices >= d)].reshape(-1)[0]
        raise _err(node, f"index {int(bad)} is out of range for axis {axis} of size {d}")
    return axis, np.where(indices < 0, indices + d, indices)


def _gather_infer(node, ins):
    axis, indices = _gather_plan(node, ins)
    shape = tuple(ins[0].shape)
    return [(shape[:axis] + indices.shape + shape[axis + 1:], ins[0].dtype)]


@register("Gather", infer=_gather_infer, const_inputs=(1,))
def _gather(node, ins, outs):
    axis, indices = _gather_plan(node, ins)
    shape = tuple(ins[0].shape)
    return lambda i, o: np.take(i[0].reshape(shape), indices, axis=axis, out=o[0])


# -- ConstantOfShape, Range --------------------------------------------------------------------------

def _fill_value(node) -> np.ndarray:
    value = node.attrs.get("value")
    if value is None:
        return np.zeros((), np.float32)
    value = np.asarray(value)
    if value.size != 1:
        raise _err(node, f"value must hold exactly one element, not {value.size}")
    return value.reshape(())


def _constant_of_shape_infer(node, ins):
    shape = const_ints(node, ins[0], "input")
    if any(d < 0 for d in shape):
        raise _err(node, f"shape {shape} has a negative dimension")
    return [(tuple(shape), _fill_value(node).dtype)]


@register("ConstantOfShape", infer=_constant_of_shape_infer, const_inputs=(0,))
def _constant_of_shape(node, ins, outs):
    value = _fill_value(node)
    return lambda i, o: o[0].fill(value)


def _range_plan(node, ins) -> tuple[np.dtype, int, object, object]:
    scalars = []
    for k, what in enumerate(("start", "limit", "delta")):
        v = _opt(ins, k)
        if v is None:
            raise _err(node, f"the {what} input is required")
        if v.data is None:
            raise UnsupportedOperatorError(f"node {node.name!r} (Range): {what} ({v.name!r}) must be a "
                                           f"constant", [node.name])
        a = np.asarray(v.data)
        if a.size != 1:
            raise _err(node, f"{what} must be a scalar, not of shape {a.shape}")
        scalars.append(a.reshape(()))
    start, limit, delta = scalars
    dtype = start.dtype
    if limit.dtype != dtype or delta.dtype != dtype:
        raise _err(node, f"start, limit and delta have different dtypes {dtype}, {limit.dtype}, {delta.dtype}")
    if delta == 0:
        raise _err(node, "delta is 0")
    if np.issubdtype(dtype, np.integer):
        span, step = int(limit) - int(start), int(delta)
        n = -(-span // step)
    else:  # as onnxruntime: (limit - start) in the input type, the division in double
        n = math.ceil(float(limit - start) / float(delta))
    return dtype, max(n, 0), start, delta


def _range_infer(node, ins):
    dtype, n, _, _ = _range_plan(node, ins)
    return [((n,), dtype)]


@register("Range", infer=_range_infer, const_inputs=(0, 1, 2))
def _range(node, ins, outs):
    dtype, n, start, delta = _range_plan(node, ins)

    def run(i, o):
        if n:  # value_k = value_{k-1} + delta, accumulated in the input type (as onnxruntime)
            steps = np.full(n, delta, dtype)
            steps[0] = start
            np.cumsum(steps, dtype=dtype, out=o[0])
    return run


# -- Expand, Tile ------------------------------------------------------------------------------------

def _expand_infer(node, ins):
    shape = const_ints(node, _opt(ins, 1), "shape")
    if shape is None:
        raise _err(node, "the shape input is required")
    if any(d < 0 for d in shape):
        raise _err(node, f"shape {shape} has a negative dimension")
    return [(broadcast_shapes(node, tuple(ins[0].shape), tuple(shape)), ins[0].dtype)]


@register("Expand", infer=_expand_infer, const_inputs=(1,))
def _expand(node, ins, outs):
    shape = tuple(ins[0].shape)
    return lambda i, o: np.copyto(o[0], i[0].reshape(shape))


def _repeats(node, ins) -> list[int]:
    repeats = const_ints(node, _opt(ins, 1), "repeats")
    rank = len(ins[0].shape)
    if repeats is None or len(repeats) != rank:
        raise _err(node, f"repeats {repeats} must have one entry per input axis ({rank})")
    if any(r < 0 for r in repeats):
        raise _err(node, f"repeats {repeats} has a negative entry")
    return repeats


def _tile_infer(node, ins):
    repeats = _repeats(node, ins)
    return [(tuple(d * r for d, r in zip(ins[0].shape, repeats)), ins[0].dtype)]


@register("Tile", infer=_tile_infer, const_inputs=(1,))
def _tile(node, ins, outs):
    repeats = _repeats(node, ins)
    shape = tuple(ins[0].shape)
    return lambda i, o: np.copyto(o[0], np.tile(i[0].reshape(shape), repeats))
