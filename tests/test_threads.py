"""One session used from several Python threads at once gives the same results as serial runs."""
import threading

import numpy as np

import bninfer
from tests.graphs import Builder
from tests.util import randn


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
