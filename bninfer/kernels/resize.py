"""Resize kernels over flat float32 arrays, driven by per-axis tap tables.

The tensor is viewed as (outer, resized axes..., inner): leading and trailing axes that are not resized
are folded into `outer` and `inner`. Each resized axis a has, for every output index i, `taps[a]` input
indices idx[i * taps + t] with weights w[i * taps + t], and a flag ext[i] that replaces the output by
`extrap` (tf_crop_and_resize outside the crop). Nearest is one tap of weight 1, linear two, cubic four,
antialiased filters as many as their support needs. Output = sum over the tap product of
prod(weights) * x[indices]. Sizes are runtime ints: one compilation per kernel serves every shape.
"""
from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def resize_2d(x, out, outer, ih, iw, inner, oh, ow, ty, iy, wy, ey, tx, ix, wx, ex, extrap):
    """Two resized axes (H, W) between `outer` and `inner`; a 1-D resize passes ih = oh = 1."""
    in_plane = ih * iw * inner
    out_row = ow * inner
    out_plane = oh * out_row
    in_row = iw * inner
    any_ex = False
    for xo in range(ow):
        if ex[xo]:
            any_ex = True
    if inner == 1 and ty == 1 and tx == 1:  # nearest on the last axes: a plain gather
        for o in range(outer):
            xb = o * in_plane
            for y in range(oh):
                yb = o * out_plane + y * ow
                if ey[y]:
                    out[yb:yb + ow] = extrap
                    continue
                rb = xb + iy[y] * iw
                wa = wy[y]
                for xo in range(ow):
                    out[yb + xo] = wa * wx[xo] * x[rb + ix[xo]]
                if any_ex:
                    for xo in range(ow):
                        if ex[xo]:
                            out[yb + xo] = extrap
        return
    if inner == 1:
        # Separable: interpolate the needed input rows along W once, then combine rows along H.
        need = np.zeros(ih, np.uint8)
        for y in range(oh):
            if not ey[y]:
                for a in range(ty):
                    need[iy[y * ty + a]] = 1
        rows = np.empty(ih * ow, np.float32)
        for o in range(outer):
            xb = o * in_plane
            for r in range(ih):
                if not need[r]:
                    continue
                rb = xb + r * iw
                hb = r * ow
                if tx == 2:
                    for xo in range(ow):
                        k = 2 * xo
                        rows[hb + xo] = wx[k] * x[rb + ix[k]] + wx[k + 1] * x[rb + ix[k + 1]]
                else:
                    for xo in range(ow):
                        acc = np.float32(0.0)
                        for b in range(tx):
                            acc += wx[xo * tx + b] * x[rb + ix[xo * tx + b]]
                        rows[hb + xo] = acc
            for y in range(oh):
                yb = o * out_plane + y * ow
                if ey[y]:
                    out[yb:yb + ow] = extrap
                    continue
                wa = wy[y * ty]
                hb = iy[y * ty] * ow
                for xo in range(ow):
                    out[yb + xo] = wa * rows[hb + xo]
                for a in range(1, ty):
                    wa = wy[y * ty + a]
                    hb = iy[y * ty + a] * ow
                    for xo in range(ow):
                        out[yb + xo] += wa * rows[hb + xo]
                if any_ex:
                    for xo in range(ow):
                        if ex[xo]:
                            out[yb + xo] = extrap
        return
    for o in range(outer):
        xb = o * in_plane
        for y in range(oh):
            yb = o * out_plane + y * out_row
            if ey[y]:
                out[yb:yb + out_row] = extrap
                continue
            for xo in range(ow):
                base = yb + xo * inner
                if ex[xo]:
                    out[base:base + inner] = extrap
                    continue
                for j in range(inner):
                    acc = 0.0
                    for a in range(ty):
                        rb = xb + iy[y * ty + a] * in_row + j
                        row = 0.0
                        for b in range(tx):
                            row += wx[xo * tx + b] * x[rb + ix[xo * tx + b] * inner]
                        acc += wy[y * ty + a] * row
                    out[base + j] = acc


@njit(cache=True, nogil=True)
def resize_nd(x, out, outer, inner, in_dims, out_dims, taps, toff, idx, w, eoff, ext, extrap):
    """Any number of resized axes: axis a's tables start at toff[a] (taps) and eoff[a] (flags)."""
    k = in_dims.size
    in_str = np.empty(k, np.int64)
    s = inner
    for a in range(k - 1, -1, -1):
        in_str[a] = s
        s *= in_dims[a]
    in_block = s
    n_out = 1
    for a in range(k):
        n_out *= out_dims[a]
    pos = np.zeros(k, np.int64)
    t = np.zeros(k, np.int64)
    acc = np.zeros(inner, np.float64)
    for o in range(outer):
        xb = o * in_block
        ob = o * n_out * inner
        for a in range(k):
            pos[a] = 0
        for e in range(n_out):
            base = ob + e * inner
            outside = False
            for a in range(k):
                if ext[eoff[a] + pos[a]]:
                    outside = True
            if outside:
                for j in range(inner):
                    out[base + j] = extrap
            else:
                for j in range(inner):
                    acc[j] = 0.0
                for a in range(k):
                    t[a] = 0
                while True:
                    wt = 1.0
                    off = xb
                    for a in range(k):
                        r = toff[a] + pos[a] * taps[a] + t[a]
                        wt *= w[r]
                        off += idx[r] * in_str[a]
                    for j in range(inner):
                        acc[j] += wt * x[off + j]
                    a = k - 1
                    while a >= 0:  # next tap combination
                        t[a] += 1
                        if t[a] < taps[a]:
                            break
                        t[a] = 0
                        a -= 1
                    if a < 0:
                        break
                for j in range(inner):
                    out[base + j] = acc[j]
            a = k - 1
            while a >= 0:  # next output position
                pos[a] += 1
                if pos[a] < out_dims[a]:
                    break
                pos[a] = 0
                a -= 1
