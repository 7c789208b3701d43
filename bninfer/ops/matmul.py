"""Gemm and MatMul: a BLAS product into the preallocated output, then the fused epilogue in one pass.

The output feature axis is the last one: a fused epilogue (bninfer.ops.fusion) has one value per output
column. Gemm's C becomes the epilogue's bias when it is a per-column vector; any other C is added as a
full (M, N) term. Constant weights are transposed, scaled by alpha and made contiguous once, here at
build time. Besides the extras of fusion.EXTRA_KEYS a node may carry a constant "bias" extra (length N
or 1), added to Gemm's C.

Float32 is what runs; on constants of any other dtype (constant folding of integer MatMul/Gemm) the
product is computed by numpy in that dtype.
"""
from __future__ import annotations

import threading

import numpy as np

from ..errors import ModelError, UnsupportedOperatorError
from ..kernels import gemm as K
from ..memory import aligned
from .. import activations, record, threads
from . import broadcast_shapes, fusion, register, require_float32


def _fail(node, message: str):
    raise ModelError(f"node {node.name!r} ({node.op}): {message}")


def _own(node, ins: list) -> list:
    """The op's own inputs (fusion extras removed), padded with None for omitted optional ones."""
    n = fusion.base_inputs(node)
    own = list(ins[:n])
    return own + [None] * (3 - len(own))


# -- shapes -------------------------------------------------------------------------------------------

def _gemm_dims(node, ins) -> tuple[int, int, int]:
    a, b, _ = _own(node, ins)[:3]
    if a is None or b is None:
        _fail(node, "needs inputs A and B")
    if len(a.shape) != 2 or len(b.shape) != 2:
        _fail(node, f"A and B must be 2-D, got shapes {tuple(a.shape)} and {tuple(b.shape)}")
    ta, tb = int(node.attrs.get("transA", 0)), int(node.attrs.get("transB", 0))
    m, k = (a.shape[1], a.shape[0]) if ta else tuple(a.shape)
    k2, n = (b.shape[1], b.shape[0]) if tb else tuple(b.shape)
    if k != k2:
        _fail(node, f"inner dimensions differ: A {tuple(a.shape)} (transA={ta}) gives K={k}, "
                    f"B {tuple(b.shape)} (transB={tb}) gives K={k2}")
    return int(m), int(k), int(n)


def _c_shape2d(node, c, m: int, n: int) -> tuple[int, int]:
    """C's shape as 2-D, after checking it broadcasts unidirectionally to (M, N)."""
    shape = tuple(int(d) for d in c.shape)
    if len(shape) > 2:
        _fail(node, f"C has shape {shape}: rank above 2")
    cm, cn = (1,) * (2 - len(shape)) + shape
    if cm not in (1, m) or cn not in (1, n):
        _fail(node, f"C of shape {shape} does not broadcast to the output shape {(m, n)}")
    return cm, cn


def _gemm_infer(node, ins):
    m, _, n = _gemm_dims(node, ins)
    c = _own(node, ins)[2]
    if c is not None:
        _c_shape2d(node, c, m, n)
    return [((m, n), ins[0].dtype)]


def _matmul_dims(node, ins) -> tuple[tuple, int, int, int, tuple]:
    """(batch shape, M, K, N, output shape) of numpy's matmul rules."""
    a, b = _own(node, ins)[:2]
    if a is None or b is None:
        _fail(node, "needs inputs A and B")
    sa, sb = tuple(int(d) for d in a.shape), tuple(int(d) for d in b.shape)
    if not sa or not sb:
        _fail(node, f"operands must have rank 1 or more, got shapes {sa} and {sb}")
    a2 = sa if len(sa) >= 2 else (1,) + sa
    b2 = sb if len(sb) >= 2 else sb + (1,)
    if a2[-1] != b2[-2]:
        _fail(node, f"inner dimensions differ: A {sa} has K={a2[-1]}, B {sb} has K={b2[-2]}")
    try:
        batch = tuple(int(d) for d in np.broadcast_shapes(a2[:-2], b2[:-2]))
    except ValueError:
        _fail(node, f"batch dimensions of A {sa} and B {sb} do not broadcast")
    out = batch + ((a2[-2],) if len(sa) >= 2 else ()) + ((b2[-1],) if len(sb) >= 2 else ())
    return batch, a2[-2], a2[-1], b2[-1], out


def _matmul_infer(node, ins):
    return [(_matmul_dims(node, ins)[4], ins[0].dtype)]


# -- the epilogue -----------------------------------------------------------------------------------

def _const_f32(v) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(v.data, dtype=np.float32))


def _rw(a) -> np.ndarray:
    """A writeable contiguous float32 copy: Numba types read-only arrays (constants, broadcast_to views)
    apart from writeable ones, and each mix of the two would compile the kernel once more."""
    return np.array(a, dtype=np.float32, order="C", copy=True)


def _make_epilogue(node, ins, out_shape: tuple, channels: int, bias: np.ndarray | None,
                   full: np.ndarray | None, runtime_bias: int | None, pre_adds: list):
    """What follows the product (an _Epilogue), or None when there is nothing to do.

    bias: constant per-column vector (length `channels`) or None; full: a constant (M, N)-shaped term or
    None; runtime_bias: input position of a run-time per-column vector (contiguous, length channels);
    pre_adds: functions (i, y) -> None applied first (run-time or broadcasting terms)."""
    if node.attrs.get("pre_activation") or any(fusion.extra(node, k) is not None
                                               for k in ("pre_scale", "pre_shift", "pre_slope")):
        raise UnsupportedOperatorError(f"node {node.name!r} ({node.op}): a fused prologue is not supported "
                                       f"on {node.op}", [node.name])
    pos = fusion.extra(node, "bias")
    if pos is not None:
        v = ins[pos]
        if v is None or v.data is None:
            _fail(node, "the fused bias must be a constant")
        extra_bias = fusion.channel_vector(node, v.data, channels, "bias", 0.0)
        bias = extra_bias if bias is None else (bias + extra_bias).astype(np.float32)
    pre_adds = list(pre_adds)
    if bias is not None and runtime_bias is not None:  # both a constant and a run-time vector
        p_rb = runtime_bias
        pre_adds.append(lambda i, y: np.add(y, i[p_rb].reshape(-1), out=y))
        runtime_bias = None
    ep = fusion.epilogue(node, ins, channels)
    has_post = (fusion.extra(node, "post_scale") is not None or fusion.extra(node, "post_shift") is not None)
    size = int(np.prod(out_shape, dtype=np.int64))
    rows = size // channels if channels else 0

    res_pos, res_const = ep.residual, None
    if res_pos is not None:
        rv = ins[res_pos]
        rshape = tuple(int(d) for d in rv.shape)
        if broadcast_shapes(node, rshape, out_shape) != tuple(out_shape):
            _fail(node, f"fused residual of shape {rshape} does not broadcast to the output {out_shape}")
        if rv.data is not None:
            res_const = np.ascontiguousarray(np.broadcast_to(np.asarray(rv.data, np.float32), out_shape))
            res_pos = None
        elif rshape != tuple(out_shape):
            p = res_pos
            pre_adds.append(lambda i, y: np.add(y, i[p].reshape(rshape), out=y))
            res_pos = None
    # A constant full term shares the kernel's residual slot with a constant residual, else goes first.
    if full is not None:
        if res_const is not None:
            res_const = (res_const + full.reshape(out_shape)).astype(np.float32)
        elif res_pos is None:
            res_const = np.ascontiguousarray(full.reshape(-1))
        else:
            f = full.reshape(out_shape)
            pre_adds.append(lambda i, y: np.add(y, f, out=y))
    if res_const is not None:
        res_const = np.ascontiguousarray(res_const.reshape(-1))

    has_bias = bias is not None or runtime_bias is not None
    has_res = res_pos is not None or res_const is not None
    code = ep.act.code
    if not (has_bias or has_res or has_post or code != 0) and not pre_adds:
        return None
    return _Epilogue(pre_adds, channels, rows, size, _rw(bias) if bias is not None else None, runtime_bias,
                     res_pos, _rw(res_const) if res_const is not None else None, code, _rw(ep.act.alpha),
                     float(ep.act.beta), has_post, _rw(ep.post_scale), _rw(ep.post_shift))


class _Epilogue:
    """What follows the product: `pre_adds` (run-time or broadcasting terms, applied first, by numpy),
    then the kernel's per-column epilogue, whose arguments `args` gives for one run."""

    def __init__(self, pre_adds, channels, rows, size, bias, runtime_bias, res_pos, res_const, code, alpha,
                 beta, has_post, post_scale, post_shift):
        self.pre_adds, self.channels, self.rows, self.size = pre_adds, channels, rows, size
        self.runtime_bias, self.res_pos = runtime_bias, res_pos
        has_bias = bias is not None or runtime_bias is not None
        has_res = res_pos is not None or res_const is not None
        # Sigmoid, SiLU, Tanh, Elu...: the activation's loop-vectorized span over the output after the
        # kernel (whose epilogue would apply them element by element: libm's exp, ~10 ns an element)
        self.span = activations.SPANS.get(code) if not has_post else None
        if self.span is not None:
            activations.compile_span(code)
            self.span_args = (np.float32(alpha[0]) if alpha.size else np.float32(0.0), np.float32(beta),
                               float(beta), False, np.float32(1.0), np.float32(0.0))
            code = activations.NONE
        self.kernel = has_bias or has_res or has_post or code != 0
        self._bias = bias if bias is not None else np.zeros(channels, np.float32)
        self._res_const = res_const
        self._static = (has_bias, has_res, code, alpha, beta, has_post, post_scale, post_shift)
        # both vectors constant (or absent): the whole argument list but y is fixed
        self.constant = runtime_bias is None and res_pos is None

    def args(self, i) -> tuple:
        """The kernel's epilogue arguments from bias on, for inputs `i` (None when self.constant)."""
        has_bias, has_res, code, alpha, beta, has_post, ps, pt = self._static
        b = i[self.runtime_bias].reshape(-1) if self.runtime_bias is not None else self._bias
        r = (i[self.res_pos].reshape(-1) if self.res_pos is not None
             else self._res_const if self._res_const is not None
             else self._bias)  # no residual: any float32 array fills the slot, the kernel reads none
        return b, has_bias, r, has_res, code, alpha, beta, has_post, ps, pt

    def finish(self, i, y) -> None:
        """In place on the product y: the pre-adds, then the kernel's epilogue (and the span)."""
        for f in self.pre_adds:
            f(i, y)
        if self.size == 0:
            return
        if self.kernel:
            K.row_epilogue(y.reshape(-1), self.rows, self.channels, *self.args(i))
        self.activate(y.reshape(-1), 0, self.size)

    def activate(self, y, start: int, stop: int) -> None:
        """The span activation over y[start:stop] (flat), if the epilogue has one."""
        if self.span is not None:
            record.call(self.span, y, start, stop, *self.span_args)


def _float_path(node, ins) -> bool:
    """True when the op runs in float32; False for constant folding in another dtype. Raises
    UnsupportedOperatorError for a non-float32 tensor at run time."""
    own = [v for v in _own(node, ins) if v is not None]
    if all(v.dtype == np.float32 for v in own):
        return True
    if all(v.data is not None for v in own) and not node.attrs.get("extras") and \
            not node.attrs.get("activation"):
        return False
    require_float32(node, own)
    return True


def _dot(x: np.ndarray, w: np.ndarray, y: np.ndarray, macs: int) -> None:
    """y = x . w (2-D, float32), split over the run's threads: by rows when there are several, else (a
    batch-1 layer) by output columns; each part a single-threaded BLAS call."""
    if macs <= threads.BLAS_SERIAL_MACS:  # one BLAS thread, one part anyway: skip both checks
        np.dot(x, w, out=y)
        return
    with threads.blas(macs):
        if y.shape[0] > 1:
            threads.split(lambda a, b: np.dot(x[a:b], w, out=y[a:b]), y.shape[0], macs)
        else:
            threads.split(lambda a, b: np.dot(x, w[:, a:b], out=y[:, a:b]), y.shape[1], macs, 16)


# A one-row product streams its weights from memory, one multiply-add per float: measured at about a tenth
# of a conv's multiply-adds per second (ResNet-50's 2048x1000 classifier, 480 us), so its work counts this
# many times over where the thread split weighs it against the hand-over cost.
_STREAMING_WEIGHT = 8


def _vector_matrix(w: np.ndarray, ep: "_Epilogue | None", macs: int):
    """The run of a one-row product x (K) @ w (K, N) with constant weights: product and epilogue in one
    kernel call (by ranges of outputs or of rows over the run's threads when large enough). Weights with
    rows at least twice as long as their columns are stored transposed, one output's row after another
    (K.matrix_vector): the longer streams ran 1.8x faster on MNIST's 9216 x 128 from memory, 1.2x on
    ResNet-50's 2048 x 1000; on 1280 x 1000 (MobileNetV2's classifier) they lost 6 %."""
    macs *= _STREAMING_WEIGHT
    k, n = (int(d) for d in w.shape)
    fixed = ep is None or ep.constant
    ep_args = None  # the epilogue's arguments where they do not change from run to run
    if ep is None:
        zeros = np.zeros(n, np.float32)
        ep_args = (zeros, False, zeros, False, 0, zeros, 0.0, False, zeros, zeros)
    elif fixed:
        ep_args = ep.args(None)

    def two_d(a):  # the kernels' one specialization takes x and y 2-D, as Gemm's are
        return a if a.ndim == 2 else a.reshape(1, -1)

    if n == 0:
        return record.recordable(lambda i, o: None)
    if k >= 2 * n:
        return _matrix_vector(aligned(w.T).reshape(-1), k, n, ep, ep_args, fixed, macs, two_d)
    w = aligned(w).reshape(-1)
    activate = ep.activate if ep is not None and ep.span is not None else None
    if macs < threads.MIN_PART_MACS * 2:  # never split: one straight call (the common small layer)
        def run(i, o):
            y = two_d(o[0])
            record.call(K.vector_matrix, two_d(i[0]), w, y, k, n, 0, n, *(ep_args if fixed else ep.args(i)))
            if activate is not None:
                activate(y.reshape(-1), 0, n)
        return record.recordable(run)

    # per calling thread (runs of one session from several threads at once) and thread count: one row
    # of partial sums per share
    local = threading.local()
    bounds_of: dict[int, list[int]] = {}  # per thread count: the shares' row bounds (multiples of 4)
    tables = threads.PartTables()

    def run(i, o):
        x, y = two_d(i[0]), two_d(o[0])
        args = ep_args if fixed else ep.args(i)
        size = threads.current_size()
        if size == 1:
            record.call(K.vector_matrix, x, w, y, k, n, 0, n, *args)
            if activate is not None:
                activate(y.reshape(-1), 0, n)
            return
        # split over the weights' rows: each thread streams a contiguous block of them (split over
        # columns, both read every row's cache lines: ResNet-50's 2048x1000 from memory took 365 us on two
        # threads, 273 by rows, 462 on one). The rows always go into one share per thread, whether the
        # shares then run on the workers or all here: the same sums in the same order either way, so a
        # session's results do not depend on whether its workers were awake.
        bounds = bounds_of.get(size)
        if bounds is None:
            bounds = bounds_of[size] = [min(k, (k * s // size + 3) // 4 * 4) for s in range(size)] + [k]
        if record.active() is not None:  # a recorded plan's own shares: another arena recorded by this
            part = record.scratch(size * n)  # thread may run at the same time on another thread
        else:
            shares = local.__dict__.setdefault("shares", {})
            part = shares.get(size)
            if part is None:
                part = shares[size] = np.empty(size * n, np.float32)

        def rows(s0, s1):
            return [(K.vector_matrix_rows, (x, w, part[s * n:(s + 1) * n], n, bounds[s], bounds[s + 1]))
                    for s in range(s0, s1)]
        threads.split_calls(rows, size, macs, 1, tables, lambda: threads.owners(x, part) + (i[0],))
        record.call(K.sum_rows, part, size, y, n, *args)
        if activate is not None:
            activate(y.reshape(-1), 0, n)
    return record.recordable(run)


def _matrix_vector(wt: np.ndarray, k: int, n: int, ep: "_Epilogue | None", ep_args: tuple, fixed: bool,
                   macs: int, two_d):
    """_vector_matrix's run over the transposed weights wt ((N, K) flat): outputs split over the threads
    in passes of eight, each thread streaming its own block of rows; an output's sum is the same however
    they are split."""
    tables = threads.PartTables()

    def run(i, o):
        x, y = two_d(i[0]), two_d(o[0])
        args = ep_args if fixed else ep.args(i)

        def outputs(p0, p1):  # passes [p0, p1), their outputs activated by the part that computes them
            a, b = p0 * K.MV_ROWS, min(n, p1 * K.MV_ROWS)
            calls = [(K.matrix_vector, (x, wt, y, k, a, b, *args))]
            if ep is not None and ep.span is not None:
                calls.append((ep.span, (y.reshape(-1), a, b, *ep.span_args)))
            return calls

        def outside():  # what the calls read that is not the layer's own
            return threads.owners(x, y, *(a for a in args if isinstance(a, np.ndarray))) + tuple(i) + tuple(o)
        threads.split_calls(outputs, -(-n // K.MV_ROWS), macs, 1, tables, outside)
    return record.recordable(run)


# -- Gemm -------------------------------------------------------------------------------------------

@register("Gemm", infer=_gemm_infer)
def _gemm(node, ins, outs):
    m, kk, n = _gemm_dims(node, ins)
    a, b, c = _own(node, ins)[:3]
    alpha, beta = float(node.attrs.get("alpha", 1.0)), float(node.attrs.get("beta", 1.0))
    ta, tb = bool(node.attrs.get("transA", 0)), bool(node.attrs.get("transB", 0))

    if not _float_path(node, ins):
        def run_generic(i, o):
            x, w = (i[0].T if ta else i[0]), (i[1].T if tb else i[1])
            y = np.matmul(x, w)
            if alpha != 1.0:
                y = y * alpha
            if c is not None and beta != 0.0:
                y = y + (beta * i[2] if beta != 1.0 else i[2])
            np.copyto(o[0], y, casting="unsafe")
        return run_generic

    # Constant operands: transposed, scaled by alpha and made contiguous once.
    a_c = b_c = None
    scaled = alpha == 1.0
    if b.data is not None:
        w = np.asarray(b.data, np.float32)
        w = w.T if tb else w
        b_c = np.ascontiguousarray(w * np.float32(alpha) if not scaled else w)
        scaled = True
    elif a.data is not None:
        x = np.asarray(a.data, np.float32)
        x = x.T if ta else x
        a_c = np.ascontiguousarray(x * np.float32(alpha) if not scaled else x)
        scaled = True

    bias = full = runtime_bias = None
    pre_adds = []
    if c is not None and beta != 0.0:
        cm, cn = _c_shape2d(node, c, m, n)
        if c.data is not None:
            cb = np.asarray(c.data, np.float32).reshape(cm, cn)
            if beta != 1.0:
                cb = cb * np.float32(beta)
            if cm == 1:
                bias = np.ascontiguousarray(np.broadcast_to(cb.reshape(-1), (n,)), np.float32)
            else:
                full = np.ascontiguousarray(np.broadcast_to(cb, (m, n)), np.float32)
        elif cm == 1 and cn == n and beta == 1.0:
            runtime_bias = 2
        else:
            bt = np.float32(beta)
            if beta == 1.0:
                pre_adds.append(lambda i, y: np.add(y, i[2].reshape(cm, cn), out=y))
            else:
                pre_adds.append(lambda i, y: np.add(y, i[2].reshape(cm, cn) * bt, out=y))
    ep = _make_epilogue(node, ins, (m, n), n, bias, full, runtime_bias, pre_adds)
    alpha32 = np.float32(alpha)
    macs = m * n * kk
    if m == 1 and b_c is not None and a_c is None and scaled and (ep is None or not ep.pre_adds):
        return _vector_matrix(b_c, ep, macs)

    def run(i, o):
        x = a_c if a_c is not None else (i[0].T if ta else i[0])
        w = b_c if b_c is not None else (i[1].T if tb else i[1])
        y = o[0]
        _dot(x, w, y, macs)
        if not scaled:
            np.multiply(y, alpha32, out=y)
        if ep is not None:
            ep.finish(i, y)
    return run


# -- MatMul -----------------------------------------------------------------------------------------

@register("MatMul", infer=_matmul_infer)
def _matmul(node, ins, outs):
    _, _, k, n, out_shape = _matmul_dims(node, ins)
    a, b = _own(node, ins)[:2]

    if not _float_path(node, ins):
        return lambda i, o: np.copyto(o[0], np.matmul(i[0], i[1]), casting="unsafe")

    b_c = _const_f32(b) if b.data is not None else None
    a_c = _const_f32(a) if a.data is not None else None
    channels = n if len(b.shape) >= 2 else 1
    ep = _make_epilogue(node, ins, out_shape, channels, None, None, None, [])
    macs = int(np.prod(out_shape, dtype=np.int64)) * k
    one_row = int(np.prod(out_shape, dtype=np.int64)) == n  # (K,), (1, K), (1, 1, K), ... @ (K, N)
    if len(b.shape) == 2 and b_c is not None and a_c is None and one_row and (ep is None or not ep.pre_adds):
        return _vector_matrix(b_c, ep, macs)

    if len(b.shape) == 2 and len(a.shape) >= 2:
        # (..., M, K) @ (K, N): one GEMM over all leading rows.
        rows = int(np.prod(a.shape[:-1], dtype=np.int64))

        def product(i, y):
            x = a_c if a_c is not None else i[0]
            w = b_c if b_c is not None else i[1]
            _dot(x.reshape(rows, k), w, y.reshape(rows, n), macs)
    else:
        def product(i, y):
            with threads.blas(macs):
                np.matmul(a_c if a_c is not None else i[0], b_c if b_c is not None else i[1], out=y)

    def run(i, o):
        product(i, o[0])
        if ep is not None:
            ep.finish(i, o[0])
    return run
