"""``python -m attention_jax.bench``: the same command as ``attention-jax bench``."""

from attention_jax.bench.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
