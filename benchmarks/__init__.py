"""The repository's benchmark scripts, built on the installed harness ``attention_jax.bench``.

``python -m benchmarks`` (what ``make bench`` runs) is ``attention-jax bench``; the targeted
scripts (``bench_grid_sample.py``, ``bench_attention.py``) and ``gpu_check.py`` live beside it.
This folder is not part of the wheel: only ``attention_jax`` is installed.
"""

__all__: list[str] = []
