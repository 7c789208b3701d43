"""Pooling ops: MaxPool, AveragePool, GlobalAveragePool, GlobalMaxPool, and LRN.

Output sizes follow ONNX (opset 19) and onnxruntime:
  explicit pads / VALID: out = floor or ceil((in + pads - ((k - 1) * d + 1)) / s) + 1; with ceil_mode a
      last window that would start past the input and its leading pad is dropped (as onnxruntime and
      PyTorch do);
  SAME_UPPER / SAME_LOWER: out = ceil(in / s), total pad = (out - 1) * s + (k - 1) * d + 1 - in (at
      least 0, as TensorFlow's SAME), the odd pad at the end (UPPER) or the beginning (LOWER).
      onnxruntime leaves the dilation out of this pad (and gets one output less), and lets the pad go
      negative when k < s (MaxPool then fails, AveragePool shifts its windows); bninfer follows the spec.
  A window larger than the padded input gives out = trunc(span / s) + 1 as in onnxruntime (possibly an
  empty output); only a negative size is an error.
MaxPool's Indices output is refused by the converter; storage_order only matters for Indices.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import record, threads
from ..errors import ModelError, UnsupportedOperatorError
from ..kernels import pool as K
from . import fusion, register, require_float32

_AUTO_PADS = ("NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER")
# A window tap (a load and a max or add) counts as this many multiply-adds where the thread split weighs
# the work: pooling streams its input at about a quarter of a conv's multiply-add rate.
_MEMORY_BOUND = 4


@dataclass(frozen=True)
class Window:
    """The resolved geometry of a pooling node for one input shape, padded to 3 spatial axes."""

    in_size: tuple   # (D, H, W)
    out_size: tuple  # (OD, OH, OW)
    kernel: tuple
    strides: tuple
    pads_begin: tuple
    pads_end: tuple
    dilations: tuple
    out_spatial: tuple  # the output's real spatial dims (1 to 3 of them)


def _ints(node, name: str, default: list[int], n: int) -> list[int]:
    value = node.attrs.get(name)
    if value is None or (hasattr(value, "__len__") and len(value) == 0):
        return list(default)
    value = [int(v) for v in value]
    if len(value) != n:
        raise ModelError(f"node {node.name!r} ({node.op}): {name} has {len(value)} values for "
                         f"{n // (2 if name == 'pads' else 1)} spatial axes")
    return value


def _window(node, x_shape) -> Window:
    kernel = node.attrs.get("kernel_shape")
    if not kernel:
        raise ModelError(f"node {node.name!r} ({node.op}) has no kernel_shape")
    kernel = [int(k) for k in kernel]
    k = len(kernel)
    if k > 3:
        raise UnsupportedOperatorError(f"node {node.name!r} ({node.op}): {k}-D pooling is not supported "
                                       f"(1-D to 3-D only)", [node.name])
    if len(x_shape) != k + 2:
        raise ModelError(f"node {node.name!r} ({node.op}): input of shape {tuple(x_shape)} does not match "
                         f"the {k}-D kernel_shape {kernel} (expected rank {k + 2})")
    strides = _ints(node, "strides", [1] * k, k)
    dilations = _ints(node, "dilations", [1] * k, k)
    pads = _ints(node, "pads", [0] * (2 * k), 2 * k)
    auto_pad = node.attrs.get("auto_pad", "NOTSET") or "NOTSET"
    ceil_mode = int(node.attrs.get("ceil_mode", 0))
    if auto_pad not in _AUTO_PADS:
        raise ModelError(f"node {node.name!r} ({node.op}): unknown auto_pad {auto_pad!r}")
    for what, values, least in (("kernel_shape", kernel, 1), ("strides", strides, 1),
                                ("dilations", dilations, 1), ("pads", pads, 0)):
        if any(v < least for v in values):
            raise ModelError(f"node {node.name!r} ({node.op}): {what} {values} must be >= {least}")
    begin, end, out = [], [], []
    for axis in range(k):
        size, s, d = int(x_shape[axis + 2]), strides[axis], dilations[axis]
        extent = (kernel[axis] - 1) * d + 1
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            o = -(-size // s)
            total = max(0, (o - 1) * s + extent - size)
            b = total // 2 if auto_pad == "SAME_UPPER" else (total + 1) // 2
            begin.append(b)
            end.append(total - b)
            out.append(o)
            continue
        b, e = (0, 0) if auto_pad == "VALID" else (pads[axis], pads[axis + k])
        span = size + b + e - extent
        if ceil_mode:
            o = -(-span // s) + 1
            if o > 0 and (o - 1) * s >= size + b:
                o -= 1
        else:  # span / s rounded toward zero, + 1, as onnxruntime: a window a little larger than the
            # padded input still gives an output (over the elements it covers)
            o = (span // s if span >= 0 else -(-span // s)) + 1
        if o < 0:
            raise ModelError(f"node {node.name!r} ({node.op}): the window ({extent} with dilation) is larger "
                             f"than the padded input ({size + b + e}) along spatial axis {axis}")
        begin.append(b)
        end.append(e)
        out.append(o)

    def pad3(values, fill):
        return (fill,) * (3 - k) + tuple(values)
    return Window(pad3([int(v) for v in x_shape[2:]], 1), pad3(out, 1), pad3(kernel, 1), pad3(strides, 1),
                  pad3(begin, 0), pad3(end, 0), pad3(dilations, 1), tuple(out))


def _pool_infer(node, ins):
    x = ins[0]
    w = _window(node, x.shape)
    return [(tuple(x.shape[:2]) + w.out_spatial, x.dtype)]


def _flat(a: np.ndarray) -> np.ndarray:
    """A flat view for the kernels; read-only constants are copied so that Numba sees one array type."""
    a = a.reshape(-1)
    return a if a.flags.writeable else a.copy()


@register("MaxPool", "AveragePool", infer=_pool_infer)
def _pool(node, ins, outs):
    require_float32(node, ins[:1])
    x = ins[0]
    w = _window(node, x.shape)
    planes = int(x.shape[0]) * int(x.shape[1])
    is_max = node.op == "MaxPool"
    include_pad = not is_max and bool(node.attrs.get("count_include_pad", 0))
    args = w.in_size + w.out_size + w.kernel + w.strides + w.pads_begin + w.pads_end + w.dilations
    if planes == 0 or 0 in w.out_size:
        return record.recordable(lambda i, o: None)  # an empty output

    D, H, W = w.in_size
    OD, OH, OW = w.out_size
    kd, kh, kw = w.kernel
    if (D == OD == kd == 1 and tuple(w.strides) == (1, kh, kw) and not any(w.pads_begin)
            and not any(w.pads_end) and tuple(w.dilations) == (1, 1, 1) and OH * kh <= H and OW * kw <= W):
        tiled = K.max_pool_tiled if is_max else K.avg_pool_tiled
        tiled_tables = threads.PartTables()

        def run_tiled(i, o):  # windows that tile the input (no padding: count_include_pad changes nothing)
            x, y = _flat(i[0]), o[0].reshape(-1)

            def planes_of(a, b):  # planes [a, b) (serial at 2 threads, DenseNet's three took 0.4 ms a run)
                return [(tiled, (x[a * H * W:b * H * W], y[a * OH * OW:b * OH * OW], b - a, H, W, OH, OW, kh, kw))]
            threads.split_calls(planes_of, planes, planes * H * W * _MEMORY_BOUND, 1, tiled_tables,
                                lambda: threads.owners(x, y) + (i[0], o[0]))
        return record.recordable(run_tiled)

    ph, pw = w.pads_begin[1:]
    sh, sw = w.strides[1:]
    if (is_max and D == OD == kd == 1 and kw == 3 and sw in (1, 2) and pw <= 2 and ph < kh
            and tuple(w.dilations) == (1, 1, 1) and sw * (OW - 1) - pw < W and sh * (OH - 1) - ph < H):
        def rows(x, y, a, b):  # planes [a, b): every window holds an input element (the guard above)
            return [(K.max_pool_k3, (x[a * H * W:b * H * W], y[a * OH * OW:b * OH * OW], b - a, H, W, OH, OW, kh, sh,
                                     ph, sw, pw))]
    else:
        def rows(x, y, a, b):
            return [(K.pool, (x[a * D * H * W:b * D * H * W], y[a * OD * OH * OW:b * OD * OH * OW], b - a, *args,
                              is_max, include_pad))]
    work = planes * OD * OH * OW * kd * kh * kw * _MEMORY_BOUND
    tables = threads.PartTables()

    def run(i, o):
        x, y = _flat(i[0]), o[0].reshape(-1)
        threads.split_calls(lambda a, b: rows(x, y, a, b), planes, work, 1, tables,
                            lambda: threads.owners(x, y) + (i[0], o[0]))
    return record.recordable(run)


def _global_infer(node, ins):
    x = ins[0]
    if len(x.shape) < 2:
        raise ModelError(f"node {node.name!r} ({node.op}): input of shape {tuple(x.shape)} needs rank >= 2")
    return [(tuple(x.shape[:2]) + (1,) * (len(x.shape) - 2), x.dtype)]


@register("GlobalAveragePool", "GlobalMaxPool", infer=_global_infer)
def _global(node, ins, outs):
    if node.attrs.get("_blocked"):  # reads a blocked value (bninfer.passes.layout)
        from . import excite_blocked
        return excite_blocked.build(node, ins, outs)
    require_float32(node, ins[:1])
    shape = ins[0].shape
    planes = int(shape[0]) * int(shape[1])
    inner = int(np.prod(shape[2:], dtype=np.int64))
    kernel = K.global_avg if node.op == "GlobalAveragePool" else K.global_max
    pro = fusion.prologue(node, ins, int(shape[1]))
    if pro.has_pre:  # a BN (+ activation) fused in front: applied while reading
        take_max = node.op == "GlobalMaxPool"
        channels = int(shape[1])

        def run_fused(i, o):
            record.call(K.global_pool_prologue, _flat(i[0]), o[0].reshape(-1), planes, channels, inner, pro.scale,
                        pro.shift, pro.act.code, pro.act.alpha, pro.act.beta, take_max)
        return record.recordable(run_fused)

    def run(i, o):
        record.call(kernel, _flat(i[0]), o[0].reshape(-1), planes, inner)
    return record.recordable(run)


def _lrn_infer(node, ins):
    x = ins[0]
    if len(x.shape) < 3:
        raise ModelError(f"node {node.name!r} (LRN): input of shape {tuple(x.shape)} needs rank >= 3 "
                         f"(N, C, D1, ...)")
    size = node.attrs.get("size")
    if size is None or int(size) < 1:
        raise ModelError(f"node {node.name!r} (LRN): size must be a positive integer, not {size!r}")
    return [(x.shape, x.dtype)]


@register("LRN", infer=_lrn_infer)
def _lrn(node, ins, outs):
    require_float32(node, ins[:1])
    shape = ins[0].shape
    batch, channels = int(shape[0]), int(shape[1])
    inner = int(np.prod(shape[2:], dtype=np.int64))
    size = int(node.attrs["size"])
    alpha = float(node.attrs.get("alpha", 1e-4))
    beta = float(node.attrs.get("beta", 0.75))
    bias = float(node.attrs.get("bias", 1.0))

    def run(i, o):
        record.call(K.lrn, _flat(i[0]), o[0].reshape(-1), batch, channels, inner, size, alpha, beta, bias)
    return record.recordable(run)
