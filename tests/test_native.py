"""Plans whose steps run as native call tables (bninfer.native, bninfer.record): from an arena's second run
on, the recorded kernel calls must give bit for bit what the steps give from Python, read each run's feeds,
keep to their own scratches, and leave to Python what they cannot take."""
from __future__ import annotations

import threading

import numpy as np
import pytest
from numba import njit, types

import bninfer
from benchmarks import zoo
from bninfer import activations, native, record
from bninfer.plan import Plan
from tests.graphs import Builder
from tests.test_blocked import _mb_conv, _mobile_net
from tests.util import randn, run_ort

def _session(model, n_threads: int = 1) -> bninfer.InferenceSession:
    so = bninfer.SessionOptions()
    so.intra_op_num_threads = n_threads
    return bninfer.InferenceSession(model.SerializeToString(), so)


def _segments(sess, n_threads: int = 1) -> list:
    plan = next(iter(sess._plans.values()))
    return [a.native[n_threads] for a in plan._arenas if n_threads in a.native][0]


def _python_steps(segs) -> list:
    return [s for s in segs if type(s) is tuple]


def _check_native(model, shape: tuple, n_threads: int = 1, runs: int = 4, seed: int = 0):
    """Runs of one session on new feeds each time: the first through Python, the later ones native, all
    bit-identical to a plan that never records, and close to onnxruntime. Returns the segments."""
    sess = _session(model, n_threads)
    reference = Plan(sess.optimized_graph(), native=False)
    rng = np.random.default_rng(seed)
    for k in range(runs):
        feeds = {"x": rng.standard_normal(shape).astype(np.float32)}
        ours = sess.run(None, feeds)
        with sess._threads:  # the same thread count: layers chunked and split alike
            plain = reference.run(feeds)
        for a, p, t in zip(ours, plain, run_ort(model, feeds)):
            np.testing.assert_array_equal(a, p)
            np.testing.assert_allclose(a, t, rtol=1e-4, atol=1e-4 * max(1.0, float(np.abs(t).max())))
    return _segments(sess, n_threads)


def _kernels(segs) -> set[str]:
    """The names of the kernels the tables call."""
    return {kern.__name__ for s in segs if type(s) is native.Table for kern, _ in s.packed.parts[0]}


def _cnn(b: Builder, cin: int = 3) -> str:
    """A stem of every NCHW conv path: row-vectorized (cin <= 4), Winograd (3x3, 32 channels), direct
    (3x3 of 16 channels, strided), pointwise (1x1 over 256 pixels), the row depthwise kernel (a lone
    depthwise conv on wide rows), pools of each kernel, Flatten and the one-row Gemm."""
    x = b.node("Relu", [b.bn(b.conv("x", cin, 16, k=3), 16)])
    x = b.node("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])  # 3-wide windows
    x = b.node("Relu", [b.conv(x, 16, 32, k=3, stride=1)])  # direct: 16 input channels
    x = b.node("Relu", [b.conv(x, 32, 32, k=3)])  # Winograd
    x = b.conv(x, 32, 32, k=3, group=32)  # depthwise on rows of 24+ pixels
    x = b.node("Sigmoid", [b.conv(x, 32, 24, k=1)])  # pointwise
    x = b.node("AveragePool", [x], kernel_shape=[2, 2], strides=[2, 2])  # windows that tile
    x = b.node("AveragePool", [x], kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1],
               count_include_pad=1)  # the general pool kernel
    x = b.node("Flatten", [x])
    w = b.const("W", (b.rng.standard_normal((24 * 12 * 13, 10)) / 40).astype(np.float32))
    return b.node("Tanh", [b.node("Gemm", [x, w, b.const("C", b.rng.standard_normal(10).astype(np.float32))])])


def test_a_cnn_of_every_nchw_path_runs_as_one_table_bit_identical_to_python():
    b = Builder(3)
    model = b.model({"x": [1, 3, 48, 52]}, [_cnn(b)])
    segs = _check_native(model, (1, 3, 48, 52))
    assert len(segs) == 1 and type(segs[0]) is native.Table  # one native call per run
    names = {n.split("_kernel")[0] for n in _kernels(segs)}
    assert names == {"rowvec", "pack_rows", "max_pool_k3", "direct", "pack_input", "winograd", "depthwise",
                     "pointwise", "avg_pool_tiled", "pool", "copy", "matrix_vector",
                     f"span_{activations.TANH}"}  # the Gemm's Tanh over its outputs after the product


@pytest.mark.parametrize("size", [(9, 11), (20, 20)])
def test_blocked_chains_and_squeeze_excitation_run_as_one_table(size):
    model, _ = _mobile_net(size=size)
    segs = _check_native(model, (1, 3, *size))
    assert not _python_steps(segs)
    assert "global_avg" in _kernels(segs)
    assert ("pad_planes" in _kernels(segs)) == (size == (20, 20))  # the stem, blocked where rows are wide
    b = Builder(5)
    x = b.conv("x", 3, 16, k=3, stride=1)
    x = _mb_conv(b, x, 16, 4)
    x = _mb_conv(b, x, 16, 6, k=5, stride=2, out_c=24, swap=True)
    model = b.model({"x": [1, 3, *size]}, [b.node("GlobalAveragePool", [b.conv(x, 24, 40, k=1)])])
    segs = _check_native(model, (1, 3, *size))
    assert not _python_steps(segs)  # the one-pixel SE convs, the blocked pool and Mul included
    assert {"vector_matrix", "global_avg", "scale_rows"} <= _kernels(segs)  # weights scaled
    kept = size == (9, 11)  # the 5x6 block's Mul (its factors copied, then its input scaled)
    assert ("scale_channels" in _kernels(segs)) == ("copy" in _kernels(segs)) == kept
    assert any(n.startswith("depthwise") for n in _kernels(segs))


@pytest.mark.parametrize("name", zoo.SMALL)
@pytest.mark.parametrize("n_threads", [1, 2])
def test_small_zoo_models_cross_into_native_code_once_per_run(name, n_threads):
    model = zoo.build(name)
    sess = _session(model, n_threads)
    rng = np.random.default_rng(1)
    shape = tuple(d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim)
    reference = Plan(sess.optimized_graph(), native=False)
    for _ in range(3):
        feeds = {"input": rng.standard_normal(shape).astype(np.float32)}
        ours = sess.run(None, feeds)[0]
        with sess._threads:
            np.testing.assert_array_equal(ours, reference.run(feeds)[0])
    segs = _segments(sess, n_threads)
    assert not _python_steps(segs)
    if n_threads == 1:
        assert len(segs) == 1 and type(segs[0]) is native.Table
    elif name.startswith("mnist"):  # the Winograd conv and the 9216x128 classifier split over the threads
        assert [type(s) for s in segs] == [native.Table, native.Split, native.Table, native.Split, native.Table]


def test_batches_and_broadcast_residuals_stay_correct_where_they_cannot_be_recorded():
    b = Builder(7)
    x = b.conv("x", 3, 8, k=3)
    y = b.node("Add", [b.conv(x, 8, 8, k=3), b.const("r", randn(1, 8, 1, 1, seed=3))])  # broadcast term
    model = b.model({"x": [2, 3, 10, 12]}, [b.node("Relu", [y])])
    _check_native(model, (2, 3, 10, 12))


def test_layers_that_split_over_threads_are_recorded_as_splits():
    model, _ = _mobile_net(size=(20, 20))
    segs = _check_native(model, (1, 3, 20, 20), n_threads=2)
    assert any(type(s) is native.Table for s in segs)  # the small layers
    assert any(type(s) is native.Split for s in segs)  # the large ones, their parts packed per thread


def test_a_session_run_from_four_threads_at_once_keeps_each_run_to_its_own_buffers():
    model, _ = _mobile_net(size=(12, 12))
    sess = _session(model)
    reference = Plan(sess.optimized_graph(), native=False)
    feeds = [{"x": randn(1, 3, 12, 12, seed=k)} for k in range(4)]
    expected = [reference.run(f)[0] for f in feeds]
    errors = []
    # the threads start each run together: under load, runs started freely had come one after another,
    # one arena serving them all (a failed `len(tables) >= 2` below, once under pytest -n 2)
    together = threading.Barrier(4)

    def work(k):
        try:
            for _ in range(25):
                together.wait(timeout=60)
                np.testing.assert_array_equal(sess.run(None, feeds[k])[0], expected[k])
        except Exception as e:  # noqa: BLE001 (reported below)
            errors.append(e)
            together.abort()
    ts = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors, errors[0]
    plan = next(iter(sess._plans.values()))
    tables = [a.native[1] for a in plan._arenas if 1 in a.native]
    assert len(tables) >= 2  # several arenas recorded, each with scratches of its own
    scratches = [{id(k) for seg in segs for k in seg.packed.keep if isinstance(k, np.ndarray)} for segs in tables]
    assert not set.intersection(*scratches)


def test_profiling_times_every_step_from_python():
    so = bninfer.SessionOptions()
    so.intra_op_num_threads = 1
    so.enable_profiling = True
    model = zoo.build("mlp")
    sess = bninfer.InferenceSession(model.SerializeToString(), so)
    feeds = zoo.input_for(model)
    for _ in range(3):
        sess.run(None, feeds)
    plan = next(iter(sess._plans.values()))
    assert not any(a.native for a in plan._arenas)  # never recorded: each kernel is timed


@njit(nogil=True)
def _invert(y, d):
    for j in range(y.size):
        y[j] = 1.0 / d  # ZeroDivisionError for d == 0


def test_a_kernel_failing_inside_a_table_raises_its_own_exception():
    _invert.compile((types.float32[::1], types.float64))
    y = np.zeros(4, np.float32)
    d = [2.0]

    @record.recordable
    def run(i, o):
        record.call(_invert, y, d[0])

    segs = native.segments([(run, [], [], None)])
    native.run(segs)
    np.testing.assert_array_equal(y, 0.5)
    d[0] = 0.0  # a recorded call keeps the argument it was recorded with: record again
    segs = native.segments([(run, [], [], None)])
    with pytest.raises(ZeroDivisionError):
        native.run(segs)


def test_a_run_that_is_not_marked_or_does_not_fit_a_signature_stays_python():
    @njit(nogil=True)
    def never_compiled(y):
        y[0] = 1.0

    calls = []
    plain = lambda i, o: calls.append(1)  # noqa: E731

    @record.recordable
    def unfit(i, o):
        record.call(never_compiled, np.zeros(1, np.float32))

    segs = native.segments([(plain, [], [], None), (unfit, [], [], None)])
    assert [type(s) for s in segs] == [tuple, tuple]
    assert not calls  # recording a plain run runs nothing


def test_arenas_recorded_by_one_thread_keep_their_own_partial_sums():
    """A one-row product split over two threads sums into shares kept per calling thread: two arenas
    recorded by one thread, then run at once by two, must not share them."""
    b = Builder(9)
    # rows no longer than twice the outputs: the row sweeps, split over rows into partial sums
    w = b.const("W", (b.rng.standard_normal((1024, 1024)) / 32).astype(np.float32))
    model = b.model({"x": [1, 1024]}, [b.node("Gemm", [b.node("Relu", ["x"]), w])])
    sess = _session(model, 2)
    plan = next(iter(sess._plans.values()))
    first, second = plan._bind(), plan._bind()
    feeds = {"x": randn(1, 1024, seed=2)}
    for _ in range(2):
        for arena in (first, second):  # each arena's first run from Python, its second recorded
            plan._arenas.append(arena)
            sess.run(None, feeds)
            assert plan._arenas.pop() is arena

    def shares(arena) -> set[int]:
        return {args[2].ctypes.data for s in arena.native[2] if type(s) is native.Split
                for part in s.packed.parts for kern, args in part if kern.__name__ == "vector_matrix_rows"}
    assert shares(first) and shares(second) and not shares(first) & shares(second)
