"""Concats that copy nothing (bninfer.concat_views): inputs written in place inside the output, nested
DenseNet concats as prefixes of the last; and the cases that must keep their copy. Every graph is
checked against onnxruntime and the unoptimized plan (tests.graphs.check)."""
from __future__ import annotations

import threading

import numpy as np
import pytest
from onnx import helper

import bninfer
from bninfer import concat_views
from tests.graphs import Builder, check
from tests.util import make_model, randn


def _plan(sess: bninfer.InferenceSession):
    return sess._plans[next(reversed(sess._plans))]


def _ops(plan) -> list[str]:
    return [st.node.op for st in plan.steps]


def dense_block(b: Builder, x: str, c0: int, layers: int, growth: int = 8) -> tuple[str, int]:
    """torchvision's dense block: every layer BN -> ReLU -> 1x1 -> BN -> ReLU -> 3x3 over the concat of
    all earlier features, each concat a new node."""
    feats, c = [x], c0
    for _ in range(layers):
        y = b.node("Concat", feats, axis=1) if len(feats) > 1 else feats[0]
        y = b.node("Relu", [b.bn(y, c)])
        y = b.conv(y, c, 2 * growth, k=1)
        y = b.node("Relu", [b.bn(y, 2 * growth)])
        feats.append(b.conv(y, 2 * growth, growth, k=3))
        c += growth
    return b.node("Concat", feats, axis=1), c


def densenet(batch: int = 1, layers: int = 4, seed: int = 0):
    b = Builder(seed)
    x = b.node("Relu", [b.conv("x", 3, 16, k=3)])
    y, c = dense_block(b, x, 16, layers)
    y = b.node("AveragePool", [b.conv(b.node("Relu", [b.bn(y, c)]), c, 16, k=1)], kernel_shape=[2, 2], strides=[2, 2])
    y, c = dense_block(b, y, 16, layers)
    z = b.node("GlobalAveragePool", [b.node("Relu", [b.bn(y, c)])])
    return b.model({"x": [batch, 3, 12, 10]}, [z]), {"x": randn(batch, 3, 12, 10, seed=seed)}


def test_dense_blocks_concat_in_place():
    """Batch 1: no Concat step is left, every feature lives inside its block's last concat, and the
    results equal onnxruntime's, in repeated runs (the arena is reused) and from several threads at
    once (each run's arena has its own views)."""
    model, feeds = densenet()
    sess = check(model, feeds)
    plan = _plan(sess)
    assert "Concat" not in _ops(plan)
    assert len(plan.view_of) == 2 * (4 + 1) + 2 * 3  # per block: 5 features, 3 inner concats
    want = sess.run(None, feeds)[0]
    for _ in range(3):
        np.testing.assert_array_equal(sess.run(None, feeds)[0], want)
    got = []
    workers = [threading.Thread(target=lambda: got.append(sess.run(None, feeds)[0])) for _ in range(4)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    assert len(got) == 4 and all(np.array_equal(g, want) for g in got)


def test_views_make_the_arena_smaller(monkeypatch):
    """The same plan with every concat copying needs a larger arena (here 80 KB against 31 KB;
    DenseNet-121's 33 MB against 6.4 MB)."""
    model, feeds = densenet()
    sess = bninfer.InferenceSession(model.SerializeToString())
    sess.run(None, feeds)
    plan = _plan(sess)
    monkeypatch.setattr(concat_views, "place", lambda graph: ({}, set()))
    copying = bninfer.plan.Plan(plan.graph)
    assert "Concat" in _ops(copying)
    assert plan.arena_bytes < copying.arena_bytes


def test_batch_two_keeps_the_copies():
    model, feeds = densenet(batch=2)
    plan = _plan(check(model, feeds))
    assert _ops(plan).count("Concat") == 2 * 4 and not plan.view_of


def _concat_model(nodes, inputs, outputs, inits=None):
    return make_model(nodes, inputs, outputs, inits or {})


def test_graph_input_or_repeated_input_keeps_the_copy():
    """Concat(x, relu(x)) reads a graph input, Concat(r, r) one value twice: both copy."""
    nodes = [helper.make_node("Relu", ["x"], ["r"]),
             helper.make_node("Concat", ["x", "r"], ["c1"], axis=1),
             helper.make_node("Concat", ["r", "r"], ["c2"], axis=1),
             helper.make_node("Sigmoid", ["c1"], ["y1"]),
             helper.make_node("Sigmoid", ["c2"], ["y2"])]
    model = _concat_model(nodes, {"x": [1, 3, 4, 5]}, ["y1", "y2"])
    plan = _plan(check(model, {"x": randn(1, 3, 4, 5, seed=1)}))
    assert _ops(plan).count("Concat") == 2 and not plan.view_of


def test_an_input_of_two_unrelated_concats_is_placed_once():
    """a is read by Concat(a, b) and Concat(c, a): it can live in only one of them; the other copies."""
    nodes = [helper.make_node("Relu", ["x"], ["a"]),
             helper.make_node("Sigmoid", ["x"], ["b"]),
             helper.make_node("Tanh", ["x"], ["c"]),
             helper.make_node("Concat", ["a", "b"], ["ab"], axis=1),
             helper.make_node("Concat", ["c", "a"], ["ca"], axis=1),
             helper.make_node("Add", ["ab", "ca"], ["y"])]
    model = _concat_model(nodes, {"x": [1, 2, 3, 3]}, ["y"])
    plan = _plan(check(model, {"x": randn(1, 2, 3, 3, seed=2)}))
    assert _ops(plan).count("Concat") == 1 and len(plan.view_of) == 2


@pytest.mark.parametrize("shape,axis,placed", [
    ([1, 6], 1, True), ([1, 6], -1, True),  # rows
    ([1, 1, 4, 3], 2, True),                 # every dimension before the axis is 1
    ([1, 1, 4, 3], -1, False),               # 4 rows of each input: interleaved in the output
    ([1, 2, 4, 3], 2, False),
], ids=str)
def test_any_axis_after_unit_dimensions(shape, axis, placed):
    """Placed exactly when every dimension before the axis is 1; the inputs and the concat are graph
    outputs too (copied out at the end)."""
    nodes = [helper.make_node("Relu", ["x"], ["a"]),
             helper.make_node("Neg", ["x"], ["b"]),
             helper.make_node("Concat", ["a", "b"], ["c"], axis=axis),
             helper.make_node("Sigmoid", ["c"], ["y"])]
    model = _concat_model(nodes, {"x": shape}, ["y", "c", "a"])
    plan = _plan(check(model, {"x": randn(*shape, seed=3)}))
    assert len(plan.view_of) == (2 if placed else 0) and ("Concat" in _ops(plan)) != placed


def test_concat_of_concats_places_through_both():
    """Concat(Concat(a, b), c): a and b live in the inner output, which lives in the outer one."""
    nodes = [helper.make_node("Relu", ["x"], ["a"]),
             helper.make_node("Neg", ["x"], ["b"]),
             helper.make_node("Exp", ["x"], ["c"]),
             helper.make_node("Concat", ["a", "b"], ["ab"], axis=1),
             helper.make_node("Concat", ["ab", "c"], ["abc"], axis=1),
             helper.make_node("Sigmoid", ["abc"], ["y"]),
             helper.make_node("Tanh", ["ab"], ["z"])]
    model = _concat_model(nodes, {"x": [1, 2, 3, 4]}, ["y", "z"])
    plan = _plan(check(model, {"x": randn(1, 2, 3, 4, seed=4)}))
    assert "Concat" not in _ops(plan)
    graph = plan.graph
    inside, elided = concat_views.place(graph)
    assert len(elided) == 2
    roots = {concat_views.resolve(inside, v)[0] for v in inside}
    assert len(roots) == 1


def test_place_leaves_out_prefixes_that_do_not_line_up():
    """Concat(a, b, c) then an earlier Concat(b, a): a and b sit in the last one in the other order, so
    the earlier concat keeps its copy."""
    nodes = [helper.make_node("Relu", ["x"], ["a"]),
             helper.make_node("Neg", ["x"], ["b"]),
             helper.make_node("Exp", ["x"], ["c"]),
             helper.make_node("Concat", ["b", "a"], ["ba"], axis=1),
             helper.make_node("Concat", ["a", "b", "c"], ["abc"], axis=1),
             helper.make_node("Sigmoid", ["abc"], ["y"]),
             helper.make_node("Tanh", ["ba"], ["z"])]
    model = _concat_model(nodes, {"x": [1, 2, 3, 4]}, ["y", "z"])
    plan = _plan(check(model, {"x": randn(1, 2, 3, 4, seed=5)}))
    assert _ops(plan).count("Concat") == 1 and len(plan.view_of) == 3


def test_the_buffer_lives_as_long_as_any_value_inside():
    """a lives inside c = Concat(a, b); c's last reader comes early and a is read late: c's block must
    not go to the values made in between (they are c's size, so the arena would reuse it)."""
    nodes = [helper.make_node("Relu", ["x"], ["a"]),
             helper.make_node("Neg", ["x"], ["b"]),
             helper.make_node("Concat", ["a", "b"], ["c"], axis=1),
             helper.make_node("Sigmoid", ["c"], ["d"]),
             helper.make_node("Tanh", ["d"], ["e"]),
             helper.make_node("Exp", ["e"], ["f"]),
             helper.make_node("Neg", ["a"], ["g"]),
             helper.make_node("Concat", ["f", "g"], ["y"], axis=1)]
    model = _concat_model(nodes, {"x": [1, 4, 3, 3]}, ["y"])
    plan = _plan(check(model, {"x": randn(1, 4, 3, 3, seed=6)}))
    assert len(plan.view_of) >= 2


def _producer(b: Builder, kind: str, x: str, c: int) -> str:
    if kind == "conv3x3":  # stride 1: Winograd where it applies
        return b.node("Relu", [b.conv(x, c, 24, k=3)])
    if kind == "conv3x3s2":
        return b.conv(x, c, 20, k=3, stride=2, pad=1)
    if kind == "conv5x5":
        return b.conv(x, c, 17, k=5)
    if kind == "stem":  # few input channels: the row-vectorized kernel
        return b.conv(b.node("Slice", [x, b.const("s", np.array([0])), b.const("e", np.array([3])),
                                       b.const("a", np.array([1]))]), 3, 32, k=7, stride=2, pad=3)
    if kind == "pointwise":
        return b.conv(x, c, 40, k=1, pad=0)
    if kind == "depthwise":
        return b.conv(x, c, c, k=3, group=c)
    if kind == "maxpool":
        return b.node("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    if kind == "avgpool":
        return b.node("AveragePool", [x], kernel_shape=[2, 2], strides=[2, 2])
    if kind == "depthwise_small":  # 7x7 rows: the short-row depthwise kernel
        small = b.node("AveragePool", [x], kernel_shape=[8, 8], strides=[8, 8])
        return b.conv(small, c, c, k=3, group=c)
    if kind == "convtranspose":
        w = b.const("Wt", (b.rng.standard_normal((c, 12, 2, 2)) * 0.3).astype(np.float32))
        return b.node("ConvTranspose", [x, w], strides=[2, 2])
    if kind == "resize":
        return b.node("Resize", [x, "", b.const("sc", np.array([1, 1, 0.5, 0.5], np.float32))], mode="linear")
    if kind == "add":
        return b.node("Add", [x, b.node("Sigmoid", [x])])
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["conv3x3", "conv3x3s2", "conv5x5", "stem", "pointwise", "depthwise", "maxpool",
                                  "avgpool", "depthwise_small", "convtranspose", "resize", "add"])
def test_producers_write_only_their_own_run(kind):
    """Concat(before, made, after), where before and after are written first: a kernel that wrote past
    either end of its output (harmless while every value had a block to itself) would clobber them."""
    b = Builder(7)
    c = 16
    x = b.node("Relu", [b.conv("x", 3, c, k=3)])
    start = len(b.nodes)
    made = _producer(b, kind, x, c)
    # shapes of the neighbours: the made value's, from a plain session on the same graph
    probe = bninfer.InferenceSession(b.model({"x": [1, 3, 56, 58]}, [made]).SerializeToString())
    shape = probe.run(None, {"x": randn(1, 3, 56, 58, seed=1)})[0].shape
    n = shape[1]
    nodes_before = len(b.nodes)
    first = b.node("Sigmoid", [b.conv(x, c, n, k=1, pad=0)])
    last = b.node("Tanh", [b.conv(x, c, n, k=1, pad=0)])
    if shape[2:] != (56, 58):  # match the made value's image size
        first = b.node("Resize", [first, "", "", b.const("sz", np.array(shape, np.int64))], mode="nearest")
        last = b.node("Resize", [last, "", "", b.const("sz", np.array(shape, np.int64))], mode="nearest")
    # the neighbours' nodes go before the made value's producers
    b.nodes = b.nodes[:start] + b.nodes[nodes_before:] + b.nodes[start:nodes_before]
    y = b.node("Concat", [first, made, last], axis=1)
    model = b.model({"x": [1, 3, 56, 58]}, [b.node("Sigmoid", [y])])
    plan = _plan(check(model, {"x": randn(1, 3, 56, 58, seed=8)}))
    assert "Concat" not in _ops(plan)
    order = [st.node.outputs[0] for st in plan.steps]
    assert order.index(made) > max(order.index(first), order.index(last))


def test_a_node_named_like_an_elided_concat_still_runs():
    """Node names need not be unique (onnxruntime refuses such a model, the importer keeps what it cannot
    rename apart, and a graph can be built by hand): the concat left out is that node, not every node of
    its name."""
    for names in (["same"] * 4, ["c_2", "c", "c", "d"]):  # the second: the importer's renaming collides
        nodes = [helper.make_node("Relu", ["x"], ["a"], name=names[0]),
                 helper.make_node("Neg", ["x"], ["b"], name=names[1]),
                 helper.make_node("Concat", ["a", "b"], ["c"], axis=1, name=names[2]),
                 helper.make_node("Sigmoid", ["c"], ["y"], name=names[3])]
        sess = bninfer.InferenceSession(_concat_model(nodes, {"x": [1, 2, 3, 3]}, ["y"]).SerializeToString())
        x = randn(1, 2, 3, 3, seed=9)
        want = 1 / (1 + np.exp(-np.concatenate([np.maximum(x, 0), -x], axis=1)))
        np.testing.assert_allclose(sess.run(None, {"x": x})[0], want, rtol=1e-6, atol=1e-7)
        assert _ops(_plan(sess)) == ["Relu", "Neg", "Sigmoid"]


def test_gemm_rows_write_only_their_own_run():
    """Concat(first, made, last) of (1, n) rows along axis 1, made by a one-row Gemm (vector_matrix)
    after its neighbours."""
    b = Builder(11)
    w = {k: b.const("W", b.rng.standard_normal((40, n)).astype(np.float32)) for k, n in (("f", 24), ("m", 37),
                                                                                        ("l", 19))}
    first = b.node("Sigmoid", [b.node("MatMul", ["x", w["f"]])])
    last = b.node("Tanh", [b.node("MatMul", ["x", w["l"]])])
    made = b.node("Gemm", ["x", w["m"], b.const("B", b.rng.standard_normal(37).astype(np.float32))])
    y = b.node("Concat", [first, made, last], axis=1)
    model = b.model({"x": [1, 40]}, [b.node("Relu", [y])])
    plan = _plan(check(model, {"x": randn(1, 40, seed=12)}))
    assert "Concat" not in _ops(plan)
