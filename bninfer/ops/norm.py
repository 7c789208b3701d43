"""Normalization ops: BatchNormalization (inference form, with the fused epilogue), LayerNormalization,
GroupNormalization and InstanceNormalization.

BatchNormalization is a per-channel affine y = s * x + t with s = scale / sqrt(var + eps) and
t = B - mean * s, folded at build time in float64 when its parameters are constants (then cast once to
float32; float16 and float64 constants are accepted), or per call when they are computed at run time.
Like the other fusable ops it carries the epilogue of bninfer.ops.fusion:

    y = post_scale[c] * act(s[c] * x + t[c] + residual, alpha[c], beta) + post_shift[c]

With spatial=0 (opsets < 9) the parameters have X's shape without the batch axis: each element of a
sample is its own "channel" (the fused epilogue's per-channel vectors are repeated over the spatial axes).
A BN node with running-statistics outputs is a training node (onnxruntime computes batch statistics
then): refused with TrainingModeError.
"""
from __future__ import annotations

import numpy as np

from ..errors import ModelError, TrainingModeError, UnsupportedOperatorError
from ..kernels import norm as K
from . import fusion, normalize_axis, register, require_float32

_EMPTY = np.zeros(0, np.float32)  # stands for an absent optional array (never written)
_BN_PARAMS = ("scale", "B", "mean", "var")
_FLOATS = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))


def _size(shape) -> int:
    return int(np.prod(shape, dtype=np.int64))


def _flat(a: np.ndarray) -> np.ndarray:
    """A flat view for the kernels; read-only constants are copied so that Numba sees one array type."""
    a = a.reshape(-1)
    return a if a.flags.writeable else a.copy()


def _need_inputs(node, ins, names: tuple[str, ...], required: int) -> None:
    n = fusion.base_inputs(node)
    if n < required or any(v is None for v in ins[:required]):
        raise ModelError(f"node {node.name!r} ({node.op}) needs inputs {', '.join(names[:required])}; "
                         f"got {node.inputs[:n]}")


# -- BatchNormalization ---------------------------------------------------------------------------------

def _bn_layout(node, x_shape) -> tuple[int, int, int]:
    """(channels, inner, repeat): the kernel's per-channel view of X, and how many kernel channels each
    real channel spans (1 for spatial=1; the spatial size for spatial=0)."""
    if len(x_shape) < 2:
        raise ModelError(f"node {node.name!r} (BatchNormalization): input of shape {tuple(x_shape)} needs "
                         f"rank >= 2 (N, C, ...)")
    c = int(x_shape[1])
    spatial = _size(x_shape[2:])
    if int(node.attrs.get("spatial", 1)):
        return c, spatial, 1
    return c * spatial, 1, spatial


def _bn_infer(node, ins):
    _need_inputs(node, ins, ("X",) + _BN_PARAMS, 5)
    extra = [o for o in node.outputs[1:] if o]
    if extra:
        raise TrainingModeError(
            f"node {node.name!r} (BatchNormalization) has running mean/variance outputs {extra}: that is "
            f"its training form (batch statistics), which an inference engine does not run", [node.name])
    x = ins[0]
    channels, _, _ = _bn_layout(node, x.shape)
    spatial = int(node.attrs.get("spatial", 1))
    for what, v in zip(_BN_PARAMS, ins[1:5]):
        if _size(v.shape) != channels or (not spatial and tuple(v.shape) not in (tuple(x.shape[1:]),
                                                                                 (channels,))):
            want = f"{channels} values (one per channel)" if spatial else \
                f"shape {tuple(x.shape[1:])} (spatial=0: X's shape without the batch axis)"
            raise ModelError(f"node {node.name!r} (BatchNormalization): {what} ({v.name!r}) has shape "
                             f"{tuple(v.shape)}; expected {want} for input of shape {tuple(x.shape)}")
    return [(x.shape, x.dtype)]


def _bn_fold(epsilon: float, scale, bias, mean, var) -> tuple[np.ndarray, np.ndarray]:
    """s, t in float64, cast once to float32. A zero variance keeps epsilon: s = scale / sqrt(eps)."""
    scale, bias, mean, var = (np.asarray(a, np.float64).reshape(-1) for a in (scale, bias, mean, var))
    s = scale / np.sqrt(var + epsilon)
    t = bias - mean * s
    return np.ascontiguousarray(s, np.float32), np.ascontiguousarray(t, np.float32)


@register("BatchNormalization", infer=_bn_infer)
def _batchnorm(node, ins, outs):
    x = ins[0]
    require_float32(node, [x])
    params = ins[1:5]
    for what, v in zip(_BN_PARAMS, params):
        if v.data is None:
            require_float32(node, [v])
        elif np.dtype(v.data.dtype) not in _FLOATS:
            raise UnsupportedOperatorError(f"node {node.name!r} (BatchNormalization): {what} ({v.name!r}) "
                                           f"has dtype {v.data.dtype}", [node.name])
    channels, inner, repeat = _bn_layout(node, x.shape)
    epsilon = float(node.attrs.get("epsilon", 1e-5))

    epi = fusion.epilogue(node, ins, int(x.shape[1]))

    def per_kernel_channel(v: np.ndarray) -> np.ndarray:
        # (fusion's vectors can be read-only broadcast views: a copy keeps Numba at one signature)
        return np.ascontiguousarray(np.repeat(v, repeat), np.float32) if repeat != 1 else _flat(v)
    alpha = per_kernel_channel(epi.act.alpha)
    post_scale, post_shift = per_kernel_channel(epi.post_scale), per_kernel_channel(epi.post_shift)
    code, beta, has_post = int(epi.act.code), float(epi.act.beta), bool(epi.has_post)
    res = epi.residual
    if res is not None:
        if ins[res] is None or tuple(ins[res].shape) != tuple(x.shape):
            got = None if ins[res] is None else tuple(ins[res].shape)
            raise ModelError(f"node {node.name!r} (BatchNormalization): fused residual has shape {got}; "
                             f"expected the output's shape {tuple(x.shape)}")
        require_float32(node, [ins[res]])

    if all(v.data is not None for v in params):
        folded = _bn_fold(epsilon, *(v.data for v in params))
    else:
        folded = None

    def run(i, o):
        s, t = folded if folded is not None else _bn_fold(epsilon, *i[1:5])
        r = _flat(i[res]) if res is not None else _EMPTY
        K.affine_epilogue(_flat(i[0]), o[0].reshape(-1), channels, inner, s, t, r, res is not None, code,
                          alpha, beta, has_post, post_scale, post_shift)
    return run


# -- LayerNormalization ---------------------------------------------------------------------------------

def _ln_param_shape(node, v, norm_shape: tuple, what: str) -> None:
    shape = tuple(int(d) for d in v.shape)
    while len(shape) > len(norm_shape) and shape[0] == 1:
        shape = shape[1:]
    try:
        fits = np.broadcast_shapes(shape, norm_shape) == norm_shape
    except ValueError:
        fits = False
    if not fits:
        raise ModelError(f"node {node.name!r} (LayerNormalization): {what} ({v.name!r}) of shape "
                         f"{tuple(v.shape)} does not broadcast to the normalized shape {norm_shape}")


def _ln_geometry(node, x_shape) -> tuple[int, tuple]:
    rank = len(x_shape)
    if rank == 0:
        raise ModelError(f"node {node.name!r} (LayerNormalization): input is a scalar")
    axis = normalize_axis(node, int(node.attrs.get("axis", -1)), rank)
    return axis, tuple(int(d) for d in x_shape[axis:])


def _ln_infer(node, ins):
    _need_inputs(node, ins, ("X", "Scale", "B"), 2)
    x = ins[0]
    axis, norm_shape = _ln_geometry(node, x.shape)
    for what, v in (("Scale", ins[1]), ("B", ins[2] if len(ins) > 2 else None)):
        if v is not None:
            _ln_param_shape(node, v, norm_shape, what)
    if len(node.outputs) > 3:
        raise ModelError(f"node {node.name!r} (LayerNormalization) has {len(node.outputs)} outputs "
                         f"(at most 3)")
    stats = (tuple(x.shape[:axis]) + (1,) * len(norm_shape), np.dtype(np.float32))
    return [(x.shape, x.dtype)] + [stats] * (len(node.outputs) - 1)


def _ln_vector(a: np.ndarray, norm_shape: tuple) -> np.ndarray:
    a = np.asarray(a)
    if a.shape == norm_shape:
        return _flat(a)
    n = len(norm_shape)  # (leading 1s dropped; astype copies, so the kernel gets a writable array)
    return np.broadcast_to(a.reshape(a.shape[max(0, a.ndim - n):]), norm_shape).astype(np.float32).reshape(-1)


@register("LayerNormalization", infer=_ln_infer)
def _layernorm(node, ins, outs):
    base = ins[:fusion.base_inputs(node)]
    require_float32(node, base)
    x = ins[0]
    axis, norm_shape = _ln_geometry(node, x.shape)
    rows, n = _size(x.shape[:axis]), _size(norm_shape)
    epsilon = float(node.attrs.get("epsilon", 1e-5))
    has_bias = len(base) > 2 and base[2] is not None
    const = [None if v is None else (_ln_vector(v.data, norm_shape) if v.data is not None else None)
             for v in (base[1], base[2] if has_bias else None)]
    stats = [k for k in (1, 2) if k < len(outs) and outs[k] is not None]

    def run(i, o):
        scale = const[0] if const[0] is not None else _ln_vector(i[1], norm_shape)
        bias = _EMPTY if not has_bias else const[1] if const[1] is not None else _ln_vector(i[2], norm_shape)
        if stats:
            mean = o[1].reshape(-1) if 1 in stats and o[1] is not None else np.empty(rows, np.float32)
            inv = o[2].reshape(-1) if 2 in stats and o[2] is not None else np.empty(rows, np.float32)
        else:
            mean = inv = _EMPTY
        K.layer_norm(_flat(i[0]), o[0].reshape(-1), rows, n, scale, bias, has_bias, epsilon, mean, inv,
                     bool(stats))
    return run


# -- GroupNormalization and InstanceNormalization ---------------------------------------------------------

def _groups(node, x_shape) -> tuple[int, int]:
    """(channels, groups) of a GroupNormalization or InstanceNormalization node."""
    least = 3 if node.op == "InstanceNormalization" else 2
    if len(x_shape) < least:
        raise ModelError(f"node {node.name!r} ({node.op}): input of shape {tuple(x_shape)} has too low a "
                         f"rank (N, C, D1, ...)")
    c = int(x_shape[1])
    if node.op == "InstanceNormalization":
        return c, c
    g = node.attrs.get("num_groups")
    if g is None or int(g) < 1 or c % int(g):
        raise ModelError(f"node {node.name!r} (GroupNormalization): num_groups {g!r} must be a positive "
                         f"divisor of the channel count {c}")
    return c, int(g)


def _param_count(node, channels: int, groups: int) -> int:
    return groups if node.op == "GroupNormalization" and node.attrs.get("per_group_params") else channels


def _gn_infer(node, ins):
    names = ("X", "scale", "B")
    _need_inputs(node, ins, names, 3)
    x = ins[0]
    channels, groups = _groups(node, x.shape)
    count = _param_count(node, channels, groups)
    for what, v in zip(names[1:], ins[1:3]):
        if _size(v.shape) != count or len(v.shape) != 1:
            per_group = node.op == "GroupNormalization" and node.attrs.get("per_group_params")
            raise ModelError(f"node {node.name!r} ({node.op}): {what} ({v.name!r}) has shape "
                             f"{tuple(v.shape)}; expected ({count},), one value per "
                             f"{'group' if per_group else 'channel'}")
    return [(x.shape, x.dtype)]


@register("GroupNormalization", "InstanceNormalization", infer=_gn_infer)
def _groupnorm(node, ins, outs):
    require_float32(node, ins[:3])
    x = ins[0]
    channels, groups = _groups(node, x.shape)
    repeat = channels // _param_count(node, channels, groups) if channels else 1
    batch, inner = int(x.shape[0]), _size(x.shape[2:])
    epsilon = float(node.attrs.get("epsilon", 1e-5))

    def per_channel(a: np.ndarray) -> np.ndarray:
        a = a.reshape(-1)
        return np.ascontiguousarray(np.repeat(a, repeat), np.float32) if repeat != 1 else _flat(a)
    const = [per_channel(v.data) if v.data is not None else None for v in ins[1:3]]

    def run(i, o):
        scale = const[0] if const[0] is not None else per_channel(i[1])
        bias = const[1] if const[1] is not None else per_channel(i[2])
        K.group_norm(_flat(i[0]), o[0].reshape(-1), batch, channels, groups, inner, scale, bias, epsilon)
    return run
