"""Matrix products' own kernels: the fused epilogue of a BLAS product, and the batch-1 product.
Arrays in, arrays out; nothing of ONNX.

A product with several rows is BLAS (numpy's dot/matmul into the preallocated output); `row_epilogue`
then applies, in place, for each of `rows` rows of `n` columns (column c = output feature c):

    y[r, c] = post_scale[c] * act(y[r, c] + bias[c] + residual[r, c], alpha[c], beta) + post_shift[c]

A row is processed in a few short passes while it sits in L1, each pass a branch-free loop over the
columns that LLVM vectorizes (bias/residual add, ReLU/LeakyReLU/PReLU/Clip, scale/shift); other
activations go through `activations.apply` element by element. (A generic per-element epilogue that
branches on the activation code inside the loop ran 5-20x slower on an (M, N) output.)

A product of one row with constant weights (a batch-1 Linear layer) is one call, product and epilogue:
`vector_matrix` over (K, N) weights (rows of N, swept eight at a time into N partial sums), or
`matrix_vector` over the same weights stored (N, K), one dot product per output, eight outputs at a time.
Either streams the weights once; they differ in their streams, whose length is what the hardware
prefetcher rewards: the planner takes the form whose rows are the longer (bninfer.ops.matmul).
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types, uint64
from numba.extending import intrinsic

from .. import tiles
from ..activations import CLIP, LEAKY_RELU, NONE, PRELU, RELU, apply
from .conv_direct import stack_f32


# columns accumulated at once by vector_matrix: their partial sums (8 KB) stay in L1 while the weight
# rows stream past
COLUMN_BLOCK = 2048


# One-row products over narrow weight rows (at most NARROW_ROW columns) prefetch the rows PREFETCH_BYTES
# ahead (the host's, bninfer.tiles), four rows a pass: from memory, MNIST's 9216 x 128 took 330 us without,
# 240 with (Zen 5; the planner now gives a layer of such long rows to matrix_vector). Wider rows take eight
# rows a pass and no prefetch (with it they gained at most 5 %, or lost: 512 x 4096 313 -> 357 us): the
# hardware prefetcher follows eight streams on its own.
NARROW_ROW = 256
PREFETCH_BYTES = tiles.HOST.gemv_prefetch_bytes


@intrinsic
def _prefetch(typingctx, arr, idx):
    """A read prefetch of arr[idx]'s cache line into every level (llvm.prefetch): a hint, never a fault."""
    if not isinstance(arr, types.Array) or not isinstance(idx, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        ary = context.make_array(sig.args[0])(context, builder, args[0])
        i8p, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
        fn = builder.module.declare_intrinsic("llvm.prefetch", fnty=fnty)
        ptr = builder.bitcast(builder.gep(ary.data, [args[1]]), i8p)
        builder.call(fn, [ptr, ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()
    return types.void(arr, idx), codegen


@njit(cache=True, inline="always")
def _add_eight_rows(x, w, y, j, n64, lo, hi):
    """y[c] += sum of x[j + i] * w[(j + i) * n + c] over eight rows, c in [lo, hi): eight streams from
    memory at once, where four kept fewer misses in flight (ResNet-50's 2048x1000 classifier from memory
    388 -> 325 us, MobileNetV2's 1280x1000 248 -> 212); summed pairwise before they meet y."""
    x0, x1, x2, x3 = x[j], x[j + 1], x[j + 2], x[j + 3]
    x4, x5, x6, x7 = x[j + 4], x[j + 5], x[j + 6], x[j + 7]
    r0 = uint64(j) * n64
    r1, r2, r3 = r0 + n64, r0 + uint64(2) * n64, r0 + uint64(3) * n64
    r4, r5, r6, r7 = r0 + uint64(4) * n64, r0 + uint64(5) * n64, r0 + uint64(6) * n64, r0 + uint64(7) * n64
    for c in range(lo, hi):
        y[c] += (((x0 * w[r0 + c] + x1 * w[r1 + c]) + (x2 * w[r2 + c] + x3 * w[r3 + c]))
                 + ((x4 * w[r4 + c] + x5 * w[r5 + c]) + (x6 * w[r6 + c] + x7 * w[r7 + c])))


@njit(cache=True, inline="always")
def _prefetch_ahead(w, r0, n64, total):
    """Prefetch the four rows of n64 values PREFETCH_BYTES past offset r0 of w (total values): one
    prefetch per cache line."""
    p = r0 + uint64(PREFETCH_BYTES // 4)
    e = min(p + uint64(4) * n64, total)
    while p < e:
        _prefetch(w, p)
        p += uint64(16)


@njit(cache=True, inline="always")
def _epilogue_span(y, base, c0, c1, bias, has_bias, residual, has_residual, code, alpha, beta, has_post,
                   post_scale, post_shift):
    """The epilogue on y[base + c] for columns c in [c0, c1) (residual indexed as y)."""
    zero = np.float32(0.0)
    lo = alpha[0] if alpha.size > 0 else zero  # Clip: alpha holds the lower bound, beta the upper
    hi = np.float32(beta)
    b = uint64(base)
    if has_bias and has_residual:
        for c in range(uint64(c0), uint64(c1)):
            y[b + c] = (y[b + c] + bias[c]) + residual[b + c]
    elif has_bias:
        for c in range(uint64(c0), uint64(c1)):
            y[b + c] = y[b + c] + bias[c]
    elif has_residual:
        for c in range(uint64(c0), uint64(c1)):
            y[b + c] = y[b + c] + residual[b + c]
    if code == NONE:
        pass
    elif code == RELU:
        for c in range(uint64(c0), uint64(c1)):
            v = y[b + c]
            y[b + c] = zero if v < zero else v
    elif code == LEAKY_RELU or code == PRELU:
        for c in range(uint64(c0), uint64(c1)):
            v = y[b + c]
            y[b + c] = v * alpha[c] if v < zero else v
    elif code == CLIP:
        for c in range(uint64(c0), uint64(c1)):
            v = y[b + c]
            y[b + c] = lo if v < lo else (hi if v > hi else v)
    else:
        for c in range(uint64(c0), uint64(c1)):
            y[b + c] = apply(code, y[b + c], alpha[c], beta)
    if has_post:
        for c in range(uint64(c0), uint64(c1)):
            y[b + c] = y[b + c] * post_scale[c] + post_shift[c]


@njit(cache=True, nogil=True)
def row_epilogue(y, rows, n, bias, has_bias, residual, has_residual, code, alpha, beta, has_post,
                 post_scale, post_shift):
    """y, residual: flat float32 of rows*n (residual ignored unless has_residual); bias, alpha,
    post_scale, post_shift: float32 of n. Comparisons keep NaN propagating as in activations.apply."""
    for r in range(rows):
        _epilogue_span(y, r * n, 0, n, bias, has_bias, residual, has_residual, code, alpha, beta, has_post,
                       post_scale, post_shift)


@njit(cache=True, nogil=True)
def vector_matrix_rows(x, w, y, n, k0, k1):
    """y[:n] = sum over the rows j in [k0, k1) of x[j] * w[j * n:(j + 1) * n]: one thread's share of a
    one-row product split over the weights' rows (each thread then streams a contiguous block of
    them); sum_rows then adds the shares and applies the epilogue."""
    x = x.reshape(x.size)
    n64 = uint64(n)
    narrow, total = n <= NARROW_ROW, uint64(k1) * n64
    for c in range(n64):
        y[c] = np.float32(0.0)
    j = k0
    while not narrow and j + 8 <= k1:
        _add_eight_rows(x, w, y, j, n64, uint64(0), n64)
        j += 8
    while j + 4 <= k1:
        x0, x1, x2, x3 = x[j], x[j + 1], x[j + 2], x[j + 3]
        r0 = uint64(j) * n64
        r1 = r0 + n64
        r2 = r1 + n64
        r3 = r2 + n64
        if narrow:
            _prefetch_ahead(w, r0, n64, total)
        for c in range(n64):
            y[c] += (x0 * w[r0 + c] + x1 * w[r1 + c]) + (x2 * w[r2 + c] + x3 * w[r3 + c])
        j += 4
    while j < k1:
        xj, r0 = x[j], uint64(j) * n64
        for c in range(n64):
            y[c] += xj * w[r0 + c]
        j += 1


@njit(cache=True, nogil=True)
def sum_rows(parts, nparts, y, n, bias, has_bias, residual, has_residual, code, alpha, beta, has_post,
             post_scale, post_shift):
    """y[:n] = epilogue(parts[0] + ... + parts[nparts - 1]) for parts (nparts, n) flat (the epilogue's
    arguments as row_epilogue's)."""
    y = y.reshape(y.size)
    n64 = uint64(n)
    for c in range(n64):
        y[c] = parts[c]
    for p in range(1, nparts):
        base = uint64(p) * n64
        for c in range(n64):
            y[c] += parts[base + c]
    _epilogue_span(y, 0, 0, n, bias, has_bias, residual, has_residual, code, alpha, beta, has_post,
                   post_scale, post_shift)


@njit(cache=True, nogil=True)
def vector_matrix(x, w, y, k, n, c0, c1, bias, has_bias, residual, has_residual, code, alpha, beta,
                  has_post, post_scale, post_shift):
    """y[c] = epilogue(sum_j x[j] * w[j * n + c]) for the columns c in [c0, c1): a batch-1 layer.

    x, y: contiguous 2-D float32 arrays of k and of n values (taken 2-D as the plan holds them: a reshape
    per call cost more than this kernel on small layers); w: the (k, n) weights, flat; residual: float32
    of n. The weights stream through once, eight rows per pass (four on narrow rows, prefetched ahead:
    NARROW_ROW) over a block of columns whose partial sums stay in L1: the layer runs at the memory's
    speed, which is all a matrix-vector product can (a BLAS call, and the epilogue as a second call,
    cost more than the product on small layers). A pass's rows are summed pairwise before they meet the
    partial sum, a shorter chain of float32 roundings than row by row."""
    x, y = x.reshape(x.size), y.reshape(y.size)
    n64 = uint64(n)
    narrow, total = n <= NARROW_ROW and c0 == 0 and c1 == n, uint64(k) * n64  # (whole rows: contiguous)
    for b0 in range(c0, c1, COLUMN_BLOCK):
        lo, hi = uint64(b0), uint64(min(c1, b0 + COLUMN_BLOCK))
        for c in range(lo, hi):
            y[c] = np.float32(0.0)
        j = 0
        while not narrow and j + 8 <= k:
            _add_eight_rows(x, w, y, j, n64, lo, hi)
            j += 8
        while j + 4 <= k:
            x0, x1, x2, x3 = x[j], x[j + 1], x[j + 2], x[j + 3]
            r0 = uint64(j) * n64
            r1 = r0 + n64  # uint64 throughout: a signed index keeps Numba's wraparound (gathers)
            r2 = r1 + n64
            r3 = r2 + n64
            if narrow:
                _prefetch_ahead(w, r0, n64, total)
            for c in range(lo, hi):
                y[c] += (x0 * w[r0 + c] + x1 * w[r1 + c]) + (x2 * w[r2 + c] + x3 * w[r3 + c])
            j += 4
        while j < k:
            xj, r0 = x[j], uint64(j) * n64
            for c in range(lo, hi):
                y[c] += xj * w[r0 + c]
            j += 1
    _epilogue_span(y, 0, c0, c1, bias, has_bias, residual, has_residual, code, alpha, beta, has_post,
                   post_scale, post_shift)


# matrix_vector: outputs a pass (weight rows streamed at once) and lanes per output (one vector register
# of partial sums each: eight accumulators)
MV_ROWS = 8
MV_LANES = tiles.HOST.gemv_lanes
_MV_ACC = MV_ROWS * MV_LANES


@njit(cache=True, inline="always")
def _row_sum(acc, base, x, w, row, kb, k):
    """The dot product of one weight row (from offset row of w) with x, its first kb products summed in
    acc[base:base + MV_LANES]: the lanes summed pairwise (halving), then the last k - kb products in
    order. The same for a row of a pass of eight as for a row alone: an output's value does not depend on
    how the outputs were split."""
    half = MV_LANES // 2
    while half >= 1:
        for l in range(half):
            acc[base + l] += acc[base + l + half]
        half //= 2
    s = acc[base]
    for j in range(kb, uint64(k)):
        s += x[j] * w[row + j]
    return s


@njit(cache=True, nogil=True)
def matrix_vector(x, w, y, k, o0, o1, bias, has_bias, residual, has_residual, code, alpha, beta, has_post,
                  post_scale, post_shift):
    """y[o] = epilogue(sum_j w[o * k + j] * x[j]) for the outputs o in [o0, o1): a batch-1 layer whose
    weights are stored one output's row after another, (N, K) as ONNX's Gemm(transB=1) and PyTorch's
    Linear hold them (arguments as vector_matrix's).

    Eight rows stream at once, each into its own MV_LANES partial sums (in registers): eight long
    sequential streams, which from memory ran MNIST's 9216 x 128 classifier at 1.8x the speed of
    vector_matrix's row sweeps (540 -> 306 us, 187 -> 109 from L3) and ResNet-50's 2048 x 1000 at 1.2x;
    with rows shorter than the output count the sweeps won (512 x 4096: 600 against 870 us)."""
    x, y = x.reshape(x.size), y.reshape(y.size)
    k64 = uint64(k)
    kb = k64 - k64 % uint64(MV_LANES)
    acc = stack_f32(_MV_ACC)
    o = o0
    while o + MV_ROWS <= o1:
        for i in range(_MV_ACC):
            acc[i] = np.float32(0.0)
        r0 = uint64(o) * k64
        r1, r2, r3 = r0 + k64, r0 + uint64(2) * k64, r0 + uint64(3) * k64
        r4, r5, r6, r7 = r0 + uint64(4) * k64, r0 + uint64(5) * k64, r0 + uint64(6) * k64, r0 + uint64(7) * k64
        j = uint64(0)
        while j < kb:
            for l in range(MV_LANES):
                jl = j + uint64(l)  # uint64 throughout (a mixed signed + unsigned sum is a float)
                xv = x[jl]
                acc[l] += xv * w[r0 + jl]
                acc[MV_LANES + l] += xv * w[r1 + jl]
                acc[2 * MV_LANES + l] += xv * w[r2 + jl]
                acc[3 * MV_LANES + l] += xv * w[r3 + jl]
                acc[4 * MV_LANES + l] += xv * w[r4 + jl]
                acc[5 * MV_LANES + l] += xv * w[r5 + jl]
                acc[6 * MV_LANES + l] += xv * w[r6 + jl]
                acc[7 * MV_LANES + l] += xv * w[r7 + jl]
            j += uint64(MV_LANES)
        for r in range(MV_ROWS):
            y[o + r] = _row_sum(acc, r * MV_LANES, x, w, r0 + uint64(r) * k64, kb, k)
        o += MV_ROWS
    while o < o1:  # the last outputs one at a time, summed as in a pass
        for i in range(MV_LANES):
            acc[i] = np.float32(0.0)
        r0 = uint64(o) * k64
        j = uint64(0)
        while j < kb:
            for l in range(MV_LANES):
                jl = j + uint64(l)
                acc[l] += x[jl] * w[r0 + jl]
            j += uint64(MV_LANES)
        y[o] = _row_sum(acc, 0, x, w, r0, kb, k)
        o += 1
    _epilogue_span(y, 0, o0, o1, bias, has_bias, residual, has_residual, code, alpha, beta, has_post,
                   post_scale, post_shift)
