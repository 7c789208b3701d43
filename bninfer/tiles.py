"""The register tiles bninfer's kernels are specialised with, per kind of host.

Every fast kernel keeps a tile of accumulators (output channels x pixels) in vector registers, its size
a compile-time constant. A tile fits only while its accumulators, its weight loads and its broadcasts fit
the register file: an AVX-512 host has 32 registers of 16 floats, an AVX2 host 16 of 8. The tiles
measured best on AVX-512 (32 channels x 8 pixels: 16 zmm accumulators) need 32 ymm ones on AVX2, so
every FMA there spilled and reloaded its accumulator: on an AMD EPYC (Zen 1, AVX2) those tiles ran
strided 3x3 layers at 16 GFLOP/s and onnxruntime at 35; 16 x 4 (8 ymm accumulators) ran them at 30-33.

Two tables, WIDE (AVX-512) and NARROW (AVX2 and narrower), and HOST, the one this host takes. The
planners read `HOST` when they build a layer, so tests can run either table on any host (the kernels
are the same; only their constants differ).
"""
from __future__ import annotations

from dataclasses import dataclass

import llvmlite.binding as llvm


@dataclass(frozen=True)
class Tiles:
    name: str
    direct_rw: tuple[int, ...]         # direct kernel, 32 output channels: pixels per tile to choose from
    direct_rw_16: tuple[int, ...]      # direct kernel, 16 output channels
    direct_cob: int                    # direct kernel: output channels per tile when cout > 16
    pointwise: tuple[tuple[int, int], ...]  # NCHW 1x1 kernel: (channels, pixels), least padding wins
    rowvec: tuple[int, int]            # few-input-channel dense kernel: (channels, pixels)
    winograd_rt: tuple[int, ...]       # Winograd: 2x2 tiles per register tile (x 32 output channels)
    winograd_min_size: int             # Winograd: the smallest output side it takes (else the direct kernel)
    # the blocked layout's kernels, one 16-channel block per tile: pixels per tile to choose from (None:
    # the AVX-512 rules below, pairs of blocks where the layer has them)
    blocked_rp: tuple[int, ...] | None  # 1x1 kernel
    # 1x1 kernel, a last block of 8 channels or fewer: pixels per tile of that block alone, and of it with
    # the block before (24 lanes) (None: whole blocks)
    blocked_half_rp: tuple[int, int] | None
    stem_rp: tuple[int, ...] | None     # few-input-channel dense kernel (rows of at least 14 pixels)
    blocked_dw_rw: tuple[int, ...] | None  # depthwise kernel (rows of at least 6 pixels)
    short_dw_rw: tuple[int, ...]       # NCHW depthwise of short rows (16 channels a vector): pixels per tile
    gemv_prefetch_bytes: int           # one-row products over narrow weight rows: how far ahead to prefetch
    gemv_lanes: int                    # one-row products, one dot product per output: its partial sums


# Measured on AVX-512 hosts (Zen 5 and Sapphire Rapids class): the choices bninfer was tuned with (except
# gemv_lanes, one zmm of partial sums per output as NARROW's one ymm: not yet measured on such a host).
WIDE = Tiles("avx512", direct_rw=(8, 7, 6), direct_rw_16=(14, 12, 8, 7), direct_cob=32,
             pointwise=((12, 32), (16, 16)), rowvec=(16, 16), winograd_rt=(8, 7, 6), winograd_min_size=8,
             blocked_rp=None, blocked_half_rp=None, stem_rp=None, blocked_dw_rw=None, short_dw_rw=(8, 7, 6),
             gemv_prefetch_bytes=16384, gemv_lanes=16)

# Measured on an AVX2 host (AMD EPYC, Zen 1: 16 ymm registers, one 256-bit FMA a cycle), each against the
# WIDE choice, one layer at a time against onnxruntime (benchmarks/conv_layers): at most 12 accumulators.
# direct 16 x 4-5 (strided 3x3: 0.46 -> 0.87-0.95 x ORT; 32 x 2 alike, 8 x 12 and 24 x 4 0.5-0.75);
# pointwise 6 x 16 (0.65-0.70 -> 1.0-1.14; 4 x 24 alike alone, but 6 % slower in DenseNet-121, whose
# 1x1 convs then applied their BN+ReLU prologue once per tile of output channels (now once per chunk
# of pixels, into a scratch); 3 x 32 and
# 4 x 16 ran 5-10 % slower; in ResNet-50 6 x 16 and 4 x 24 tied); rowvec 4 x 16
# (0.55 -> 1.0-1.07); Winograd 2 tiles (1.04 -> 1.5-1.75; 3: 1.5-1.6, 4: 1.33-1.43); blocked 1x1 one
# block x 4-6 pixels (0.57 -> 0.91-1.02; two blocks x 3: 0.81-0.86; one x 7 spilled: 0.56; stop 26: 6, or 5
# at 7x7, BLOCKED_RP_SLACK, made MobileNetV2 1.7 % and EfficientNet-B0 0.8-2 % faster than 4). Winograd
# from 7x7 outputs on (stop 25: 3x3 512->512 @7 0.85-0.88 -> 1.20-1.22 x ORT, DenseNet's 128->32 @7
# 0.80 -> 1.22, 64->64 @7 0.83 -> 1.22; the 16 tiles of a 7x7 plane compute 64 outputs for 49). The
# MNIST classifier's 9216 x 128 one-row product swept by rows and prefetched 4 KB ahead ran 10 % faster
# than 16 KB (the AVX-512 hosts' choice) from L3, 162 against 178 us, and alike from memory (630 us);
# as dot products (gemv_lanes: one ymm of partial sums per output, eight outputs a pass) it ran at
# 1.6-1.8x that.
NARROW = Tiles("avx2", direct_rw=(4, 5), direct_rw_16=(4, 5), direct_cob=16,
               pointwise=((6, 16),), rowvec=(4, 16), winograd_rt=(2,), winograd_min_size=7, blocked_rp=(6, 5),
               blocked_half_rp=(8, 3), stem_rp=(6, 4), blocked_dw_rw=(6, 5, 4), short_dw_rw=(6, 5, 4),
               gemv_prefetch_bytes=4096, gemv_lanes=8)


def host_is_wide() -> bool:
    """Whether this host has AVX-512 (LLVM's view of it: what the kernels are compiled for)."""
    return "+avx512f" in llvm.get_host_cpu_features().flatten().split(",")


HOST = WIDE if host_is_wide() else NARROW


def least_waste(choices: tuple[int, ...], n: int, slack: float = 0.0) -> int:
    """The tile width among `choices` that pads n to the fewest whole tiles' worth (ties: the first), or
    with slack, the first within that fraction of the fewest (the choices in order of preference)."""
    def work(r: int) -> int:
        return -(-n // r) * r
    least = min(work(r) for r in choices)
    return next(r for r in choices if work(r) <= least * (1 + slack))


# -- the blocked layout's kernels (bninfer.kernels.blocked): tiles of whole 16-channel blocks ---------

# NARROW's 1x1 tiles: 6 pixels ran 3-13 % faster than 4 or 5 wherever it recomputes little (14x14 and up);
# a 7x7 image's 49 pixels take 5 (ten tiles, one pixel recomputed: 3-7 % faster than 6's nine tiles of 54)
BLOCKED_RP_SLACK = 0.02


def blocked_pw_tiles(nob: int, pixels: int, table: Tiles | None = None) -> list[tuple[int, int, int, int]]:
    """How a 1x1 conv of nob output blocks over `pixels` pixels is tiled: (NB blocks, RP pixels, first
    block, blocks) per kernel. NARROW: one block at a time (16 x 8 pixels is 16 ymm accumulators: every
    one spilled). WIDE: pairs of blocks take tiles of 2 blocks x RP pixels (95-110 GFLOP/s on MobileNet's
    and EfficientNet's 1x1 layers since the store is one vector per pixel and block; 2 x 10 ran 5-40 %
    slower); an odd last block 1 x RP. Three or four blocks fell to 7-25 (the SLP vectorizer gives up on
    the tile). RP is 8, or 7 where 7 leaves less of the last tile recomputed: a 7x7 image's 49 pixels
    take seven tiles of 7 against seven of 8 (MobileNetV2's 7x7 1x1 layers 12 % faster), 14x14 takes 28
    of 7 (2 %); on larger images the two ran alike. (The odd block's 1 x 14 ran 0-12 % slower than 1 x 7
    or 1 x 8.) A fixed set of tiles, so a fixed set of kernels to compile."""
    rps = (table or HOST).blocked_rp
    if rps is not None:
        return [(1, least_waste(rps, pixels, BLOCKED_RP_SLACK), 0, nob)]
    rp = least_waste((8, 7), pixels)
    pairs = [(2, rp, 0, nob - nob % 2)] if nob >= 2 else []
    return pairs + ([(1, rp, nob - 1, 1)] if nob % 2 else [])


def blocked_pw_half(cout: int, table: Tiles | None = None) -> tuple[int, int] | None:
    """(blocks, pixels) of the tile for the last of cout's 16-channel blocks when it holds 8 channels or
    fewer and the table sums such a block in its own tiles (NARROW), else None: with the block before it
    where there is one (24 lanes: 3 ymm x 3 pixels), alone otherwise (one ymm x 8 pixels). On AVX2 the
    96->24 and 144->24 1x1 layers at 56x56 ran 10-12 % faster in 24-lane tiles than a whole block and a
    half one each in its own pass over the input, and 16-19 % faster so than as two whole blocks;
    144->40 and 240->40 at 28x28 5 %. On AVX-512 a block is one vector anyway."""
    rp = (table or HOST).blocked_half_rp
    if rp is None or not 0 < cout % 16 <= 8:
        return None
    return (2, rp[1]) if cout > 16 else (1, rp[0])


def stem_tiles(nob: int, ow: int, table: Tiles | None = None) -> list[tuple[int, int, int, int]]:
    """The stem kernels' tiling of nob output blocks over rows of ow pixels, as blocked_pw_tiles. WIDE:
    pairs of blocks take 7-pixel tiles (MobileNetV2's 3->32 stem: 202 us against 272 with 8), an odd
    block 14 (rows hold a tile of either)."""
    table = table or HOST
    if table.stem_rp is not None:
        return [(1, least_waste(table.stem_rp, ow), 0, nob)]
    return [(nb, 7 if nb == 2 else 14, first, count) for nb, _, first, count in blocked_pw_tiles(nob, ow, table)]


def blocked_dw_rw(ow: int, table: Tiles | None = None) -> int:
    """The blocked depthwise kernel's pixels per tile for rows of ow pixels (at least 6). WIDE: 8 or 7,
    whichever does the least work on the row's overlapping last tile (ties: 8); 6 only for rows of 6
    (6-pixel tiles ran at a third of the speed at stride 2: 50 GFLOP/s against 14 on MobileNetV2's
    96@112)."""
    rws = (table or HOST).blocked_dw_rw
    if rws is not None:
        return least_waste(rws, ow)
    return 6 if ow < 7 else least_waste((8, 7), ow)
