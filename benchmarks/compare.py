"""Time bninfer and onnxruntime on the same model in one process, fairly, on a noisy shared machine.

Method (see /work/shared/notes/numba-kernels.md, sections 3-4): every engine is loaded and run once
(load and first-run times recorded), warmed up, then timed in R rounds; in each round the engines run in
a freshly shuffled order, each making its share of consecutive calls, each call timed on its own. The
report gives per-engine medians, p90, p99, and the median of per-round ratios (engine's round median /
baseline's round median): a slow phase of the machine hits both engines of a round alike, so the ratio
is much steadier than either absolute time.

    from benchmarks.compare import compare
    result = compare(model_bytes, feeds, threads=1, runs=100, warmup=10)
    print(result.report())

Engines: "bninfer", "onnxruntime", and the same with "-noopt" (graph optimizations off).
Run as a script for a quick ratio table over zoo models:
    python -m benchmarks.compare mnist-cnn resnet18 --threads 1 2 --runs 50
"""
from __future__ import annotations

import gc
import os
import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

ENGINES = ("bninfer", "onnxruntime")
BASELINE = "onnxruntime"


def ort_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except Exception:  # noqa: BLE001 - any import failure means "not available"
        return False
    return True


# ------------------------------------------------------------------------------------------------
# Loading
# ------------------------------------------------------------------------------------------------
@dataclass
class Runner:
    """A loaded engine with its feeds bound: call() runs one inference."""

    engine: str
    call: Callable[[], list]
    load_s: float
    first_run_s: float
    outputs: list[np.ndarray]
    session: Any = None


def _source(model: Any) -> Any:
    """bytes or a path as both engines accept it (a ModelProto is serialized)."""
    if hasattr(model, "SerializeToString"):
        return model.SerializeToString()
    if isinstance(model, os.PathLike):
        return os.fspath(model)
    return model


def make_session(engine: str, model: Any, threads: int = 1) -> Any:
    """An InferenceSession of engine ("bninfer[-noopt]" or "onnxruntime[-noopt]") with threads
    intra-op threads. Exceptions from the engine propagate."""
    base, _, variant = engine.partition("-")
    if variant not in ("", "noopt"):
        raise ValueError(f"unknown engine {engine!r}")
    src = _source(model)
    if base == "bninfer":
        import bninfer

        so = bninfer.SessionOptions()
        so.intra_op_num_threads = threads
        if variant == "noopt":
            so.graph_optimization_level = bninfer.GraphOptimizationLevel.ORT_DISABLE_ALL
        return bninfer.InferenceSession(src, so)
    if base == "onnxruntime":
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.log_severity_level = 3
        if variant == "noopt":
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        return ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])
    raise ValueError(f"unknown engine {engine!r}")


def load(engine: str, model: Any, feeds: dict[str, np.ndarray], threads: int = 1) -> Runner:
    """Create the session and run it once; both timed (for bninfer this includes planning and the
    Numba compilation or cache load of its kernels)."""
    t0 = time.perf_counter()
    sess = make_session(engine, model, threads)
    t1 = time.perf_counter()
    outputs = sess.run(None, feeds)
    t2 = time.perf_counter()
    run = sess.run
    return Runner(engine, lambda: run(None, feeds), t1 - t0, t2 - t1, outputs, sess)


# ------------------------------------------------------------------------------------------------
# Timing
# ------------------------------------------------------------------------------------------------
@dataclass
class EngineTiming:
    engine: str
    load_s: float
    first_run_s: float
    times: list[float] = field(default_factory=list)         # seconds, one per call, in call order
    round_medians: list[float] = field(default_factory=list)  # seconds, one per round

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.times, q)) if self.times else float("nan")

    @property
    def p50(self) -> float:
        return self.percentile(50)

    @property
    def p90(self) -> float:
        return self.percentile(90)

    @property
    def p99(self) -> float:
        return self.percentile(99)

    @property
    def mean(self) -> float:
        return float(np.mean(self.times)) if self.times else float("nan")

    @property
    def min(self) -> float:
        return float(np.min(self.times)) if self.times else float("nan")


def default_rounds(runs: int) -> int:
    return max(1, min(runs, 20))


_SETTLE_S = 0.1


def time_interleaved(runners: Sequence[Runner], runs: int = 100, warmup: int = 10,
                     rounds: int | None = None, seed: int = 0) -> dict[str, EngineTiming]:
    """Warm every runner up (warmup calls each, interleaved), then make runs timed calls per runner
    spread over rounds shuffled rounds. Garbage collection is off while timing."""
    if runs < 1:
        raise ValueError("runs must be >= 1")
    rounds = min(rounds or default_rounds(runs), runs)
    rng = random.Random(seed)
    per_round = [runs // rounds + (1 if i < runs % rounds else 0) for i in range(rounds)]
    timings = {r.engine: EngineTiming(r.engine, r.load_s, r.first_run_s) for r in runners}
    order = list(runners)
    clock = time.perf_counter
    gc_was_enabled = gc.isenabled()
    try:
        for _ in range(warmup):
            rng.shuffle(order)
            for r in order:
                r.call()
        gc.collect()
        gc.disable()
        for n in per_round:
            rng.shuffle(order)
            for r in order:
                # let the previous engine's threads go idle first: onnxruntime's keep spinning for tens
                # of ms after a run (36 ms of CPU measured) and take a core from the engine that follows
                time.sleep(_SETTLE_S)
                call = r.call
                ts = []
                for _ in range(n):
                    t0 = clock()
                    call()
                    ts.append(clock() - t0)
                timings[r.engine].times.extend(ts)
                timings[r.engine].round_medians.append(float(np.median(ts)))
    finally:
        if gc_was_enabled:
            gc.enable()
    return timings


# ------------------------------------------------------------------------------------------------
# Results
# ------------------------------------------------------------------------------------------------
@dataclass
class Comparison:
    name: str
    threads: int
    timings: dict[str, EngineTiming]
    macs: int | None = None
    baseline: str | None = BASELINE
    max_abs_diff: dict[str, float] = field(default_factory=dict)  # engine -> max |out - baseline out|
    max_rel_diff: dict[str, float] = field(default_factory=dict)  # ... / max |baseline out|

    def ratios(self, engine: str = "bninfer") -> list[float]:
        """Per-round ratio engine median / baseline median (above 1 = engine slower)."""
        if not self.baseline or self.baseline not in self.timings or engine not in self.timings:
            return []
        a, b = self.timings[engine].round_medians, self.timings[self.baseline].round_medians
        return [x / y for x, y in zip(a, b)]

    def ratio(self, engine: str = "bninfer") -> float:
        r = self.ratios(engine)
        return float(np.median(r)) if r else float("nan")

    def ratio_spread(self, engine: str = "bninfer") -> tuple[float, float]:
        """(p10, p90) of the per-round ratios."""
        r = self.ratios(engine)
        if not r:
            return float("nan"), float("nan")
        return float(np.percentile(r, 10)), float(np.percentile(r, 90))

    def gflops(self, engine: str) -> float | None:
        if not self.macs:
            return None
        return 2.0 * self.macs / self.timings[engine].p50 / 1e9

    def report(self) -> str:
        """The latency table (ms, or us when everything is under 1 ms), as `bninfer bench` prints it."""
        fast = all(t.p50 < 1e-3 for t in self.timings.values())
        unit, scale, fmt = ("us", 1e6, ">10.1f") if fast else ("ms", 1e3, ">10.3f")
        lines = [f"{f'latency ({unit})':<20}{'p50':>10}{'p90':>10}{'p99':>10}{'mean':>10}{'min':>10}"
                 + (f"{'GFLOP/s':>10}" if self.macs else "")]
        for eng, t in self.timings.items():
            row = f"{eng:<20}" + "".join(format(v * scale, fmt) for v in (t.p50, t.p90, t.p99, t.mean, t.min))
            if self.macs:
                row += f"{self.gflops(eng):>10.3g}"
            lines.append(row)
        for eng in self.timings:
            if eng == self.baseline or not self.ratios(eng):
                continue
            lo, hi = self.ratio_spread(eng)
            r = self.ratio(eng)
            verdict = "slower" if r > 1 else "faster"
            speed = r if r > 1 else 1 / r
            lines.append(f"ratio {eng}/{self.baseline}: {r:.3f}  (median of {len(self.ratios(eng))} "
                         f"per-round ratios, p10-p90 {lo:.3f}-{hi:.3f}; {eng} is {speed:.2f}x {verdict})")
        return "\n".join(lines)

    def to_json(self) -> dict:
        out: dict[str, Any] = {"model": self.name, "threads": self.threads, "macs": self.macs,
                               "baseline": self.baseline, "engines": {}}
        for eng, t in self.timings.items():
            out["engines"][eng] = {
                "load_s": t.load_s, "first_run_s": t.first_run_s,
                "p50_ms": t.p50 * 1e3, "p90_ms": t.p90 * 1e3, "p99_ms": t.p99 * 1e3,
                "mean_ms": t.mean * 1e3, "min_ms": t.min * 1e3, "gflops": self.gflops(eng),
                "runs": len(t.times), "times_ms": [x * 1e3 for x in t.times],
                "round_medians_ms": [x * 1e3 for x in t.round_medians],
            }
            if eng != self.baseline and self.ratios(eng):
                out["engines"][eng].update(
                    ratio_median=self.ratio(eng), ratio_p10=self.ratio_spread(eng)[0],
                    ratio_p90=self.ratio_spread(eng)[1], per_round_ratios=self.ratios(eng))
            if eng in self.max_abs_diff:
                out["engines"][eng].update(max_abs_diff=self.max_abs_diff[eng],
                                           max_rel_diff=self.max_rel_diff[eng])
        return out


def output_diff(outputs: list[np.ndarray], reference: list[np.ndarray]) -> tuple[float, float]:
    """(max absolute difference, that divided by max |reference|) over all outputs."""
    abs_d, scale = 0.0, 0.0
    for a, b in zip(outputs, reference):
        a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
        if a.shape != b.shape:
            return float("inf"), float("inf")
        if a.size:
            abs_d = max(abs_d, float(np.max(np.abs(a - b))))
            scale = max(scale, float(np.max(np.abs(b))))
    return abs_d, abs_d / scale if scale else abs_d


def summarize(name: str, threads: int, runners: Sequence[Runner], timings: dict[str, EngineTiming],
              macs: int | None = None, baseline: str | None = BASELINE) -> Comparison:
    cmp = Comparison(name, threads, timings, macs, baseline if baseline in timings else None)
    ref = next((r for r in runners if r.engine == cmp.baseline), None)
    if ref is not None:
        for r in runners:
            if r is not ref:
                cmp.max_abs_diff[r.engine], cmp.max_rel_diff[r.engine] = output_diff(r.outputs, ref.outputs)
    return cmp


def compare(model: Any, feeds: dict[str, np.ndarray], threads: int = 1, runs: int = 100,
            warmup: int = 10, rounds: int | None = None, engines: Sequence[str] = ENGINES,
            name: str = "model", macs: int | None = None, seed: int = 0) -> Comparison:
    """Load every engine (errors propagate), then time them interleaved; see the module docstring."""
    runners = [load(e, model, feeds, threads) for e in engines]
    timings = time_interleaved(runners, runs, warmup, rounds, seed)
    return summarize(name, threads, runners, timings, macs)


def ratio_table(results: Sequence[Comparison], engine: str = "bninfer") -> str:
    """One row per comparison: p50 of both engines, the median per-round ratio and its spread."""
    def num(v: float | None, fmt: str) -> str:
        return "-" if v is None or not np.isfinite(v) else format(v, fmt)

    head = (f"{'model':<20}{'thr':>4}{'MACs':>9}{engine + ' p50 ms':>16}{'ORT p50 ms':>12}"
            f"{'ratio':>8}{'p10-p90':>13}{engine + ' GF/s':>14}{'ORT GF/s':>10}{'max rel diff':>14}")
    lines = [head, "-" * len(head)]
    for c in results:
        a = c.timings.get(engine)
        b = c.timings.get(c.baseline) if c.baseline else None
        lo, hi = c.ratio_spread(engine)
        spread = f"{lo:.2f}-{hi:.2f}" if np.isfinite(lo) else "-"
        ms_fmt = ".4f" if all(t.p50 < 1e-3 for t in c.timings.values()) else ".3f"
        lines.append(
            f"{c.name:<20}{c.threads:>4}{_fmt_macs(c.macs):>9}"
            f"{num(a.p50 * 1e3 if a else None, ms_fmt):>16}{num(b.p50 * 1e3 if b else None, ms_fmt):>12}"
            f"{num(c.ratio(engine), '.3f'):>8}{spread:>13}"
            f"{num(c.gflops(engine) if a else None, '.1f'):>14}"
            f"{num(c.gflops(c.baseline) if b else None, '.1f'):>10}"
            f"{num(c.max_rel_diff.get(engine), '.1e'):>14}")
    lines.append(f"ratio = median over rounds of ({engine} round median / {BASELINE} round median); "
                 f"above 1 = {engine} slower")
    return "\n".join(lines)


def _fmt_macs(m: int | None) -> str:
    if not m:
        return "-"
    for unit, div in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if m >= div:
            return f"{m / div:.2f}{unit}" if unit == "G" else f"{m / div:.1f}{unit}"
    return str(m)


def _main(argv: Sequence[str] | None = None) -> int:
    import argparse

    from . import zoo

    p = argparse.ArgumentParser(prog="python -m benchmarks.compare",
                                description="Interleaved bninfer vs onnxruntime ratio table over zoo models.")
    p.add_argument("models", nargs="*", default=[zoo.DEFAULT_MODEL], help=f"zoo names: {', '.join(zoo.ZOO)}")
    p.add_argument("--threads", type=int, nargs="+", default=[1])
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--engines", nargs="+", default=list(ENGINES))
    args = p.parse_args(argv)
    results = []
    for name in args.models:
        model = zoo.build_bytes(name)
        feeds = zoo.input_for(zoo.build(name))
        for th in args.threads:
            results.append(compare(model, feeds, th, args.runs, args.warmup, engines=args.engines,
                                   name=name, macs=zoo.macs(name)))
            print(results[-1].name, th, "thread(s)")
            print(results[-1].report(), flush=True)
    print()
    print(ratio_table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
