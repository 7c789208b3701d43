"""Real torch-exported models (tests/data/*.onnx, made by tests/data/make_fixtures.py) against
onnxruntime and against the torch outputs stored beside them (*.npz). Does not need torch.

For each fixture and for graph_optimization_level ALL (default) and ORT_DISABLE_ALL:
  * bninfer vs onnxruntime (rtol 1e-4, atol 1e-5),
  * bninfer vs torch's stored output (rtol 1e-3, atol 1e-4),
  * for fixtures whose input has a symbolic batch axis: the same at batch 3.
The default-level run loads the model from its path, the ORT_DISABLE_ALL run from bytes.
"""
from __future__ import annotations

import functools
import glob
import os

import numpy as np
import onnx
import pytest

import bninfer
from tests.util import run_ort, run_twice

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
FIXTURES = sorted(os.path.splitext(os.path.basename(p))[0] for p in glob.glob(os.path.join(DATA, "*.onnx")))

LEVELS = [bninfer.GraphOptimizationLevel.ORT_ENABLE_ALL, bninfer.GraphOptimizationLevel.ORT_DISABLE_ALL]
LEVEL_IDS = ["opt_all", "opt_off"]

ORT_TOL = dict(rtol=1e-4, atol=1e-5)
TORCH_TOL = dict(rtol=1e-3, atol=1e-4)


@functools.lru_cache(maxsize=None)
def _model(name: str) -> onnx.ModelProto:
    return onnx.load(os.path.join(DATA, name + ".onnx"))


@functools.lru_cache(maxsize=None)
def _arrays(name: str) -> dict:
    with np.load(os.path.join(DATA, name + ".npz")) as z:
        return {k: z[k] for k in z.files}


def _input_name(model: onnx.ModelProto) -> str:
    inits = {i.name for i in model.graph.initializer}
    names = [i.name for i in model.graph.input if i.name not in inits]
    assert len(names) == 1, names
    return names[0]


def _dynamic_batch(name: str) -> bool:
    dim0 = _model(name).graph.input[0].type.tensor_type.shape.dim[0]
    return bool(dim0.dim_param) or not dim0.HasField("dim_value")


DYNAMIC = [n for n in FIXTURES if _dynamic_batch(n)]


@functools.lru_cache(maxsize=None)
def _ort(name: str, key: str) -> np.ndarray:
    model = _model(name)
    outs = run_ort(model, {_input_name(model): _arrays(name)[key]})
    assert len(outs) == 1
    return outs[0]


def _run_bninfer(name: str, key: str, level) -> np.ndarray:
    so = bninfer.SessionOptions()
    so.graph_optimization_level = level
    src = (os.path.join(DATA, name + ".onnx") if level == bninfer.GraphOptimizationLevel.ORT_ENABLE_ALL
           else _model(name).SerializeToString())
    sess = bninfer.InferenceSession(src, so)
    outs = run_twice(sess, {_input_name(_model(name)): _arrays(name)[key]})
    assert len(outs) == 1, len(outs)
    return outs[0]


def _check(ours: np.ndarray, ref: np.ndarray, tol: dict) -> None:
    assert isinstance(ours, np.ndarray), type(ours)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    assert ours.dtype == ref.dtype, (ours.dtype, ref.dtype)
    np.testing.assert_allclose(ours, ref, **tol)


def test_fixtures_present():
    assert len(FIXTURES) >= 10, FIXTURES
    for name in FIXTURES:
        assert os.path.exists(os.path.join(DATA, name + ".npz")), name


@pytest.mark.parametrize("name", FIXTURES)
def test_onnxruntime_matches_torch(name):
    """Checks the fixture itself: onnxruntime reproduces the stored torch output."""
    _check(_ort(name, "input"), _arrays(name)["output"], TORCH_TOL)


@pytest.mark.parametrize("level", LEVELS, ids=LEVEL_IDS)
@pytest.mark.parametrize("name", FIXTURES)
def test_matches_onnxruntime(name, level):
    _check(_run_bninfer(name, "input", level), _ort(name, "input"), ORT_TOL)


@pytest.mark.parametrize("level", LEVELS, ids=LEVEL_IDS)
@pytest.mark.parametrize("name", FIXTURES)
def test_matches_torch(name, level):
    _check(_run_bninfer(name, "input", level), _arrays(name)["output"], TORCH_TOL)


@pytest.mark.parametrize("level", LEVELS, ids=LEVEL_IDS)
@pytest.mark.parametrize("name", DYNAMIC)
def test_batch3(name, level):
    arrays = _arrays(name)
    assert "input_b3" in arrays, "dynamic-batch fixture without a batch-3 sample"
    ours = _run_bninfer(name, "input_b3", level)
    _check(ours, _ort(name, "input_b3"), ORT_TOL)
    _check(ours, arrays["output_b3"], TORCH_TOL)
