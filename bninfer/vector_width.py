"""bninfer's kernels use the host's full vector width, without changing how the user's own Numba code
compiles.

LLVM tunes most Intel AVX-512 processors (Skylake-X, Cascade Lake, Ice Lake, Rocket Lake, Sapphire
Rapids, ...) with `prefer-256-bit`: its vectorizers then build ymm vectors, and the backend splits even
explicit 512-bit vectors into ymm halves. bninfer's blocked kernels hold 16 float32 channels a vector; on
such a host every one of their FMAs became two ymm FMAs, and MobileNetV2 ran 1.6x slower than
onnxruntime instead of at par (AMD's Zen tuning has no such preference, which is why it went unseen).

Numba fixes a process's CPU features when its first function compiles, and they would change the user's
code too; a function attribute does neither. Every function Numba lowers from a bninfer module gets
`"prefer-vector-width"="512"` (LLVM's per-function override, what clang's -mprefer-vector-width sets),
and nothing else does. It is a preference: on a host without AVX-512 LLVM keeps to the widest vectors
the host has. The attribute goes into the LLVM IR, so a kernel cached
on disk keeps it; this file is part of the kernel cache's stamp (kernel_cache.SOURCES).
"""
from __future__ import annotations

import re

from numba.core import codegen

ATTRIBUTE = '"prefer-vector-width"="512"'
# Numba mangles a function as _ZN<len><name>... over its module path and qualified name: a bninfer
# function's name starts with its top-level package.
_OURS = re.compile(r"_ZN7bninfer\d")


def is_ours(name: str) -> bool:
    return _OURS.match(name) is not None


def widen(ir_module) -> None:
    """Mark every function the module defines for bninfer with the 512-bit preference."""
    for fn in ir_module.functions:
        if fn.blocks and is_ours(fn.name):
            # llvmlite's attribute set accepts only keyword attributes; a string attribute is written
            # into the IR as given.
            set.add(fn.attributes, ATTRIBUTE)


_add_ir_module = codegen.CPUCodeLibrary.add_ir_module


def _add_ir_module_widened(self, ir_module):
    widen(ir_module)
    return _add_ir_module(self, ir_module)


def install() -> None:
    if codegen.CPUCodeLibrary.add_ir_module is _add_ir_module:
        codegen.CPUCodeLibrary.add_ir_module = _add_ir_module_widened


install()
