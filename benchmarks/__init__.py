"""Benchmark harness: ``python -m benchmarks`` / ``attention-jax bench`` (run by ``make bench``).

``specs`` generates one spec per registered mechanism (plus ``grid_sample`` and ``attention``),
``runner`` times JAX and the PyTorch reference interleaved, ``report`` writes the table,
``results.json`` and the plots, ``memprobe`` measures one step's peak memory in a subprocess.
"""

__all__: list[str] = []
