"""Fixtures and options for the latency suite (`pytest benchmarks/`).

Options (only when benchmarks/ is given on the command line):
  --ratio-seconds S   time budget per ratio test (default 5): runs are chosen so both engines fit in it
  --ratio-max-runs N  upper bound on timed runs per engine in a ratio test (default 200)
Markers: `ratio` (the interleaved bninfer/onnxruntime ratio tests); `-m "not ratio"` skips them.
Without pytest-benchmark's timing (`--benchmark-disable`) every latency test runs its model once: a quick
smoke test of every model in every engine and thread count.
"""
from __future__ import annotations

import pytest

from benchmarks import compare, zoo

_RATIOS = pytest.StashKey[list]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("bninfer benchmarks")
    group.addoption("--ratio-seconds", type=float, default=5.0,
                    help="time budget per bninfer/onnxruntime ratio test (default 5 s)")
    group.addoption("--ratio-max-runs", type=int, default=200,
                    help="most timed runs per engine in a ratio test (default 200)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "ratio: interleaved bninfer/onnxruntime ratio test (compare.py)")
    config.stash[_RATIOS] = []


def pytest_terminal_summary(terminalreporter, exitstatus, config: pytest.Config) -> None:
    results = config.stash.get(_RATIOS, [])
    if results:
        terminalreporter.section("bninfer / onnxruntime latency ratios (interleaved rounds)")
        for line in compare.ratio_table(results).splitlines():
            terminalreporter.write_line(line)


class _Models:
    """Built zoo models (bytes + feeds), and loaded sessions for the current model only: the
    parametrization is model-major, so memory holds one model's sessions at a time."""

    def __init__(self) -> None:
        self._current: str | None = None
        self._runners: dict[tuple[str, int], compare.Runner] = {}
        self._errors: dict[tuple[str, int], BaseException] = {}

    def model(self, name: str) -> tuple[bytes, dict]:
        data = zoo.build_bytes(name)
        return data, zoo.input_for(zoo.build(name))

    def runner(self, name: str, engine: str, threads: int) -> compare.Runner:
        if name != self._current:
            self._current = name
            self._runners.clear()
            self._errors.clear()
        key = (engine, threads)
        if key in self._errors:
            raise self._errors[key]
        if key not in self._runners:
            data, feeds = self.model(name)
            try:
                self._runners[key] = compare.load(engine, data, feeds, threads)
            except BaseException as e:
                self._errors[key] = e
                raise
        return self._runners[key]

    def release(self) -> None:
        self._current = None
        self._runners.clear()
        self._errors.clear()


@pytest.fixture(scope="session")
def models() -> _Models:
    return _Models()


@pytest.fixture(scope="session")
def ratio_results(request: pytest.FixtureRequest) -> list:
    return request.config.stash[_RATIOS]


def load_or_skip(models: _Models, name: str, engine: str, threads: int) -> compare.Runner:
    """The loaded runner; skips (with the reason) when the engine is missing or cannot run the model
    (bninfer's ops are still being written); any other error fails the test."""
    if engine.startswith("onnxruntime"):
        pytest.importorskip("onnxruntime")
    try:
        return models.runner(name, engine, threads)
    except Exception as e:  # noqa: BLE001
        import bninfer

        if isinstance(e, bninfer.UnsupportedOperatorError):
            pytest.skip(f"{engine} cannot run {name}: {e}")
        raise
