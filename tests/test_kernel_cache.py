"""The persistent kernel cache: a second process loads bninfer's kernels (and the trampolines native
plans call them through) instead of compiling them, and a change in any kernel source (the activation
table is inlined everywhere) gives a fresh stamp."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from numba import njit, types

from bninfer import kernel_cache

SCRIPT = textwrap.dedent("""
    import sys, numpy as np, bninfer, bninfer.kernels
    from onnx import helper
    sys.path.insert(0, {root!r})
    from tests.graphs import Builder
    b = Builder()
    y = b.node("Relu", [b.conv("x", 3, 4)])
    sess = bninfer.InferenceSession(b.model({{"x": [1, 3, 6, 6]}}, [y]).SerializeToString())
    for _ in range(2):  # the second run records a native plan: its trampolines
        sess.run(None, {{"x": np.ones((1, 3, 6, 6), np.float32)}})
    from numba.core.registry import CPUDispatcher
    from bninfer.kernels.calls import trampoline_stats
    hits = misses = 0
    for mod in [m for name, m in sys.modules.items() if name.startswith("bninfer.")]:
        for obj in vars(mod).values():
            if isinstance(obj, CPUDispatcher):
                hits += sum(obj.stats.cache_hits.values())
                misses += sum(obj.stats.cache_misses.values())
    print(trampoline_stats["built"], trampoline_stats["loaded"], hits, misses)
""")


def test_second_process_loads_from_cache(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, BNINFER_CACHE_DIR=str(tmp_path / "cache"))
    runs = []
    for _ in range(2):
        out = subprocess.run([sys.executable, "-c", SCRIPT.format(root=root)], env=env, capture_output=True,
                             text=True, timeout=300, cwd=root)
        assert out.returncode == 0, out.stderr[-2000:]
        runs.append(tuple(int(v) for v in out.stdout.split()[-4:]))
    (built1, loaded1, hits1, misses1), (built2, loaded2, hits2, misses2) = runs
    assert misses1 > 0 and hits1 == 0   # an empty cache compiles
    # A warm cache compiles nothing (it may load fewer entries than were compiled: a kernel compiled for
    # two argument types in the first process can serve both from one loaded signature).
    assert misses2 == 0 and 0 < hits2 <= misses1
    assert built1 > 0 and loaded1 == 0 and built2 == 0 and loaded2 == built1  # trampolines alike
    stamps = [d.name for d in (tmp_path / "cache").iterdir()]
    assert len(stamps) == 1 and len(stamps[0]) == 16  # one directory per sources hash
    assert any((tmp_path / "cache" / stamps[0]).rglob("*.nbi"))


@pytest.mark.parametrize("changed", ["activations.py", "tiles.py"])  # inlined; a kernel module's constant
def test_stamp_changes_when_an_inlined_source_changes(changed, tmp_path, monkeypatch):
    import shutil
    copy = tmp_path / "bninfer"
    copy.mkdir()
    for entry in kernel_cache.SOURCES:
        src = kernel_cache.PACKAGE / entry
        (shutil.copytree if src.is_dir() else shutil.copy)(src, copy / entry)
    monkeypatch.setattr(kernel_cache, "PACKAGE", copy)
    kernel_cache.sources_hash.cache_clear()
    try:
        before = kernel_cache.sources_hash()
        with open(copy / changed, "a") as f:
            f.write("\n# changed\n")
        kernel_cache.sources_hash.cache_clear()
        assert kernel_cache.sources_hash() != before
    finally:
        kernel_cache.sources_hash.cache_clear()


def test_factory_made_kernels_have_names_of_their_own():
    """Numba names compiled code after the function's qualified name and a per-process counter, and a
    cached function keeps the name it was compiled under: closures of one factory compiled in different
    processes loaded under one symbol, and a cached Celu conv ran another activation's span. Each
    function a factory makes is therefore named after its factory and key."""
    from bninfer import activations as A
    from bninfer.kernels import blocked, conv_direct, depthwise, winograd
    names = [d.py_func.__qualname__ for d in A.SPANS.values()]
    assert len(set(names)) == len(names) and all(n.startswith("span_") for n in names)
    kernels = [blocked.pointwise_kernel(2, 10, A.RELU, cache=False), blocked.pointwise_kernel(1, 14, A.RELU, cache=False),
               blocked.depthwise_kernel(3, 3, 1, 1, 1, 1, 8, A.SWISH, cache=False),
               conv_direct.rowvec_kernel(3, 3, 1, 1, 1, 1, 4, 16, A.CELU, cache=False),
               depthwise.depthwise_kernel(3, 3, 1, 1, 8, A.SWISH, cache=False),
               winograd.winograd_kernel(4, A.RELU, cache=False)]
    names = [k.py_func.__qualname__ for k in kernels]
    assert len(set(names)) == len(names) and "<locals>" not in "".join(names)
    assert names[0] == "pointwise_kernel_pw_2_10_1_True"


@njit(nogil=True)
def _axpy(y, x, s, n):
    for j in range(n):
        y[j] += s * x[j]


def test_a_trampoline_is_loaded_from_the_cache_and_a_damaged_one_built_again(tmp_path, monkeypatch):
    from bninfer.kernels import calls
    monkeypatch.setenv("BNINFER_CACHE_DIR", str(tmp_path))
    sig = (types.float32[::1], types.float32[::1], types.float64, types.int64)
    _axpy.compile(sig)
    x = np.arange(6, dtype=np.float32)

    def run_in_a_fresh_process_state():
        """How the table runs with no trampoline yet in this process: (built, loaded) by that run."""
        monkeypatch.setattr(calls, "_trampolines", {})
        monkeypatch.setattr(calls, "_natives", {})
        before = dict(calls.trampoline_stats)
        y = np.ones(6, np.float32)
        calls.run_table(calls.Packed().table([(_axpy, (y, x, -2.5, 5))]))
        np.testing.assert_array_equal(y, np.r_[1 - 2.5 * x[:5], 1])
        return tuple(calls.trampoline_stats[k] - before[k] for k in ("built", "loaded"))

    assert run_in_a_fresh_process_state() == (1, 0)
    (path,) = (tmp_path / kernel_cache.sources_hash() / "objects").iterdir()
    assert run_in_a_fresh_process_state() == (0, 1)
    good = path.read_bytes()
    for damaged in (good[:len(good) // 2], good[:40] + bytes([good[40] ^ 1]) + good[41:], b""):
        path.write_bytes(damaged)
        assert run_in_a_fresh_process_state() == (1, 0)  # refused, built and stored again
        assert path.read_bytes() == good
    path.unlink()
    path.parent.rmdir()
    path.parent.write_bytes(b"")  # a cache that cannot be written: built, and runs all the same
    assert run_in_a_fresh_process_state() == (1, 0)
    assert run_in_a_fresh_process_state() == (1, 0)
    assert not list(tmp_path.rglob("*.tmp"))
