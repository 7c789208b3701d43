"""Buffers aligned to a cache line.

numpy aligns its allocations to 16 bytes. The kernels load and store 64-byte vectors (16 float32 on
AVX-512): on a buffer 16 bytes off a cache line every one of them spans two lines, and MobileNetV2's
depthwise layers, reading an arena buffer 16 bytes off, ran ~1.4x slower than on an aligned one.
"""
from __future__ import annotations

import numpy as np

LINE = 64  # bytes


def aligned_empty(n: int, dtype=np.float32) -> np.ndarray:
    """An uninitialised 1-D array of n elements whose first element starts a cache line."""
    dtype = np.dtype(dtype)
    raw = np.empty(n * dtype.itemsize + LINE, np.uint8)
    skip = -raw.ctypes.data % LINE
    return raw[skip:skip + n * dtype.itemsize].view(dtype)


def aligned_zeros(n: int, dtype=np.float32) -> np.ndarray:
    out = aligned_empty(n, dtype)
    out[...] = 0
    return out


def aligned_copy(a: np.ndarray) -> np.ndarray:
    """A C-contiguous copy of `a` (same shape and dtype) starting a cache line."""
    out = aligned_empty(a.size, a.dtype).reshape(a.shape)
    np.copyto(out, a)
    return out


def aligned(a: np.ndarray) -> np.ndarray:
    """`a` itself when it is C-contiguous and starts a cache line, else an aligned copy."""
    if a.flags.c_contiguous and a.ctypes.data % LINE == 0:
        return a
    return aligned_copy(a)
