"""Model fuzzing: mutate valid models (attributes, shapes, dims, initializer sizes, wiring, opsets) and
require every outcome to be outputs or a bninfer error — never another exception, a crash or a hang.

Used by tests/test_fuzz.py (a few hundred hypothesis cases) and, as a script, for long runs:
    python -m tests.fuzzing --cases 10000
"""
from __future__ import annotations

import argparse
import sys
import time
import traceback

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import bninfer
from bninfer.passes import constant_fold

INTERESTING = [-(1 << 31), -2, -1, 0, 1, 2, 3, 5, 7, 64, 1 << 20, 1 << 40]


def seed_models() -> list[onnx.ModelProto]:
    """Small valid models covering the op set."""
    rng = np.random.default_rng(0)
    f = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    i64 = lambda v: np.array(v, np.int64)  # noqa: E731
    cnn_nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], strides=[1, 1], group=1),
        helper.make_node("BatchNormalization", ["c1", "g", "be", "m", "v"], ["n1"], epsilon=1e-5),
        helper.make_node("Relu", ["n1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1], group=4),
        helper.make_node("Add", ["c2", "r1"], ["a1"]),
        helper.make_node("MaxPool", ["a1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("AveragePool", ["p1"], ["p2"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Concat", ["p1", "p2"], ["cat"], axis=1),
        helper.make_node("Resize", ["cat", "", "scales"], ["up"], mode="nearest"),
        helper.make_node("ConvTranspose", ["up", "wt"], ["ct"], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("GlobalAveragePool", ["ct"], ["gp"]),
        helper.make_node("Flatten", ["gp"], ["fl"], axis=1),
        helper.make_node("Gemm", ["fl", "wf", "bf"], ["lg"], transB=1),
        helper.make_node("Softmax", ["lg"], ["y"], axis=-1),
    ]
    cnn_inits = {"w1": f(8, 3, 3, 3), "b1": f(8), "g": f(8), "be": f(8), "m": f(8), "v": np.abs(f(8)) + .1,
                 "w2": f(8, 2, 3, 3), "scales": np.array([1, 1, 2, 2], np.float32), "wt": f(16, 4, 3, 3),
                 "wf": f(5, 4), "bf": f(5)}
    shape_nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
        helper.make_node("Unsqueeze", ["n", "ax0"], ["n1"]),
        helper.make_node("Concat", ["n1", "minus1"], ["shp"], axis=0),
        helper.make_node("Reshape", ["x", "shp"], ["flat"]),
        helper.make_node("Slice", ["flat", "st", "en", "axs"], ["sl"]),
        helper.make_node("Pad", ["sl", "pads"], ["pd"], mode="reflect"),
        helper.make_node("MatMul", ["pd", "wm"], ["mm"]),
        helper.make_node("LayerNormalization", ["mm", "ln_s", "ln_b"], ["ln"], axis=-1),
        helper.make_node("Split", ["ln"], ["sa", "sb"], axis=1, num_outputs=2),
        helper.make_node("Mul", ["sa", "sb"], ["y"]),
    ]
    shape_inits = {"zero": i64(0), "ax0": i64([0]), "minus1": i64([-1]), "st": i64([1]), "en": i64([20]),
                   "axs": i64([1]), "pads": i64([0, 2, 0, 2]), "wm": f(23, 6), "ln_s": f(6), "ln_b": f(6)}
    models = []
    for nodes, inits, shape in ((cnn_nodes, cnn_inits, [1, 3, 8, 8]), (shape_nodes, shape_inits, [2, 3, 2, 4])):
        graph = helper.make_graph(nodes, "fuzz", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                                  [numpy_helper.from_array(v, k) for k, v in inits.items()])
        models.append(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))
    return models


def mutate(model: onnx.ModelProto, rng: np.random.Generator, n: int = 1) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    for _ in range(n):
        kind = rng.integers(0, 7)
        node = g.node[int(rng.integers(0, len(g.node)))]
        if kind == 0 and node.attribute:  # an attribute's value
            attr = node.attribute[int(rng.integers(0, len(node.attribute)))]
            if attr.type == onnx.AttributeProto.INT:
                attr.i = int(rng.choice(INTERESTING))
            elif attr.type == onnx.AttributeProto.INTS:
                del attr.ints[:]
                attr.ints.extend(int(rng.choice(INTERESTING[:9])) for _ in range(int(rng.integers(0, 6))))
            elif attr.type == onnx.AttributeProto.FLOAT:
                attr.f = float(rng.choice([-1.0, 0.0, 1e-30, np.nan, np.inf, 3.5]))
            elif attr.type == onnx.AttributeProto.STRING:
                attr.s = rng.choice([b"SAME_UPPER", b"VALID", b"linear", b"bogus", b""])
        elif kind == 1:  # a new attribute
            node.attribute.append(helper.make_attribute(
                str(rng.choice(["group", "axis", "kernel_shape", "pads", "strides", "dilations", "auto_pad",
                                "ceil_mode", "transB", "keepdims", "spatial", "training_mode"])),
                [int(v) for v in rng.choice(INTERESTING[:9], int(rng.integers(1, 5)))] if rng.random() < .5
                else int(rng.choice(INTERESTING[:9]))))
        elif kind == 2:  # a declared input dimension
            dims = g.input[0].type.tensor_type.shape.dim
            if dims:
                d = dims[int(rng.integers(0, len(dims)))]
                if rng.random() < 0.3:
                    d.dim_param = "dyn"
                else:
                    d.dim_value = int(rng.choice([0, 1, 2, 3, 5, 9, 1 << 40]))
        elif kind == 3 and g.initializer:  # an initializer's size or shape
            k = int(rng.integers(0, len(g.initializer)))
            old = numpy_helper.to_array(g.initializer[k])
            shape = tuple(int(s) for s in rng.integers(0, 5, int(rng.integers(0, 5))))
            new = rng.standard_normal(shape).astype(old.dtype) if old.dtype.kind == "f" else \
                rng.integers(-3, 30, shape).astype(old.dtype)
            g.initializer[k].CopyFrom(numpy_helper.from_array(new, g.initializer[k].name))
        elif kind == 4:  # wiring: read another value
            names = [i.name for i in g.initializer] + [o for nd in g.node for o in nd.output] + ["x", "ghost"]
            if node.input:
                node.input[int(rng.integers(0, len(node.input)))] = str(rng.choice(names))
        elif kind == 5:  # the opset
            m.opset_import[0].version = int(rng.integers(1, 30))
        else:  # drop a node's attribute or input
            if node.attribute and rng.random() < 0.5:
                del node.attribute[int(rng.integers(0, len(node.attribute)))]
            elif len(node.input) > 1:
                del node.input[-1]
    return m


def check_one(model: onnx.ModelProto, rng: np.random.Generator) -> str:
    """Load and run one model; returns 'ok' or the bninfer error class name. Any other exception
    propagates."""
    try:
        sess = bninfer.InferenceSession(model.SerializeToString())
        feeds = {}
        for inp in sess.get_inputs():
            shape = [d if isinstance(d, int) else 2 for d in inp.shape]
            feeds[inp.name] = rng.standard_normal(shape).astype(np.float32)
        first = sess.run(None, feeds)
        for a, b in zip(first, sess.run(None, feeds)):  # the second run's recorded native calls
            np.testing.assert_array_equal(a, b)
        return "ok"
    except bninfer.BninferError as e:
        return type(e).__name__


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=10000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    constant_fold.MAX_TENSOR_BYTES = 64 << 20  # keep mutated giants cheap to refuse
    seeds = seed_models()
    counts: dict[str, int] = {}
    failures = []
    start = time.time()
    for k in range(args.cases):
        rng = np.random.default_rng(args.seed * 1_000_003 + k)
        model = mutate(seeds[k % len(seeds)], rng, int(rng.integers(1, 4)))
        try:
            outcome = check_one(model, rng)
        except Exception as e:  # noqa: BLE001 — recorded: these are the bugs this script looks for
            outcome = "CRASH " + type(e).__name__
            failures.append((k, "".join(traceback.format_exception_only(type(e), e)).strip()))
        counts[outcome] = counts.get(outcome, 0) + 1
        if (k + 1) % 1000 == 0:
            print(f"{k + 1} cases, {time.time() - start:.0f} s: {counts}", flush=True)
    print(f"done: {args.cases} cases in {time.time() - start:.0f} s: {counts}")
    for k, msg in failures[:30]:
        print(f"  case {k}: {msg[:300]}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
