"""Benchmark harness: ``python -m benchmarks`` / ``attention-jax bench``."""
