"""benchmarks/asm_check.py reads the hot loop out of a kernel's assembly."""
import platform

import pytest

from benchmarks.asm_check import innermost_fma_loop

_ASM = """
\tmovq\t%rax, %rbx
.LBB0_2:
\tvmovups\t(%rcx), %ymm1
.LBB0_3:                                # inner loop: 2 FMAs, 5 instructions
\tvbroadcastss\t(%rdi), %ymm2
\tvfmadd231ps\t%ymm1, %ymm2, %ymm3
\tvfmadd231ps\t%ymm1, %ymm2, %ymm4
\tincq\t%r8
\tjne\t.LBB0_3
\tvfmadd231ps\t%ymm1, %ymm2, %ymm5
\tjne\t.LBB0_2
.LBB0_4:                                # a forward jump is no loop
\tvfmadd231ps\t%ymm1, %ymm2, %ymm3
\tvfmadd231ps\t%ymm1, %ymm2, %ymm3
\tvfmadd231ps\t%ymm1, %ymm2, %ymm3
\tjmp\t.LBB0_9
.LBB0_9:
\tretq
"""


def test_the_innermost_loop_with_most_fmas_is_counted():
    assert innermost_fma_loop(_ASM) == (5, 2)


def test_no_loop_no_count():
    assert innermost_fma_loop("\tvfmadd231ps\t%ymm1, %ymm2, %ymm3\n\tretq\n") == (0, 0)


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="reads x86 assembly")
def test_the_dot_product_kernel_keeps_eight_vector_accumulators():
    """The one-row product's hot loop: one vector multiply and add per weight row of the pass, its eight
    partial sums in registers (a signed + unsigned index sum made it a scalar loop, 5x slower). LLVM may
    unroll the loop (on Zen 3, "znver3", twice: 16 multiplies in 44 instructions; on Zen 1, 8 in 32)."""
    from benchmarks.asm_check import counts, matrix_vector_asm
    asm = matrix_vector_asm()
    instr, muls = innermost_fma_loop(asm, r"vmulps")
    assert muls and muls % 8 == 0 and instr <= 4 * muls
    assert counts(asm)["gather"] == 0
