"""bninfer's kernels are compiled to prefer 512-bit vectors (LLVM tunes most Intel AVX-512 hosts to
256-bit ones, which halved the blocked kernels' FMA width), and the user's own Numba code is left as it
compiles without bninfer."""
import re

import llvmlite.binding as llvm
import numpy as np
import pytest
from numba import njit

import bninfer  # noqa: F401  (installs the hook)
from bninfer import activations as A
from bninfer import vector_width
from bninfer.kernels import blocked, conv_direct

HOST_AVX512 = "+avx512f" in llvm.get_host_cpu_features().flatten().split(",")


def _pointwise():
    return conv_direct.compile_now(blocked.pointwise_kernel(2, 8, A.CLIP, cache=False), blocked.PW_SIG)


@njit
def user_axpy(a, x, y):
    for i in range(x.size):
        y[i] += a * x[i]


def _attributes_of(llvm_ir: str, marker: str) -> str:
    """The attribute group text of the function whose definition line contains marker."""
    line = next(ln for ln in llvm_ir.splitlines() if ln.startswith("define") and marker in ln)
    groups = dict(re.findall(r"^attributes (#\d+) = \{(.*)\}$", llvm_ir, re.M))
    return " ".join(groups.get(g, "") for g in re.findall(r"#\d+", line)) + line


def test_mangled_names_pick_bninfer_functions_only():
    assert vector_width.is_ours("_ZN7bninfer7kernels7blocked16pointwise_kernelB2v1")
    assert not vector_width.is_ours("_ZN5numba2np8arrayobj11impl_carray")
    assert not vector_width.is_ours("_ZN9bninfer_x3fooB2v1")
    assert not vector_width.is_ours("cpython._ZN7bninfer7kernels3fooB2v1")


def test_bninfer_kernels_prefer_512_bit_vectors_and_user_code_is_untouched():
    kernel = _pointwise()
    ours = kernel.inspect_llvm(blocked.PW_SIG)
    assert vector_width.ATTRIBUTE in _attributes_of(ours, "pointwise_kernel")
    x = np.ones(64, np.float32)
    user_axpy(np.float32(2), x, x.copy())
    theirs = next(iter(user_axpy.inspect_llvm().values()))
    assert "prefer-vector-width" not in theirs


@pytest.mark.skipif(not HOST_AVX512, reason="the host has no AVX-512")
def test_blocked_kernel_uses_zmm_fmas_on_an_avx512_host():
    asm = _pointwise().inspect_asm(blocked.PW_SIG)
    assert len(re.findall(r"vfmadd\w*ps[^\n]*%zmm", asm)) >= 16
    assert not re.findall(r"vfmadd\w*ps[^\n]*%ymm", asm)
