"""Cache-line-aligned buffers: the arena's blocks and the kernels' packed weights start a 64-byte line."""
import numpy as np
import pytest

import bninfer
from bninfer import memory
from bninfer.kernels import blocked as BK
from bninfer.kernels import conv_direct as CD


@pytest.mark.parametrize("n", [0, 1, 15, 16, 1000, 123457])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64])
def test_aligned_buffers_start_a_cache_line(n, dtype):
    e, z = memory.aligned_empty(n, dtype), memory.aligned_zeros(n, dtype)
    for a in (e, z):
        assert a.shape == (n,) and a.dtype == dtype and a.flags.c_contiguous and a.flags.writeable
        assert n == 0 or a.ctypes.data % 64 == 0  # (an empty array's address means nothing)
    assert not z.any()
    src = np.arange(n, dtype=dtype)[::-1]  # a strided view
    c = memory.aligned_copy(src)
    assert (n == 0 or c.ctypes.data % 64 == 0) and c.flags.c_contiguous
    np.testing.assert_array_equal(c, src)


def test_aligned_keeps_an_aligned_array_and_copies_the_rest():
    a = memory.aligned_empty(64)
    assert memory.aligned(a) is a
    off = a[4:]  # 16 bytes past the line
    b = memory.aligned(off)
    assert b is not off and b.ctypes.data % 64 == 0
    np.testing.assert_array_equal(b, off)
    t = memory.aligned(a.reshape(8, 8).T)  # not C-contiguous
    assert t.flags.c_contiguous and t.ctypes.data % 64 == 0


def test_packed_weights_are_aligned():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((40, 24)).astype(np.float32)
    assert BK.pack_weights_pw(w, 1).ctypes.data % 64 == 0
    assert BK.pack_weights_dw(rng.standard_normal((40, 1, 3, 3)).astype(np.float32)).ctypes.data % 64 == 0
    assert CD.pack_weights_pw(w, 16).ctypes.data % 64 == 0


def test_every_arena_buffer_of_a_plan_starts_a_cache_line():
    from tests.test_blocked import _mobile_net
    model, feeds = _mobile_net(size=(12, 12))
    so = bninfer.SessionOptions()
    so.intra_op_num_threads = 1
    sess = bninfer.InferenceSession(model.SerializeToString(), so)
    sess.run(None, feeds)
    arena = next(iter(sess._plans.values()))._arenas[0]
    bufs = [b for b in arena.bufs if b is not None]
    assert bufs and all(b.ctypes.data % 64 == 0 for b in bufs)
