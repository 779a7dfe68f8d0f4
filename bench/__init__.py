"""Benchmarks (not tests): ``python -m bench.memory`` and friends. Results go to
``bench/RESULTS.md``."""
