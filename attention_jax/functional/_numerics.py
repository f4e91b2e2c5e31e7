"""Numerical policy: reductions accumulate in at least float32, then cast back."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def acc_dtype(x: jax.Array) -> jnp.dtype:
    """float32 for low-precision input, the input's own dtype for float32/float64."""
    return jnp.promote_types(x.dtype, jnp.float32)


def mean(x: jax.Array, axis, *, keepdims: bool = False) -> jax.Array:
    """Mean accumulated in ``acc_dtype(x)``, returned in ``x.dtype``."""
    return jnp.mean(x, axis=axis, keepdims=keepdims, dtype=acc_dtype(x)).astype(x.dtype)
