"""``python -m benchmarks`` from a checkout: an alias of ``attention-jax bench``."""

from attention_jax.bench.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
