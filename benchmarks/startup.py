"""Start-up: a fresh process's time from `import bninfer` to the first output of a zoo model, with the
kernel cache warm (as every launch after the first) and empty (BNINFER_CACHE_DIR a new folder).

    python -m benchmarks.startup [MODEL] [--runs N] [--threads N] [--no-empty]

Each run is a new Python process that reports its import, session and first-run times. A first,
untimed run fills the kernel cache and Python's bytecode cache: the warm runs measure what an installed
program's second launch costs (PYTHONDONTWRITEBYTECODE, if set, is dropped for the children: pip writes
bytecode at install time).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks import zoo

_CHILD = """
import json, sys, time
t0 = time.perf_counter()
import numpy as np
import bninfer
t1 = time.perf_counter()
so = bninfer.SessionOptions()
so.intra_op_num_threads = int(sys.argv[2])  # 0: the session's default
s = bninfer.InferenceSession(sys.argv[1], so)
t2 = time.perf_counter()
feeds = {i.name: np.random.default_rng(0).standard_normal(
    [d if isinstance(d, int) else 1 for d in i.shape]).astype(np.float32) for i in s.get_inputs()}
s.run(None, feeds)
t3 = time.perf_counter()
print(json.dumps({"import": t1 - t0, "session": t2 - t1, "first_run": t3 - t2, "total": t3 - t0}))
"""


def fresh_process(model: Path, threads: int, cache_dir: str | None = None) -> dict[str, float]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    if cache_dir is not None:
        env["BNINFER_CACHE_DIR"] = cache_dir
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    done = subprocess.run([sys.executable, "-c", _CHILD, str(model), str(threads)], env=env,
                          capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"the start-up run failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _line(label: str, t: dict[str, float]) -> str:
    return (f"{label:<12} total {t['total']:6.2f} s   (import {t['import']:.2f}, session {t['session']:.2f}, "
            f"first run {t['first_run']:.2f})")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", nargs="?", default="resnet50")
    p.add_argument("--runs", type=int, default=3, help="warm-cache runs (default 3)")
    p.add_argument("--threads", type=int, default=0, help="0 (default): the session's own default")
    p.add_argument("--no-empty", action="store_true", help="skip the empty-cache run")
    args = p.parse_args(argv)
    name = zoo.canonical_name(args.model)
    if name is None:
        p.error(f"unknown zoo model {args.model!r}; choose from {', '.join(zoo.ZOO)}")
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / f"{name}.onnx"
        model.write_bytes(zoo.build_bytes(name))
        threads = f"{args.threads} thread(s)" if args.threads else "default threads"
        print(f"{name}: from a fresh process to its first output, {threads}")
        fresh_process(model, args.threads)  # fills the caches
        warm = [fresh_process(model, args.threads) for _ in range(args.runs)]
        for k, t in enumerate(warm):
            print(_line(f"warm {k + 1}", t))
        print(f"warm median {statistics.median(t['total'] for t in warm):.2f} s")
        if not args.no_empty:
            print(_line("empty cache", fresh_process(model, args.threads, str(Path(tmp) / "cache"))))


if __name__ == "__main__":
    main()
