"""The persistent kernel cache: a second process loads bninfer's kernels instead of compiling them, and
a change in any kernel source (the activation table is inlined everywhere) gives a fresh stamp."""
import os
import subprocess
import sys
import textwrap

import pytest

from bninfer import kernel_cache

SCRIPT = textwrap.dedent("""
    import sys, numpy as np, bninfer, bninfer.kernels
    from onnx import helper
    sys.path.insert(0, {root!r})
    from tests.graphs import Builder
    b = Builder()
    y = b.node("Relu", [b.conv("x", 3, 4)])
    sess = bninfer.InferenceSession(b.model({{"x": [1, 3, 6, 6]}}, [y]).SerializeToString())
    sess.run(None, {{"x": np.ones((1, 3, 6, 6), np.float32)}})
    from numba.core.registry import CPUDispatcher
    hits = misses = 0
    for mod in [m for name, m in sys.modules.items() if name.startswith("bninfer.")]:
        for obj in vars(mod).values():
            if isinstance(obj, CPUDispatcher):
                hits += sum(obj.stats.cache_hits.values())
                misses += sum(obj.stats.cache_misses.values())
    print(hits, misses)
""")


def test_second_process_loads_from_cache(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, BNINFER_CACHE_DIR=str(tmp_path / "cache"))
    runs = []
    for _ in range(2):
        out = subprocess.run([sys.executable, "-c", SCRIPT.format(root=root)], env=env, capture_output=True,
                             text=True, timeout=300, cwd=root)
        assert out.returncode == 0, out.stderr[-2000:]
        runs.append(tuple(int(v) for v in out.stdout.split()[-2:]))
    (hits1, misses1), (hits2, misses2) = runs
    assert misses1 > 0 and hits1 == 0   # an empty cache compiles
    # A warm cache compiles nothing (it may load fewer entries than were compiled: a kernel compiled for
    # two argument types in the first process can serve both from one loaded signature).
    assert misses2 == 0 and 0 < hits2 <= misses1
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
