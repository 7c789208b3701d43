"""Does a BatchNormalization cost anything after optimization, wherever it stands?

Times the MNIST CNN in its three BN orders (conv->BN->ReLU, conv->ReLU->BN, no BN) in bninfer, and in
onnxruntime for reference, interleaved in shuffled rounds in one process, and prints each order's median
of per-round ratios to the no-BN net of the same engine (1.00 = the BN is free).

    python -m benchmarks.bn_orders [--runs 300] [--threads 1]
"""
from __future__ import annotations

import argparse
from typing import Sequence

import numpy as np

from benchmarks import zoo
from benchmarks.compare import load, ort_available, time_interleaved

ORDERS = {"conv-bn-relu": "mnist-cnn", "conv-relu-bn": "mnist-cnn-relu-bn", "no-bn": "mnist-cnn-nobn"}


def measure(runs: int = 300, threads: int = 1, engines: Sequence[str] = ("bninfer", "onnxruntime")) -> dict:
    """{engine: {order: (median ratio to no-bn, p50 ms, kernel count)}}."""
    feeds = zoo.input_for(zoo.build("mnist-cnn"))
    runners = []
    for engine in engines:
        for order, name in ORDERS.items():
            r = load(engine, zoo.build_bytes(name), feeds, threads)
            r.engine = f"{engine}:{order}"
            runners.append(r)
    timings = time_interleaved(runners, runs=runs, warmup=20)
    results: dict = {}
    for r in runners:
        engine, order = r.engine.split(":")
        base = timings[f"{engine}:no-bn"].round_medians
        ratio = float(np.median(np.array(timings[r.engine].round_medians) / np.array(base)))
        kernels = sum(r.session.optimization_report().nodes_after.values()) if engine == "bninfer" else None
        results.setdefault(engine, {})[order] = (ratio, timings[r.engine].p50 * 1e3, kernels)
    return results


def table(results: dict) -> str:
    lines = [f"{'engine':<12} {'order':<14} {'x no-BN':>8} {'p50 ms':>8} {'kernels':>8}"]
    for engine, rows in results.items():
        for order, (ratio, p50, kernels) in rows.items():
            lines.append(f"{engine:<12} {order:<14} {ratio:>8.3f} {p50:>8.3f} {kernels if kernels else '-':>8}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=300)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    engines = ("bninfer", "onnxruntime") if ort_available() else ("bninfer",)
    print(table(measure(args.runs, args.threads, engines)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
