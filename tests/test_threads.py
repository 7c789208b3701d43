"""One session used from several Python threads at once gives the same results as serial runs."""
import os
import threading
import time

import numpy as np
import pytest
from numba import njit, types

import bninfer
from tests.graphs import Builder
from tests.util import on_native_hand_overs, randn


def test_four_threads_hundred_runs_each():
    b = Builder()
    h = b.node("Relu", [b.bn(b.conv("x", 3, 8), 8)])
    h = b.node("MaxPool", [b.conv(h, 8, 8)], kernel_shape=[2, 2], strides=[2, 2])
    y = b.node("Softmax", [b.node("Flatten", [h])], axis=1)
    sess = bninfer.InferenceSession(b.model({"x": ["N", 3, 12, 12]}, [y]).SerializeToString())
    inputs = [randn(1 + k % 2, 3, 12, 12, seed=k) for k in range(8)]
    expected = [sess.run(None, {"x": x})[0] for x in inputs]
    errors = []

    def worker(t):
        try:
            for r in range(100):
                k = (t * 3 + r) % len(inputs)
                out = sess.run(None, {"x": inputs[k]})[0]
                if not np.array_equal(out, expected[k]):
                    errors.append((t, r, k))
        except Exception as e:  # noqa: BLE001 — reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:5]


def test_thread_limit_applies_to_blas_and_is_restored():
    from threadpoolctl import threadpool_info

    from bninfer.threads import ThreadLimit

    def blas_threads():
        return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]

    before = blas_threads()
    with ThreadLimit(1):
        assert all(n == 1 for n in blas_threads())
    assert blas_threads() == before
    with ThreadLimit(0):  # 0 = no limit: untouched
        assert blas_threads() == before


# -- the kernels split over threads ------------------------------------------------------------------

def _conv_block(x_shape, w_shape, attrs, seed=0):
    """Conv -> + residual -> ReLU -> BN (a post affine): every fused epilogue operand, sliced per part."""
    from onnx import helper

    from tests.util import make_model
    x, w = randn(*x_shape, seed=seed), randn(*w_shape, seed=seed + 1) * 0.3
    cout = w_shape[0]
    y_shape = _ort_conv_shape(x, w, attrs)
    consts = {"w": w, "b": randn(cout, seed=seed + 2), "g": randn(cout, seed=3), "be": randn(cout, seed=4),
              "m": randn(cout, seed=5), "v": np.abs(randn(cout, seed=6)) + 0.5}
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], **attrs),
             helper.make_node("Add", ["c", "r"], ["s"]),
             helper.make_node("Relu", ["s"], ["a"]),
             helper.make_node("BatchNormalization", ["a", "g", "be", "m", "v"], ["y"])]
    model = make_model(nodes, {"x": list(x_shape), "r": list(y_shape)}, ["y"], consts)
    return model, {"x": x, "r": randn(*y_shape, seed=seed + 7)}


def _ort_conv_shape(x, w, attrs):
    from tests.util import make_model, run_ort
    from onnx import helper
    m = make_model([helper.make_node("Conv", ["x", "w"], ["y"], **attrs)], {"x": list(x.shape)}, ["y"], {"w": w})
    return run_ort(m, {"x": x})[0].shape


SPLIT_CASES = {
    "pointwise": ((1, 24, 14, 14), (40, 24, 1, 1), dict()),
    "pointwise s2": ((1, 24, 27, 28), (40, 24, 1, 1), dict(strides=[2, 2])),  # the input taken first
    "pointwise pixels": ((1, 24, 20, 23), (64, 24, 1, 1), dict()),  # 11 tiles of 6: split over pixels
    "direct 3x3 s2": ((1, 24, 13, 11), (70, 24, 3, 3), dict(strides=[2, 2], pads=[1, 1, 1, 1])),
    "direct 1x1 7x7": ((1, 64, 7, 7), (72, 64, 1, 1), dict()),
    "rowvec stem": ((1, 3, 30, 40), (40, 3, 3, 3), dict(strides=[2, 2], pads=[1, 1, 1, 1])),
    "winograd": ((1, 32, 40, 19), (40, 32, 3, 3), dict(pads=[1, 1, 1, 1])),  # 4 chunks of tile rows
    "winograd one chunk": ((1, 32, 14, 14), (40, 32, 3, 3), dict(pads=[1, 1, 1, 1])),  # a chunk per thread
    "depthwise rows": ((1, 37, 30, 30), (37, 1, 3, 3), dict(group=37, pads=[1, 1, 1, 1])),
    "depthwise blocked": ((1, 40, 9, 9), (40, 1, 3, 3), dict(group=40, strides=[2, 2], pads=[1, 1, 1, 1])),
}


def _tiled_pools():
    from onnx import helper

    from tests.util import make_model
    nodes = [helper.make_node("MaxPool", ["x"], ["m"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("AveragePool", ["m"], ["y"], kernel_shape=[2, 2], strides=[2, 2])]
    return make_model(nodes, {"x": [1, 24, 40, 36]}, ["y"], {}), {"x": randn(1, 24, 40, 36, seed=9)}


@pytest.mark.parametrize("case,kernel", [("direct 3x3 s2", "pack_rows"), ("rowvec stem", "pack_rows"),
                                         ("winograd", "pack_input"), ("pointwise", "to_blocked"),
                                         ("pointwise", "from_blocked"), ("pointwise s2", "subsample_planes"),
                                         ("pools", "max_pool_tiled"), ("pools", "avg_pool_tiled")])
def test_input_packing_and_layout_copies_split_over_threads(case, kernel, monkeypatch):
    """A layer's input packing, a blocked 1x1's conversions of its residual and output between layouts, a
    strided 1x1's subsampled input and the pools whose windows tile the input run as splits (the copies
    as splits of their own): the caller and the worker each take their channels."""
    from bninfer import threads
    model, feeds = _tiled_pools() if case == "pools" else _conv_block(*SPLIT_CASES[case])
    serial = _session(model, 1).run(None, feeds)[0]
    ranges = set()  # the unit ranges the copy's calls were made for
    real = threads.split_calls

    def spy(calls, n, *args):
        def watched(a, b):
            made = calls(a, b)
            if made and made[0][0].__name__ == kernel:
                ranges.add((a, b, n))
            return made
        return real(watched, n, *args)
    monkeypatch.setattr(threads, "split_calls", spy)
    out, _, _ = _split_run(model, feeds, 2, monkeypatch)
    np.testing.assert_array_equal(out, serial)
    assert any((k, n, n) in ranges for _, k, n in ranges if 0 < k < n)  # [0, k) and [k, n): two threads' shares


@pytest.mark.parametrize("case", sorted(SPLIT_CASES))
@pytest.mark.parametrize("n_threads", [2, 3])
def test_kernel_split_over_threads_gives_the_serial_result(case, n_threads, monkeypatch):
    from tests.util import run_ort
    model, feeds = _conv_block(*SPLIT_CASES[case])
    serial = _session(model, 1).run(None, feeds)[0]
    out, parts, native = _split_run(model, feeds, n_threads, monkeypatch)
    assert parts and max(parts) == n_threads  # the conv really was split
    if case != "depthwise rows":  # its parts copy into a scratch of each thread's own: never packed
        assert native and max(native) == n_threads  # and from packed tables
    np.testing.assert_array_equal(out, serial)  # same sums in the same order, only on other threads
    np.testing.assert_allclose(out, run_ort(model, feeds)[0], rtol=1e-4, atol=1e-4)


def _preact_pointwise(seed=0, cout=56):
    """BN -> ReLU -> 1x1 conv: the pointwise kernel with its prologue, which it applies into a scratch."""
    from onnx import helper

    from tests.util import make_model
    cin = 40
    consts = {"g": randn(cin, seed=seed), "be": randn(cin, seed=seed + 1), "m": randn(cin, seed=seed + 2),
              "v": np.abs(randn(cin, seed=seed + 3)) + 0.5, "w": randn(cout, cin, 1, 1, seed=seed + 4) * 0.3}
    nodes = [helper.make_node("BatchNormalization", ["x", "g", "be", "m", "v"], ["n"]),
             helper.make_node("Relu", ["n"], ["a"]),
             helper.make_node("Conv", ["a", "w"], ["y"])]
    model = make_model(nodes, {"x": [1, cin, 30, 31]}, ["y"], consts)
    return model, {"x": randn(1, cin, 30, 31, seed=seed + 5)}


@pytest.mark.parametrize("tiles_,P,cout,threads_,pixels", [
    (11, 3136, 64, 2, True),     # ResNet-50's 64-channel layers at 56x56: 6 + 5 tiles otherwise
    (43, 3136, 256, 2, True), (22, 3136, 128, 2, False), (22, 784, 128, 3, True),
    (11, 3136, 64, 1, False),    # one thread: no split at all
    (11, 100, 64, 2, False),     # too few pixels for two shares of 4 tiles
    (43, 196, 256, 2, False),    # more weights than pixels: every part would read them all
])
def test_a_1x1_layer_splits_over_pixels_when_its_tiles_do_not_share_out(tiles_, P, cout, threads_, pixels):
    from bninfer.ops.conv import _pixel_split
    assert _pixel_split(tiles_, P, cout, 16, threads_) == pixels


@pytest.mark.parametrize("n_threads", [2, 3])
def test_a_pixel_split_covers_every_pixel_once(n_threads, monkeypatch):
    """64 output channels in 11 tiles of 6 (AVX2; 12 x 32 and 16 x 16 elsewhere): the layer splits over
    its 460 pixels in 28 groups of 16 (the last one longer), and gives the serial result."""
    from bninfer import threads
    from bninfer.ops.conv import _pick_pw_tile
    cot, _ = _pick_pw_tile(64, 460)
    if cot != 6:
        pytest.skip("the host's 1x1 tile is not 6 channels")
    model, feeds = _conv_block(*SPLIT_CASES["pointwise pixels"])
    serial = _session(model, 1).run(None, feeds)[0]
    counts = []
    real = threads.split_calls

    def spy(calls, n, *args):
        made = calls(0, n)
        if made and made[0][0].__name__.startswith("pointwise_kernel"):
            counts.append(n)
            assert made[0][1][6:8] == (0, 460)  # the whole range: pixels [Q0, Q1)
        return real(calls, n, *args)
    monkeypatch.setattr(threads, "split_calls", spy)
    out, parts, _ = _split_run(model, feeds, n_threads, monkeypatch)
    assert counts and set(counts) == {460 // 16} and max(parts) == n_threads
    np.testing.assert_array_equal(out, serial)


@pytest.mark.parametrize("k,n,act", [(2048, 256, "Sigmoid"), (300, 1000, "Tanh")])
@pytest.mark.parametrize("n_threads", [2, 3])
def test_a_one_row_product_with_a_span_activation_splits_over_threads(k, n, act, n_threads, monkeypatch):
    """A batch-1 Linear layer whose activation runs as a span after the product (2048 x 256: dot products,
    each part activating the outputs it computed, the serial result bit for bit; 300 x 1000: each thread's
    share of the rows summed, then the span over all, the same result on every run at a thread count),
    natively from the second run, and onnxruntime's."""
    from onnx import helper

    from tests.util import make_model, run_ort
    nodes = [helper.make_node("Gemm", ["x", "w", "c"], ["g"]), helper.make_node(act, ["g"], ["y"])]
    model = make_model(nodes, {"x": [1, k]}, ["y"], {"w": randn(k, n, seed=1) * (2 / k ** 0.5),
                                                     "c": randn(n, seed=2)})
    feeds = {"x": randn(1, k, seed=3)}
    serial = _session(model, 1).run(None, feeds)[0]
    out, parts, native = _split_run(model, feeds, n_threads, monkeypatch)
    assert parts and native and max(native) == n_threads
    if k >= 2 * n:
        np.testing.assert_array_equal(out, serial)
    np.testing.assert_allclose(out, serial, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out, run_ort(model, feeds)[0], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("native_plan", [True, False], ids=["native plan", "python plan"])
@pytest.mark.parametrize("cout", [56, 64])
def test_a_split_prologue_gives_every_part_a_scratch_of_its_own(native_plan, cout, monkeypatch):
    """The pointwise kernel's parts (blocks of output channels, 56; pixels, 64: 11 tiles of 6 on AVX2)
    each apply the prologue into a scratch, to the same pixels or their own: parts packed by one thread
    (a plan that never records packs its layers' parts at their second run) must not share it."""
    from tests.util import run_ort
    model, feeds = _preact_pointwise(cout=cout)
    assert [n.op for n in _session(model, 1).optimized_graph().nodes] == ["Conv"]  # BN and ReLU its prologue
    serial = _session(model, 1).run(None, feeds)[0]
    out, parts, native = _split_run(model, feeds, 2, monkeypatch, runs=6, native_plan=native_plan)
    assert native and max(native) == 2  # parts run from packed tables
    np.testing.assert_array_equal(out, serial)
    np.testing.assert_allclose(out, run_ort(model, feeds)[0], rtol=1e-4, atol=1e-4)


def _split_run(model, feeds, n_threads, monkeypatch, force=True, runs=3, native_plan=True):
    """`runs` runs on n_threads, every split recorded: (the last output, the part count of every split
    handed to Python workers (Workers.map), of every split run from packed tables (Workers.run_tables,
    or handed over natively: Workers.hand_over)).
    A layer's parts are packed at its second run, so three runs take both ways. force: thresholds at 1,
    so even small ops split; else only the workers are taken as awake. native_plan: the session's runs
    (native from the second), else a plan's that never records. Every run gives the same output, bit for
    bit."""
    from bninfer import threads
    parts, native = [], []
    real_map, real_tables = threads.Workers.map, threads.Workers.run_tables
    if force:
        monkeypatch.setattr(threads, "MIN_PART_MACS", 1)
        monkeypatch.setattr(threads, "MIN_NATIVE_PART_MACS", 1)
    monkeypatch.setattr(threads, "MIN_WAKE_MACS", 1)
    monkeypatch.setattr(threads.Workers, "map", lambda self, fn, p: (parts.append(len(p)), real_map(self, fn, p)))
    monkeypatch.setattr(threads.Workers, "run_tables",
                        lambda self, t: (native.append(len(t)), real_tables(self, t)))
    on_native_hand_overs(monkeypatch, native.append)
    sess = _session(model, n_threads)
    if native_plan:
        outs = [sess.run(None, feeds)[0] for _ in range(runs)]
    else:  # a plan that never records: its split layers run from packed part tables after their first run
        from bninfer.plan import Plan
        plan = Plan(sess.optimized_graph(), native=False)
        with sess._threads:
            outs = [plan.run(feeds)[0] for _ in range(runs)]
    for out in outs[1:]:
        np.testing.assert_array_equal(out, outs[0])
    return outs[-1], parts, native


def _session(model, n):
    so = bninfer.SessionOptions()
    so.intra_op_num_threads = n
    return bninfer.InferenceSession(model.SerializeToString(), so)


@pytest.mark.parametrize("case", ["pointwise", "direct 1x1 7x7", "depthwise blocked", "winograd"])
def test_packed_parts_follow_feeds_that_are_views_at_other_offsets_of_one_buffer(case, monkeypatch):
    """Feeds (input and residual, which the kernels read in place) sliced from one buffer at another
    offset each run: the packed parts must read each run's own (they have one owner, at other addresses)."""
    from bninfer import threads
    monkeypatch.setattr(threads, "MIN_NATIVE_PART_MACS", 1)
    monkeypatch.setattr(threads, "MIN_WAKE_MACS", 1)
    model, feeds = _conv_block(*SPLIT_CASES[case])
    serial, sess = _session(model, 1), _session(model, 2)
    xs = np.concatenate([feeds["x"] * (k + 1) for k in range(4)])
    rs = np.concatenate([feeds["r"] * (k - 1) for k in range(4)])
    for k in [0, 1, 2, 3, 1, 0]:
        f = {"x": xs[k:k + 1], "r": rs[k:k + 1]}
        np.testing.assert_array_equal(sess.run(None, f)[0], serial.run(None, f)[0])


@pytest.mark.parametrize("op", ["Gemm", "MaxPool"])
def test_packed_one_row_products_and_pooling_follow_feeds_at_other_offsets(op, monkeypatch):
    from onnx import helper

    from bninfer import threads
    from tests.util import make_model
    monkeypatch.setattr(threads, "MIN_PART_MACS", 1)  # at build: whether the product ever splits
    monkeypatch.setattr(threads, "MIN_NATIVE_PART_MACS", 1)
    monkeypatch.setattr(threads, "MIN_WAKE_MACS", 1)
    if op == "Gemm":
        model = make_model([helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1)], {"x": [1, 700]}, ["y"],
                           {"w": randn(300, 700, seed=1), "b": randn(300, seed=2)})
        xs = randn(4, 700, seed=3)
    else:
        model = make_model([helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2],
                                             pads=[1, 1, 1, 1])], {"x": [1, 5, 11, 13]}, ["y"], {})
        xs = randn(4, 5, 11, 13, seed=4)
    serial, sess = _session(model, 1), _session(model, 2)
    for k in [0, 1, 2, 3, 1, 0]:
        f = {"x": xs[k:k + 1]}
        np.testing.assert_allclose(sess.run(None, f)[0], serial.run(None, f)[0], rtol=1e-5, atol=1e-4)


def test_an_error_in_a_worker_reaches_the_caller_after_every_part_is_done():
    from bninfer import threads
    pool = threads.workers(3)
    finished = []

    def part(a, b):
        if a == 1:
            raise RuntimeError("part 1 failed")
        time.sleep(0.05)
        finished.append(a)
    with pytest.raises(RuntimeError, match="part 1 failed"):
        pool.map(part, [(0, 1), (1, 2), (2, 3)])
    assert sorted(finished) == [0, 2]


def _thread_cpu_seconds(native_id: int) -> float:
    with open(f"/proc/self/task/{native_id}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


@pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="per-thread CPU times from /proc")
def test_workers_do_not_spin_between_runs(monkeypatch):
    from bninfer import threads
    monkeypatch.setattr(threads, "MIN_PART_MACS", 1)
    monkeypatch.setattr(threads, "MIN_NATIVE_PART_MACS", 1)
    monkeypatch.setattr(threads, "MIN_WAKE_MACS", 1)
    model, feeds = _conv_block(*SPLIT_CASES["pointwise"])
    sess = _session(model, 2)
    for _ in range(20):
        sess.run(None, feeds)
    ids = [t.native_id for t in threading.enumerate() if t.name.startswith("bninfer-worker")]
    assert ids
    before = [_thread_cpu_seconds(i) for i in ids]
    time.sleep(0.5)
    after = [_thread_cpu_seconds(i) for i in ids]
    assert max(a - b for a, b in zip(after, before)) < 0.05


def test_blas_runs_single_threaded_around_gemms_big_enough_to_thread(monkeypatch):
    """bninfer threads GEMMs itself; OpenBLAS's own threads would keep spinning and starve its workers.
    (Two rows: a batch-1 layer is bninfer's own vector_matrix kernel, no BLAS.)"""
    from onnx import helper

    from bninfer import threads
    from tests.util import make_model
    entered = []
    real_enter = threads.ThreadLimit.__enter__
    monkeypatch.setattr(threads.ThreadLimit, "__enter__", lambda self: (entered.append(self.n), real_enter(self))[1])
    for k, n, expect in [(8, 4, []), (256, 1024, [1])]:
        m = make_model([helper.make_node("MatMul", ["x", "w"], ["y"])], {"x": [2, k]}, ["y"],
                       {"w": randn(k, n, seed=1)})
        entered.clear()
        x = randn(2, k, seed=2)
        out = _session(m, 2).run(None, {"x": x})[0]
        np.testing.assert_allclose(out, x @ randn(k, n, seed=1), rtol=1e-4, atol=1e-4)
        assert entered == expect


@pytest.mark.parametrize("x_shape", [(1, 700), (7, 700), (2, 5, 700)], ids=str)
def test_gemm_and_matmul_split_over_threads(x_shape, monkeypatch):
    """Batch-1 GEMMs split by output columns, several rows by rows; same result as one thread."""
    from onnx import helper

    from tests.util import make_model, run_ort
    w, bias = randn(700, 410, seed=1), randn(410, seed=2)  # above the GEMM size the BLAS would thread
    x = randn(*x_shape, seed=3)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Add", ["m", "b"], ["y"])]
    if len(x_shape) == 2:
        nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["y"])]
    model = make_model(nodes, {"x": list(x_shape)}, ["y"], {"w": w, "b": bias})
    serial = _session(model, 1).run(None, {"x": x})[0]
    out, parts, _ = _split_run(model, {"x": x}, 3, monkeypatch)
    assert parts and max(parts) == 3
    np.testing.assert_allclose(out, serial, rtol=1e-5, atol=1e-4)  # BLAS may sum a part in another order
    np.testing.assert_allclose(out, run_ort(model, {"x": x})[0], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("op,attrs", [
    ("MaxPool", dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])),  # max_pool_k3
    ("AveragePool", dict(kernel_shape=[2, 3], strides=[1, 2], pads=[1, 0, 0, 1])),  # the generic kernel
])
def test_pooling_splits_over_planes(op, attrs, monkeypatch):
    from onnx import helper

    from tests.util import make_model, run_ort
    model = make_model([helper.make_node(op, ["x"], ["y"], **attrs)], {"x": [2, 5, 11, 13]}, ["y"], {})
    x = randn(2, 5, 11, 13, seed=4)
    serial = _session(model, 1).run(None, {"x": x})[0]
    out, parts, native = _split_run(model, {"x": x}, 3, monkeypatch)
    assert parts == [3] and native == [3, 3]  # packed at the second run
    np.testing.assert_array_equal(out, serial)
    np.testing.assert_allclose(out, run_ort(model, {"x": x})[0], rtol=1e-6, atol=1e-6)


def test_a_classifier_row_splits_at_the_default_thresholds(monkeypatch):
    """A batch-1 2048x1000 classifier (2 M multiply-adds) streams 8 MB of weights, 0.5 ms on one core:
    its work is weighed as memory-bound, so it splits over two threads where a conv of as many
    multiply-adds would not (the workers kept awake, as between a net's layers)."""
    from onnx import helper

    from tests.util import make_model
    model = make_model([helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1)], {"x": [1, 2048]}, ["y"],
                       {"w": randn(1000, 2048, seed=1), "b": randn(1000, seed=2)})
    x = randn(1, 2048, seed=3)
    serial = _session(model, 1).run(None, {"x": x})[0]
    out, parts, native = _split_run(model, {"x": x}, 2, monkeypatch, force=False)
    assert parts == [2] and native == [2, 2]  # packed at the second run
    # split over the weights' rows: two partial sums added, so not bit-identical to the serial order
    # (sums of 2048 products, up to ~70: float32 rounding of the largest terms)
    np.testing.assert_allclose(out, serial, rtol=1e-5, atol=1e-6 * float(np.abs(serial).max()))


@pytest.mark.parametrize("n_threads", [2, 3])
def test_a_one_row_product_split_over_rows_applies_the_epilogue_once(n_threads, monkeypatch):
    """Gemm + residual Add + PRelu + an affine on 3 threads or 2: one share of the rows per thread (k not a
    multiple of the split), summed, then the epilogue, against float64. The shares run on every thread,
    on two, or all on the caller (workers too few or asleep): the same sums, bit for bit, every time."""
    from bninfer import ir, ops
    from bninfer.ops import fusion
    k, n = 1037, 300
    F32 = np.float32
    rng = np.random.default_rng(5)
    w, b = rng.standard_normal((k, n)).astype(F32), rng.standard_normal(n).astype(F32)
    res, slope = rng.standard_normal((1, n)).astype(F32), rng.standard_normal(n).astype(F32) * 0.3
    ps, pt = rng.standard_normal(n).astype(F32), rng.standard_normal(n).astype(F32)
    node = ir.Node("Gemm", "g", ["a", "w", "b"], ["y"], {"activation": ("PRelu", {})})
    vals = [ir.Value("a", (1, k), np.dtype(F32)), ir.Value("w", (k, n), np.dtype(F32), w),
            ir.Value("b", (n,), np.dtype(F32), b)]
    for key, name, arr in [("residual", "r", res), ("slope", "s", slope), ("post_scale", "ps", ps),
                           ("post_shift", "pt", pt)]:
        fusion.add_extra(node, key, name, 3)
        vals.append(ir.Value(name, arr.shape, np.dtype(F32), arr))
    from bninfer import threads
    monkeypatch.setattr(threads, "MIN_WAKE_MACS", 1)
    monkeypatch.setattr(threads, "MIN_PART_MACS", 1)  # at build: the product's run is the splitting one
    parts = []
    real_map, real_tables = threads.Workers.map, threads.Workers.run_tables
    monkeypatch.setattr(threads.Workers, "map", lambda self, fn, p: (parts.append(len(p)), real_map(self, fn, p)))
    monkeypatch.setattr(threads.Workers, "run_tables", lambda self, t: (parts.append(len(t)), real_tables(self, t)))
    run = ops.get("Gemm").build(node, vals, [ir.Value("y", (1, n), np.dtype(F32))])
    a = rng.standard_normal((1, k)).astype(F32)
    z = a.astype(np.float64) @ w + b + res
    want = np.where(z < 0, z * slope, z) * ps + pt
    outs = []
    for min_part in [1, 1_200_000, 10**12]:  # the work is 8 * k * n = 2.5 M: every thread, two, none
        monkeypatch.setattr(threads, "MIN_PART_MACS", min_part)
        monkeypatch.setattr(threads, "MIN_NATIVE_PART_MACS", min_part)
        for _ in range(2):  # from Python, then from packed tables
            out = np.full((1, n), np.nan, F32)
            with threads.RunThreads(n_threads):
                run([a, w, b, res, slope, ps, pt], [out])
            np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-4)
            outs.append(out)
    assert parts == [n_threads] * 2 + [2] * 2
    assert all(np.array_equal(o, outs[0]) for o in outs)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork")
def test_a_session_made_before_fork_runs_split_kernels_in_the_child(monkeypatch):
    from bninfer import threads
    monkeypatch.setattr(threads, "MIN_PART_MACS", 1)
    monkeypatch.setattr(threads, "MIN_WAKE_MACS", 1)
    model, feeds = _conv_block(*SPLIT_CASES["pointwise"])
    sess = _session(model, 2)
    expected = sess.run(None, feeds)[0]  # the parent's workers exist now
    pid = os.fork()
    if pid == 0:  # child: must not wait for the parent's workers, which it does not have
        ok = np.array_equal(sess.run(None, feeds)[0], expected)
        os._exit(0 if ok else 1)
    deadline = time.time() + 60
    while time.time() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            assert os.waitstatus_to_exitcode(status) == 0
            return
        time.sleep(0.05)
    os.kill(pid, 9)
    pytest.fail("the forked child hung")


def test_spin_wait_sees_another_threads_store_and_gives_up_when_nothing_comes():
    from bninfer.kernels.spin import wait_while
    flags = np.zeros(8, np.int64)
    t0 = time.perf_counter()
    assert wait_while(flags, 1, 0, 10**15, 100_000) == 0  # nothing changes: the poll bound ends it
    assert wait_while(flags, 1, 0, 1000, 10**12) == 0  # nothing changes: the tick bound ends it
    assert time.perf_counter() - t0 < 5

    def store():
        time.sleep(0.05)
        flags[1] = 7
    t = threading.Thread(target=store)
    t.start()
    assert wait_while(flags, 1, 0, 10**12, 10**12) == 7  # no GIL held while it spins, or this hangs
    t.join()


def test_runs_from_several_threads_share_the_workers(monkeypatch):
    """One caller at a time holds the workers; the others run their parts themselves."""
    from bninfer import threads
    monkeypatch.setattr(threads, "MIN_PART_MACS", 1)
    monkeypatch.setattr(threads, "MIN_NATIVE_PART_MACS", 1)
    monkeypatch.setattr(threads, "MIN_WAKE_MACS", 1)
    model, feeds = _conv_block(*SPLIT_CASES["direct 3x3 s2"])
    sess = _session(model, 2)
    expected = _session(model, 1).run(None, feeds)[0]
    bad = []

    def worker():
        for _ in range(50):
            if not np.array_equal(sess.run(None, feeds)[0], expected):
                bad.append(1)
    ts = [threading.Thread(target=worker) for _ in range(3)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not bad


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="CPU affinity with at least 2 CPUs")
def test_the_caller_is_kept_on_one_cpu_during_a_run_and_given_back_its_affinity(monkeypatch):
    from bninfer import threads
    monkeypatch.setattr(threads, "MIN_PART_MACS", 1)
    monkeypatch.setattr(threads, "MIN_NATIVE_PART_MACS", 1)
    monkeypatch.setattr(threads, "MIN_WAKE_MACS", 1)
    model, feeds = _conv_block(*SPLIT_CASES["pointwise"])
    sess = _session(model, 2)
    inside = []
    real_map, real_tables = threads.Workers.map, threads.Workers.run_tables
    monkeypatch.setattr(threads.Workers, "map",
                        lambda self, fn, p: (real_map(self, fn, p), inside.append(os.sched_getaffinity(0))))
    monkeypatch.setattr(threads.Workers, "run_tables",
                        lambda self, t: (real_tables(self, t), inside.append(os.sched_getaffinity(0))))
    on_native_hand_overs(monkeypatch, lambda parts: inside.append(os.sched_getaffinity(0)))
    before = os.sched_getaffinity(0)
    splits = []
    for _ in range(3):  # from Python, then from packed tables
        seen = len(inside)
        sess.run(None, feeds)
        splits.append(len(inside) - seen)  # the layer's, and its input packing's
        assert os.sched_getaffinity(0) == before
    assert min(splits) >= 1 and all(len(a) == 1 for a in inside)
    assert os.sched_getaffinity(0) == before
    with pytest.raises(bninfer.errors.BninferError):
        sess.run(None, {"x": feeds["x"][:, :3], "r": feeds["r"]})  # a bad feed: nothing to restore
    assert os.sched_getaffinity(0) == before


def test_a_small_layer_runs_here_and_wakes_sleeping_workers_for_the_next(monkeypatch):
    """After a pause the workers sleep: the run wakes them as it starts (a native plan with split layers),
    and a layer too small to wait for their wake-up runs on the caller alone (never posted to a worker
    still asleep: a native hand-over takes only spinning ones); they sleep again when nothing comes."""
    from bninfer import threads
    monkeypatch.setattr(threads, "MIN_PART_MACS", 1)
    monkeypatch.setattr(threads, "MIN_NATIVE_PART_MACS", 1)
    monkeypatch.setattr(threads, "MIN_WAKE_MACS", 10**12)
    model, feeds = _conv_block(*SPLIT_CASES["pointwise"])
    sess = _session(model, 2)
    expected = _session(model, 1).run(None, feeds)[0]
    sess.run(None, feeds)
    time.sleep(0.2)  # the workers stop spinning and sleep
    pool = threads.workers(2)
    assert pool.asleep()
    parts, wakes = [], []
    real_map, real_wake, real_tables = threads.Workers.map, threads.Workers.wake, threads.Workers.run_tables
    monkeypatch.setattr(threads.Workers, "map", lambda self, fn, p: (parts.append(len(p)), real_map(self, fn, p)))
    monkeypatch.setattr(threads.Workers, "run_tables", lambda self, t: (parts.append(len(t)), real_tables(self, t)))
    monkeypatch.setattr(threads.Workers, "wake", lambda self: (wakes.append(1), real_wake(self)))
    np.testing.assert_array_equal(sess.run(None, feeds)[0], expected)
    assert parts == [] and wakes
    deadline = time.perf_counter() + 2
    while any(row[threads._WAKING] for row in pool._rows) and time.perf_counter() < deadline:
        time.sleep(0.001)
    assert not any(row[threads._WAKING] for row in pool._rows)  # each worker woke up
    time.sleep(0.2)
    assert pool.asleep()  # and went back to sleep


def test_serve_wait_publishes_done_then_waits_for_the_next_part():
    from bninfer.kernels.spin import serve_wait
    done_i, asleep_i, posted_i, seen_i, task_i = 1, 3, 0, 6, 5
    flags = np.zeros(8, np.int64)
    # done published; nothing posted: gives up at the tick bound
    assert serve_wait(flags, done_i, 5, asleep_i, posted_i, seen_i, task_i, 1000, 10**12, 0) == -1
    assert flags[done_i] == 5
    flags[asleep_i] = 1  # the caller sleeps: -2 at once, after publishing
    assert serve_wait(flags, done_i, 6, asleep_i, posted_i, seen_i, task_i, 10**15, 10**12, 0) == -2
    assert flags[done_i] == 6
    flags[asleep_i] = 0

    def post():
        time.sleep(0.05)
        flags[posted_i] = 1
    t = threading.Thread(target=post)
    t.start()
    t0 = time.perf_counter()
    # a part for Python (no table): its number returned and kept as the last seen
    assert serve_wait(flags, done_i, -1, asleep_i, posted_i, seen_i, task_i, 10**12, 10**12, 20_000_000) == 1
    assert flags[seen_i] == 1
    assert time.perf_counter() - t0 >= 0.05  # it waited for the post (and then settled)
    t.join()


@njit(nogil=True)
def _fill(y, value, a, b):
    y[a:b] = value


def test_serve_wait_runs_a_part_table_itself_and_spins_on():
    """A posted part with a table runs inside the spin, without the GIL (this thread holds it), is
    published done, and the spin goes on for the next part."""
    from bninfer.kernels.calls import Packed
    from bninfer.kernels.spin import serve_wait
    done_i, asleep_i, posted_i, seen_i, task_i = 1, 3, 0, 6, 5
    _fill.compile((types.float32[::1], types.float64, types.int64, types.int64))
    y = np.zeros(10, np.float32)
    packed = Packed()
    table = packed.table([(_fill, (y, 2.5, 1, 4)), (_fill, (y[5:], -1, 2, 3))])
    flags = np.zeros(8, np.int64)
    flags[task_i], flags[posted_i] = table, 1
    assert serve_wait(flags, done_i, -1, asleep_i, posted_i, seen_i, task_i, 10**6, 10**12, 0) == -1
    assert flags[done_i] == 1 and flags[seen_i] == 1
    np.testing.assert_array_equal(y, [0, 2.5, 2.5, 2.5, 0, 0, 0, -1, 0, 0])


def _sleeping_pool():
    """A new pool of two threads, once its worker has spun its ~1 ms and gone to sleep."""
    from bninfer import threads
    pool = threads.Workers(2)
    deadline = time.perf_counter() + 2
    while not pool.asleep() and time.perf_counter() < deadline:
        time.sleep(0.01)
    assert pool.asleep()
    return pool


def _hand_over_tables():
    from bninfer.kernels.calls import Packed
    _fill.compile((types.float32[::1], types.float64, types.int64, types.int64))
    _divide.compile((types.float64[::1], types.float64, types.int64, types.int64))
    y = np.zeros(10, np.float32)
    packed = Packed()
    own, task = packed.table([(_fill, (y, 1.5, 0, 5))]), packed.table([(_fill, (y, -2.0, 5, 10))])
    return y, packed, own, np.array([task], np.int64)


def test_a_native_hand_over_runs_both_parts_and_reports_a_failed_one():
    """Workers.hand_over: the caller's part here, the worker's in its spin, from native code."""
    from bninfer import threads
    from bninfer.kernels.calls import Packed
    y, packed, own, tasks = _hand_over_tables()
    pool = threads.Workers(2)

    def spinning_hand_over(own, tasks):  # a worker spins ~1 ms before it sleeps: caught spinning
        for _ in range(20):
            pool.wake()
            deadline = time.perf_counter() + 2
            while pool.asleep() and time.perf_counter() < deadline:
                pass
            failed = pool.hand_over(own, tasks)
            if failed is not None:
                return failed
        pytest.fail("the worker was never caught spinning")
    assert spinning_hand_over(own, tasks) is False  # both ran, neither failed
    np.testing.assert_array_equal(y, [1.5] * 5 + [-2.0] * 5)
    z = np.zeros(4)
    bad = Packed()
    failing = np.array([bad.table([(_divide, (z, 0.0, 0, 4))])], np.int64)
    assert spinning_hand_over(bad.table([(_divide, (z, 2.0, 0, 2))]), failing) is True
    assert z[0] == 0.5 and z[1] == 0.5  # the caller's part ran; the worker's failed, noted in its table
    with pytest.raises(ZeroDivisionError):
        bad.check()


def test_a_native_hand_over_posts_nothing_to_a_sleeping_worker():
    """A worker asleep with no wake-up on its way: hand_over posts nothing and returns None, for the
    Python way (which wakes it)."""
    from bninfer import threads
    y, packed, own, tasks = _hand_over_tables()
    pool = threads.Workers(2)
    deadline = time.perf_counter() + 2
    while not pool.asleep() and time.perf_counter() < deadline:  # a new worker spins ~1 ms, then sleeps
        time.sleep(0.01)
    assert pool.asleep()
    posted = pool._rows[0][threads._POSTED]
    assert pool.hand_over(own, tasks) is None
    assert pool._rows[0][threads._POSTED] == posted and not y.any()


def test_a_part_posted_as_its_worker_went_to_sleep_is_finished_from_python():
    """spin.hand_over's answer 2: its part posted, its worker found asleep by the check after the post
    (it went to sleep in between). The caller wakes the worker, which finds the part and runs it."""
    from bninfer import threads
    from bninfer.kernels.calls import run_table
    y, packed, own, tasks = _hand_over_tables()
    pool = _sleeping_pool()

    def posted_as_it_slept(flags, tasks_, own_):  # spin.hand_over's steps for that case
        flags[threads._TASK] = tasks_[0]
        flags[threads._POSTED] += 1
        run_table(own_)
        return 2
    pool._hand_over = posted_as_it_slept
    assert pool.hand_over(own, tasks) is False
    np.testing.assert_array_equal(y, [1.5] * 5 + [-2.0] * 5)


@njit(nogil=True)
def _add(y, value, a, b):
    y[a:b] += value  # a part run twice shows


def _adding_tables():
    from bninfer.kernels.calls import Packed
    _add.compile((types.float32[::1], types.float64, types.int64, types.int64))
    y = np.zeros(10, np.float32)
    packed = Packed()
    own, task = packed.table([(_add, (y, 1.5, 0, 5))]), packed.table([(_add, (y, -2.0, 5, 10))])
    return y, packed, own, np.array([task], np.int64)


def _asleep_and_never_woken():
    """A pool whose one worker sleeps and whose wake-ups get lost (a worker the host has descheduled
    looks the same to the caller)."""
    pool = _sleeping_pool()
    lost = []
    pool.real_wake = pool._wake[0]  # the queue the worker sleeps on
    pool._wake[0] = type("Lost", (), {"put": staticmethod(lost.append)})()
    return pool, lost


def _wake_for_real(pool):
    from bninfer import threads
    row = pool._rows[0]
    pool._wake[0] = pool.real_wake
    pool.real_wake.put(None)
    deadline = time.perf_counter() + 2
    while row[threads._DONE] < row[threads._POSTED] and time.perf_counter() < deadline:
        time.sleep(0.001)
    assert row[threads._DONE] == row[threads._POSTED]  # it saw the post, and published it done


def test_a_part_its_waking_worker_has_not_taken_runs_on_the_caller_once():
    """spin.hand_over posts to a worker being woken; the wake-up does not come in time (it takes 0.3-1.7
    ms on this VM): the caller takes the part back once its own is done and runs it. The worker, woken
    later, finds the part taken and publishes it done without running it."""
    from bninfer import threads
    from bninfer.kernels.spin import TAKEN
    y, packed, own, tasks = _adding_tables()
    pool, lost = _asleep_and_never_woken()
    row = pool._rows[0]
    row[threads._WAKING] = 1  # a wake-up on its way (that never arrives)
    posted = row[threads._POSTED]
    assert pool.hand_over(own, tasks) is False
    assert row[threads._POSTED] == posted + 1 and row[threads._TASK] == TAKEN
    np.testing.assert_array_equal(y, [1.5] * 5 + [-2.0] * 5)
    _wake_for_real(pool)
    np.testing.assert_array_equal(y, [1.5] * 5 + [-2.0] * 5)  # not run a second time


def test_run_tables_runs_a_sleeping_workers_part_itself_if_it_has_not_started():
    y, packed, own, tasks = _adding_tables()
    pool, lost = _asleep_and_never_woken()
    pool.run_tables([own, int(tasks[0])])  # returns: the part a lost wake-up strands is the caller's
    assert lost  # the wake-up was sent
    np.testing.assert_array_equal(y, [1.5] * 5 + [-2.0] * 5)
    _wake_for_real(pool)
    np.testing.assert_array_equal(y, [1.5] * 5 + [-2.0] * 5)


def test_every_part_runs_exactly_once_as_workers_sleep_wake_and_race_their_caller():
    """Hand-overs (native and from Python) to a worker that now spins, now sleeps, now is being woken:
    parts taken back by the caller and parts the worker takes race over the same word. An adding kernel
    shows a part run twice or never."""
    from bninfer import threads
    y, packed, own, tasks = _adding_tables()
    pool = threads.Workers(2)
    rng = np.random.default_rng(0)
    n = 1500
    for _ in range(n):
        if rng.random() < 0.03:
            time.sleep(0.001 + rng.random() * 0.002)  # past the worker's ~1 ms spin: it sleeps
        if rng.random() < 0.3:
            pool.wake()
        if pool.hand_over(own, tasks) is None:
            pool.run_tables([own, int(tasks[0])])
    np.testing.assert_array_equal(y, [1.5 * n] * 5 + [-2.0 * n] * 5)


def _chain_segments(y, log):
    """Segments of a native plan, as native.segments makes them: a table, a split, a step left to Python,
    another split; each adds to its own elements of y (a segment run twice or never shows)."""
    from bninfer import native, record
    _add.compile((types.float32[::1], types.float64, types.int64, types.int64))

    def python_step(ins, outs):
        log.append("python")
        y[10:12] += 4.0
    segs = native.Segments([
        native.Table([(_add, (y, 1.0, 0, 2))], []),
        native.Split(record.Split([[(_add, (y, 1.5, 2, 4))], [(_add, (y, -2.0, 4, 6))]], 1e9), []),
        (python_step, [], []),
        native.Split(record.Split([[(_add, (y, 3.0, 6, 8))], [(_add, (y, 5.0, 8, 10))]], 1e9), [])])
    segs.chain = native.Chain(segs)
    return segs


_CHAIN_ONCE = [1.0] * 2 + [1.5] * 2 + [-2.0] * 2 + [3.0] * 2 + [5.0] * 2 + [4.0] * 2


def test_a_chain_runs_tables_and_splits_natively_and_stops_only_for_python(monkeypatch):
    """native.run hands a plan with splits to one native chain (Workers.run_chain): it stops for the
    step left to Python and goes on after it; every segment runs once, the splits' parts on both
    threads (or taken back by the caller when the worker is late). A worker that slept through a pause
    of the caller's (the host's, or the chain's first compile) is left to Python (answer CHAIN_ASLEEP):
    the run is tried again until its worker is caught spinning."""
    from bninfer import native, threads
    from bninfer.kernels.spin import CHAIN_ASLEEP, CHAIN_DONE, CHAIN_FOR_PYTHON
    answers, by_python = [], []
    real_chain, real_split = threads.Workers.run_chain, native.Split.__call__
    monkeypatch.setattr(threads.Workers, "run_chain",
                        lambda self, *a: answers.append(real_chain(self, *a)) or answers[-1])
    monkeypatch.setattr(native.Split, "__call__", lambda self: (by_python.append(1), real_split(self)))
    for _ in range(20):
        answers.clear(), by_python.clear()
        y, log = np.zeros(12, np.float32), []
        segs = _chain_segments(y, log)
        with threads.RunThreads(2):
            threads.wake_workers()  # as Plan.run does
            native.run(segs)
        np.testing.assert_array_equal(y, _CHAIN_ONCE)
        assert log == ["python"]
        assert len(by_python) == sum(r & 7 == CHAIN_ASLEEP for r in answers)
        if answers == [2 * 8 + CHAIN_FOR_PYTHON, 4 * 8 + CHAIN_DONE]:
            return
    pytest.fail(f"no run went through natively: {answers}")


def test_a_chain_leaves_a_split_whose_worker_sleeps_to_python_which_runs_it_here():
    """A worker asleep with its wake-up lost (or its thread descheduled by the host): the chain posts it
    nothing and stops at the split; run_split runs both parts on the caller, and the chain goes on."""
    from bninfer import native, threads
    from bninfer.kernels.spin import CHAIN_ASLEEP
    y, log = np.zeros(12, np.float32), []
    segs = _chain_segments(y, log)
    pool, lost = _asleep_and_never_woken()
    run = threads.RunThreads(2)
    run._pool, run._forks = pool, threads._forks[0]
    with run:
        assert pool.run_chain(segs.chain.prog, segs.chain.starts, 0) == 1 * 8 + CHAIN_ASLEEP
        y[:] = 0
        native.run(segs)
    np.testing.assert_array_equal(y, _CHAIN_ONCE)
    assert lost  # run_split sent a wake-up
    _wake_for_real(pool)
    np.testing.assert_array_equal(y, _CHAIN_ONCE)


@pytest.mark.parametrize("where", ["table", "split"])
def test_a_call_failing_inside_a_chain_raises_its_own_exception_and_stops_the_run(where):
    from bninfer import native, record, threads
    _divide.compile((types.float64[::1], types.float64, types.int64, types.int64))
    z, after = np.zeros(6), np.zeros(2, np.float32)
    _add.compile((types.float32[::1], types.float64, types.int64, types.int64))
    failing = native.Table([(_divide, (z, 0.0, 0, 2))], []) if where == "table" else \
        native.Split(record.Split([[(_divide, (z, 2.0, 0, 2))], [(_divide, (z, 0.0, 2, 4))]], 1e9), [])
    segs = native.Segments([
        native.Split(record.Split([[(_divide, (z, 4.0, 4, 5))], [(_divide, (z, 4.0, 5, 6))]], 1e9), []),
        failing, native.Table([(_add, (after, 1.0, 0, 2))], [])])
    segs.chain = native.Chain(segs)
    with threads.RunThreads(2):
        with pytest.raises(ZeroDivisionError):
            native.run(segs)
    assert list(z[4:]) == [0.25, 0.25] and not after.any()


def test_a_chains_late_part_is_waited_for_from_python_and_the_chain_goes_on():
    """spin.run_chain's CHAIN_LATE: a split's part its worker took was not seen done in time (here: posted
    as the worker went to sleep). Workers.run_chain wakes the worker, waits for the part, and runs the
    rest of the chain (up to the step for Python here)."""
    from bninfer import threads
    from bninfer.kernels.calls import run_table
    from bninfer.kernels.spin import CHAIN_LATE, run_chain
    y, log = np.zeros(12, np.float32), []
    segs = _chain_segments(y, log)
    prog, starts = segs.chain.prog, segs.chain.starts
    pool = _sleeping_pool()
    calls = []

    def late_at_the_first_split(flags, prog_, starts_, first):
        calls.append(first)
        if first > 0:
            return run_chain(flags, prog_, starts_, first)
        run_table(int(prog_[starts_[0] + 1]))
        p = starts_[1]  # spin.hand_over's steps when its worker went to sleep as the part was posted
        flags[threads._TASK] = prog_[p + 3]
        flags[threads._POSTED] += 1
        run_table(int(prog_[p + 1]))
        return 1 * 8 + CHAIN_LATE
    pool._run_chain = late_at_the_first_split
    assert pool.run_chain(prog, starts, 0) == 2 * 8 + 4  # on to the step for Python
    assert calls == [0, 2]
    np.testing.assert_array_equal(y[:6], _CHAIN_ONCE[:6])  # the late part ran once, the Python step not yet
    assert not y[6:].any()


def test_a_part_taken_back_by_its_caller_is_published_done_unrun():
    from bninfer.kernels.spin import TAKEN, serve_wait
    done_i, asleep_i, posted_i, seen_i, task_i = 1, 3, 0, 6, 5
    y, packed, own, tasks = _adding_tables()
    flags = np.zeros(8, np.int64)
    flags[task_i], flags[posted_i] = TAKEN, 1
    assert serve_wait(flags, done_i, -1, asleep_i, posted_i, seen_i, task_i, 10**6, 10**12, 0) == -1
    assert flags[done_i] == 1 and flags[seen_i] == 1 and not y.any()
    # a part posted after: the worker takes it (a later number published done, once run)
    flags[task_i], flags[posted_i] = own, 3
    assert serve_wait(flags, done_i, -1, asleep_i, posted_i, seen_i, task_i, 10**6, 10**12, 0) == -1
    assert flags[done_i] == 3 and flags[task_i] == TAKEN
    np.testing.assert_array_equal(y, [1.5] * 5 + [0.0] * 5)


def test_packed_calls_take_every_argument_kind_and_refuse_what_fits_no_signature():
    from bninfer.kernels.calls import Packed, run_table

    @njit(nogil=True)
    def kern(y, x2, flag, k, s, d):  # y[0, :] = x2[::2] * s + k (+ d when flag)
        for j in range(y.shape[1]):
            y[0, j] = x2[2 * j] * s + k + (d if flag else 0.0)

    sig = (types.float64[:, :], types.float32[:], types.boolean, types.int32, types.float32, types.float64)
    kern.compile(sig)
    y = np.zeros((4, 6))[::2, ::2]  # strided both ways: layout A
    x = np.arange(12, dtype=np.float32)
    packed = Packed()
    table = packed.table([(kern, (y, x[::2], np.bool_(True), 7, 0.5, 0.25))])
    run_table(table)
    np.testing.assert_array_equal(y[0], x[::2][::2] * 0.5 + 7.25)
    assert not y[1:].any()
    run_table(packed.table([(kern, (y, x[::2], False, -3, -2.0, 0.25))]))  # a false flag, negative numbers
    np.testing.assert_array_equal(y[0], x[::2][::2] * -2.0 - 3)
    assert packed.table([(kern, (y, x[::2].astype(np.float64), True, 7, 0.5, 0.25))]) is None  # wrong dtype
    assert packed.table([(kern, (y, x, 1, 7, 0.5, 0.25))]) is None  # an int where a bool is taken


def test_packing_remembers_the_signatures_arguments_fit_and_nothing_else():
    """Packing looks a call's signature up by its arguments' kinds (calls._native): what fits once fits
    again, what fits nothing is asked again (a signature compiled later is found)."""
    from bninfer.kernels.calls import Packed, run_table

    @njit(nogil=True)
    def kern(y, s):
        for j in range(y.size):
            y[j] += s

    kern.compile((types.float32[::1], types.float64))
    y = np.zeros(8, np.float32)
    packed = Packed()
    run_table(packed.table([(kern, (y, 2.0))]))
    run_table(packed.table([(kern, (y, 3))]))  # an int where a float is taken fits as well
    np.testing.assert_array_equal(y, 5.0)
    assert packed.table([(kern, (y[::2], 1.0))]) is None  # strided: fits no signature
    assert packed.table([(kern, (y.astype(np.float64), 1.0))]) is None
    assert packed.table([(kern, (y, True))]) is None  # a flag is not a number here
    assert packed.table([(kern, (y, None))]) is None
    kern.compile((types.float32[:], types.float64))
    run_table(packed.table([(kern, (y[::2], 1.0))]))
    np.testing.assert_array_equal(y, [6, 5] * 4)


def test_a_part_noted_failed_that_runs_clean_from_python_is_reported_not_ignored():
    from bninfer.errors import WorkerError
    from bninfer.kernels.calls import Packed, run_table
    _fill.compile((types.float32[::1], types.float64, types.int64, types.int64))
    y = np.zeros(4, np.float32)
    packed = Packed()
    run_table(packed.table([(_fill, (y, 3.0, 0, 4))]))
    packed.check()  # ran clean: nothing to report
    packed.tables[0][1] = 1  # as a worker's failed first call would note it
    with pytest.raises(WorkerError, match="_fill"):
        packed.check()
    assert packed.tables[0][1] == 0


@njit(nogil=True)
def _divide(y, d, a, b):
    for j in range(a, b):
        y[j] = 1.0 / d  # ZeroDivisionError for d == 0 (Numba's Python error model)


@pytest.mark.parametrize("n_threads", [1, 2, 3])
def test_a_kernel_that_raises_in_a_packed_part_raises_in_the_caller(n_threads, monkeypatch):
    """A failing call stops its part and is noted in its table; the caller then runs that part from
    Python, which raises the kernel's own exception, whichever thread ran it."""
    from bninfer import threads
    monkeypatch.setattr(threads, "MIN_NATIVE_PART_MACS", 1)
    monkeypatch.setattr(threads, "MIN_WAKE_MACS", 1)
    _divide.compile((types.float64[::1], types.float64, types.int64, types.int64))
    y, tables = np.zeros(30), threads.PartTables()
    divisor = np.array([2.0])

    def calls(a, b):  # the last part divides by zero
        return [(_divide, (y, float(divisor[0]) if b < 30 else 0.0, a, b))]
    with threads.RunThreads(n_threads):
        for run in range(3):  # from Python, then packed (a serial run is never packed)
            with pytest.raises(ZeroDivisionError):
                threads.split_calls(calls, 30, 1000.0, 1, tables, lambda: (y,))
    if n_threads > 1:
        assert tables._entries and all(e[0] is not None for e in tables._entries.values())
        np.testing.assert_array_equal(y[:10], 0.5)  # the other parts ran


def test_one_row_products_split_over_rows_from_several_threads_at_once(monkeypatch):
    """Runs of one session from several Python threads at once, each splitting a classifier row over
    rows: every run keeps its partial sums apart (one buffer per calling thread) and gets the serial
    result."""
    from onnx import helper

    from bninfer import threads
    from tests.util import make_model
    monkeypatch.setattr(threads, "MIN_PART_MACS", 1)
    monkeypatch.setattr(threads, "MIN_WAKE_MACS", 1)
    model = make_model([helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1)], {"x": [1, 700]}, ["y"],
                       {"w": randn(300, 700, seed=1), "b": randn(300, seed=2)})
    sess = _session(model, 2)
    feeds = [{"x": randn(1, 700, seed=10 + t)} for t in range(4)]
    want = [_session(model, 1).run(None, f)[0] for f in feeds]
    bad = []

    def work(t):
        for _ in range(60):
            got = sess.run(None, feeds[t])[0]
            if not np.allclose(got, want[t], rtol=1e-5, atol=1e-4):
                bad.append(t)
    ts = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not bad


@pytest.mark.parametrize("n,grain,parts,macs", [(9, 1, 2, 8e6), (36, 1, 2, 4e6), (112, 1, 3, 2e6), (1000, 16, 2, 5e7),
                                                (1003, 16, 3, 1e10), (5, 1, 2, 1e3)])
def test_shares_cover_the_range_and_give_the_caller_the_workers_late_start(n, grain, parts, macs):
    from bninfer.threads import MACS_PER_US, WORKER_LAG_US, _shares
    units = -(-n // grain)
    shares = _shares(n, grain, units, parts, macs)
    assert len(shares) == parts and shares[0][0] == 0 and shares[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(shares, shares[1:])) and all(a <= b for a, b in shares)
    assert all(a % grain == 0 for a, _ in shares)
    sizes = [b - a for a, b in shares]
    assert sizes[0] >= max(sizes[1:]) - grain  # the caller's share: never the smaller
    lag_units = WORKER_LAG_US * MACS_PER_US * units / macs
    if lag_units < 0.5:  # a large layer: as even as the grain allows
        assert max(sizes) - min(sizes) <= 2 * grain
    assert sizes[0] <= 2 * n / parts + grain  # at most an even share more
