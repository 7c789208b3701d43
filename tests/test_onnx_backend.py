"""ONNX's own test suites, offline: every node test case, the nine light model-zoo models, and the
pytorch-converted / pytorch-operator cases.

Each case either passes (outputs equal in shape, dtype and value within the case's tolerance) or is
refused with UnsupportedOperatorError, never another exception:
- a float32 case whose ops bninfer supports must pass, unless tests/onnx_expectations.py lists it with
  the reason it is refused (a listed case that starts passing fails too, so the list stays true);
- a case using an op bninfer does not implement must be refused;
- a case with non-float32 inputs or outputs may pass (constant-folded) or be refused.
"""
from __future__ import annotations

import functools
import os
import warnings

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import bninfer
import bninfer.ops
from tests.onnx_expectations import EXPECTED
from tests.util import run_twice

DATA = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data")


@functools.lru_cache(maxsize=None)
def _cases(kind: str):
    from onnx.backend.test.loader import load_model_tests
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {c.name: c for c in load_model_tests(kind=kind)}


def _node_case_names() -> list[str]:
    return sorted(_cases("node"))


def _dir_case_names(kind: str) -> list[str]:
    folder = os.path.join(DATA, kind)
    return sorted(d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d)))


def _load_pb(path: str) -> np.ndarray:
    t = onnx.TensorProto()
    with open(path, "rb") as f:
        t.ParseFromString(f.read())
    return numpy_helper.to_array(t)


def _runtime_inputs(model: onnx.ModelProto) -> list[str]:
    inits = {i.name for i in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in inits]


def _outcome(name: str, model: onnx.ModelProto, data_sets, rtol: float, atol: float) -> str:
    """'pass', or 'refused: <message>'; raises AssertionError on wrong results and lets any other
    exception through (both fail the test)."""
    try:
        sess = bninfer.InferenceSession(model)
        for inputs, expected in data_sets:
            feeds = dict(zip(_runtime_inputs(model), inputs))
            got = run_twice(sess, feeds)
            assert len(got) == len(expected), f"{len(got)} outputs, expected {len(expected)}"
            for k, (a, b) in enumerate(zip(got, expected)):
                b = np.asarray(b)
                assert a.shape == b.shape, f"output {k}: shape {a.shape}, expected {b.shape}"
                assert a.dtype == b.dtype, f"output {k}: dtype {a.dtype}, expected {b.dtype}"
                np.testing.assert_allclose(a, b, rtol=rtol, atol=atol, err_msg=f"{name} output {k}")
    except bninfer.UnsupportedOperatorError as e:
        return "refused: " + str(e).splitlines()[-1].strip()
    return "pass"


def _ops(graph: onnx.GraphProto) -> set[str]:
    ops = set()
    for node in graph.node:
        ops.add(node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}")
        for attr in node.attribute:
            for g in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                ops |= _ops(g)
    return ops


def _check(name: str, model: onnx.ModelProto, outcome_fn):
    unsupported = _ops(model.graph) - bninfer.ops.supported_ops() - {"Constant"}
    float_only = all(vi.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
                     for vi in list(model.graph.input) + list(model.graph.output))
    outcome = outcome_fn()
    if name in EXPECTED:
        assert outcome.startswith("refused"), f"{name} is listed ({EXPECTED[name]!r}) but now passes: " \
                                              f"remove it from tests/onnx_expectations.py"
    elif unsupported:
        assert outcome.startswith("refused"), f"{name} uses {sorted(unsupported)} yet was not refused"
    elif float_only:
        assert outcome == "pass", f"{name}: {outcome} (not listed in tests/onnx_expectations.py)"


@pytest.mark.parametrize("name", _node_case_names())
def test_node(name):
    case = _cases("node")[name]
    _check(name, case.model, lambda: _outcome(name, case.model, case.data_sets, case.rtol, case.atol))


@pytest.mark.parametrize("name", sorted(_cases("real")))
def test_light_model(name):
    """The old model zoo's light models; expected outputs are stored for arange(n)/n inputs."""
    case = _cases("real")[name]
    path = os.path.join(DATA, "light", f"light_{case.model_name}.onnx")
    model = onnx.load(path)
    feeds = []
    for vi in model.graph.input:
        if vi.name in {i.name for i in model.graph.initializer}:
            continue
        shape = tuple(d.dim_value if d.HasField("dim_value") else 1 for d in vi.type.tensor_type.shape.dim)
        n = int(np.prod(shape))
        feeds.append((np.arange(n).reshape(shape) / n).astype(np.float32))
    expected = [_load_pb(os.path.join(DATA, "light", f"light_{case.model_name}_output_0.pb"))]
    _check(name, model, lambda: _outcome(name, model, [(feeds, expected)], case.rtol, 1e-5))


@pytest.mark.parametrize("kind,name", [(k, n) for k in ("pytorch-converted", "pytorch-operator")
                                       for n in _dir_case_names(k)])
def test_pytorch_case(kind, name):
    folder = os.path.join(DATA, kind, name)
    model = onnx.load(os.path.join(folder, "model.onnx"))
    data_sets = []
    for ds in sorted(d for d in os.listdir(folder) if d.startswith("test_data_set")):
        files = sorted(os.listdir(os.path.join(folder, ds)))
        ins = [_load_pb(os.path.join(folder, ds, f)) for f in files if f.startswith("input_")]
        outs = [_load_pb(os.path.join(folder, ds, f)) for f in files if f.startswith("output_")]
        data_sets.append((ins, outs))
    _check(f"{kind}/{name}", model, lambda: _outcome(name, model, data_sets, 1e-3, 1e-5))
