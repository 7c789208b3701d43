"""Vector FMA and gather/scatter counts in the assembly of bninfer's specialised conv kernels.

    python -m benchmarks.asm_check
Prints per kernel (its compile-time constants; "host" cases: the tiles this host's table picks) the
number of vfmadd*ps on zmm and ymm registers, of scalar vfmadd*ss, and of vgather/vscatter instructions,
and loop_instr/fma: instructions and vector FMAs of the innermost loop with the most FMAs. A healthy
register-tiled kernel shows its tile's accumulator count of FMAs in that loop, with little beside its
loads (index arithmetic per iteration cost the blocked 1x1 kernel 6-7 %: 31 instructions for 12 FMAs
where 23 do), and no gathers or scatters; scalar FMAs come from the epilogue (post affine) and remainder
paths. On an AVX-512 host, ymm FMAs in place of zmm ones mean the 512-bit preference
(bninfer/vector_width.py) did not reach the kernel: each such kernel is flagged. Kernels are compiled
uncached here: Numba cannot show the assembly of cached code.
"""
from __future__ import annotations

import re

from bninfer.kernels import blocked as BK
from bninfer.kernels import conv_direct as CD

CASES = {
    "direct 3x3 s1 cib16 32x8 relu": ("direct", (3, 3, 1, 1, 1, 1, 16, 32, 8, 1)),
    "direct 3x3 s2 cib16 32x7 relu": ("direct", (3, 3, 2, 2, 1, 1, 16, 32, 7, 1)),
    "direct 1x1 s1 cib16 32x8 relu": ("direct", (1, 1, 1, 1, 1, 1, 16, 32, 8, 1)),
    "direct 7x7 s2 cib3 32x8 relu": ("direct", (7, 7, 2, 2, 1, 1, 3, 32, 8, 1)),
    "direct 3x3 s1 cib16 16x14 none": ("direct", (3, 3, 1, 1, 1, 1, 16, 16, 14, 0)),
}


def counts(asm: str) -> dict:
    return {"zmm_fma": len(re.findall(r"vfmadd\w*ps[^\n]*%zmm", asm)),
            "ymm_fma": len(re.findall(r"vfmadd\w*ps[^\n]*%ymm", asm)),
            "scalar_fma": len(re.findall(r"vfmadd\w*ss", asm)),
            "gather": asm.count("vgather"), "scatter": asm.count("vscatter"),
            "stack_vec": len(re.findall(r"v\w+ps[^\n]*\(%rsp\)[^\n]*%[yz]mm|v\w+ps[^\n]*%[yz]mm[^\n]*\(%rsp\)", asm))}


def innermost_fma_loop(asm: str, op: str = r"vfmadd\w*ps") -> tuple[int, int]:
    """(instructions, vector FMAs) of the straight-line loop (a backward jump to a label with no label
    between) that holds the most vector FMAs: the hot loop of a register-tiled kernel. Every instruction
    beside the tile's loads and FMAs is overhead the FMA pipes may wait on. (`op`: another instruction
    to count in their place, as vmulps in a kernel compiled without contraction.)"""
    lines = [ln.split("#")[0].strip() for ln in asm.splitlines()]
    where = {ln[:-1]: i for i, ln in enumerate(lines) if re.fullmatch(r"\.LBB\w+:", ln)}
    best = (0, 0)
    for i, ln in enumerate(lines):
        m = re.fullmatch(r"j\w+\s+(\.LBB\w+)", ln)
        j = where.get(m.group(1), i) if m else i
        if j >= i or any(re.fullmatch(r"\.LBB\w+:", x) for x in lines[j + 1:i]):
            continue
        body = [x for x in lines[j + 1:i + 1] if x and not x.startswith(".")]
        fma = sum(bool(re.match(op, x)) for x in body)
        if fma > best[1]:
            best = (len(body), fma)
    return best


def host_cases() -> dict:
    """The tiles this host's table (bninfer/tiles.py) picks, as the models run them."""
    from bninfer import tiles
    t = tiles.HOST
    rw, cot_px = t.direct_rw[0], t.pointwise[0]
    cases = {f"host direct 3x3 s1 cib16 {t.direct_cob}x{rw} relu": ("direct", (3, 3, 1, 1, 1, 1, 16, t.direct_cob, rw, 1)),
             f"host pointwise {cot_px[0]}ch x {cot_px[1]}px relu": ("pw", (*cot_px, 1)),
             f"host winograd gemm {t.winograd_rt[0]} tiles": ("wgemm", (t.winograd_rt[0],))}
    if t.blocked_rp is not None:
        cases[f"host blocked pointwise 1 block x {t.blocked_rp[0]}px clip"] = ("bpw", (1, t.blocked_rp[0], 9))
        cases[f"host blocked depthwise 3x3 s1 {t.blocked_dw_rw[0]}px clip"] = (
            "bdw", (3, 3, 1, 1, 1, 1, t.blocked_dw_rw[0], 9))
        cases[f"host blocked stem 3x3 s2 1 block x {t.stem_rp[0]}px clip"] = (
            "bdense", (3, 3, 2, 2, 1, 1, 1, t.stem_rp[0], 9))
    return cases


def matrix_vector_asm() -> str:
    """The assembly of the one-row product's dot-product kernel (bninfer.kernels.gemm.matrix_vector),
    compiled uncached on small arrays: its hot loop is eight rows' multiplies and adds, one vector each
    (no FMAs: the kernel rounds as numpy's float32 product would, without contraction)."""
    import numpy as np
    from numba import njit

    from bninfer.kernels import gemm
    k = njit(nogil=True)(gemm.matrix_vector.py_func)
    x, w, v = np.zeros((1, 16), np.float32), np.zeros(16 * 8, np.float32), np.zeros(8, np.float32)
    k(x, w, np.zeros((1, 8), np.float32), 16, 0, 8, v, False, v, False, 0, v, 0.0, False, v, v)
    return next(iter(k.inspect_asm().values()))


def extra_cases() -> dict:
    try:
        from bninfer.kernels import depthwise as DW
    except ImportError:
        return {}
    return {f"depthwise {k}x{k} s{s} {rw}px": ("dw", (k, k, s, s, rw, 1))
            for k, s, rw in [(3, 1, 32), (3, 1, 16), (3, 2, 32), (5, 1, 16)]}, DW


def main():
    import llvmlite.binding as llvm
    avx512 = "+avx512f" in llvm.get_host_cpu_features().flatten().split(",")
    cases = dict(CASES)
    ex = extra_cases()
    DW = None
    if ex:
        ex, DW = ex
        cases.update(ex)
    cases["pointwise 12ch x 32px clip"] = ("pw", (12, 32, 9))
    cases["pointwise 12ch x 32px relu, relu prologue"] = ("pw", (12, 32, 1, 1))
    cases["pointwise 16ch x 16px relu + residual"] = ("pw", (16, 16, 1, -1, True))
    cases["rowvec 7x7 s2 8ch x 32px relu"] = ("rowvec", (7, 7, 2, 2, 1, 1, 8, 32, 1))
    cases["rowvec 3x3 s2 8ch x 32px clip"] = ("rowvec", (3, 3, 2, 2, 1, 1, 8, 32, 9))
    cases["depthwise blocked 3x3 s1 16ch x 7px"] = ("dwb", (3, 3, 1, 1, 7, 1))
    cases["depthwise blocked 3x3 s2 16ch x 7px"] = ("dwb", (3, 3, 2, 2, 7, 1))
    # the channel-blocked layout's kernels (MobileNet and EfficientNet chains)
    cases["blocked pointwise 2 blocks x 8px clip"] = ("bpw", (2, 8, 9))
    cases["blocked depthwise 3x3 s1 8px clip"] = ("bdw", (3, 3, 1, 1, 1, 1, 8, 9))
    cases["blocked stem 3x3 s2 2 blocks x 7px clip"] = ("bdense", (3, 3, 2, 2, 1, 1, 2, 7, 9))
    blocked = {"bpw": (BK.pointwise_kernel, BK.PW_SIG), "bdw": (BK.depthwise_kernel, BK.DW_SIG),
               "bdense": (BK.dense_kernel, BK.DENSE_SIG)}
    cases.update(host_cases())
    for name, (kind, consts) in cases.items():
        if kind in blocked:
            make, sig = blocked[kind]
            k = CD.compile_now(make(*consts, cache=False), sig)
        elif kind == "wgemm":
            from bninfer.kernels import winograd as WG
            sig = WG.GEMM_SIG
            k = CD.compile_now(WG.gemm_kernel(*consts, cache=False), sig)
        elif kind == "direct":
            k = CD.compile_now(CD.direct_kernel(*consts, cache=False), CD.DIRECT_SIG)
            sig = CD.DIRECT_SIG
        elif kind == "pw":
            sig = CD.PW_SIG
            k = CD.compile_now(CD.pointwise_kernel(*consts, cache=False), sig)
        elif kind == "rowvec":
            sig = CD.ROWVEC_SIG
            k = CD.compile_now(CD.rowvec_kernel(*consts, cache=False), sig)
        elif kind == "dwb":
            sig = DW.BLOCKED_SIG
            k = CD.compile_now(DW.blocked_kernel(*consts, cache=False), sig)
        else:
            k = CD.compile_now(DW.depthwise_kernel(*consts, cache=False), DW.DW_SIG)
            sig = DW.DW_SIG
        asm = k.inspect_asm(sig)
        c = counts(asm)
        c["loop_instr/fma"] = "%d/%d" % innermost_fma_loop(asm)
        flag = "  <- ymm only: half the vector width" if c["ymm_fma"] and not c["zmm_fma"] and avx512 else ""
        print(f"{name:36s} " + " ".join(f"{key}={v}" for key, v in c.items()) + flag)
    asm = matrix_vector_asm()
    c = counts(asm)
    c["loop_instr/mul"] = "%d/%d" % innermost_fma_loop(asm, r"vmulps")
    print(f"{'one-row product, 8 dot products':36s} " + " ".join(f"{key}={v}" for key, v in c.items()))


if __name__ == "__main__":
    main()
