"""The benchmark harness: ``attention-jax bench`` (also ``python -m attention_jax.bench``).

Times every registered mechanism (and ``grid_sample``, ``attention``) in JAX, forward and
forward+backward, across batch sizes, side by side with its PyTorch reference
(``attention_jax.torch_reference``) in the same process. Needs the ``bench`` extra
(``pip install "attention-jax[bench]"``: torch, matplotlib, tqdm); ``import attention_jax``
never imports this package.

``specs`` generates one spec per registered mechanism (plus ``grid_sample`` and ``attention``),
``runner`` times JAX and the PyTorch reference in alternating blocks, ``report`` writes the
table, ``results.json`` and the plots, ``memprobe`` measures one step's peak memory in a
subprocess, ``cli`` is the command line.
"""

from attention_jax.bench.cli import build_parser, main

__all__ = ["build_parser", "main"]
