"""Conv on channel-blocked values (bninfer.kernels.blocked), for the chains bninfer.passes.layout marks.

A marked Conv carries attrs["_blocked"] (Marks); its blocked values have the stored shape
(N, NB, H + pads, W + pads, 16). The kernels work blocked in and out: an NCHW residual is converted into
a scratch, an NCHW output is written through one (a chain's first 1x1 reads NCHW directly).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .. import activations, record, threads, tiles
from ..errors import ModelError
from ..ir import Value
from ..kernels import blocked as BK
from ..kernels import conv_direct as CD
from . import fusion
from .conv import (_EMPTY, _ROWVEC_MAX_CIN, _Epilogue, _PaddedInput, _Prologue, _bias_of, _direct_conv, _plane,
                   _use_winograd, _winograd_conv, conv_geometry, direct_pads, split_copy, subsample_split,
                   winograd_pads)


class Marks(NamedTuple):
    """How a chain member's values are stored: input, residual and output blocked or NCHW; the zero
    border (top, left, bottom, right) the input and the output carry, None for none."""
    x: bool
    res: bool
    y: bool
    x_pads: tuple | None
    y_pads: tuple | None


def pads_of(node, ins) -> tuple[int, int, int, int]:
    """A 2-D conv's pads (top, left, bottom, right), as its geometry works them out."""
    H, W, KH, KW, SH, SW, DH, DW, PH, PW, EH, EW, OH, OW = _plane(conv_geometry(node, ins))
    return (PH, PW, EH, EW)


def border_of(node, ins, kind: str) -> tuple[int, int, int, int]:
    """The border (top, left, bottom, right) a "wino" or "direct" conv reads its blocked input with
    (conv.winograd_pads, conv.direct_pads)."""
    g = conv_geometry(node, ins)
    return winograd_pads(g) if kind == "wino" else direct_pads(g)


def blocked_kind(node, ins, strided: bool = False) -> str | None:
    """"pw" (1x1, stride 1, or any with `strided`, unpadded, group 1, at least PW_MIN_PIXELS output
    pixels), "dw" (depthwise, multiplier 1, rows of at least DW_MIN_WIDTH), "stem" (any other group-1
    conv of at most STEM_MAX_CHANNELS input channels, rows of at least STEM_MIN_WIDTH), "wino" (a 3x3
    conv the Winograd kernel takes) or "direct" (any other group-1 conv but a 1x1, the direct kernel's:
    these two read a blocked input with the border border_of gives as it is; the direct kernel writes
    NCHW, the Winograd one either) for a 2-D float32
    Conv with constant weights and bias, no prologue, no affine after an activation the kernels do not
    inline (INLINE_CODES) and a residual (if any) of the output's shape; None for any other node."""
    if node.op != "Conv" or len(ins) < 2 or ins[0] is None or ins[1] is None or ins[1].data is None:
        return None
    try:
        g = conv_geometry(node, ins)
        base = fusion.base_inputs(node)
        if any(v is not None and v.dtype != np.float32 for v in ins[:base]):
            return None
        if base > 2 and ins[2] is not None and ins[2].data is None:
            return None
        ep = fusion.epilogue(node, ins, g.out_channels)
        pro = fusion.prologue(node, ins, g.in_channels)
    except (ModelError, ValueError, TypeError):
        return None  # the plain build reports it
    out_shape = (g.batch, g.out_channels) + g.out_spatial
    if g.nsp != 2 or pro.has_pre:
        return None
    if ep.act.code not in activations.INLINE_CODES and ep.has_post:
        return None  # the kernels' span activations take no per-channel affine after them
    if ep.residual is not None:
        r = ins[ep.residual]
        if r is None or r.shape is None or tuple(r.shape) != out_shape:
            return None
    # smaller images stay NCHW: little to gain, and each size would compile kernels of its own
    unpadded = not any(g.pads_begin + g.pads_end)
    if g.group == 1 and g.kernel == (1, 1) and (strided or g.strides == (1, 1)) and unpadded:
        return "pw" if np.prod(g.out_spatial) >= BK.PW_MIN_PIXELS else None
    if g.group == g.in_channels == g.out_channels > 1:
        return "dw" if g.out_spatial[1] >= BK.DW_MIN_WIDTH else None
    if g.group == 1 and g.in_channels <= STEM_MAX_CHANNELS and g.out_spatial[1] >= STEM_MIN_WIDTH:
        return "stem"
    if _use_winograd(g):
        return "wino"
    if g.group == 1 and g.kernel != (1, 1) and g.in_channels > _ROWVEC_MAX_CIN:
        return "direct"
    return None


# a dense conv of this few input channels (an image's) takes bninfer.kernels.blocked.dense_kernel when a
# depthwise-separable chain follows it; its rows must hold the widest tile (1 block x 14 pixels)
STEM_MAX_CHANNELS = 4
STEM_MIN_WIDTH = 14


def _logical(v: Value, channels: int, pads) -> Value:
    """The NCHW view of a blocked value (N, NB, H + pads, W + pads, 16) holding `channels` channels."""
    n, _, h, w, _ = v.shape
    ph, pw, eh, ew = pads or (0, 0, 0, 0)
    return Value(v.name, (n, channels, h - ph - eh, w - pw - ew), v.dtype, v.data)


# a Conv outside any chain, built with the blocked kernels: NCHW in and out, through scratches
NCHW = Marks(False, False, False, None, None)


def build(node, ins, outs, marks: Marks | None = None):
    """The run of a Conv with the blocked kernels; its values stored as `marks` says (default: the
    node's own, from bninfer.passes.layout). NCHW in and out (NCHW), a strided 1x1 conv takes its
    subsampled input into a buffer of its own first."""
    marks = marks or node.attrs["_blocked"]
    wshape = ins[1].data.shape
    group = int(node.attrs.get("group", 1))
    ins = list(ins)
    if marks.x:
        ins[0] = _logical(ins[0], wshape[1] * group, marks.x_pads)
    res_pos = fusion.extra(node, "residual")
    if marks.res:
        ins[res_pos] = _logical(ins[res_pos], wshape[0], None)
    kind = blocked_kind(node, ins, strided=True)
    if kind is None:
        raise ModelError(f"node {node.name!r} (Conv): marked for the blocked layout but does not fit it")
    if kind in ("wino", "direct"):
        return _reading_blocked(node, ins, marks, kind)
    factors = fusion.extra(node, "channel_scale")
    if factors is not None and (kind != "pw" or not marks.x):
        raise ModelError(f"node {node.name!r} (Conv): input channel factors, but no blocked 1x1 conv")
    g = conv_geometry(node, ins)
    out_shape = (g.batch, g.out_channels) + g.out_spatial
    ep = _Epilogue(node, ins, out_shape, g.out_channels)
    bias, _ = _bias_of(node, ins, fusion.base_inputs(node), g.out_channels)
    cout = g.out_channels
    vec = [BK.padded_vector(a, cout) for a in (bias, ep.alpha, ep.post_scale, ep.post_shift)]
    nob = BK.blocks(cout)
    OH, OW = g.out_spatial
    P = OH * OW
    y_pads = marks.y_pads or (0, 0, 0, 0)
    ys = nob * (OH + y_pads[0] + y_pads[2]) * (OW + y_pads[1] + y_pads[3]) * BK.CB  # one image's output
    rs = nob * P * BK.CB  # one image's residual
    if kind == "pw":
        part_of, macs = _pointwise(g, ep, marks.x, y_pads, ins[1].data, vec, factors)
    elif kind == "stem":
        part_of, macs = _dense(g, ep, y_pads, ins[1].data, vec)
    else:
        part_of, macs = _depthwise(g, ep, marks.x_pads is not None, y_pads, ins[1].data, vec)
    has_res = ep.residual is not None
    subsample = kind == "pw" and g.strides != (1, 1)
    if subsample:  # the strided input, taken into a buffer of the layer's (the caller's) each run
        H, W = g.in_spatial
        SH, SW = g.strides
        planes = g.batch * (BK.blocks(g.in_channels) if marks.x else g.in_channels)
        taken = _PaddedInput(planes * P * (BK.CB if marks.x else 1))
        take_tables = threads.PartTables()
        if marks.x:
            if marks.x_pads is not None:
                raise ModelError(f"node {node.name!r} (Conv): a strided 1x1 conv reads a blocked input without border")
            CD.compile_now(BK.subsample, BK.SUB_SIG)
    scratch_y = None if marks.y else _PaddedInput(g.batch * ys)
    assert scratch_y is None or ys == rs  # an NCHW output has no border of its own
    scratch_r = _PaddedInput(g.batch * rs) if has_res and not marks.res else None
    N = g.batch
    tables = [threads.PartTables() for _ in range(N)]
    res_tables = [threads.PartTables() for _ in range(N)]
    out_tables = [threads.PartTables() for _ in range(N)]

    def conversion(kern, src, dst, n, to_blocked: bool):
        """kern's calls over output blocks [b0, b1) of image n: NCHW src -> blocked dst, or back."""
        def blocks_of(b0, b1):
            c0, c1 = b0 * BK.CB, min(b1 * BK.CB, cout)
            nchw = slice((n * cout + c0) * P, (n * cout + c1) * P)
            blk = slice(n * rs + c0 * P, n * rs + b1 * BK.CB * P)
            return [(kern, (src[nchw], dst[blk], c1 - c0, P) if to_blocked else (src[blk], dst[nchw], c1 - c0, P))]
        return blocks_of

    def run(i, o):
        x = i[0].reshape(-1)
        if subsample:
            xt = taken.get()
            if marks.x:
                _subsample_blocked(x, xt, planes, H, W, SH, SW, OH, OW, take_tables, i, o)
            else:
                subsample_split(x, xt, planes, H, W, SH, SW, OH, OW, take_tables, i, o)
            x = xt
        if has_res:
            r = i[ep.residual].reshape(-1)
            if scratch_r is not None:
                rb = scratch_r.get()
                for n in range(N):
                    split_copy(conversion(BK.to_blocked, r, rb, n, True), nob, cout * P, res_tables[n], i, o, r, rb)
                r = rb
        else:
            r = _EMPTY
        y = o[0].reshape(-1) if scratch_y is None else scratch_y.get()

        def outside():  # what the parts' calls read beyond the layer's own arrays (the stem reads x only to pad it)
            return threads.owners(r, y) + tuple(i[1:] if kind == "stem" else i) + tuple(o)
        for n in range(N):
            calls, count, native = part_of(x, r, y, n, i, o)
            threads.split_calls(calls, count, macs, 1, None if native is None else tables[n],
                                lambda: outside() + native)
        if scratch_y is not None:  # (without y_pads: ys is rs)
            yo = o[0].reshape(-1)
            for n in range(N):
                split_copy(conversion(BK.from_blocked, y, yo, n, False), nob, cout * P, out_tables[n], i, o, y, yo)
    return record.recordable(run)


def _subsample_blocked(x, xt, blocks_: int, H: int, W: int, SH: int, SW: int, OH: int, OW: int, tables, i, o):
    """xt (blocks_, OH, OW, 16) = x (blocks_, H, W, 16)[:, ::SH, ::SW]: conv.subsample_split's blocked
    counterpart, split over the threads by blocks."""
    def take(b0, b1):
        return [(BK.subsample, (x[b0 * H * W * BK.CB:], xt[b0 * OH * OW * BK.CB:], b1 - b0, H, W, SH, SW, OH, OW))]
    split_copy(take, blocks_, blocks_ * H * W * BK.CB, tables, i, o, x, xt)


def _reading_blocked(node, ins, marks: Marks, kind: str):
    """A Winograd or direct conv reading its blocked input, stored with the border the kernel reads, as it
    is; NCHW out (Winograd: or blocked)."""
    g = conv_geometry(node, ins)
    border = border_of(node, ins, kind)
    if (not marks.x or marks.res or tuple(marks.x_pads or (0, 0, 0, 0)) != border
            or marks.y and (kind != "wino" or marks.y_pads is not None)):
        raise ModelError(f"node {node.name!r} (Conv): its kernel reads a blocked input only with the border "
                         f"{border}, and writes NCHW (Winograd: or blocked without border), not {marks}")
    out_shape = (g.batch, g.out_channels) + g.out_spatial
    ep, pro = _Epilogue(node, ins, out_shape, g.out_channels), _Prologue(node, ins, g.in_channels)
    bias, _ = _bias_of(node, ins, fusion.base_inputs(node), g.out_channels)
    if kind == "wino":
        return _winograd_conv(g, ep, pro, bias, ins[1].data, x_padded=True, y_blocked=marks.y)
    return _direct_conv(g, ep, pro, bias, ins[1].data, x_pads=border)


# pixels per share when threads split a 1x1 layer over its pixels: at least a tile's (7 or 8)
PIXEL_GRAIN = 16


def _pointwise(g, ep, x_blocked: bool, y_pads, wdata, vec, factors: int | None = None):
    """factors: the position of the input's per-channel factors (bninfer.passes.scale_into_weights), which
    scale the weights each run, before the parts run."""
    cin, cout = g.in_channels, g.out_channels
    OH, OW = g.out_spatial
    P = OH * OW
    yoff, yplane = BK.out_offsets(OH, OW, y_pads)
    nob = BK.blocks(cout)
    w = np.zeros((nob * BK.CB, cin), np.float32)
    w[:cout] = np.asarray(wdata, np.float32).reshape(cout, cin)
    # one kernel per run of blocks (pairs, then an odd last one; a last block of 8 channels or fewer may
    # take tiles of its own, with the block before it): (kernel, nb, first block, packed weights)
    half = tiles.blocked_pw_half(cout)
    whole = nob - (half[0] if half is not None else 0)
    runs = []
    for nb, rp, first, count in tiles.blocked_pw_tiles(whole, P) if whole else []:
        kern = CD.compile_now(BK.pointwise_kernel(nb, rp, ep.code, x_blocked), BK.PW_SIG)
        rows = w[first * BK.CB:(first + count) * BK.CB]
        runs.append((kern, nb, first, BK.pack_weights_pw(rows, nb)))
    if half is not None:
        nb, rp = half
        kern = CD.compile_now(BK.pointwise_kernel(nb, rp, ep.code, x_blocked, LANES=BK.HALF), BK.PW_SIG)
        runs.append((kern, nb, whole, BK.pack_weights_pw(w[whole * BK.CB:], nb)))
    b, alpha, ps, pt = vec
    xs = (BK.blocks(cin) * BK.CB if x_blocked else cin) * P
    ys, rs = nob * yplane, nob * BK.CB * P
    beta, has_post = ep.beta, ep.has_post
    has_res = ep.residual is not None
    # the units threads split: one group of nb blocks each, (kernel, nb, first block, run, offset)
    units = [(kern, nb, first + k * nb, r, k * cin * nb * BK.CB)
             for r, (kern, nb, first, wk) in enumerate(runs) for k in range(len(wk) // (cin * nb * BK.CB))]
    packed = [wk for _, _, _, wk in runs]
    if factors is not None:
        CD.compile_now(BK.scale_rows, BK.ROWS_SIG)
        starts = np.cumsum([0] + [wk.size for wk in packed])
        scaled = _PaddedInput(int(starts[-1]))  # the caller's: the parts read it

    groups = max(1, P // PIXEL_GRAIN)
    border = any(y_pads)
    OHp, OWp = OH + y_pads[0] + y_pads[2], OW + y_pads[1] + y_pads[3]
    clear_tables = [threads.PartTables() for _ in range(g.batch)]

    def part_of(x, r, y, n, i, o):
        """For image n: (calls, count, native): threads.split_calls' calls(a, b) over [0, count), and the
        owners of the arrays beyond r and y those calls read (None: the calls cannot run natively). A padded
        output's border is cleared in parallel: by each part for its own blocks where parts split the
        blocks, else before the parts (_clear_border_first; serial, the caller's zeroing had cost 30-40 us a
        layer at 2 threads, most of it cache lines the other core held). i, o: the step's arrays, for a
        copy that runs as a split of its own before the parts (the stem's padding, a border's clearing)."""
        xn, yn = x[n * xs:(n + 1) * xs], y[n * ys:(n + 1) * ys]
        rn = r[n * rs:(n + 1) * rs] if has_res else r
        weights, kept = packed, threads.owners(x)
        if factors is not None:
            buf = scaled.get()
            weights, kept = [buf[starts[k]:starts[k + 1]] for k in range(len(packed))], kept + (buf,)
            s = i[factors].reshape(-1)
            s = s[n * cin:(n + 1) * cin] if s.size > cin else s[:cin]
            for wk, ws, (_, nb, _, _) in zip(packed, weights, runs):
                record.call(BK.scale_rows, wk, s, ws, cin, nb * BK.CB, wk.size // (cin * nb * BK.CB))

        def units_over(u0, u1, q0, q1, clear=False):  # units [u0, u1) over pixels [q0, q1); a kernel's units
            calls = []                                     # in one call (clear: their blocks' border first)
            u = u0
            while u < u1:
                kern, nb, b0, run, w0 = units[u]
                wk = weights[run]
                v = u + 1
                while v < u1 and units[v][0] is kern:
                    v += 1
                b1 = b0 + (v - u) * nb
                c0, c1 = b0 * BK.CB, b1 * BK.CB
                if clear:
                    calls.append((BK.zero_border, (yn[b0 * yplane:b1 * yplane], b1 - b0, OHp, OWp, *y_pads)))
                calls.append((kern, (xn, wk[w0:w0 + (v - u) * cin * nb * BK.CB], yn[b0 * yplane:b1 * yplane], cin,
                                     b1 - b0, P, q0, q1, yoff, yplane, b[c0:c1], rn[c0 * P:c1 * P] if has_res else rn,
                                     has_res, alpha[c0:c1], beta, has_post, ps[c0:c1], pt[c0:c1])))
                u = v
            return calls

        def pixels(g0, g1):  # pixel groups [g0, g1) through every unit
            return units_over(0, len(units), g0 * PIXEL_GRAIN, P if g1 == groups else g1 * PIXEL_GRAIN)

        if _even_units(len(units), threads.current_size()):
            return (lambda u0, u1: units_over(u0, u1, 0, P, border)), len(units), kept
        # too few output blocks to share out evenly (a projection to 16-64 channels, or 5 units of 144
        # channels over 2 threads): each thread takes a run of pixels through every block instead, reading
        # all the weights and its share of the input
        if border:
            _clear_border_first(yn, nob, yplane, OHp, OWp, y_pads, P, clear_tables[n], i, o, y)
        return pixels, groups, kept
    return part_of, cout * cin * P


def _border_share(y, nob: int, a: int, b: int, count: int, yplane: int, OHp: int, OWp: int, y_pads) -> list:
    """The zero_border call for [a, b) of `count` units over a padded output's `nob` blocks: the border of
    blocks [nob * a // count, nob * b // count), so that the parts of a split clear the whole border
    between them, in parallel (serial, MobileNetV2's stem and 24->144 1x1 layers spent 30-40 us each at 2
    threads clearing theirs, on cache lines the other core held). Only for parts that then write those
    blocks alone, or for a split of its own (_clear_border_first)."""
    b0, b1 = nob * a // count, nob * b // count
    return [(BK.zero_border, (y[b0 * yplane:b1 * yplane], b1 - b0, OHp, OWp, *y_pads))] if b1 > b0 else []


def _clear_border_first(yn, nob: int, yplane: int, OHp: int, OWp: int, y_pads, P: int, tables, i, o, y) -> None:
    """The border of an output whose parts split its pixels or rows (not its blocks), zeroed by blocks as a
    split of its own before them. A part's activation span runs across the border between its rows
    (activations.SPAN_ZERO_AT_ZERO), which stays zero only if it was zero: with the border cleared by
    the parts themselves, a block's share by another part, a part could clear a cell after a span had
    read its old value and before the span wrote it back activated (garbage from a fresh arena came
    through at 3 threads on 2 cores, about one run in 200 under load)."""
    split_copy(lambda b0, b1: _border_share(yn, nob, b0, b1, nob, yplane, OHp, OWp, y_pads), nob,
               nob * (yplane - P * BK.CB), tables, i, o, y)


def _even_units(units: int, threads_: int) -> bool:
    """Whether `units` output-block units share out over `threads_` threads within 10 % of even (at least
    two each). 5 units of 144 channels over 2 threads went 3 + 2: the 24->144 1x1 at 56x56 took 72 % of its
    one-thread time on 2 threads, against 55 % split over its pixels."""
    return units >= 2 * threads_ and -(-units // threads_) * threads_ <= 1.1 * units


def _dense(g, ep, y_pads, wdata, vec):
    """A stem: NCHW in (copied into a padded plane per run), blocked out, threads splitting its rows."""
    cin, cout = g.in_channels, g.out_channels
    H, W, KH, KW, SH, SW, DH, DW, PH, PW, EH, EW, OH, OW = _plane(g)
    Hp, Wp = H + PH + EH, W + PW + EW
    yoff, yplane = BK.out_offsets(OH, OW, y_pads)
    border = any(y_pads)
    OHp, OWp = OH + y_pads[0] + y_pads[2], OW + y_pads[1] + y_pads[3]
    nob = BK.blocks(cout)
    w = np.zeros((nob * BK.CB, cin * KH * KW), np.float32)
    w[:cout] = np.asarray(wdata, np.float32).reshape(cout, -1)
    runs = []
    for nb, rp, first, count in tiles.stem_tiles(nob, OW):
        kern = CD.compile_now(BK.dense_kernel(KH, KW, SH, SW, DH, DW, nb, rp, ep.code), BK.DENSE_SIG)
        runs.append((kern, first, count, BK.pack_weights_pw(w[first * BK.CB:(first + count) * BK.CB], nb)))
    CD.compile_now(BK.pad_planes, BK.PAD_SIG)
    padded = _PaddedInput(cin * Hp * Wp)
    pad_tables = [threads.PartTables() for _ in range(g.batch)]
    clear_tables = [threads.PartTables() for _ in range(g.batch)]
    b, alpha, ps, pt = vec
    xs, ys, rs = cin * H * W, nob * yplane, nob * BK.CB * OH * OW
    beta, has_post = ep.beta, ep.has_post
    has_res = ep.residual is not None

    def part_of(x, r, y, n, i, o):
        """(calls, count, native), as for a 1x1 layer."""
        xp = padded.get()  # the caller's: the workers read it too
        xn = x[n * xs:(n + 1) * xs]

        def pad(c0, c1):  # input channels [c0, c1)
            return [(BK.pad_planes, (xn[c0 * H * W:c1 * H * W], xp[c0 * Hp * Wp:c1 * Hp * Wp], c1 - c0, H, W, Hp, Wp,
                                     PH, PW))]
        split_copy(pad, cin, xs, pad_tables[n], i, o, x, xp)
        yn = y[n * ys:(n + 1) * ys]
        rn = r[n * rs:(n + 1) * rs] if has_res else r
        if border:
            _clear_border_first(yn, nob, yplane, OHp, OWp, y_pads, OH * OW, clear_tables[n], i, o, y)

        def rows(r0, r1):  # output rows [r0, r1) of every block
            calls = []
            for kern, first, count, wk in runs:
                c0, c1 = first * BK.CB, (first + count) * BK.CB
                calls.append((kern, (xp, wk, yn[first * yplane:(first + count) * yplane], cin, count, Hp, Wp, OW,
                                     r0, r1, yoff, yplane, b[c0:c1], rn[c0 * OH * OW:c1 * OH * OW] if has_res else rn,
                                     has_res, alpha[c0:c1], beta, has_post, ps[c0:c1], pt[c0:c1])))
            return calls
        return rows, OH, (xp,)
    return part_of, cout * cin * KH * KW * OH * OW


def _depthwise(g, ep, x_padded: bool, y_pads, wdata, vec):
    C = g.in_channels
    H, W, KH, KW, SH, SW, DH, DW, PH, PW, EH, EW, OH, OW = _plane(g)
    rw = tiles.blocked_dw_rw(OW)
    kern = BK.depthwise_kernel(KH, KW, SH, SW, DH, DW, rw, ep.code, x_padded)
    CD.compile_now(kern, BK.DW_SIG)
    w = BK.pack_weights_dw(np.asarray(wdata, np.float32).reshape(C, 1, KH, KW))
    b, alpha, ps, pt = vec
    nb = BK.blocks(C)
    Hp, Wp = H + PH + EH, W + PW + EW
    # without a padded input, one block's padded copy per thread (its border stays zero)
    scratch = _PaddedInput(1 if x_padded else Hp * Wp * BK.CB)
    QH, QW, QE, QF = y_pads
    border = any(y_pads)
    OHp, OWp = OH + QH + QE, OW + QW + QF
    xblock = (Hp * Wp if x_padded else H * W) * BK.CB
    yblock, rblock = OHp * OWp * BK.CB, OH * OW * BK.CB
    kk = KH * KW * BK.CB
    beta, has_post = ep.beta, ep.has_post
    has_res = ep.residual is not None

    def part_of(x, r, y, n, i, o):
        """(calls, count, native), as for a 1x1 layer; a copy into a thread's own scratch runs from Python
        (written when a packed part kept the packing thread's scratch; record.packing now gives each
        packed part its own, so these could be packed too: not measured yet)."""
        xn, yn = x[n * nb * xblock:(n + 1) * nb * xblock], y[n * nb * yblock:(n + 1) * nb * yblock]
        rn = r[n * nb * rblock:(n + 1) * nb * rblock] if has_res else r

        def part(b0, b1):  # blocks [b0, b1), their border cleared first
            c0, c1 = b0 * BK.CB, b1 * BK.CB
            clear = _border_share(yn, nb, b0, b1, nb, yblock, OHp, OWp, y_pads) if border else []
            return clear + [(kern, (xn[b0 * xblock:b1 * xblock], scratch.get(), w[b0 * kk:b1 * kk],
                            yn[b0 * yblock:b1 * yblock], b1 - b0, H, W, Hp, Wp, PH, PW, OH, OW, OHp, OWp, QH, QW,
                            b[c0:c1], rn[b0 * rblock:b1 * rblock] if has_res else rn, has_res, alpha[c0:c1], beta,
                            has_post, ps[c0:c1], pt[c0:c1]))]
        return part, nb, (threads.owners(x) if x_padded else None)
    # the blocked depthwise kernel runs at about half a 1x1 layer's speed: its work counts twice. (Ten
    # times, as for the NCHW kernel, split 25 us layers in two: handing a part to a worker costs 10-20 us
    # here, and MobileNetV2's 14x14 depthwise layers ran twice as long on two threads as on one.)
    return part_of, 2 * C * OH * OW * KH * KW
