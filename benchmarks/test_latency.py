"""Latency suite: every zoo model x engine (bninfer, onnxruntime) x threads (1, 2), batch 1.

    pytest benchmarks/                          # everything (minutes: ResNet-50, DenseNet-121, ...)
    pytest benchmarks/ -k mnist                 # the three MNIST CNNs: seconds
    pytest benchmarks/ -k "resnet18 and 1t"     # one model, one thread count
    pytest benchmarks/ -m "not ratio"           # pytest-benchmark tables only
    pytest benchmarks/ --benchmark-disable      # smoke: run every model once per engine

test_latency uses pytest-benchmark (grouped per model and thread count, so the two engines sit side by
side). test_ratio times the two engines interleaved in shuffled rounds (benchmarks/compare.py) and adds a
row to the ratio table printed at the end of the session: on a shared, noisy machine that ratio is the
number to trust, not either absolute time. Nothing here asserts speed.
"""
from __future__ import annotations

import time

import numpy as np
import pytest

from benchmarks import compare, zoo
from benchmarks.conftest import load_or_skip

ENGINES = ("bninfer", "onnxruntime")
THREADS = (1, 2)

# Model-major order: each model's sessions are built once and released before the next model.
CASES = [pytest.param(m, e, t, id=f"{m}-{e}-{t}t") for m in zoo.ZOO for e in ENGINES for t in THREADS]
RATIO_CASES = [pytest.param(m, t, id=f"{m}-{t}t") for m in zoo.ZOO for t in THREADS]


@pytest.mark.parametrize("name, engine, threads", CASES)
def test_latency(benchmark, models, name: str, engine: str, threads: int) -> None:
    runner = load_or_skip(models, name, engine, threads)
    macs = zoo.macs(name)
    benchmark.group = f"{name} {threads}t"
    benchmark.extra_info.update(model=name, engine=engine, threads=threads, macs=macs,
                                load_s=runner.load_s, first_run_s=runner.first_run_s)
    outputs = benchmark(runner.call)
    assert all(np.isfinite(o).all() for o in outputs if np.issubdtype(o.dtype, np.floating))
    stats = getattr(benchmark, "stats", None)
    if stats is not None and macs:
        benchmark.extra_info["gflops_median"] = 2.0 * macs / stats.stats.median / 1e9


@pytest.mark.ratio
@pytest.mark.parametrize("name, threads", RATIO_CASES)
def test_ratio(request, models, ratio_results, name: str, threads: int) -> None:
    """bninfer vs onnxruntime, interleaved; prints a row of the ratio table (no speed assertion)."""
    models.release()  # free the latency tests' sessions
    ours = load_or_skip(models, name, "bninfer", threads)
    ref = load_or_skip(models, name, "onnxruntime", threads)
    runners = [ours, ref]
    # Fit the runs in the time budget: estimate one call of each engine.
    t0 = time.perf_counter()
    for r in runners:
        r.call()
    per_pair = max(time.perf_counter() - t0, 1e-6)
    budget = request.config.getoption("--ratio-seconds")
    max_runs = request.config.getoption("--ratio-max-runs")
    runs = int(min(max_runs, max(10, budget / per_pair)))
    warmup = min(10, max(2, runs // 10))
    timings = compare.time_interleaved(runners, runs=runs, warmup=warmup)
    result = compare.summarize(name, threads, runners, timings, zoo.macs(name))
    ratio_results.append(result)
    print(f"\n{name}, {threads} thread(s), {runs} runs per engine\n{result.report()}")
