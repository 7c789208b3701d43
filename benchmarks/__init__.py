"""bninfer's benchmark suite: the model zoo (zoo.py), the interleaved timing helper (compare.py) and the
pytest-benchmark latency tests (test_latency.py). Run with `pytest benchmarks/` (e.g. `-k mnist`)."""
