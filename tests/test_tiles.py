"""bninfer.tiles: each host's register tiles fit its registers, and every conv path gives onnxruntime's
result under either table, whichever host runs the tests (the CI host takes one table, these tests
force the other too)."""
from __future__ import annotations

import numpy as np
import pytest

from bninfer import tiles
from bninfer.kernels import blocked as BK
from bninfer.kernels import conv_direct as CD
from bninfer.kernels import depthwise as DWK
from bninfer.kernels import winograd as WG
from bninfer.ops import conv_blocked
from tests.graphs import Builder
from tests.test_blocked import _check, _mobile_net, _resnet_tail

TABLES = {"avx512": (tiles.WIDE, 16, 32), "avx2": (tiles.NARROW, 8, 16)}  # table, lanes, registers


@pytest.mark.parametrize("name", sorted(TABLES))
def test_every_tile_leaves_registers_for_its_loads_and_broadcasts(name):
    """Accumulators + one register per weight vector + one broadcast <= the register file, for the
    widest tile of each kernel the table names."""
    t, lanes, regs = TABLES[name]

    def fits(channel_vectors, pixels, pixel_vectors=False):
        acc = channel_vectors * pixels if not pixel_vectors else channel_vectors * -(-pixels // lanes)
        loads = channel_vectors if not pixel_vectors else -(-pixels // lanes)
        return acc + loads + 1 <= regs

    assert fits(t.direct_cob // lanes, max(t.direct_rw)) and fits(16 // lanes, max(t.direct_rw_16))
    assert all(fits(cot, pxt, pixel_vectors=True) for cot, pxt in t.pointwise)  # weights broadcast
    assert fits(t.rowvec[0], t.rowvec[1], pixel_vectors=True)
    assert fits(WG.COB // lanes, max(t.winograd_rt))
    for rps, blocks in ((t.blocked_rp, 2), (t.stem_rp, 2), (t.blocked_dw_rw, 1)):
        # None: the AVX-512 rules of bninfer.ops.conv_blocked (pairs of blocks x 8 pixels at most)
        assert fits(blocks * BK.CB // lanes, 8) if rps is None else fits(BK.CB // lanes, max(rps))
    assert fits(16 // lanes, max(t.short_dw_rw))
    if t.blocked_half_rp is not None:
        alone, pair = t.blocked_half_rp
        assert fits(BK.HALF // lanes, alone) and fits((BK.CB + BK.HALF) // lanes, pair)


def test_the_host_takes_the_table_of_its_vector_width():
    assert tiles.HOST is (tiles.WIDE if tiles.host_is_wide() else tiles.NARROW)


@pytest.mark.parametrize("choices,n,want", [((4, 5), 7, 4), ((4, 5), 14, 5), ((4, 5), 56, 4), ((6, 4), 49, 4),
                                            ((6, 4), 36, 6), ((8, 7, 6), 12, 6), ((2,), 49, 2)])
def test_least_waste_pads_to_the_fewest_whole_tiles(choices, n, want):
    assert tiles.least_waste(choices, n) == want


@pytest.mark.parametrize("choices,n,slack,want", [((6, 5), 784, 0.0, 5), ((6, 5), 784, 0.02, 6), ((6, 5), 49, 0.02, 5),
                                                  ((6, 5), 49, 0.1, 6), ((5, 6), 784, 0.02, 5)])
def test_least_waste_with_slack_takes_the_first_choice_close_enough(choices, n, slack, want):
    assert tiles.least_waste(choices, n, slack) == want


@pytest.fixture(params=sorted(TABLES))
def table(request, monkeypatch):
    t = TABLES[request.param][0]
    monkeypatch.setattr(tiles, "HOST", t)
    return t


def _spy(monkeypatch, module, name) -> list:
    """The positional arguments of every call of module.name from now on."""
    calls, real = [], getattr(module, name)
    monkeypatch.setattr(module, name, lambda *a, **k: calls.append(a) or real(*a, **k))
    return calls


def _spy_pointwise(monkeypatch) -> tuple[list, list]:
    """The positional arguments of every blocked 1x1 kernel asked for from now on, and its LANES."""
    calls, lanes, real = [], [], BK.pointwise_kernel
    monkeypatch.setattr(BK, "pointwise_kernel", lambda *a, **k: calls.append(a) or lanes.append(k.get("LANES"))
                        or real(*a, **k))
    return calls, lanes


def _one_conv(cin, cout, size, k, stride=1, group=1, act="Relu", seed=0):
    b = Builder(seed)
    y = b.node(act, [b.conv("x", cin, cout, k=k, stride=stride, group=group)])
    rng = np.random.default_rng(seed)
    return b.model({"x": [1, cin, *size]}, [y]), {"x": rng.standard_normal((1, cin, *size)).astype(np.float32)}


@pytest.mark.parametrize("cin,cout,size,stride", [(24, 40, (15, 13), 2), (16, 12, (9, 11), 1), (24, 72, (7, 7), 1)])
def test_the_direct_kernel_takes_the_tables_tile(table, cin, cout, size, stride, monkeypatch):
    made = _spy(monkeypatch, CD, "direct_kernel")
    _check(*_one_conv(cin, cout, size, 3, stride))
    (args,) = made
    cob, rw = args[7], args[8]
    assert cob == (16 if cout <= 16 else table.direct_cob)
    assert rw in (table.direct_rw if cob == table.direct_cob else table.direct_rw_16)


def test_winograd_takes_the_tables_register_tile(table, monkeypatch):
    made = _spy(monkeypatch, WG, "winograd_kernel")
    _check(*_one_conv(40, 48, (13, 11), 3))
    assert len(made) == 1 and made[0][0] in table.winograd_rt


def test_winograd_starts_at_the_tables_output_size(table, monkeypatch):
    """AVX2 takes Winograd from 7x7 outputs on (ResNet's last stage), AVX-512 from 8x8 (as measured)."""
    made = _spy(monkeypatch, WG, "winograd_kernel")
    _check(*_one_conv(40, 48, (7, 7), 3))
    assert bool(made) == (table.winograd_min_size <= 7)


def test_the_pointwise_and_rowvec_kernels_take_the_tables_tiles(table, monkeypatch):
    pw = _spy(monkeypatch, CD, "pointwise_kernel")
    _check(*_one_conv(24, 44, (20, 21), 1))  # 420 pixels: the NCHW 1x1 kernel
    assert [a[:2] for a in pw] and all(a[:2] in table.pointwise for a in pw)
    rv = _spy(monkeypatch, CD, "rowvec_kernel")
    _check(*_one_conv(3, 20, (37, 35), 7, stride=2))
    assert [a[6:8] for a in rv] == [table.rowvec]


def test_short_depthwise_rows_take_the_tables_tile(table, monkeypatch):
    made = _spy(monkeypatch, DWK, "blocked_kernel")
    _check(*_one_conv(24, 24, (9, 9), 3, group=24))
    assert [a[4] for a in made] == [tiles.least_waste(table.short_dw_rw, 9)]


@pytest.mark.parametrize("size", [(9, 11), (16, 16)])
def test_a_depthwise_separable_chain_runs_blocked_with_the_tables_tiles(table, size, monkeypatch):
    pw, lanes = _spy_pointwise(monkeypatch)
    dw = _spy(monkeypatch, BK, "depthwise_kernel")
    stem = _spy(monkeypatch, BK, "dense_kernel")
    _check(*_mobile_net(size=size))
    assert pw and dw and len(stem) == (size[1] >= conv_blocked.STEM_MIN_WIDTH)
    whole = [a for a, n in zip(pw, lanes) if n != BK.HALF]
    halves = {a[:2] for a, n in zip(pw, lanes) if n == BK.HALF}
    nb = {a[0] for a in whole} | {a[6] for a in stem}
    assert nb == ({1} if table.blocked_rp is not None else {1, 2})  # AVX2: one block a tile
    if table.blocked_rp is not None:
        assert {a[1] for a in whole} <= set(table.blocked_rp)
        assert halves == {(2, table.blocked_half_rp[1])}  # 24-channel outputs: the last block and the half
        assert {a[6] for a in dw} <= set(table.blocked_dw_rw)
        assert {a[7] for a in stem} <= set(table.stem_rp)


def test_small_image_1x1_convs_take_the_tables_blocked_tiles(table, monkeypatch):
    pw, lanes = _spy_pointwise(monkeypatch)
    _check(*_resnet_tail(40, 72, 7, 1))  # 72 channels: four blocks and a half
    whole = {a[0] for a, n in zip(pw, lanes) if n != BK.HALF}
    assert pw and whole == ({1} if table.blocked_rp is not None else {1, 2})
    halves = [a[:2] for a, n in zip(pw, lanes) if n == BK.HALF]
    assert halves == ([(2, table.blocked_half_rp[1])] * 2 if table.blocked_half_rp else [])


@pytest.mark.parametrize("cout,want", [(24, 2), (40, 2), (8, 1), (5, 1), (20, 2), (72, 2), (16, None), (32, None),
                                       (28, None), (25, None)])
def test_a_last_block_of_8_channels_or_fewer_takes_tiles_of_its_own_on_avx2(cout, want):
    """With the block before it where there is one (24 lanes), alone otherwise."""
    alone, pair = tiles.NARROW.blocked_half_rp
    assert tiles.blocked_pw_half(cout, tiles.NARROW) == {None: None, 1: (1, alone), 2: (2, pair)}[want]
    assert tiles.blocked_pw_half(cout, tiles.WIDE) is None
