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
    # the blocked layout's kernels, one 16-channel block per tile: pixels per tile to choose from (None:
    # the AVX-512 rules in bninfer.ops.conv_blocked, pairs of blocks where the layer has them)
    blocked_rp: tuple[int, ...] | None  # 1x1 kernel
    stem_rp: tuple[int, ...] | None     # few-input-channel dense kernel (rows of at least 14 pixels)
    blocked_dw_rw: tuple[int, ...] | None  # depthwise kernel (rows of at least 6 pixels)
    short_dw_rw: tuple[int, ...]       # NCHW depthwise of short rows (16 channels a vector): pixels per tile


# Measured on AVX-512 hosts (Zen 5 and Sapphire Rapids class): the choices bninfer was tuned with.
WIDE = Tiles("avx512", direct_rw=(8, 7, 6), direct_rw_16=(14, 12, 8, 7), direct_cob=32,
             pointwise=((12, 32), (16, 16)), rowvec=(16, 16), winograd_rt=(8, 7, 6), blocked_rp=None,
             stem_rp=None, blocked_dw_rw=None, short_dw_rw=(8, 7, 6))

# Measured on an AVX2 host (AMD EPYC, Zen 1: 16 ymm registers, one 256-bit FMA a cycle), each against the
# WIDE choice, one layer at a time against onnxruntime (benchmarks/conv_layers): at most 12 accumulators.
# direct 16 x 4-5 (strided 3x3: 0.46 -> 0.87-0.95 x ORT; 32 x 2 alike, 8 x 12 and 24 x 4 0.5-0.75);
# pointwise 6 x 16 (0.65-0.70 -> 1.0-1.14; 4 x 24 alike alone, but 6 % slower in DenseNet-121, whose
# 1x1 convs apply their BN+ReLU prologue to the inputs once per tile of output channels; 3 x 32 and
# 4 x 16 ran 5-10 % slower; in ResNet-50 6 x 16 and 4 x 24 tied); rowvec 4 x 16
# (0.55 -> 1.0-1.07); Winograd 2 tiles (1.04 -> 1.5-1.75; 3: 1.5-1.6, 4: 1.33-1.43); blocked 1x1 one
# block x 4-6 pixels (0.57 -> 0.91-1.02; two blocks x 3: 0.81-0.86; one x 7 spilled: 0.56).
NARROW = Tiles("avx2", direct_rw=(4, 5), direct_rw_16=(4, 5), direct_cob=16,
               pointwise=((6, 16),), rowvec=(4, 16), winograd_rt=(2,), blocked_rp=(6, 4),
               stem_rp=(6, 4), blocked_dw_rw=(6, 5, 4), short_dw_rw=(6, 5, 4))


def host_is_wide() -> bool:
    """Whether this host has AVX-512 (LLVM's view of it: what the kernels are compiled for)."""
    return "+avx512f" in llvm.get_host_cpu_features().flatten().split(",")


HOST = WIDE if host_is_wide() else NARROW


def least_waste(choices: tuple[int, ...], n: int) -> int:
    """The tile width among `choices` that pads n to the fewest whole tiles' worth (ties: the first)."""
    return min(choices, key=lambda r: -(-n // r) * r)
