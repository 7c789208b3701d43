"""Honour SessionOptions.intra_op_num_threads for the native library bninfer calls that runs threads of
its own: the BLAS behind numpy (OpenBLAS/MKL, for Gemm/MatMul and im2col convolutions). bninfer's Numba
kernels are single-threaded (no parallel region), so Numba's pool is left alone.

The limit is applied for the duration of each run and restored afterwards, so a user's own numpy and
Numba code keeps its settings. threadpoolctl finds the BLAS; setting its thread count costs ~1 µs.
"""
from __future__ import annotations

import functools


@functools.lru_cache(maxsize=1)
def _blas_controllers() -> tuple:
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # optional at run time: without it BLAS keeps its own thread count
        return ()
    return tuple(ThreadpoolController().select(user_api="blas").lib_controllers)


class ThreadLimit:
    """Context manager: at most `n` BLAS threads while it is active (n <= 0: no limit)."""

    def __init__(self, n: int):
        self.n = int(n or 0)
        self._saved: list[int] = []

    def __enter__(self) -> "ThreadLimit":
        if self.n > 0:
            self._saved = [lib.get_num_threads() for lib in _blas_controllers()]
            for lib in _blas_controllers():
                lib.set_num_threads(self.n)
        return self

    def __exit__(self, *exc) -> None:
        if self.n > 0:
            for lib, n in zip(_blas_controllers(), self._saved):
                lib.set_num_threads(n)
