"""Elementwise ops: activations, broadcasting arithmetic, unary maths, comparisons, casts.

Arithmetic and comparisons use numpy's broadcasting ufuncs (they also serve constant folding, on any
dtype); activations run through the one activation table in Numba.
"""
from __future__ import annotations

import numpy as np

from .. import activations, record
from ..errors import ModelError, UnsupportedOperatorError
from ..kernels import elementwise as K
from . import broadcast_shapes, register, require_float32, same_as_input

# -- activations ----------------------------------------------------------------------------------

_ACTIVATIONS = [op for op in activations.TABLE if op not in ("PRelu", "Clip")]


@register(*_ACTIVATIONS, infer=same_as_input)
def _activation(node, ins, outs):
    require_float32(node, ins)
    code = activations.code_of(node.op, node.attrs)
    alpha, beta = activations.params_of(node.op, node.attrs)

    def run(i, o):
        record.call(K.activation, i[0].reshape(-1), o[0].reshape(-1), code, alpha, beta)
    return record.recordable(run)


def _clip_bounds(node, ins) -> tuple[float, float]:
    lo = ins[1].data if len(ins) > 1 and ins[1] is not None else None
    hi = ins[2].data if len(ins) > 2 and ins[2] is not None else None
    for v, what in ((lo, "min"), (hi, "max")):
        if v is not None and np.asarray(v).size != 1:
            raise ModelError(f"node {node.name!r} (Clip): {what} must be a scalar")
    return (float(lo) if lo is not None else -np.inf), (float(hi) if hi is not None else np.inf)


@register("Clip", infer=same_as_input)
def _clip(node, ins, outs):
    if any(len(ins) > k and ins[k] is not None and ins[k].data is None for k in (1, 2)):
        return _clip_runtime_bounds(node, ins)
    lo, hi = _clip_bounds(node, ins)
    if ins[0].dtype != np.float32:  # constant folding of integer clips
        return lambda i, o: np.copyto(o[0], np.clip(i[0], lo, hi).astype(o[0].dtype))

    def run(i, o):
        record.call(K.activation, i[0].reshape(-1), o[0].reshape(-1), activations.CLIP, lo, hi)
    return record.recordable(run)


def _clip_runtime_bounds(node, ins):
    """Bounds fed at run time: scalars read on each call (min > max gives max, as in ONNX)."""
    require_float32(node, ins)
    for k in (1, 2):
        if len(ins) > k and ins[k] is not None and int(np.prod(ins[k].shape)) != 1:
            raise ModelError(f"node {node.name!r} (Clip): bound {k} must be a scalar")

    def run(i, o):
        lo = float(i[1].reshape(-1)[0]) if len(i) > 1 and i[1] is not None else -np.inf
        hi = float(i[2].reshape(-1)[0]) if len(i) > 2 and i[2] is not None else np.inf
        K.activation(i[0].reshape(-1), o[0].reshape(-1), activations.CLIP, lo, hi)
    return run


def _slope_shape(node, ins):
    """Opset < 7 PRelu: a slope of shape (C,) runs along axis 1, not numpy's last axis."""
    shape = tuple(ins[1].shape)
    if node.attrs.get("legacy_channel_slope") and len(shape) == 1 and len(ins[0].shape) > 2 \
            and shape[0] == ins[0].shape[1] and shape[0] != 1:
        return shape + (1,) * (len(ins[0].shape) - 2)
    return shape


def _prelu_infer(node, ins):
    # The slope broadcasts to X unidirectionally: the output has X's shape.
    if broadcast_shapes(node, ins[0].shape, _slope_shape(node, ins)) != tuple(ins[0].shape):
        raise ModelError(f"node {node.name!r} (PRelu): slope shape {ins[1].shape} does not broadcast to "
                         f"input shape {ins[0].shape}")
    return [(ins[0].shape, ins[0].dtype)]


@register("PRelu", infer=_prelu_infer)
def _prelu(node, ins, outs):
    require_float32(node, ins)
    slope_shape = _slope_shape(node, ins)

    def run(i, o):
        x, slope = i[0], i[1].reshape(slope_shape)
        np.multiply(x, slope, out=o[0])
        np.copyto(o[0], x, where=~(x < 0))
    return run


# -- broadcasting arithmetic and comparisons ----------------------------------------------------------

_BINARY = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Pow": np.power, "Max": np.maximum,
           "Min": np.minimum, "Equal": np.equal, "Less": np.less, "Greater": np.greater,
           "LessOrEqual": np.less_equal, "GreaterOrEqual": np.greater_equal, "And": np.logical_and,
           "Or": np.logical_or, "Xor": np.logical_xor, "Div": None, "Mod": None}
_COMPARISONS = {"Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "And", "Or", "Xor"}


def _legacy_shape(node, a_shape, b_shape):
    """Opset < 7 `broadcast=1, axis=k`: B's dims align with A's starting at axis k."""
    axis = node.attrs.get("legacy_axis")
    if axis is None:
        return b_shape
    axis = axis % len(a_shape) if a_shape else 0
    return tuple(b_shape) + (1,) * (len(a_shape) - axis - len(b_shape))


def _variadic_infer(node, ins):
    if not ins or any(v is None for v in ins):
        raise ModelError(f"node {node.name!r} ({node.op}) needs at least one input")
    shapes = [ins[0].shape] + [_legacy_shape(node, ins[0].shape, v.shape) for v in ins[1:]]
    dtype = np.bool_ if node.op in _COMPARISONS else ins[0].dtype
    for v in ins[1:]:
        if v.dtype != ins[0].dtype and node.op != "Pow":  # Pow's exponent may have its own type
            raise ModelError(f"node {node.name!r} ({node.op}): inputs have different dtypes "
                             f"{ins[0].dtype} and {v.dtype}")
    return [(broadcast_shapes(node, *shapes), dtype)]


def _divide(a, b, out):
    if np.issubdtype(out.dtype, np.integer):
        np.copyto(out, np.trunc(np.true_divide(a, b)).astype(out.dtype))  # ONNX integer Div truncates
    else:
        np.divide(a, b, out=out)


def _mod(node):
    fmod = node.attrs.get("fmod", 0)

    def f(a, b, out):
        np.copyto(out, np.fmod(a, b) if fmod else np.mod(a, b))
    return f


@register(*_BINARY, "Sum", "Mean", infer=_variadic_infer)
def _binary(node, ins, outs):
    if node.attrs.get("_blocked"):  # squeeze-excitation's Mul on a blocked value (bninfer.passes.layout)
        from . import excite_blocked
        return excite_blocked.build(node, ins, outs)
    if node.op in ("Sum", "Mean"):
        fn = np.add
    elif node.op == "Div":
        fn = _divide
    elif node.op == "Mod":
        fn = _mod(node)
    else:
        fn = _BINARY[node.op]
    shapes = [v.shape for v in ins]
    shapes[1:] = [_legacy_shape(node, ins[0].shape, s) for s in shapes[1:]]
    n = len(ins)

    def run(i, o):
        arrays = [a.reshape(s) for a, s in zip(i, shapes)]
        if n == 1:
            np.copyto(o[0], arrays[0])
            return
        fn(arrays[0], arrays[1], out=o[0])
        for a in arrays[2:]:
            fn(o[0], a, out=o[0])
        if node.op == "Mean":
            np.divide(o[0], n, out=o[0])
    return run


def _where_infer(node, ins):
    return [(broadcast_shapes(node, *(v.shape for v in ins)), ins[1].dtype)]


@register("Where", infer=_where_infer)
def _where(node, ins, outs):
    return lambda i, o: np.copyto(o[0], np.where(i[0], i[1], i[2]))


# -- unary maths ---------------------------------------------------------------------------------------

_UNARY = {"Neg": np.negative, "Abs": np.abs, "Exp": np.exp, "Log": np.log, "Sqrt": np.sqrt,
          "Reciprocal": np.reciprocal, "Floor": np.floor, "Ceil": np.ceil, "Sign": np.sign,
          "Not": np.logical_not, "Round": np.round, "Sin": np.sin, "Cos": np.cos}


@register(*_UNARY, "Erf", infer=same_as_input)
def _unary(node, ins, outs):
    if node.op == "Erf":
        require_float32(node, ins)
        return lambda i, o: K.erf(i[0].reshape(-1), o[0].reshape(-1))
    fn = _UNARY[node.op]
    return lambda i, o: fn(i[0], out=o[0])


# -- pass-throughs and casts ------------------------------------------------------------------------

def _dropout_infer(node, ins):
    if len(ins) > 2 and ins[2] is not None and ins[2].data is not None and bool(np.asarray(ins[2].data)):
        from ..errors import TrainingModeError
        raise TrainingModeError(f"node {node.name!r} (Dropout) has training_mode=true", [node.name])
    shapes = [(ins[0].shape, ins[0].dtype)]
    if len(node.outputs) > 1:
        shapes.append((ins[0].shape, np.dtype(np.bool_)))
    return shapes


def _copy(i, o):
    np.copyto(o[0], i[0])
    for extra in o[1:]:
        extra.fill(True)  # Dropout's mask: every element kept at inference


register("Identity", infer=same_as_input)(lambda node, ins, outs: _copy)
# The ratio does not matter at inference; training_mode must be known (a constant) to be refused.
register("Dropout", infer=_dropout_infer, const_inputs=(2,))(lambda node, ins, outs: _copy)

_CAST_TYPES = {1: np.float32, 2: np.uint8, 3: np.int8, 4: np.uint16, 5: np.int16, 6: np.int32,
               7: np.int64, 9: np.bool_, 10: np.float16, 11: np.float64, 12: np.uint32, 13: np.uint64}


def _cast_infer(node, ins):
    if node.op == "CastLike":
        return [(ins[0].shape, ins[1].dtype)]
    to = node.attrs.get("to")
    if to not in _CAST_TYPES:
        raise UnsupportedOperatorError(f"node {node.name!r} (Cast): target type {to} is not supported",
                                       [node.name])
    return [(ins[0].shape, np.dtype(_CAST_TYPES[to]))]


@register("Cast", "CastLike", infer=_cast_infer)
def _cast(node, ins, outs):
    return lambda i, o: np.copyto(o[0], i[0], casting="unsafe")
