"""Shared test helpers: build small ONNX models and compare bninfer with onnxruntime."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

import bninfer

RNG = np.random.default_rng(0)


def randn(*shape, seed=None) -> np.ndarray:
    rng = np.random.default_rng(seed) if seed is not None else RNG
    return rng.standard_normal(shape).astype(np.float32)


def make_model(nodes, inputs: dict, outputs: list[str], initializers: dict | None = None,
               opset: int = 21, output_shapes: dict | None = None) -> onnx.ModelProto:
    """inputs: name -> shape (list of ints/str); outputs: names (shapes left unknown unless given)."""
    ins = [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs.items()]
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, (output_shapes or {}).get(n))
            for n in outputs]
    inits = [numpy_helper.from_array(np.asarray(v), k) for k, v in (initializers or {}).items()]
    graph = helper.make_graph(nodes, "test", ins, outs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = min(model.ir_version, 10)
    return model


def run_ort(model: onnx.ModelProto, feeds: dict, disable_opt: bool = False) -> list[np.ndarray]:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    if disable_opt:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), so,
                                providers=["CPUExecutionProvider"]).run(None, feeds)


def run_bn(model: onnx.ModelProto, feeds: dict, level=None) -> list[np.ndarray]:
    so = bninfer.SessionOptions()
    if level is not None:
        so.graph_optimization_level = level
    return run_twice(bninfer.InferenceSession(model.SerializeToString(), so), feeds)


def run_twice(sess: bninfer.InferenceSession, feeds: dict) -> list[np.ndarray]:
    """sess.run twice: the first run's outputs, checked bit for bit against the second's, whose steps run
    as recorded native calls wherever they can (bninfer.native)."""
    first = sess.run(None, feeds)
    for a, b in zip(first, sess.run(None, feeds)):
        np.testing.assert_array_equal(a, b)
    return first


def assert_matches_ort(model: onnx.ModelProto, feeds: dict, rtol=1e-4, atol=1e-5, level=None):
    """Run the model in both engines and compare every output (shape, dtype, values)."""
    ours = run_bn(model, feeds, level)
    theirs = run_ort(model, feeds)
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        assert a.shape == b.shape, (a.shape, b.shape)
        assert a.dtype == b.dtype, (a.dtype, b.dtype)
        np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)
    return ours


def on_native_hand_overs(monkeypatch, seen) -> None:
    """seen(part count) for every split handed over from native code: by Workers.hand_over, or inside
    a native plan's chain (Workers.run_chain; its answer says up to which segment it ran)."""
    from bninfer import threads
    from bninfer.kernels.spin import CHAIN_FAILED, CHAIN_SPLIT
    real_hand_over, real_chain = threads.Workers.hand_over, threads.Workers.run_chain

    def hand_over(self, own, tasks):
        failed = real_hand_over(self, own, tasks)
        if failed is not None:
            seen(len(tasks) + 1)
        return failed

    def run_chain(self, prog, starts, first):
        r = real_chain(self, prog, starts, first)
        if r is not None:
            last = (r >> 3) + (r & 7 == CHAIN_FAILED)  # a failed split's parts all ran
            for p in starts[first:last]:
                if prog[p] == CHAIN_SPLIT:
                    seen(int(prog[p + 2]) + 1)
        return r
    monkeypatch.setattr(threads.Workers, "hand_over", hand_over)
    monkeypatch.setattr(threads.Workers, "run_chain", run_chain)
