"""Mutated models: every outcome is outputs or a bninfer error (see tests/fuzzing.py)."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bninfer.passes import constant_fold
from tests.fuzzing import check_one, mutate, seed_models

SEEDS = seed_models()


def test_seed_models_run():
    for model in SEEDS:
        assert check_one(model, np.random.default_rng(0)) == "ok"


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(seed=st.integers(0, 2**32 - 1), which=st.integers(0, len(SEEDS) - 1), n=st.integers(1, 3))
def test_mutated_models_give_outputs_or_bninfer_errors(seed, which, n, monkeypatch_limit):
    rng = np.random.default_rng(seed)
    check_one(mutate(SEEDS[which], rng, n), rng)


@pytest.fixture(scope="module")
def monkeypatch_limit():
    old = constant_fold.MAX_TENSOR_BYTES
    constant_fold.MAX_TENSOR_BYTES = 64 << 20
    yield
    constant_fold.MAX_TENSOR_BYTES = old
