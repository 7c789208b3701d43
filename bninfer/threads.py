"""Honour SessionOptions.intra_op_num_threads for the native library bninfer calls that runs threads of
its own: the BLAS behind numpy (OpenBLAS/MKL, for Gemm/MatMul and im2col convolutions). bninfer's Numba
kernels are single-threaded (no parallel region), so Numba's pool is left alone.

The limit is applied for the duration of each run and restored afterwards, so a user's own numpy and
Numba code keeps its settings. threadpoolctl finds the BLAS; setting its thread count costs ~1 µs.
"""
from __future__ import annotations

import threading

def _blas_controllers() -> tuple:
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # optional at run time: without it BLAS keeps its own thread count
        return ()
    return tuple(ThreadpoolController().select(user_api="blas").lib_controllers)


class ThreadLimit:
    """Context manager: at most `n` BLAS threads while it is active (n <= 0: no limit). The BLAS
    libraries are looked up when the limit is made (a few ms): make one per session, reuse it per run.
    Concurrent runs of a session share it: the first to enter sets the limit, the last to leave restores
    the previous setting."""

    def __init__(self, n: int):
        self.n = int(n or 0)
        self._libs = _blas_controllers() if self.n > 0 else ()
        self._saved: list[int] = []
        self._active = 0
        self._lock = threading.Lock()

    def __enter__(self) -> "ThreadLimit":
        if self._libs:
            with self._lock:
                if self._active == 0:
                    self._saved = [lib.get_num_threads() for lib in self._libs]
                    for lib in self._libs:
                        lib.set_num_threads(self.n)
                self._active += 1
        return self

    def __exit__(self, *exc) -> None:
        if self._libs:
            with self._lock:
                self._active -= 1
                if self._active == 0:
                    for lib, n in zip(self._libs, self._saved):
                        lib.set_num_threads(n)
