"""Builders for the small graphs the pass tests use: every BN gets non-trivial statistics (random mean,
positive random variance with one tiny and one zero entry, negative gammas), since a broken fold with
identity statistics passes unnoticed."""
from __future__ import annotations

import numpy as np
from onnx import helper

import bninfer
from tests.util import make_model, randn, run_bn, run_ort, run_twice


class Builder:
    """Accumulates nodes and initializers: b.conv("x", 8, 16, k=3) returns the output name."""

    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.nodes, self.inits, self.k = [], {}, 0

    def name(self, base: str) -> str:
        self.k += 1
        return f"{base}{self.k}"

    def const(self, base: str, array) -> str:
        n = self.name(base)
        self.inits[n] = np.asarray(array)
        return n

    def node(self, op: str, inputs: list[str], n_out: int = 1, **attrs) -> str:
        outs = [self.name(op.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op, inputs, outs, name=self.name(op + "_"), **attrs))
        return outs[0]

    def conv(self, x: str, cin: int, cout: int, k: int = 3, bias: bool = True, group: int = 1,
             stride: int = 1, pad: int | None = None, dims: int = 2) -> str:
        pad = k // 2 if pad is None else pad
        w = self.const("W", (self.rng.standard_normal((cout, cin // group) + (k,) * dims)
                             / np.sqrt(cin // group * k ** dims)).astype(np.float32))
        ins = [x, w] + ([self.const("B", self.rng.standard_normal(cout).astype(np.float32))] if bias else [])
        return self.node("Conv", ins, pads=[pad] * (2 * dims), strides=[stride] * dims, group=group)

    def bn_params(self, c: int, dtype=np.float32) -> list[str]:
        gamma = self.rng.uniform(0.5, 1.5, c) * self.rng.choice([-1.0, 1.0], c)
        beta = self.rng.standard_normal(c)
        mean = self.rng.standard_normal(c)
        var = self.rng.uniform(0.2, 3.0, c)
        var[0] = 0.0  # epsilon alone keeps it finite
        if c > 1:
            var[1] = 1e-8
        return [self.const(n, v.astype(dtype if n in ("mean", "var") else np.float32))
                for n, v in zip(("gamma", "beta", "mean", "var"), (gamma, beta, mean, var))]

    def bn(self, x: str, c: int, epsilon: float = 1e-5, dtype=np.float32, **attrs) -> str:
        return self.node("BatchNormalization", [x] + self.bn_params(c, dtype), epsilon=epsilon, **attrs)

    def model(self, inputs: dict, outputs: list[str], opset: int = 17):
        return make_model(self.nodes, inputs, outputs, self.inits, opset=opset)


def check(model, feeds: dict, rtol: float = 1e-4, atol: float = 1e-4) -> bninfer.InferenceSession:
    """Optimized bninfer == unoptimized bninfer == onnxruntime; returns the optimized session.
    The absolute tolerance grows with the output's magnitude: float32 sums of large terms (a BN with
    near-zero variance scales by ~300) carry absolute errors relative to those terms."""
    sess = bninfer.InferenceSession(model.SerializeToString())
    ours = run_twice(sess, feeds)
    plain = run_bn(model, feeds, bninfer.GraphOptimizationLevel.ORT_DISABLE_ALL)
    theirs = run_ort(model, feeds)
    for a, b, c in zip(ours, plain, theirs):
        tol = max(atol, 1e-5 * float(np.max(np.abs(c))) if c.size else atol)
        np.testing.assert_allclose(a, c, rtol=rtol, atol=tol)
        np.testing.assert_allclose(a, b, rtol=rtol, atol=tol)
    return sess


def counts(sess: bninfer.InferenceSession) -> dict[str, int]:
    return sess.optimization_report().nodes_after


def image(c: int = 3, h: int = 9, w: int = 11, seed: int = 1) -> np.ndarray:
    return randn(1, c, h, w, seed=seed)
