"""Conv and ConvTranspose (1-D, 2-D, 3-D, float32), with the fused epilogue and prologue of
bninfer.ops.fusion.

Geometry (output size, pads from auto_pad, validation) is worked out once per node; weights are
rearranged once at build time when they are constants. The kernels see every convolution as 3-D
(1-D and 2-D get leading spatial axes of size 1) so that one compiled kernel serves every rank.

Conv paths (batch 1 float32 single thread; ratios to onnxruntime in benchmarks/conv_layers.py):
  * 1x1 unpadded, group 1, constant weights, no prologue, at least 128 pixels (or a multiple of 32):
    kernels.conv_direct.pointwise_kernel, vectorized along the pixels of NCHW, no packing (a strided 1x1
    subsamples its input first);
  * dense (group 1) 1-D/2-D with constant weights: with at most 4 input channels (stems)
    kernels.conv_direct.rowvec_kernel (vectors along the output row); otherwise the register-tiled
    direct kernel kernels.conv_direct.direct_kernel on a padded copy of the input (1x1 convs below 64
    input channels that the pointwise kernel does not take, and 1x1 convs of one output pixel
    (squeeze-excitation: a matrix-vector product), stay on BLAS);
  * dense 2-D 3x3, stride 1, dilation 1, at least 32 input channels, outputs at least 8x8: Winograd
    F(2x2, 3x3), kernels.winograd (see `_use_winograd`: 1.5-1.7x the direct kernel on ResNet's layers);
  * depthwise (multiplier 1) 1-D/2-D with constant weights: kernels.depthwise, vectors along the row for
    rows of 24+ outputs, 16-channel blocks below;
  * any other depthwise: a direct loop kernel, prologue and epilogue fused;
  * 1x1 and depthwise convs in the chains bninfer.passes.layout marks (depthwise-separable ones, and
    ResNet's bottlenecks, whose Winograd and direct convs then read their blocked input, border included,
    as it is, and Winograd convs write blocked): channel-blocked values in and out
    (bninfer.ops.conv_blocked); other 1x1 convs (stride 1, unpadded, no prologue) over at most 14x14
    pixels take the same blocked 1x1 kernel with NCHW in and out;
  * 1x1, stride 1, unpadded, no prologue: the input is already the column matrix;
  * otherwise im2col (prologue applied to the gathered elements) and one batched BLAS matmul over
    (batch, group), then the epilogue in one Numba pass over the output.
The specialised kernels are made per set of compile-time constants (kernel size, stride, dilation, tile,
activation code), shared between nodes, compiled (or loaded from the disk cache) when the node is built.
With several threads (bninfer.threads.split) a large layer is cut into output-channel blocks (Winograd:
chunks of 2x2 tiles, as many per thread; depthwise: channels, packed by the thread that convolves them).
ConvTranspose: one batched matmul to columns (the prologue applied to the input first), then col2im
(a scatter-add per output plane) with the epilogue fused.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from .. import activations, record, threads, tiles
from ..errors import ModelError, UnsupportedOperatorError
from ..kernels import conv as K
from ..kernels import conv_direct as CD
from ..kernels import depthwise as DWK
from ..memory import aligned
from . import fusion, register, require_float32

_AUTO_PADS = ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID")


class _PaddedInput:
    """A node's padded input buffer, one per thread, kept across runs. The packers write only the
    interior, so the zero border (and channel padding, and the slack past the end) stays zero: a run
    neither allocates nor clears megabytes it would otherwise pay for in page faults or memset."""

    def __init__(self, size: int):
        self.size = size
        self._local = threading.local()

    def get(self) -> np.ndarray:
        return record.scratch(self.size, self._local)


_EMPTY = np.zeros(1, np.float32)  # stands for an absent residual (never read, never written)

# Packing an input (a copy, through the prologue's affine and activation where there is one) streams
# memory: an element counts as this many multiply-adds where the thread split weighs the work (ResNet-50's
# 64x56x56 inputs took 0.66 ns an element at 1 thread, a conv ~0.05 a multiply-add; at 2 threads its 14x14
# copies, 50 K elements, took 80 us serial, their input in the other core's cache).
_PACK_WEIGHT = 12


def split_copy(copy, units: int, elements: int, tables: "threads.PartTables", i, o, *arrays) -> None:
    """copy(u0, u1) -> [(kernel, args)]: the copy of units (channels, or blocks of them) [u0, u1) of a
    layer's input or output of `elements` values (packing, a layout conversion), split over the run's
    threads as a layer of its own (i, o: the step's arrays; arrays: the others the calls point into).
    Serial, such copies were the largest serial part of a 2-thread ResNet-50 run: 29 of them, 5 ms of its
    113, each with its worker idle."""
    threads.split_calls(copy, units, elements * _PACK_WEIGHT, 1, tables,
                        lambda: threads.owners(*arrays) + tuple(a for a in (*i, *o) if a is not None))


def subsample_split(x, xt, planes: int, H: int, W: int, SH: int, SW: int, OH: int, OW: int,
                    tables: "threads.PartTables", i, o) -> None:
    """xt (planes, OH, OW) = x (planes, H, W)[:, ::SH, ::SW]: a strided 1x1 conv's input, taken into a
    buffer of the layer's each run, split over the threads by planes (split_copy)."""
    def take(c0, c1):
        return [(CD.subsample_planes, (x[c0 * H * W:], xt[c0 * OH * OW:], c1 - c0, H, W, SH, SW, OH, OW))]
    split_copy(take, planes, planes * H * W, tables, i, o, x, xt)


def _pack_rows_by_channels(xn, xp, H: int, W: int, Hp: int, SW: int, Wq: int, PH: int, PW: int, pro):
    """split_copy's copy(c0, c1) for depthwise.pack_rows: input channels [c0, c1) of one image's xn into
    their planes of xp, through the prologue `pro`."""
    cplane, xplane = H * W, Hp * SW * Wq

    def pack(c0, c1):
        return [(DWK.pack_rows, (xn[c0 * cplane:c1 * cplane], xp[c0 * xplane:c1 * xplane], c1 - c0, H, W, Hp, SW,
                                 Wq, PH, PW, pro.has_pre, pro.scale[c0:c1], pro.shift[c0:c1], pro.code,
                                 pro.alpha[c0:c1], pro.beta))]
    return pack


def _err(node, msg: str) -> ModelError:
    return ModelError(f"node {node.name!r} ({node.op}): {msg}")


@dataclass(frozen=True)
class Geometry:
    """One convolution's sizes, all per spatial axis (nsp = 1, 2 or 3 axes)."""

    batch: int
    in_channels: int
    out_channels: int
    group: int
    in_spatial: tuple[int, ...]
    kernel: tuple[int, ...]
    strides: tuple[int, ...]
    dilations: tuple[int, ...]
    pads_begin: tuple[int, ...]  # may be negative for ConvTranspose (output_shape, output_padding)
    pads_end: tuple[int, ...]
    out_spatial: tuple[int, ...]

    @property
    def nsp(self) -> int:
        return len(self.kernel)

    def geom(self, channels: int, read_spatial, write_spatial) -> np.ndarray:
        """The kernels' int64 geometry vector, spatial axes padded in front to three."""
        def three(t, fill):
            return (fill,) * (3 - len(t)) + tuple(t)
        g = ((self.batch, channels) + three(read_spatial, 1) + three(self.kernel, 1) + three(self.strides, 1)
             + three(self.dilations, 1) + three(self.pads_begin, 0) + three(write_spatial, 1))
        assert len(g) == K.GEOM_LEN
        return np.array(g, np.int64)


def _shape_of(node, v, what: str) -> tuple[int, ...]:
    if v is None:
        raise _err(node, f"input {what} is missing")
    if v.shape is None or not all(isinstance(d, (int, np.integer)) for d in v.shape):
        raise _err(node, f"input {what} ({v.name!r}) has no static shape")
    return tuple(int(d) for d in v.shape)


def _int_list(node, name: str, n: int, default: int) -> tuple[int, ...]:
    value = node.attrs.get(name)
    if value is None:
        return (default,) * n
    value = tuple(int(v) for v in np.asarray(value).reshape(-1))
    if len(value) != n:
        raise _err(node, f"attribute {name} has {len(value)} values for {n} spatial axes")
    return value


def _common(node, ins, transpose: bool):
    """Ranks, kernel shape, strides, dilations, group: what Conv and ConvTranspose share."""
    base = ins[:fusion.base_inputs(node)]
    require_float32(node, base)
    x = _shape_of(node, ins[0] if ins else None, "X")
    w = _shape_of(node, ins[1] if len(ins) > 1 else None, "W")
    if len(x) < 3:
        raise _err(node, f"input X has shape {x}; expected (N, C, spatial...) with at least one spatial "
                         f"axis")
    if len(x) > 5:
        raise UnsupportedOperatorError(f"node {node.name!r} ({node.op}): {len(x) - 2}-D convolution is not "
                                       f"supported (1-D, 2-D and 3-D are)", [node.name])
    if len(w) != len(x):
        raise _err(node, f"weight shape {w} does not match input rank {len(x)} (input shape {x})")
    nsp = len(x) - 2
    kernel = tuple(w[2:])
    ks = node.attrs.get("kernel_shape")
    if ks is not None and tuple(int(k) for k in ks) != kernel:
        raise _err(node, f"kernel_shape {list(ks)} does not match weight shape {w}")
    if any(k < 1 for k in kernel):
        raise _err(node, f"weight shape {w} has an empty kernel")
    strides = _int_list(node, "strides", nsp, 1)
    dilations = _int_list(node, "dilations", nsp, 1)
    if any(s < 1 for s in strides):
        raise _err(node, f"strides {list(strides)} must be positive")
    if any(d < 1 for d in dilations):
        raise _err(node, f"dilations {list(dilations)} must be positive")
    group = int(node.attrs.get("group", 1))
    if group < 1:
        raise _err(node, f"group {group} must be positive")
    c = x[1]
    if c % group:
        raise _err(node, f"group {group} does not divide the {c} input channels")
    if transpose:
        if w[0] != c:
            raise _err(node, f"weight shape {w} has {w[0]} input channels; the input has {c}")
        cout = w[1] * group
    else:
        if w[1] * group != c:
            raise _err(node, f"weight shape {w} has {w[1]} channels per group; input with {c} channels "
                             f"in {group} groups needs {c // group}")
        if w[0] % group:
            raise _err(node, f"group {group} does not divide the {w[0]} output channels of weight {w}")
        cout = w[0]
    if cout < 1:
        raise _err(node, f"weight shape {w} has no output channels")
    auto_pad = node.attrs.get("auto_pad", "NOTSET") or "NOTSET"
    if auto_pad not in _AUTO_PADS:
        raise _err(node, f"unknown auto_pad {auto_pad!r}")
    pads = _int_list(node, "pads", 2 * nsp, 0)
    if auto_pad == "NOTSET" and any(p < 0 for p in pads):
        raise _err(node, f"pads {list(pads)} must not be negative")
    if len(base) > 2 and base[2] is not None:
        b = _shape_of(node, base[2], "B")
        if b != (cout,):
            raise _err(node, f"bias shape {b} does not match the {cout} output channels")
    return x, w, nsp, kernel, strides, dilations, group, cout, auto_pad, pads


def conv_geometry(node, ins) -> Geometry:
    x, w, nsp, kernel, strides, dilations, group, cout, auto_pad, pads = _common(node, ins, False)
    begin, end, out = [], [], []
    for i in range(nsp):
        size, k, s, d = x[2 + i], kernel[i], strides[i], dilations[i]
        span = (k - 1) * d + 1
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            o = -(-size // s)
            total = max(0, (o - 1) * s + span - size)
            b = total // 2 if auto_pad == "SAME_UPPER" else total - total // 2
            pb, pe = b, total - b
        elif auto_pad == "VALID":
            pb, pe = 0, 0
        else:
            pb, pe = pads[i], pads[nsp + i]
        padded = size + pb + pe
        if padded < span:
            raise _err(node, f"kernel {list(kernel)} (dilations {list(dilations)}) is larger than the padded "
                             f"input {list(x[2:])} (pads {pb}, {pe}) on spatial axis {i}")
        begin.append(pb)
        end.append(pe)
        out.append((padded - span) // s + 1)
    return Geometry(x[0], x[1], cout, group, tuple(x[2:]), kernel, strides, dilations, tuple(begin),
                    tuple(end), tuple(out))


def conv_transpose_geometry(node, ins) -> Geometry:
    x, w, nsp, kernel, strides, dilations, group, cout, auto_pad, pads = _common(node, ins, True)
    out_pad = _int_list(node, "output_padding", nsp, 0)
    for i, (op_, s, d) in enumerate(zip(out_pad, strides, dilations)):
        if op_ < 0 or op_ >= max(s, d):
            raise _err(node, f"output_padding {list(out_pad)} must be non-negative and less than "
                             f"max(stride, dilation) on spatial axis {i}")
    out_shape = node.attrs.get("output_shape")
    if out_shape is not None:
        out_shape = [int(v) for v in np.asarray(out_shape).reshape(-1)]
        if len(out_shape) == nsp + 2:
            out_shape = out_shape[2:]
        if len(out_shape) != nsp:
            raise _err(node, f"output_shape {out_shape} does not have {nsp} spatial sizes")
        if any(v < 1 for v in out_shape):
            raise _err(node, f"output_shape {out_shape} must be positive")
    begin, end, out = [], [], []
    for i in range(nsp):
        size, k, s, d = x[2 + i], kernel[i], strides[i], dilations[i]
        full = s * (size - 1) + out_pad[i] + (k - 1) * d + 1
        if out_shape is not None or auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            if out_shape is not None:
                total = full - out_shape[i]
            else:  # as onnxruntime: aim at size * stride, never pad negatively
                total = max(0, full - size * s)
            # Python's floor division: a negative total extends the output with zeros at the end.
            b = total // 2 if auto_pad == "SAME_UPPER" else total - total // 2
            pb, pe = b, total - b
        elif auto_pad == "VALID":
            pb, pe = 0, 0
        else:
            pb, pe = pads[i], pads[nsp + i]
        o = full - pb - pe
        if o < 1:
            raise _err(node, f"output size {o} on spatial axis {i} is not positive (input {list(x[2:])}, "
                             f"kernel {list(kernel)}, pads {pb}, {pe})")
        begin.append(pb)
        end.append(pe)
        out.append(o)
    return Geometry(x[0], x[1], cout, group, tuple(x[2:]), kernel, strides, dilations, tuple(begin),
                    tuple(end), tuple(out))


def _conv_infer(node, ins):
    g = conv_geometry(node, ins)
    return [((g.batch, g.out_channels) + g.out_spatial, np.dtype(np.float32))]


def _conv_transpose_infer(node, ins):
    g = conv_transpose_geometry(node, ins)
    return [((g.batch, g.out_channels) + g.out_spatial, np.dtype(np.float32))]


# -- shared run-time pieces ------------------------------------------------------------------------

def _flat(a: np.ndarray) -> np.ndarray:
    """A writable C-contiguous flat float32 view (a copy for read-only constants), so that every call
    of a kernel has the same Numba signature."""
    if not a.flags.writeable or not a.flags.c_contiguous or a.dtype != np.float32:
        a = np.array(a, np.float32, order="C")
    return a.reshape(-1)


def _vec(a: np.ndarray) -> np.ndarray:
    """A per-channel vector as a writable float32 copy (fusion hands out read-only broadcasts; Numba
    types read-only arrays apart, which would compile every kernel twice)."""
    return np.array(a, np.float32, order="C").reshape(-1)


class _Epilogue:
    """The fused epilogue of one node, ready for the kernels."""

    def __init__(self, node, ins, out_shape, channels: int):
        ep = fusion.epilogue(node, ins, channels)
        self.code = int(ep.act.code)
        self.alpha = _vec(ep.act.alpha)
        self.beta = float(ep.act.beta)
        self.has_post = bool(ep.has_post)
        self.post_scale, self.post_shift = _vec(ep.post_scale), _vec(ep.post_shift)
        self.residual = ep.residual
        self.residual_shape = None
        if ep.residual is not None:
            r = ins[ep.residual]
            if r is None or r.shape is None:
                raise _err(node, "fused residual input is missing")
            rshape = tuple(int(d) for d in r.shape)
            try:
                if np.broadcast_shapes(rshape, out_shape) != tuple(out_shape):
                    raise ValueError
            except ValueError:
                raise _err(node, f"fused residual of shape {rshape} does not broadcast to the output "
                                 f"shape {tuple(out_shape)}") from None
            if rshape != tuple(out_shape):
                self.residual_shape = tuple(out_shape)
        self.trivial = self.code == activations.NONE and not self.has_post and self.residual is None

    def residual_array(self, i) -> tuple[np.ndarray, bool]:
        if self.residual is None:
            return _EMPTY, False
        r = i[self.residual]
        if self.residual_shape is not None:
            if record.active() is not None:  # _flat copies it each run: a recorded copy would go stale
                raise record.Unrecordable
            r = np.broadcast_to(r, self.residual_shape)
        return _flat(r), True


class _Prologue:
    def __init__(self, node, ins, channels: int):
        pro = fusion.prologue(node, ins, channels)
        self.has_pre = bool(pro.has_pre)
        self.code = int(pro.act.code)
        self.alpha = _vec(pro.act.alpha)
        self.beta = float(pro.act.beta)
        self.scale, self.shift = _vec(pro.scale), _vec(pro.shift)


def _bias_of(node, ins, base: int, channels: int):
    """(bias vector or None if it comes at run time, has_bias)."""
    b = ins[2] if base > 2 else None
    if b is None:
        return np.zeros(channels, np.float32), False
    if b.data is None:
        return None, True
    return _vec(fusion.channel_vector(node, b.data, channels, "bias", 0.0)), True


def _runtime_bias(i, bias):
    if bias is not None:
        return bias
    return _flat(i[2])


def _channels(c0: int, c1: int, P: int, y, b, r, has_res: bool, ep: "_Epilogue") -> tuple:
    """Output channels [c0, c1) of one image's output y (C, P) and its epilogue operands, as the kernels
    take them: (out, bias, res, has_res, alpha, beta, has_post, post_scale, post_shift)."""
    return (y[c0 * P:c1 * P], b[c0:c1], r[c0 * P:c1 * P] if has_res else r, has_res, ep.alpha[c0:c1], ep.beta,
            ep.has_post, ep.post_scale[c0:c1], ep.post_shift[c0:c1])


# 1x1 convs with at least this many input channels go through the direct kernel; below it BLAS + the
# epilogue measured faster (the tile's stores weigh more when each output sums few products)
_DIRECT_1X1_MIN_CIN = 64


def _two_d(t, fill):
    """A 1-D or 2-D per-axis tuple as (H, W)."""
    return (fill,) + tuple(t) if len(t) == 1 else tuple(t)


def _pick_tile(cout: int, ow: int) -> tuple[int, int]:
    """(COB, RW): the host's tile (bninfer.tiles: 32 output channels x 8 pixels on AVX-512, 16 x 4 on
    AVX2), 16 channels when the layer has no more; the pixel count is chosen to waste the least of the
    last tile of each row."""
    t = tiles.HOST
    cob = 16 if cout <= 16 else t.direct_cob
    return cob, tiles.least_waste(t.direct_rw if cob == t.direct_cob else t.direct_rw_16, ow)


def _plane(g: Geometry) -> tuple[int, ...]:
    """A 1-D/2-D conv's (H, W, KH, KW, SH, SW, DH, DW, PH, PW, EH, EW, OH, OW): input size, kernel,
    strides, dilations, pads at the start and the end, output size (1-D: H = KH = OH = 1)."""
    return (_two_d(g.in_spatial, 1) + _two_d(g.kernel, 1) + _two_d(g.strides, 1) + _two_d(g.dilations, 1)
            + _two_d(g.pads_begin, 0) + _two_d(g.pads_end, 0) + _two_d(g.out_spatial, 1))


def _run_arrays(i, o, bias, ep: _Epilogue):
    """What every fast Conv path's run starts from: the flat input and output, the bias (constant or the
    run's) and the residual (an empty array and False without one)."""
    res, has_res = ep.residual_array(i)
    return _flat(i[0]), o[0].reshape(-1), _runtime_bias(i, bias), res, has_res


_ROWVEC_MAX_CIN = 4  # dense convs with at most this many input channels: row-vectorized kernel
# its tile, output channels x pixels, is the host's (bninfer.tiles). On AVX-512 16x16 measured best on the
# stems (ResNet's 7x7/2 3->64 at 224: 3.1 -> 2.4 ms, MobileNet's 3x3/2 3->32: 540 -> 350 us against 8x32;
# 112-pixel rows take 7 whole tiles instead of 4 with the last overlapping); 24 or 32 channels, or 48/64
# pixels, ran slower


def _rowvec_conv(g: Geometry, ep: _Epilogue, pro: _Prologue, bias, wdata):
    """bninfer.kernels.conv_direct.rowvec_kernel for a dense 1-D/2-D conv with few input channels."""
    cin, cout = g.in_channels, g.out_channels
    H, W, KH, KW, SH, SW, DH, DW, PH, PW, EH, EW, OH, OW = _plane(g)
    cot, pxt = tiles.HOST.rowvec
    if OW < pxt:  # the last tile of a row moves back over its neighbour: a narrow row takes a narrow tile
        pxt = 16
    kern = CD.rowvec_kernel(KH, KW, SH, SW, DH, DW, cot, pxt, ep.code, ep.residual is not None, ep.has_post)
    CD.compile_now(kern, CD.ROWVEC_SIG)
    w = CD.pack_weights_px(np.asarray(wdata, np.float32).reshape(cout, cin, KH, KW), cot)
    Hp = H + PH + EH
    Wq = DWK.dw_layout(W, PW, EW, SW, KW, DW, pxt, OW)
    plane = cin * Hp * SW * Wq
    padded = _PaddedInput(plane)
    N = g.batch
    P = OH * OW
    xs, ys = cin * H * W, cout * P
    wblock = w.size // -(-cout // cot)
    macs = cout * P * cin * KH * KW
    tables = [threads.PartTables() for _ in range(N)]
    pack_tables = [threads.PartTables() for _ in range(N)]

    def run(i, o):
        x, yf, b, res, has_res = _run_arrays(i, o, bias, ep)
        xp = padded.get()

        def outside():  # x: packed before
            return threads.owners(yf, b, res, xp) + tuple(i[1:]) + tuple(o)
        for n in range(N):
            if n:
                xp[:] = 0.0
            pack = _pack_rows_by_channels(x[n * xs:(n + 1) * xs], xp, H, W, Hp, SW, Wq, PH, PW, pro)
            split_copy(pack, cin, xs, pack_tables[n], i, o, x, xp)
            yn, rn = yf[n * ys:(n + 1) * ys], res[n * ys:(n + 1) * ys] if has_res else res

            def part(b0, b1):  # output-channel blocks [b0, b1)
                c0, c1 = b0 * cot, min(b1 * cot, cout)
                yo, bo, ro, _, ao, be, _, so, to = _channels(c0, c1, P, yn, b, rn, has_res, ep)
                return [(kern, (xp, w[b0 * wblock:b1 * wblock], yo, cin, c1 - c0, Hp, Wq, OH, OW, bo, ro, ao, be,
                                so, to))]
            threads.split_calls(part, -(-cout // cot), macs, 1, tables[n], outside)
    return record.recordable(run) if N == 1 else run  # several images clear the scratch between them


def direct_pads(g: Geometry) -> tuple[int, int, int, int]:
    """The zero border (top, left, bottom, right) the direct kernel reads a channel-blocked input with: its
    pads, and below them whole rows for the slack the last tile of the last row reads past the end (the
    widest tile of the host's, so that the layout and the kernel agree whatever the tile)."""
    H, W, KH, KW, SH, SW, DH, DW, PH, PW, EH, EW, OH, OW = _plane(g)
    rw = max(tiles.HOST.direct_rw + tiles.HOST.direct_rw_16)
    return PH, PW, EH + -(-(rw * SW + KW * DW) // (W + PW + EW)), EW


def _direct_conv(g: Geometry, ep: _Epilogue, pro: _Prologue, bias, wdata, x_pads=None):
    """The channel-blocked direct kernel of bninfer.kernels.conv_direct for a dense (group 1) 1-D/2-D
    convolution with constant weights. x_pads: the input is stored channel-blocked with this border
    (direct_pads': a chain's value, bninfer.passes.layout), read as it is (no packing, no prologue)."""
    cin, cout = g.in_channels, g.out_channels
    H, W, KH, KW, SH, SW, DH, DW, PH, PW, EH, EW, OH, OW = _plane(g)
    blocked_x = x_pads is not None
    if blocked_x:
        cib = 16
    elif cin >= 16:
        cib = 16 if cin % 16 == 0 or cin % 8 else 8
    else:
        cib = cin
    cinb = -(-cin // cib)
    cob, rw = _pick_tile(cout, OW)
    w = CD.pack_weights(np.asarray(wdata, np.float32).reshape(cout, cin, KH, KW), cinb, cib, cob)
    if KH == KW == 1 and SH == SW == 1 and not (PH or PW or EH or EW) and not blocked_x:
        H, W, OH, OW = 1, H * W, 1, OH * OW  # pointwise: one long row per channel
        cob, rw = _pick_tile(cout, OW)
    Hp, Wp = H + PH + EH, W + PW + EW
    slack = rw * SW + KW * DW
    if blocked_x:
        extra = x_pads[2] - EH  # the rows below the pads, which hold the slack
        if pro.has_pre or tuple(x_pads[:2]) != (PH, PW) or x_pads[3] != EW or extra * Wp < slack:
            raise ModelError(f"the direct kernel cannot read a blocked input with the border {tuple(x_pads)}"
                             f"{' and a prologue' if pro.has_pre else ''}")
        Hp += extra
    plane = cinb * cib * Hp * Wp
    kern = CD.direct_kernel(KH, KW, SH, SW, DH, DW, cib, cob, rw, ep.code, XB=blocked_x)
    CD.compile_now(kern, CD.DIRECT_SIG)
    padded = None if blocked_x else _PaddedInput(plane + slack)
    N = g.batch
    P = OH * OW
    xs, ys = plane if blocked_x else cin * H * W, cout * P
    nob = -(-cout // cob)
    wblock = w.size // nob
    macs = cout * P * cin * KH * KW
    tables = [threads.PartTables() for _ in range(N)]
    pack_tables = [threads.PartTables() for _ in range(N)]

    def run(i, o):
        x, yf, b, res, has_res = _run_arrays(i, o, bias, ep)
        xp = x if blocked_x else padded.get()

        def outside():  # x: packed before, or read as it is
            return threads.owners(yf, b, res, xp) + tuple(i[0 if blocked_x else 1:]) + tuple(o)
        for n in range(N):
            if blocked_x:
                xp = x[n * xs:(n + 1) * xs]
            else:
                if n:
                    xp[:plane] = 0.0
                pack = _pack_rows_by_channels(x[n * xs:(n + 1) * xs], xp, H, W, Hp, 1, Wp, PH, PW, pro)
                split_copy(pack, cin, xs, pack_tables[n], i, o, x, xp)
            yn, rn = yf[n * ys:(n + 1) * ys], res[n * ys:(n + 1) * ys] if has_res else res

            def part(b0, b1):  # output-channel blocks [b0, b1)
                c0, c1 = b0 * cob, min(b1 * cob, cout)
                yo, bo, ro, hr, ao, be, hp, so, to = _channels(c0, c1, P, yn, b, rn, has_res, ep)
                return [(kern, (xp, w[b0 * wblock:b1 * wblock], yo, cinb, Hp, Wp, c1 - c0, OH, OW, bo, ro, hr, ao,
                                be, hp, so, to, 0))]
            threads.split_calls(part, nob, macs, 1, tables[n], outside)
    return record.recordable(run) if N == 1 else run


# The tiles a pointwise layer chooses from (the host's, bninfer.tiles), by the least work padded to whole
# tiles (ties: the first); the first one's pixel count decides which 1x1 layers the kernel takes at all
# (at least 4 tiles of pixels, or whole tiles). On AVX-512 the two ran at the same speed on whole tiles;
# what differs is the waste: 16 channels x 16 pixels pads 64/256/512 channels and 196 or 784 pixels less
# (ResNet-50's layers, MobileNet's at 14x14 and 28x28: 5-25 % faster), 12 x 32 suits 24 or 144 channels
# (MobileNet's 56x56 layers: 16x16 there was 25 % slower).
# 1x1 convs of at most this many output pixels (ResNet-50's 14x14 and 7x7 stages) take the blocked 1x1
# kernel with NCHW in and out (bninfer.ops.conv_blocked, its output converted from a scratch): its tile of
# 32 output channels x 7-8 pixels broadcasts inputs against two weight vectors and beat the NCHW kernels
# there on an Intel host (ResNet-50 at 1 thread 4 % faster in two in-process A/B runs, at 2 threads
# unchanged); over 28x28 and 56x56 images the conversion of the output took the gain back. A strided one
# takes its subsampled input first.
_BLOCKED_1X1_MAX_PIXELS = 196
# The pointwise kernel's pixel chunks: this much input, kept in L2 while every output block reads it.
# Inside ResNet-50, 256->64 at 56x56 (a 3 MB input) went 1.16-1.21 -> 0.96-1.09 ms in two runs; alone,
# with the input warm in L3, no layer changed.
_PW_CHUNK_BYTES = 64 * 1024
# With a prologue (pre-activation nets), twice that: the prologue runs once a chunk, a call per chunk over
# every input channel, whose per-channel loops are short when chunks are: DenseNet-121's 1000-channel 14x14
# layers had one tile of 16 pixels a chunk. In-process A/B (Zen 3): DenseNet-121 0.956 (1 thread, 30
# rounds), 0.964 (2), pre-activation ResNet-18 0.982; the same for every 1x1 layer measured neutral on
# ResNet-50 (1.003, 1.012 at 1 thread, 0.994 at 2).
_PW_PROLOGUE_CHUNK_BYTES = 128 * 1024
# A span activation (SiLU, Sigmoid...) runs over each chunk's pixels after each block of channels: at
# least this many, so that its calls stay long enough to overlap the form's long dependency chain.
_PW_SPAN_MIN_PIXELS = 256


def _pick_pw_tile(cout: int, P: int) -> tuple[int, int]:
    def padded(tile):
        cot, pxt = tile
        return -(-cout // cot) * cot * max(P, -(-P // pxt) * pxt)
    return min(tiles.HOST.pointwise, key=padded)


def _pointwise_takes(P: int) -> bool:
    pxt = tiles.HOST.pointwise[0][1]
    return P >= 4 * pxt or P % pxt == 0


def _pointwise_conv(g: Geometry, ep: _Epilogue, pro: _Prologue, bias, wdata):
    """bninfer.kernels.conv_direct.pointwise_kernel for an unpadded 1x1 convolution (any rank, group 1,
    constant weights, a prologue whose activation it inlines): NCHW in and out, no packing."""
    cin, cout = g.in_channels, g.out_channels
    P = int(np.prod(g.out_spatial))
    cot, pxt = _pick_pw_tile(cout, P)
    kern = CD.pointwise_kernel(cot, pxt, ep.code, pro.code if pro.has_pre else -1, ep.residual is not None,
                               ep.has_post)
    CD.compile_now(kern, CD.PW_SIG)
    w = CD.pack_weights_pw(np.asarray(wdata, np.float32).reshape(cout, cin), cot)
    N = g.batch
    xs, ys = cin * P, cout * P
    nob = -(-cout // cot)
    wblock = w.size // nob
    macs = cout * P * cin
    chunk_bytes = _PW_PROLOGUE_CHUNK_BYTES if pro.has_pre else _PW_CHUNK_BYTES
    tpc = max(1, chunk_bytes // (cin * pxt * 4))  # tiles of pixels per chunk
    if ep.code not in activations.INLINE_CODES:
        tpc = max(tpc, -(-_PW_SPAN_MIN_PIXELS // pxt))
    # the prologue's output, one chunk of every input channel: the running thread's own (a recorded or
    # packed part gets one of its own: record.scratch)
    scratch = _PaddedInput(CD.pw_scratch_size(cin, P, pxt, tpc)) if pro.has_pre else None
    subsample = any(s > 1 for s in g.strides)
    if subsample:  # the strided input, taken into a buffer of the layer's (the caller's) each run
        SH, SW = _two_d(g.strides, 1)
        OH, OW = _two_d(g.out_spatial, 1)
        H, W = _two_d(g.in_spatial, 1)
        taken = _PaddedInput(N * xs)
        take_tables = threads.PartTables()

    tables = [threads.PartTables() for _ in range(N)]

    def run(i, o):
        y = o[0]
        b = _runtime_bias(i, bias)
        x = _flat(i[0])
        if subsample:  # memory-bound (~0.25-0.5 ms for ResNet-50's 256 x 56 x 56): split over planes too
            xt = taken.get()
            subsample_split(x, xt, N * cin, H, W, SH, SW, OH, OW, take_tables, i, o)
            x = xt
        yf = y.reshape(-1)
        res, has_res = ep.residual_array(i)

        def outside():
            return threads.owners(x, yf, b, res) + tuple(i) + tuple(o)
        by_pixels = _pixel_split(nob, P, cout, pxt, threads.current_size())
        for n in range(N):
            xn, yn, rn = x[n * xs:(n + 1) * xs], yf[n * ys:(n + 1) * ys], res[n * ys:(n + 1) * ys] if has_res else res

            def part(b0, b1, q0=0, q1=P):  # output-channel blocks [b0, b1) over pixels [q0, q1)
                c0, c1 = b0 * cot, min(b1 * cot, cout)
                yo, bo, ro, _, ao, be, _, so, to = _channels(c0, c1, P, yn, b, rn, has_res, ep)
                xs = _EMPTY if scratch is None else scratch.get()
                return [(kern, (xn, w[b0 * wblock:b1 * wblock], yo, cin, c1 - c0, P, q0, q1, bo, ro, ao, be, so, to,
                                tpc, pro.scale, pro.shift, pro.alpha, pro.beta, xs))]
            if by_pixels:
                groups = P // _PW_PIXEL_GRAIN
                threads.split_calls(lambda g0, g1: part(0, nob, g0 * _PW_PIXEL_GRAIN,
                                                        P if g1 == groups else g1 * _PW_PIXEL_GRAIN),
                                    groups, macs, 1, tables[n], outside)
            else:
                threads.split_calls(part, nob, macs, 1, tables[n], outside)
    return record.recordable(run)


# threads split a 1x1 layer over pixels in groups of this many (a multiple of every NCHW pixel tile)
_PW_PIXEL_GRAIN = 16


def _pixel_split(tiles_: int, P: int, cout: int, pxt: int, threads_: int) -> bool:
    """Whether threads split a 1x1 layer of `tiles_` output-channel tiles over its P pixels: when the
    tiles do not share out evenly and the layer has pixels enough for every thread (each part then reads
    every weight, cout x cin, and its share of the input, cin x P). ResNet-50's 64-channel layers at 56x56
    split their 11 tiles 6 + 5: the caller's part ran ~20 % longer than the worker's."""
    return (threads_ > 1 and tiles_ % threads_ != 0 and cout <= P
            and P >= 4 * threads_ * max(pxt, _PW_PIXEL_GRAIN))


def _depthwise_conv(g: Geometry, ep: _Epilogue, pro: _Prologue, bias, wdata):
    """bninfer.kernels.depthwise for a 1-D/2-D depthwise convolution (multiplier 1, constant weights)."""
    C = g.in_channels
    H, W, KH, KW, SH, SW, DH, DW, PH, PW, EH, EW, OH, OW = _plane(g)
    Hp = H + PH + EH
    N = g.batch
    P = OH * OW
    xs, ys = C * H * W, C * P
    kk = KH * KW
    # depthwise layers run at a tenth of a dense layer's speed: their work counts ten times
    macs = 10 * C * P * kk
    if OW < DWK.ROW_MIN_WIDTH:  # short rows: 16 channels per vector
        return _depthwise_blocked(g, ep, pro, bias, wdata, macs)
    # long rows: vectors along the row, a strided input split into stride phases while it is packed
    rw = DWK.pick_rw(OW)
    kern = DWK.depthwise_kernel(KH, KW, SH, SW, rw, ep.code, DH, DW, RH=4 if OH >= 4 else 1,
                                RES=ep.residual is not None, POST=ep.has_post)
    CD.compile_now(kern, DWK.DW_SIG)
    w = np.array(wdata, np.float32).reshape(-1)
    Wq = DWK.dw_layout(W, PW, EW, SW, KW, DW, rw, OW)
    scratch = _PaddedInput(Hp * SW * Wq)  # one channel, per thread

    def run(i, o):
        x, yf, b, res, has_res = _run_arrays(i, o, bias, ep)
        for n in range(N):
            xn, yn, rn = x[n * xs:(n + 1) * xs], yf[n * ys:(n + 1) * ys], res[n * ys:(n + 1) * ys] if has_res else res

            def part(c0, c1):  # channels [c0, c1), through the scratch of the thread that runs them
                yo, bo, ro, _, ao, be, _, so, to = _channels(c0, c1, P, yn, b, rn, has_res, ep)
                return [(kern, (xn[c0 * H * W:c1 * H * W], scratch.get(), w[c0 * kk:], yo, c1 - c0, H, W, Hp, Wq,
                                PH, PW, OH, OW, bo, ro, ao, be, so, to, pro.has_pre, pro.scale[c0:c1],
                                pro.shift[c0:c1], pro.code, pro.alpha[c0:c1], pro.beta))]
            threads.split(lambda c0, c1: record.calls(part(c0, c1)), C, macs)
    return record.recordable(run)


def _depthwise_blocked(g: Geometry, ep: _Epilogue, pro: _Prologue, bias, wdata, macs: float):
    """kernels.depthwise.blocked_kernel: a depthwise conv whose output rows are too short for vectors."""
    C = g.in_channels
    H, W, KH, KW, SH, SW, DH, DW, PH, PW, EH, EW, OH, OW = _plane(g)
    Hp = H + PH + EH
    N = g.batch
    rw = min(OW, tiles.least_waste(tiles.HOST.short_dw_rw, OW))  # tiles may overlap, never exceed OW
    kern = DWK.blocked_kernel(KH, KW, SH, SW, rw, ep.code, DH, DW)
    CD.compile_now(kern, DWK.BLOCKED_SIG)
    cpad = -(-C // 16) * 16
    w = DWK.pack_weights_blocked(np.asarray(wdata, np.float32).reshape(C, 1, KH, KW), cpad)
    Wq = W + PW + EW
    plane = cpad * Hp * Wq
    padded = _PaddedInput(plane + (rw * SW + KW * DW) * 16)
    P = OH * OW
    xs, ys = C * H * W, C * P
    per_channel = Hp * Wq  # floats of xp per channel (and of w: KH * KW)
    kk = KH * KW
    tables = [threads.PartTables() for _ in range(N)]

    def run(i, o):
        x, yf, b, res, has_res = _run_arrays(i, o, bias, ep)
        xp = padded.get()

        def outside():
            return threads.owners(x, yf, b, res, xp) + tuple(i) + tuple(o)
        for n in range(N):
            xn, yn, rn = x[n * xs:(n + 1) * xs], yf[n * ys:(n + 1) * ys], res[n * ys:(n + 1) * ys] if has_res else res

            def part(c0, c1):  # channels [c0, c1), whole blocks of 16: packed and convolved by one thread
                xpc = xp[c0 * per_channel:]
                yo, bo, ro, hr, ao, be, hp, so, to = _channels(c0, c1, P, yn, b, rn, has_res, ep)
                return [(CD.pack_input, (xn[c0 * H * W:c1 * H * W], xpc, c1 - c0, H, W, 16, Hp, Wq, PH, PW,
                                         pro.has_pre, pro.scale[c0:c1], pro.shift[c0:c1], pro.code,
                                         pro.alpha[c0:c1], pro.beta)),
                        (kern, (xpc, w[c0 * kk:], yo, c1 - c0, Hp, Wq, OH, OW, bo, ro, hr, ao, be, hp, so, to))]
            threads.split_calls(part, C, macs, 16, tables[n], outside)
    return record.recordable(run)


# -- Winograd F(2x2, 3x3) selection (bninfer.kernels.winograd) ------------------------------------------
# 3x3, stride 1, dilation 1, group 1, 2-D, constant weights; taken only for the layer sizes where it measured
# faster than the direct kernel (benchmarks/conv_layers.py): at least _WINO_MIN_CIN input channels and an
# output of at least _WINO_MIN_SIZE on each side (the host's, bninfer.tiles). The prologue is applied while
# packing (halo stays zero).
_WINO_MIN_CIN = 32
_WINO_MIN_SIZE: int | None = None  # None: the host's
_WINO_TILES = 56  # tiles per chunk: at least this many (whole tile rows)


def _wino_plan(OH: int, OW: int) -> tuple[int, int]:
    """(RT, tile rows per chunk): the register tile (RT tiles x 32 output channels, RT among the host's,
    bninfer.tiles: 8, 7, 6 on AVX-512, 2 on AVX2) that wastes the least of the chunk's last partial
    tile group."""
    TH, TW = -(-OH // 2), -(-OW // 2)
    ch = min(TH, max(1, -(-_WINO_TILES // TW)))
    rt = tiles.least_waste(tiles.HOST.winograd_rt, ch * TW)
    return rt, ch


def _wino_chunks(tiles_: int, most: int, nth: int) -> tuple[int, int]:
    """(chunks, tiles per chunk) for a plane of `tiles_` 2x2 tiles over `nth` threads, each chunk streaming
    all of U: chunks of at most `most` tiles (the plan's tile rows), as many as the threads share evenly
    (one per thread when the plane is small, 14x14). Whole tile rows split 4 + 3 there, and 8 + 6 at 28x28:
    the larger part set the layer's time on 2 threads."""
    row_chunks = -(-tiles_ // most)
    chunks = -(-row_chunks // nth) * nth
    return chunks, -(-tiles_ // chunks)


def _use_winograd(g: Geometry) -> bool:
    return (g.nsp == 2 and g.group == 1 and g.kernel == (3, 3) and g.strides == (1, 1)
            and g.dilations == (1, 1) and g.in_channels >= _WINO_MIN_CIN
            and min(g.out_spatial) >= (tiles.HOST.winograd_min_size if _WINO_MIN_SIZE is None else _WINO_MIN_SIZE))


def winograd_pads(g: Geometry) -> tuple[int, int, int, int]:
    """The zero border (top, left, bottom, right) the Winograd kernel reads around a layer's input: its
    pads, and at the bottom and right what rounds the output up to whole 2x2 tiles."""
    H, W = g.in_spatial
    PH, PW = g.pads_begin
    OH, OW = g.out_spatial
    Hp, Wp = 2 * -(-OH // 2) + 2, 2 * -(-OW // 2) + 2  # (stride 1: OH = H + pads - 2)
    return PH, PW, Hp - H - PH, Wp - W - PW


def _winograd_conv(g: Geometry, ep: _Epilogue, pro: _Prologue, bias, wdata, x_padded: bool = False,
                   y_blocked: bool = False):
    """x_padded: the input is stored channel-blocked with winograd_pads' zero border (a chain's value,
    bninfer.passes.layout), the layout the kernel reads: no packing (and no prologue). y_blocked: the
    output is stored channel-blocked, without border (and takes no residual)."""
    from ..kernels import winograd as WG
    cin, cout = g.in_channels, g.out_channels
    H, W = g.in_spatial
    PH, PW, EH, EW = winograd_pads(g)
    OH, OW = g.out_spatial
    TH, TW = -(-OH // 2), -(-OW // 2)
    Hp, Wp = H + PH + EH, W + PW + EW
    if x_padded and pro.has_pre or y_blocked and ep.residual is not None:
        raise ModelError("a Winograd conv reading a padded blocked input takes no prologue, one writing a "
                         "blocked output no residual")
    cinb = -(-cin // 16)
    nob = -(-cout // WG.COB)
    U = WG.transform_weights(np.asarray(wdata, np.float32).reshape(cout, cin, 3, 3))
    rt, ch = _wino_plan(OH, OW)
    kern = WG.compile_now(WG.winograd_kernel(rt, ep.code, y_blocked))
    plane = cinb * 16 * Hp * Wp
    padded = None if x_padded else _PaddedInput(plane)
    N = g.batch
    xs, ys = plane if x_padded else cin * H * W, (-(-cout // 16) * 16 if y_blocked else cout) * OH * OW
    alpha, beta, has_post, ps, pt = ep.alpha, float(ep.beta), ep.has_post, ep.post_scale, ep.post_shift
    if y_blocked:  # every lane of the last block is written: its affine too
        ps, pt = (np.concatenate([v, np.zeros(-cout % 16, np.float32)]) for v in (ps, pt))
    TT = TH * TW  # 2x2 output tiles
    macs = cout * OH * OW * cin * 4  # Winograd does 4/9 of the direct multiply-adds; counted as 4 per output
    tables = [threads.PartTables() for _ in range(N)]
    pack_tables = [threads.PartTables() for _ in range(N)]
    cplane, bplane = H * W, Hp * Wp * 16

    def run(i, o):
        x, yf, b, res, has_res = _run_arrays(i, o, bias, ep)
        xp = x if x_padded else padded.get()

        def outside():  # x: packed before, or read as it is
            return threads.owners(yf, b, res, xp) + tuple(i[0 if x_padded else 1:]) + tuple(o)
        for n in range(N):
            xn = x[n * xs:(n + 1) * xs]
            if x_padded:
                xp = xn
            else:
                if n:
                    xp[:] = 0.0

                def pack(b0, b1):  # blocks of 16 input channels [b0, b1)
                    c0, c1 = b0 * 16, min(b1 * 16, cin)
                    return [(CD.pack_input, (xn[c0 * cplane:c1 * cplane], xp[b0 * bplane:b1 * bplane], c1 - c0, H, W,
                                             16, Hp, Wp, PH, PW, pro.has_pre, pro.scale[c0:c1], pro.shift[c0:c1],
                                             pro.code, pro.alpha[c0:c1], pro.beta))]
                split_copy(pack, cinb, xs, pack_tables[n], i, o, x, xp)
            r = res[n * ys:(n + 1) * ys] if has_res else res
            yn = yf[n * ys:(n + 1) * ys]

            nchunks, ck = _wino_chunks(TT, ch * TW, threads.current_size())

            def part(k0, k1):  # chunks [k0, k1)
                return [(kern, (xp, U, yn, cinb, Hp, Wp, cout, nob, OH, OW, b, r, has_res, alpha, beta, has_post,
                                ps, pt, ck, k0 * ck, k1 * ck))]
            threads.split_calls(part, nchunks, macs, 1, tables[n], outside)
    return record.recordable(run) if N == 1 else run


def _one_pixel_conv(g: Geometry, ep: _Epilogue, bias, has_bias: bool, wdata):
    """A 1x1 conv of a one-pixel input (squeeze-excitation's convs): a matrix-vector product per image,
    product and epilogue in one call of a one-row Gemm kernel (kernels.gemm), chosen as for Gemm: dot
    products over the (cout, cin) weights when cin >= 2 cout (EfficientNet-B0's squeezes: 480 -> 20 5.6 ->
    3.8 us, 1152 -> 48 12.4 -> 6.7 us called alone, hot; in the model within its noise), else row sweeps
    over (cin, cout). Through numpy's matmul and then the epilogue, EfficientNet-B0's 32 such layers took
    5-7 us each."""
    from ..kernels import gemm as GK
    cin, cout, N = g.in_channels, g.out_channels, g.batch
    w2 = np.asarray(wdata, np.float32).reshape(cout, cin)
    dots = cin >= 2 * cout
    w = aligned(w2 if dots else w2.T).reshape(-1)  # (cout, cin) or (cin, cout), row-major
    zeros = np.zeros(cout, np.float32)
    # Sigmoid and SiLU (the squeeze and the excitation) through the activation's vectorized span after the
    # product: the kernels' epilogue applies them element by element (libm's exp, ~10 ns an element:
    # EfficientNet-B0's 32 layers ~0.1 ms a run)
    span = activations.SPANS.get(ep.code) if not ep.has_post else None
    code = activations.NONE if span is not None else ep.code
    if span is not None:
        activations.compile_span(ep.code)
        a0, hi, one, zero = np.float32(ep.alpha[0]), np.float32(ep.beta), np.float32(1.0), np.float32(0.0)

    def run(i, o):
        x, y = _flat(i[0]).reshape(N, cin), o[0].reshape(N, cout)
        b = _runtime_bias(i, bias)
        res, has_res = ep.residual_array(i)
        for n in range(N):
            ep_args = (b, has_bias, res[n * cout:(n + 1) * cout] if has_res else zeros, has_res, code, ep.alpha,
                       ep.beta, ep.has_post, ep.post_scale, ep.post_shift)
            if dots:
                record.call(GK.matrix_vector, x[n:n + 1], w, y[n:n + 1], cin, 0, cout, *ep_args)
            else:
                record.call(GK.vector_matrix, x[n:n + 1], w, y[n:n + 1], cin, cout, 0, cout, *ep_args)
            if span is not None:
                record.call(span, y[n], 0, cout, a0, hi, float(ep.beta), False, one, zero)
    return record.recordable(run)


# -- Conv --------------------------------------------------------------------------------------------

@register("Conv", infer=_conv_infer)
def _conv(node, ins, outs):
    from . import conv_blocked
    if node.attrs.get("_blocked"):  # a chain member of bninfer.passes.layout
        return conv_blocked.build(node, ins, outs)
    if fusion.extra(node, "channel_scale") is not None:  # only a chain's 1x1 conv takes them
        raise ModelError(f"node {node.name!r} (Conv): input channel factors outside a blocked chain")
    if (conv_blocked.blocked_kind(node, ins, strided=True) == "pw"
            and np.prod(outs[0].shape[2:]) <= _BLOCKED_1X1_MAX_PIXELS):
        return conv_blocked.build(node, ins, outs, conv_blocked.NCHW)
    g = conv_geometry(node, ins)
    base = fusion.base_inputs(node)
    out_shape = (g.batch, g.out_channels) + g.out_spatial
    ep = _Epilogue(node, ins, out_shape, g.out_channels)
    pro = _Prologue(node, ins, g.in_channels)
    bias, has_bias = _bias_of(node, ins, base, g.out_channels)
    G, N = g.group, g.batch
    cin_g, cout_g = g.in_channels // G, g.out_channels // G
    ksize = int(np.prod(g.kernel))
    P = int(np.prod(g.out_spatial))
    geom = g.geom(g.in_channels, g.in_spatial, g.out_spatial)
    depthwise = cin_g == 1 and G > 1
    unpadded_1x1 = ksize == 1 and not any(g.pads_begin) and not any(g.pads_end)
    pointwise = unpadded_1x1 and all(s == 1 for s in g.strides) and not pro.has_pre
    mult = cout_g

    def weights(w):
        w = np.ascontiguousarray(w, np.float32)
        if depthwise:
            return _flat(w)  # (C * mult, k...) flat
        return np.array(w.reshape(G, cout_g, cin_g * ksize), np.float32, order="C")

    wdata = ins[1].data
    if wdata is not None and depthwise and mult == 1 and g.nsp <= 2 and np.prod(out_shape) > 0:
        return _depthwise_conv(g, ep, pro, bias, wdata)
    # small images (7x7: the pointwise kernel's overlapping last tile would redo a third of the work) go to
    # the direct kernel; a strided unpadded 1x1 conv subsamples its input first
    pw_prologue = not pro.has_pre or pro.code in activations.INLINE_CODES
    if wdata is not None and unpadded_1x1 and pw_prologue and (g.nsp <= 2 or pointwise) and G == 1 \
            and np.prod(out_shape) > 0 and _pointwise_takes(P):
        return _pointwise_conv(g, ep, pro, bias, wdata)
    if wdata is not None and G == 1 and unpadded_1x1 and all(d == 1 for d in g.in_spatial) \
            and not pro.has_pre and np.prod(out_shape) > 0:
        return _one_pixel_conv(g, ep, bias, has_bias, wdata)
    if wdata is not None and not depthwise and G == 1 and g.nsp <= 2 and np.prod(out_shape) > 0 \
            and (ksize > 1 or g.in_channels >= _DIRECT_1X1_MIN_CIN and P > 1):
        if g.in_channels <= _ROWVEC_MAX_CIN and ksize > 1:
            return _rowvec_conv(g, ep, pro, bias, wdata)
        if _use_winograd(g):  # Winograd hook
            return _winograd_conv(g, ep, pro, bias, wdata)
        fast = _direct_conv(g, ep, pro, bias, wdata)
        if fast is not None:
            return fast
    w_ready = weights(wdata) if wdata is not None else None
    blas_macs = N * g.out_channels * P * cin_g * ksize

    def run(i, o):
        y = o[0]
        if y.size == 0:
            return
        w = w_ready if w_ready is not None else weights(i[1])
        b = _runtime_bias(i, bias)
        x = _flat(i[0])
        yf = y.reshape(-1)
        res, has_res = ep.residual_array(i)
        if depthwise:
            K.depthwise(x, w, yf, geom, mult, b, pro.has_pre, pro.scale, pro.shift, pro.code, pro.alpha,
                        pro.beta, res, has_res, ep.code, ep.alpha, ep.beta, ep.has_post, ep.post_scale,
                        ep.post_shift)
            return
        if pointwise:
            cols = x.reshape(N, G, cin_g, P)
        else:
            cols = np.empty(N * g.in_channels * ksize * P, np.float32)
            K.im2col(x, cols, geom, pro.has_pre, pro.scale, pro.shift, pro.code, pro.alpha, pro.beta)
            cols = cols.reshape(N, G, cin_g * ksize, P)
        with threads.blas(blas_macs):
            np.matmul(w, cols, out=y.reshape(N, G, cout_g, P))
        if has_bias or not ep.trivial:
            K.epilogue(yf, yf, g.out_channels, P, b, res, has_res, ep.code, ep.alpha, ep.beta, ep.has_post,
                       ep.post_scale, ep.post_shift)
    return run


# -- ConvTranspose -------------------------------------------------------------------------------------

@register("ConvTranspose", infer=_conv_transpose_infer)
def _conv_transpose(node, ins, outs):
    g = conv_transpose_geometry(node, ins)
    base = fusion.base_inputs(node)
    out_shape = (g.batch, g.out_channels) + g.out_spatial
    ep = _Epilogue(node, ins, out_shape, g.out_channels)
    pro = _Prologue(node, ins, g.in_channels)
    bias, has_bias = _bias_of(node, ins, base, g.out_channels)
    G, N = g.group, g.batch
    cin_g, cout_g = g.in_channels // G, g.out_channels // G
    ksize = int(np.prod(g.kernel))
    S = int(np.prod(g.in_spatial))
    P = int(np.prod(g.out_spatial))
    # Reads columns over the input's spatial sizes, writes the output's.
    geom = g.geom(g.out_channels, g.in_spatial, g.out_spatial)
    # 1x1, stride 1, no padding: the matmul is the output.
    direct = ksize == 1 and all(s == 1 for s in g.strides) and not any(g.pads_begin) \
        and not any(g.pads_end) and g.out_spatial == g.in_spatial

    def weights(w):
        # (Cin, Cout/G, k...) -> per group (Cout/G * k, Cin/G): rows ordered (output channel, tap)
        w = np.ascontiguousarray(w, np.float32).reshape(G, cin_g, cout_g * ksize)
        return np.array(w.transpose(0, 2, 1), np.float32, order="C")

    wdata = ins[1].data
    w_ready = weights(wdata) if wdata is not None else None
    blas_macs = N * g.in_channels * cout_g * ksize * S

    def run(i, o):
        y = o[0]
        if y.size == 0:
            return
        w = w_ready if w_ready is not None else weights(i[1])
        b = _runtime_bias(i, bias)
        x = _flat(i[0])
        if pro.has_pre:
            xp = np.empty_like(x)
            K.prologue(x, xp, N, g.in_channels, S, pro.scale, pro.shift, pro.code, pro.alpha, pro.beta)
            x = xp
        yf = y.reshape(-1)
        res, has_res = ep.residual_array(i)
        xs = x.reshape(N, G, cin_g, S)
        if direct:
            with threads.blas(blas_macs):
                np.matmul(w, xs, out=y.reshape(N, G, cout_g, P))
            if has_bias or not ep.trivial:
                K.epilogue(yf, yf, g.out_channels, P, b, res, has_res, ep.code, ep.alpha, ep.beta,
                           ep.has_post, ep.post_scale, ep.post_shift)
            return
        cols = np.empty((N, G, cout_g * ksize, S), np.float32)
        with threads.blas(blas_macs):
            np.matmul(w, xs, out=cols)
        K.col2im_epilogue(cols.reshape(-1), yf, geom, b, res, has_res, ep.code, ep.alpha, ep.beta,
                          ep.has_post, ep.post_scale, ep.post_shift)
    return run
