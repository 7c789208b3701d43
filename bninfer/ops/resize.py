"""Resize (and, through the converter, Upsample-7/9 and Resize-10): nearest, linear, cubic, antialias.

All geometry is worked out at plan time, in float32 arithmetic written in the same order as
onnxruntime's CPU kernel so that nearest-neighbour picks and interpolation weights agree with it:
output size, per-axis scale, original coordinate of every output index, and from those a tap table per
axis (input indices, weights, out-of-crop flags). The Numba kernels in bninfer.kernels.resize then only
gather and weigh. onnxruntime behaviours mirrored on purpose: an axis whose scale is exactly 1 is copied
whatever the coordinate mode (roi included), and an output of the input's shape is a plain copy.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import ModelError, UnsupportedOperatorError
from ..kernels import resize as K
from . import const_ints, normalize_axis, register

F32 = np.float32
_MODES = {"nearest", "linear", "cubic"}
_COORDS = {"half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "align_corners", "asymmetric",
           "tf_half_pixel_for_nn", "tf_crop_and_resize"}
# "simple" is Resize-10's rounding (onnxruntime): ceil when the axis shrinks, truncation otherwise.
_NEAREST = {"round_prefer_floor", "round_prefer_ceil", "floor", "ceil", "simple"}
_POLICIES = {"stretch", "not_larger", "not_smaller"}
_HALF_EPS = 1e-6


def _err(node, message: str) -> ModelError:
    return ModelError(f"node {node.name!r} (Resize): {message}")


def _unsupported(node, message: str) -> UnsupportedOperatorError:
    return UnsupportedOperatorError(f"node {node.name!r} (Resize): {message}", [node.name])


def _opt(ins, k):
    return ins[k] if k < len(ins) else None


@dataclass(frozen=True)
class _Geometry:
    mode: str
    coord: str
    nearest: str
    cubic_a: float
    exclude_outside: bool
    antialias: bool
    extrapolation: float
    in_shape: tuple
    out_shape: tuple
    scales: tuple  # float32 per axis
    roi: tuple  # (start, end) float32 per axis


def _attrs(node):
    a = node.attrs
    mode = a.get("mode", "nearest")
    coord = a.get("coordinate_transformation_mode", "half_pixel")
    nearest = a.get("nearest_mode", "round_prefer_floor")
    policy = a.get("keep_aspect_ratio_policy", "stretch")
    for value, allowed, what in ((mode, _MODES, "mode"), (coord, _COORDS, "coordinate_transformation_mode"),
                                 (nearest, _NEAREST, "nearest_mode"), (policy, _POLICIES,
                                                                       "keep_aspect_ratio_policy")):
        if value not in allowed:
            raise _unsupported(node, f"{what} {value!r} is not supported")
    return mode, coord, nearest, policy


def _geometry(node, ins) -> _Geometry:
    mode, coord, nearest, policy = _attrs(node)
    x = ins[0]
    in_shape = tuple(int(d) for d in x.shape)
    rank = len(in_shape)
    if rank == 0:
        raise _err(node, "the input is a scalar")
    axes = node.attrs.get("axes")
    axes = list(range(rank)) if axes is None else [normalize_axis(node, int(a), rank, "axes") for a in axes]
    if len(set(axes)) != len(axes):
        raise _err(node, f"axes {node.attrs.get('axes')} repeat an axis")

    def const_array(k, what):
        v = _opt(ins, k)
        if v is None:
            return None
        if v.data is None:
            raise _unsupported(node, f"input {what} ({v.name!r}) must be a constant")
        a = np.asarray(v.data)
        return a.reshape(-1) if a.size else None  # an empty tensor reads as "not given"

    scales_in = const_array(2, "scales")
    sizes_in = const_array(3, "sizes")
    if scales_in is not None and sizes_in is not None:
        raise _err(node, "both scales and sizes are given; exactly one is allowed")
    if scales_in is None and sizes_in is None:
        raise _err(node, "neither scales nor sizes is given")

    scales = [F32(1.0)] * rank
    if scales_in is not None:
        if len(scales_in) != len(axes):
            raise _err(node, f"scales has {len(scales_in)} entries for {len(axes)} axes (input shape "
                             f"{in_shape})")
        for a, s in zip(axes, scales_in.astype(np.float32)):
            if not (s > 0 and np.isfinite(s)):
                raise _err(node, f"scale {float(s)} on axis {a} must be positive and finite")
            scales[a] = F32(s)
        # As onnxruntime: float32 product, truncated.
        out_shape = [int(F32(s) * F32(d)) for s, d in zip(scales, in_shape)]
    else:
        sizes = const_ints(node, _opt(ins, 3), "sizes")
        if len(sizes) != len(axes):
            raise _err(node, f"sizes has {len(sizes)} entries for {len(axes)} axes (input shape {in_shape})")
        out_shape = list(in_shape)
        for a, s in zip(axes, sizes):
            if s < 0:
                raise _err(node, f"size {s} on axis {a} is negative")
            if in_shape[a] == 0 and s != 0:
                raise _err(node, f"axis {a} is empty and cannot be resized to {s}")
            out_shape[a] = s
            scales[a] = F32(1.0) if in_shape[a] == 0 else F32(s) / F32(in_shape[a])
        if policy != "stretch":
            pick = min if policy == "not_larger" else max
            common = pick(scales[a] for a in axes)
            for a in axes:
                scales[a] = common
                out_shape[a] = int(math.floor(float(F32(common * F32(in_shape[a]))) + 0.5))

    roi = [(F32(0.0), F32(1.0))] * rank
    if coord == "tf_crop_and_resize":
        r = const_array(1, "roi")
        if r is not None:
            if len(r) != 2 * len(axes):
                raise _err(node, f"roi has {len(r)} entries; expected 2 x {len(axes)}")
            r = r.astype(np.float32)
            for k, a in enumerate(axes):
                roi[a] = (F32(r[k]), F32(r[k + len(axes)]))

    antialias = bool(node.attrs.get("antialias", 0)) and mode != "nearest"
    return _Geometry(mode, coord, nearest, float(node.attrs.get("cubic_coeff_a", -0.75)),
                     bool(node.attrs.get("exclude_outside", 0)), antialias,
                     float(node.attrs.get("extrapolation_value", 0.0)), in_shape, tuple(out_shape),
                     tuple(scales), tuple(roi))


def _infer(node, ins):
    g = _geometry(node, ins)
    if g.mode != "nearest" and ins[0].dtype != np.float32:
        raise _unsupported(node, f"mode {g.mode!r} on dtype {ins[0].dtype}: only float32 is interpolated")
    return [(g.out_shape, ins[0].dtype)]


# -- coordinates and tap tables ---------------------------------------------------------------------------

def _original(coord: str, n_out: int, n_in: int, scale, roi) -> np.ndarray:
    """onnxruntime's get_original_coordinate for output indices 0..n_out-1, in the same precision."""
    x = np.arange(n_out, dtype=np.float32)
    s = F32(scale)
    lo, li = F32(n_out), F32(n_in)
    half = F32(0.5)
    if coord == "asymmetric":
        return x / s
    if coord == "half_pixel":
        return (x + half) / s - half
    if coord == "pytorch_half_pixel":
        return (x + half) / s - half if n_out > 1 else np.zeros(n_out, np.float32)
    if coord == "tf_half_pixel_for_nn":
        return (x + half) / s
    if coord == "align_corners":
        return np.zeros(n_out, np.float32) if n_out == 1 else x * (li - F32(1)) / (lo - F32(1))
    if coord == "half_pixel_symmetric":
        adjustment = lo / (s * li)
        offset = (li / F32(2)) * (F32(1) - adjustment)
        # onnxruntime does this line in double ((x + 0.5) is a double expression), then rounds
        return (np.float64(offset) + (x.astype(np.float64) + 0.5) / np.float64(s) - 0.5).astype(np.float32)
    # tf_crop_and_resize
    start, end = roi
    if n_out > 1:
        return start * (li - F32(1)) + (x * (end - start) * (li - F32(1))) / (lo - F32(1))
    return np.full(n_out, F32(0.5 * float(F32(start + end)) * float(li - F32(1))), np.float32)


def _round_half_away(v: np.ndarray) -> np.ndarray:
    v64 = v.astype(np.float64)
    return np.copysign(np.floor(np.abs(v64) + 0.5), v64)


def _nearest_index(mode: str, v: np.ndarray, downsampling: bool) -> np.ndarray:
    v64 = v.astype(np.float64)
    if mode in ("round_prefer_floor", "round_prefer_ceil"):
        # onnxruntime treats a coordinate within 1e-6 of a half as the half (float32 noise such as
        # 2 / (4/7) = 3.4999998 rounds as 3.5), then breaks the tie as the mode says.
        low = np.floor(v64)
        half = np.abs(v64 - low - 0.5) < _HALF_EPS
        tie = low if mode == "round_prefer_floor" else low + 1
        return np.where(half, tie, _round_half_away(v))
    if mode == "floor":
        return np.floor(v64)
    if mode == "ceil":
        return np.ceil(v64)
    # simple
    return np.ceil(v64) if downsampling else np.trunc(v64)


def _cubic_coeffs(s: np.ndarray, a: float) -> np.ndarray:
    """Keys' cubic weights of the 4 taps around a fractional offset s, float32 as onnxruntime."""
    a = F32(a)
    s = np.abs(s.astype(np.float32))
    one, two, four, five, eight = F32(1), F32(2), F32(4), F32(5), F32(8)
    s1, s2, s3 = s + one, one - s, two - s
    c0 = ((a * s1 - five * a) * s1 + eight * a) * s1 - four * a
    c1 = ((a + two) * s - (a + F32(3))) * s * s + one
    c2 = ((a + two) * s2 - (a + F32(3))) * s2 * s2 + one
    c3 = ((a * s3 - five * a) * s3 + eight * a) * s3 - four * a
    return np.stack([c0, c1, c2, c3], axis=1).astype(np.float32)


def _aa_filter(mode: str, x: np.ndarray, a: float) -> np.ndarray:
    x = np.abs(x.astype(np.float32))
    if mode == "linear":
        return np.where(x < F32(1), F32(1) - x, F32(0)).astype(np.float32)
    a = F32(a)
    near = ((a + F32(2)) * x - (a + F32(3))) * x * x + F32(1)
    far = (((x - F32(5)) * x + F32(8)) * x - F32(4)) * a
    return np.where(x < F32(1), near, np.where(x < F32(2), far, F32(0))).astype(np.float32)


@dataclass
class _Table:
    taps: int
    idx: np.ndarray  # (n_out, taps) int64
    w: np.ndarray  # (n_out, taps) float32
    ext: np.ndarray  # (n_out,) uint8


def _identity(n: int) -> _Table:
    return _Table(1, np.arange(n, dtype=np.int64).reshape(n, 1), np.ones((n, 1), np.float32),
                  np.zeros(n, np.uint8))


def _is_identity(g: _Geometry, axis: int) -> bool:
    n_in, n_out = g.in_shape[axis], g.out_shape[axis]
    if g.scales[axis] == F32(1.0):
        return True
    return g.antialias and n_in == n_out  # onnxruntime copies such an axis in its antialias path


def _table(g: _Geometry, axis: int) -> _Table:
    n_in, n_out = g.in_shape[axis], g.out_shape[axis]
    if _is_identity(g, axis):
        return _identity(n_out)
    scale = g.scales[axis]
    orig = _original(g.coord, n_out, n_in, scale, g.roi[axis]).astype(np.float32)
    last = F32(n_in - 1)
    if g.coord == "tf_crop_and_resize":
        ext = ((orig < 0) | (orig > last)).astype(np.uint8)
    else:
        ext = np.zeros(n_out, np.uint8)
    if g.antialias:
        return _antialias_table(g, n_in, n_out, scale, orig, ext)
    if g.mode == "nearest":
        r = _nearest_index(g.nearest, orig, scale < 1)
        idx = np.clip(r, 0, n_in - 1).astype(np.int64)
        return _Table(1, idx.reshape(n_out, 1), np.ones((n_out, 1), np.float32), ext)
    if g.mode == "linear":
        v = np.maximum(F32(0), np.minimum(orig, last))
        i1 = np.minimum(v.astype(np.int64), n_in - 1)
        i2 = np.minimum(i1 + 1, n_in - 1)
        d1 = np.abs(v - i1.astype(np.float32))
        d2 = np.abs(v - i2.astype(np.float32))
        same = i1 == i2
        d1[same] = F32(0.5)
        d2[same] = F32(0.5)
        return _Table(2, np.stack([i1, i2], 1), np.stack([d2, d1], 1).astype(np.float32), ext)
    # cubic
    base = np.floor(orig)
    frac = (orig - base).astype(np.float32)
    c = _cubic_coeffs(frac, g.cubic_a)
    raw = np.clip(base.astype(np.float64), -4, n_in + 4).astype(np.int64)[:, None] + np.arange(-1, 3)
    if g.exclude_outside:
        c = np.where((raw >= 0) & (raw < n_in), c, F32(0)).astype(np.float32)
        total = ((c[:, 0] + c[:, 1]) + c[:, 2]) + c[:, 3]
        with np.errstate(divide="ignore", invalid="ignore"):
            c = (c / total[:, None]).astype(np.float32)
    return _Table(4, np.clip(raw, 0, n_in - 1), c, ext)


def _antialias_table(g: _Geometry, n_in: int, n_out: int, rscale, orig, ext) -> _Table:
    """onnxruntime's (Pillow-style) antialiasing filter: the kernel widens by 1/scale when shrinking."""
    support_size = F32(2.0 if g.mode == "linear" else 4.0)
    scale = F32(1) / F32(rscale)
    support = support_size * F32(0.5) * scale if scale >= 1 else support_size * F32(0.5)
    window = int(math.ceil(float(support))) * 2 + 1
    inv_scale = F32(1) / scale if scale >= 1 else F32(1)
    center = F32(0.5) + orig
    if g.coord == "tf_crop_and_resize":
        ext = ((center - F32(0.5) < 0) | (center - F32(0.5) > F32(n_in - 1))).astype(np.uint8)
    idx = np.zeros((n_out, window), np.int64)
    w = np.zeros((n_out, window), np.float32)
    for i in range(n_out):
        c = center[i]
        lo = int(math.floor(float(c - support + F32(0.5))))
        hi = int(math.floor(float(c + support + F32(0.5))))
        hi = lo + min(max(hi - lo, 0), window)
        lo_cut, hi_cut = min(max(lo, 0), n_in), min(max(hi, 0), n_in)
        if g.exclude_outside:
            lo, hi = lo_cut, hi_cut
        pos = np.arange(lo, hi)
        ws = _aa_filter(g.mode, (pos.astype(np.float32) - c + F32(0.5)) * inv_scale, g.cubic_a)
        total = F32(0)
        for v in ws:
            total = F32(total + v)
        inv_total = F32(1) if total == 0 else F32(1) / total
        if lo_cut >= hi_cut:  # the window misses the input entirely: onnxruntime writes 0
            continue
        n = hi - lo
        idx[i, :n] = np.clip(pos, 0, n_in - 1)
        w[i, :n] = ws * inv_total
    return _Table(window, idx, w, ext)


# -- the op ----------------------------------------------------------------------------------------------

def _prod(dims) -> int:
    p = 1
    for d in dims:
        p *= int(d)
    return p


@register("Resize", infer=_infer, const_inputs=(1, 2, 3))
def _resize(node, ins, outs):
    g = _geometry(node, ins)
    in_shape, out_shape = g.in_shape, g.out_shape
    if out_shape == in_shape:
        return lambda i, o: np.copyto(o[0], i[0].reshape(out_shape))
    if _prod(out_shape) == 0:
        return lambda i, o: None
    if _prod(in_shape) == 0:
        raise _err(node, f"cannot resize an empty input {in_shape} to {out_shape}")
    tables = [_table(g, a) for a in range(len(in_shape))]
    if ins[0].dtype != np.float32:
        return _nearest_numpy(g, tables, ins[0].dtype)

    moving = [a for a in range(len(in_shape)) if not _is_identity(g, a)]
    first, last = moving[0], moving[-1]
    outer, inner = _prod(in_shape[:first]), _prod(in_shape[last + 1:])
    mid = list(range(first, last + 1))
    extrap = g.extrapolation

    if len(mid) <= 2:
        if len(mid) == 1:  # a 1-D resize: a dummy leading axis of length 1
            ty, iy, wy, ey = 1, np.zeros(1, np.int64), np.ones(1, np.float32), np.zeros(1, np.uint8)
            ih = oh = 1
        else:
            t = tables[mid[0]]
            ty, iy, wy, ey = t.taps, t.idx.reshape(-1), t.w.reshape(-1), t.ext
            ih, oh = in_shape[mid[0]], out_shape[mid[0]]
        t = tables[mid[-1]]
        tx, ix, wx, ex = t.taps, t.idx.reshape(-1), t.w.reshape(-1), t.ext
        iw, ow = in_shape[mid[-1]], out_shape[mid[-1]]

        def run(i, o):
            x = i[0].reshape(-1)
            if not x.flags.writeable:  # keep one Numba signature (read-only constants)
                x = x.copy()
            K.resize_2d(x, o[0].reshape(-1), outer, ih, iw, inner, oh, ow, ty, iy, wy, ey, tx, ix, wx, ex,
                        extrap)
        return run

    sub = [tables[a] for a in mid]
    in_dims = np.array([in_shape[a] for a in mid], np.int64)
    out_dims = np.array([out_shape[a] for a in mid], np.int64)
    taps = np.array([t.taps for t in sub], np.int64)
    toff = np.cumsum([0] + [t.idx.size for t in sub[:-1]]).astype(np.int64)
    eoff = np.cumsum([0] + [t.ext.size for t in sub[:-1]]).astype(np.int64)
    idx = np.concatenate([t.idx.reshape(-1) for t in sub]).astype(np.int64)
    w = np.concatenate([t.w.reshape(-1) for t in sub]).astype(np.float32)
    ext = np.concatenate([t.ext for t in sub]).astype(np.uint8)

    def run_nd(i, o):
        x = i[0].reshape(-1)
        if not x.flags.writeable:
            x = x.copy()
        K.resize_nd(x, o[0].reshape(-1), outer, inner, in_dims, out_dims, taps, toff, idx, w, eoff, ext,
                    extrap)
    return run_nd


def _nearest_numpy(g: _Geometry, tables: list, dtype):
    """Nearest resize of a non-float tensor (constant folding): a gather over the per-axis indices."""
    index = np.ix_(*[t.idx[:, 0] for t in tables])
    mask = np.zeros(g.out_shape, bool)
    for a, t in enumerate(tables):
        shape = [1] * len(tables)
        shape[a] = -1
        mask |= t.ext.astype(bool).reshape(shape)
    fill = np.array(g.extrapolation).astype(dtype)
    in_shape = g.in_shape

    def run(i, o):
        np.copyto(o[0], i[0].reshape(in_shape)[index])
        if mask.any():
            o[0][mask] = fill
    return run
